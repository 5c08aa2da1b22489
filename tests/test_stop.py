"""Runs that survive the real world: one run per folder, a clean stop on SIGTERM/SIGINT, checkpoints
that never leave half-written state, and a fallback for a last.pt that does not load.

The process tests start real `paper-unet` processes and send real signals."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from paper_unet.checkpoint import load_checkpoint, previous_path, save_checkpoint
from paper_unet.config import config_from_dict, load_config
from paper_unet.runlock import LOCK_NAME, hold
from paper_unet.stop import StopRequested

REPO = Path(__file__).resolve().parents[1]


def weights_of(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights_of(a), weights_of(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def wait_for(condition, seconds: float = 120, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended first (exit {process.returncode}): "
                                 f"{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def train_command(isbi_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "paper_unet", "train", "--profile", "smoke", "--data-dir", str(isbi_dir),
            "--quiet", "--out", str(out), *extra]


def logged_rows(out: Path) -> int:
    log = out / "train_log.csv"
    return len(log.read_text().splitlines()) - 1 if log.is_file() else 0


# --- one run per folder ---------------------------------------------------------------------------

HOLD_AND_SLEEP = ("import sys, time; from paper_unet.runlock import hold\n"
                  "with hold(sys.argv[1], shared=sys.argv[2] == 'shared'):\n"
                  "    print('holding', flush=True); time.sleep(60)")
TRY_HOLD = ("import sys; from paper_unet.runlock import hold, RunFolderBusy\n"
            "try:\n    with hold(sys.argv[1], shared=sys.argv[2] == 'shared'): print('got it')\n"
            "except RunFolderBusy as e: print('busy:', e)")


def try_hold(folder: Path, mode: str = "exclusive") -> str:
    return subprocess.run([sys.executable, "-c", TRY_HOLD, str(folder), mode], capture_output=True, text=True,
                          check=True).stdout


def test_a_folder_lock_refuses_other_processes_names_the_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_SLEEP, str(tmp_path / "run"), "exclusive"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = try_hold(tmp_path / "run")
        assert refused.startswith("busy:") and f"(PID {holder.pid})" in refused and "--out" in refused
        assert try_hold(tmp_path / "run", "shared").startswith("busy:")
    finally:
        holder.kill()  # SIGKILL: no clean-up of ours runs, the OS drops the lock
        holder.wait()
    assert try_hold(tmp_path / "run") == "got it\n"


def test_parallel_stage_processes_share_the_run_folder_but_a_whole_run_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_SLEEP, str(tmp_path / "run"), "shared"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert try_hold(tmp_path / "run", "shared") == "got it\n"  # a sibling fold process
        assert try_hold(tmp_path / "run").startswith("busy:")  # a whole reproduction on the same folder
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with hold(tmp_path / "run"):
        with hold(tmp_path / "run"):  # a reproduction holds the folder, and a nested call on it
            assert try_hold(tmp_path / "run").startswith("busy:")
        assert try_hold(tmp_path / "run").startswith("busy:")  # still held by the outer block
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert try_hold(tmp_path / "run") == "got it\n"
    with hold(tmp_path / "x", enabled=False):  # ranks other than 0 take no lock
        assert not (tmp_path / "x").exists()


def test_a_second_training_on_the_same_folder_is_refused_and_the_first_is_unharmed(isbi_dir, tmp_path):
    out = tmp_path / "run"
    # 2,000 smoke steps (about 15 s): the second process starts (imports, data) well before the first ends
    first = subprocess.Popen(train_command(isbi_dir, out, "--set", "optim.iterations=2000", "--set",
                                           "run.checkpoint_every=2000"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_rows(out) > 0, process=first)
    second = subprocess.run(train_command(isbi_dir, out, "--set", "optim.iterations=2000", "--resume"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"in use by another run (PID {first.pid})" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert load_checkpoint(out / "last.pt")["iteration"] == 2000


# --- a clean stop on SIGTERM / SIGINT --------------------------------------------------------------

STEPS = 600  # about 4 s of smoke training: time enough for the signal to land before the end
EXTRA = ["--set", f"optim.iterations={STEPS}", "--set", "run.checkpoint_every=1000", "--set", "run.log_every=2"]


def stop_a_training(isbi_dir, out: Path, signum: int) -> int:
    """Start a real training, send ``signum`` once it logs; check the clean stop; the step it reached."""
    victim = subprocess.Popen(train_command(isbi_dir, out, *EXTRA), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_for(lambda: logged_rows(out) > 0, process=victim)
    victim.send_signal(signum)
    _, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 128 + signum, stderr
    reached = load_checkpoint(out / "last.pt")["iteration"]
    assert 0 < reached < STEPS
    assert f"stopped by {signal.Signals(signum).name}" in stderr and f"iteration {reached} of {STEPS}" in stderr
    assert "--resume" in stderr
    return reached


def test_ctrl_c_checkpoints_the_step_reached_and_exits_130(isbi_dir, tmp_path):
    stop_a_training(isbi_dir, tmp_path / "stopped", signal.SIGINT)


def test_sigterm_checkpoints_the_step_reached_and_resume_equals_an_uninterrupted_run(isbi_dir, tmp_path):
    """Dropout on, a checkpoint period longer than the run: the only checkpoint before the end is
    the one the signal makes, at whatever step it arrives."""
    extra = EXTRA
    subprocess.run(train_command(isbi_dir, tmp_path / "full", *extra), check=True, capture_output=True)
    stop_a_training(isbi_dir, tmp_path / "stopped", signal.SIGTERM)
    done = subprocess.run(train_command(isbi_dir, tmp_path / "stopped", *extra, "--resume"), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert same_weights(tmp_path / "full" / "last.pt", tmp_path / "stopped" / "last.pt")
    full = (tmp_path / "full" / "train_log.csv").read_text().splitlines()
    resumed = (tmp_path / "stopped" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in resumed] == [r.split(",")[:3] for r in full]  # all but the seconds


def test_a_second_signal_ends_the_process_at_once():
    code = ("import os, signal, time; from paper_unet.stop import graceful_stop\n"
            "with graceful_stop() as flag:\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
            "    print('first recorded:', flag.requested, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('survived')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and done.stdout == "first recorded: True\n"


def test_a_signal_stops_the_reproduction_with_the_training_checkpointed(isbi_dir, tmp_path, monkeypatch):
    """In-process: the signal arrives as the first fold's training starts; it stops after one step,
    checkpointed, and the reproduction raises instead of going on to the next stage."""
    import paper_unet.train
    from paper_unet.data import load_isbi2012
    from paper_unet.reproduce import run_reproduction

    real_train = paper_unet.train.train

    def signalled_train(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(paper_unet.train, "train", signalled_train)
    with pytest.raises(StopRequested, match="stopped by SIGTERM: checkpoint .*iteration 1 of 6") as stopped:
        run_reproduction(load_config("smoke"), load_isbi2012(isbi_dir), tmp_path / "run", progress=False)
    assert stopped.value.exit_status == 143
    assert load_checkpoint(tmp_path / "run" / "fold0" / "last.pt")["iteration"] == 1
    assert not (tmp_path / "run" / "fold1").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back


def test_run_isbi_passes_sigterm_on_and_exits_with_its_status(isbi_dir, tmp_path):
    """`docker stop` / a cluster's preemption signal the script: it hands SIGTERM to the training,
    which checkpoints; the script reports a clean stop and exits 143."""
    out = tmp_path / "run"
    script = subprocess.Popen(["bash", str(REPO / "reproduction" / "run_isbi.sh"), "--profile", "smoke", "--data-dir",
                               str(isbi_dir), "--out", str(out), "--results", str(tmp_path / "results"),
                               "--set", "optim.iterations=3000", "--set", "run.checkpoint_every=5000",
                               "--set", "run.validate_every=5000"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_rows(out / "fold0") > 0, process=script)
    script.send_signal(signal.SIGTERM)
    _, stderr = script.communicate(timeout=120)
    assert script.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "run_isbi.sh: stopped cleanly (exit 143)" in stderr
    assert 0 < load_checkpoint(out / "fold0" / "last.pt")["iteration"] < 3000


# --- checkpoint writes and a last.pt that does not load --------------------------------------------

def test_a_checkpoint_keeps_the_one_it_replaced(tmp_path):
    path = tmp_path / "last.pt"
    for i in range(3):
        save_checkpoint(path, {"iteration": i}, keep_previous=True)
    assert load_checkpoint(path)["iteration"] == 2 and load_checkpoint(previous_path(path))["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary_file(tmp_path, monkeypatch):
    """A full disk, injected: torch.save writes part of the file, then fails with ENOSPC."""
    import paper_unet.checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.arange(10.0)}, keep_previous=True)
    before = path.read_bytes()

    def full_disk(state, handle):
        handle.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paper_unet.checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.pt \(the disk is full\).*unchanged"):
        save_checkpoint(path, {"iteration": 2}, keep_previous=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_truncated_last_pt_names_the_previous_one_which_resumes_exactly(isbi_dir, tmp_path):
    import tifffile
    from paper_unet.train import train

    images = tifffile.imread(isbi_dir / "train-volume.tif")[:2]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:2]
    values = load_config("smoke").to_dict()
    values["run"].update(checkpoint_every=2, log_every=1)
    config = config_from_dict(values)  # 6 iterations
    train(config, images, labels, tmp_path / "full", progress=False)
    train(config, images, labels, tmp_path / "cut", progress=False, stop_after=4)
    last = tmp_path / "cut" / "last.pt"
    assert load_checkpoint(previous_path(last))["iteration"] == 2
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash of the storage
    with pytest.raises(ValueError, match=r"cannot be loaded.*last\.prev\.pt.*--from-previous"):
        train(config, images, labels, tmp_path / "cut", progress=False, resume=True)
    train(config, images, labels, tmp_path / "cut", progress=False, resume=True, from_previous=True)
    assert same_weights(tmp_path / "full" / "last.pt", last)
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "full" / "train_log.csv", delimiter=",", skiprows=1)[:, :3],
                                  np.loadtxt(tmp_path / "cut" / "train_log.csv", delimiter=",", skiprows=1)[:, :3])


def test_from_previous_needs_resume(isbi_dir, tmp_path):
    done = subprocess.run(train_command(isbi_dir, tmp_path / "x", "--from-previous"), capture_output=True, text=True)
    assert done.returncode == 2 and "--from-previous goes with --resume" in done.stderr
