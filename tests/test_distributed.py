"""Data-parallel training under torchrun (`paper_unet.distributed`; gloo on the CPU): identical replicas,
resumable, collective stops, one node or two."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from paper_unet.train import load_checkpoint


def torchrun(out, stop_after, mode, isbi_dir, timeout=300):
    # gloo on the CPU on any machine: hidden GPUs (a GPU machine may have fewer GPUs than the 2 ranks,
    # and NCCL wants one GPU per rank)
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(REPO / "tests" / "ddp_worker.py"), str(out), str(stop_after), mode, str(isbi_dir)],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout)


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_hold_identical_weights_and_rank0_checkpoint_resumes(isbi_dir, tmp_path):
    done = torchrun(tmp_path, 2, "fresh", isbi_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert same(rank0, rank1)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 2 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["cpu"], state["rng"][1]["cpu"])  # rank-specific dropout streams
    assert same(state["model"], rank0)
    log = (tmp_path / "train_log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 iterations, written by rank 0 only

    done = torchrun(tmp_path, 4, "resume", isbi_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stderr
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert same(rank0, rank1)


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_train_as_one_node_with_the_same_world_size(isbi_dir, tmp_path):
    """Multi-node training (docs/scaling_out.md): two `torchrun --nnodes 2` nodes of one process each, meeting
    through a c10d rendezvous on 127.0.0.1, train exactly the weights of one node with two processes."""
    one = torchrun(tmp_path / "one", 2, "fresh", isbi_dir)
    assert one.returncode == 0, one.stderr[-3000:]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    port, out = free_port(), tmp_path / "two"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
                               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=paper_unet_test",
                               str(REPO / "tests" / "ddp_worker.py"), str(out), "2", "fresh", str(isbi_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
             for _ in range(2)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert all(node.returncode == 0 for node in nodes), "\n".join(err[-2000:] for _, err in outputs)
    a, b = load_checkpoint(tmp_path / "one" / "last.pt"), load_checkpoint(out / "last.pt")
    assert a["world_size"] == b["world_size"] == 2 and same(a["model"], b["model"])
    assert (tmp_path / "one" / "train_log.csv").read_text().split("\n")[1].split(",")[:2] == \
        (out / "train_log.csv").read_text().split("\n")[1].split(",")[:2]  # the same first loss


def test_a_collapse_seen_by_one_rank_stops_every_rank_with_the_message(isbi_dir, tmp_path):
    """The stop decision is collective: no rank is left waiting in an all-reduce (a hang)."""
    done = torchrun(tmp_path, 4, "collapse-on-rank-1", isbi_dir, timeout=180)
    assert done.returncode != 0
    assert done.stderr.count("collapsed to a constant output") >= 2, done.stderr[-3000:]  # both ranks


def reproduce(*args, nproc=None, env_threads="1"):
    env = dict(os.environ, OMP_NUM_THREADS=env_threads)
    if nproc:
        env["CUDA_VISIBLE_DEVICES"] = ""  # several ranks: gloo on the CPU, as in torchrun() above
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc else [sys.executable])
    return subprocess.run(launcher + ["-m", "paper_unet", "reproduce", "--profile", "smoke", "--quiet", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


@pytest.mark.slow
def test_reproduction_under_torchrun_writes_everything_once(isbi_dir, tmp_path):
    done = reproduce("--data-dir", str(isbi_dir), "--out", str(tmp_path / "run"), "--results",
                     str(tmp_path / "results"), nproc=2)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results" / "README.md").is_file()
    assert load_checkpoint(tmp_path / "run" / "final" / "last.pt")["world_size"] == 2


@pytest.mark.slow
def test_folds_as_independent_processes_are_gathered(isbi_dir, tmp_path):
    common = ["--data-dir", str(isbi_dir), "--out", str(tmp_path / "run"), "--results", str(tmp_path / "results")]
    for k in (0, 1, 2):
        assert reproduce(*common, "--only-fold", str(k)).returncode == 0
        assert (tmp_path / "run" / f"fold{k}" / "metrics.json").is_file()
    assert not (tmp_path / "run" / "final").exists()
    done = reproduce(*common)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    fold0 = json.loads((tmp_path / "run" / "fold0" / "stage.json").read_text())
    assert summary["stages"]["fold0"] == fold0  # the fold process's own record, not re-stamped by the gathering
    assert summary["timings_s"]["fold0_train"] == fold0["did"]["train_s"]
    assert (tmp_path / "results" / "cv_folds.csv").read_text().count("\n") == 4
