"""The reproduction as a sequence of stages (`paper_unet.reproduce`): each stage's own record survives a resume
on another machine, torn files are redone, and run_isbi.sh's parallel folds honour the user's --set."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import CPU_A, CPU_B, REPO, TINY, on_cpu, weights_of
from paper_unet.config import load_config


def test_a_run_resumed_under_another_cpu_class_keeps_each_stages_record(isbi_dir, tmp_path, monkeypatch, capsys):
    from paper_unet.data import load_isbi2012
    from paper_unet.report import write_report
    from paper_unet.reproduce import run_reproduction

    isbi = load_isbi2012(isbi_dir)
    config = load_config("smoke", TINY)
    out = tmp_path / "run"
    on_cpu(monkeypatch, CPU_A)
    run_reproduction(config, isbi, out, progress=False, only_fold=0, command="first start")
    fold0 = json.loads((out / "fold0" / "stage.json").read_text())
    on_cpu(monkeypatch, CPU_B)  # the rest of the run on the second start, under another CPU class
    summary = run_reproduction(config, isbi, out, progress=False, command="second start")
    assert summary["stages"]["fold0"] == fold0  # not re-stamped by the second start
    assert fold0["sessions"][0]["cpu_class"] == "AVX512-BF16" and fold0["sessions"][0]["command"] == "first start"
    assert {summary["stages"][s]["sessions"][-1]["cpu_class"] for s in ("fold1", "fold2", "final", "submission")} \
        == {"AVX2"}
    assert summary["provenance"]["cpu_class"] == "AVX512-BF16"  # where the run started
    assert summary["gathered_by"]["cpu_class"] == "AVX2"
    again = run_reproduction(config, isbi, out, progress=False, command="third start")  # nothing left to do
    assert again["stages"] == summary["stages"]
    readme = write_report(out, tmp_path / "results", isbi_dir).read_text()
    assert "Test CPU A (AVX512-BF16 CPU)" in readme and "Test CPU A (AVX2 CPU)" in readme
    stages = readme.split("## Stages")[1].split("\n## ")[0]
    rows = [line for line in stages.splitlines() if line.startswith("| fold")]
    assert len(rows) == 3 and "AVX512-BF16" in rows[0] and all("AVX2 CPU" in row for row in rows[1:])
    assert "**several machines**" in readme and "different machines" in stages
    # torn files (a crash in a plain write): detected and redone, not trusted; the fold is not trained again
    scores = (out / "fold1" / "metrics.json").read_text()
    trained_at = (out / "fold1" / "last.pt").stat().st_mtime_ns
    (out / "fold1" / "metrics.json").write_text(scores[: len(scores) // 2])
    (out / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="torn"):
        write_report(out, tmp_path / "results")
    capsys.readouterr()
    redone = run_reproduction(config, isbi, out, progress=False, command="fourth start")
    assert "fold scores" in capsys.readouterr().err  # said, then redone
    again = {k: v for k, v in json.loads((out / "fold1" / "metrics.json").read_text()).items() if k != "train_seconds"}
    assert again == {k: v for k, v in json.loads(scores).items() if k != "train_seconds"}  # the same network's
    assert (out / "fold1" / "last.pt").stat().st_mtime_ns == trained_at  # not trained again
    assert redone["folds"]["0"] == summary["folds"]["0"] and json.loads((out / "summary.json").read_text())["folds"]
    fold1 = redone["stages"]["fold1"]  # its earlier sessions kept, this one added: no re-stamping
    assert [s["command"] for s in fold1["sessions"]] == ["second start", "fourth start"]


@pytest.mark.slow
def test_run_isbi_parallel_folds_take_the_users_folds(isbi_dir, tmp_path):
    """run_isbi.sh asks the package for run.folds with the user's --set: 2 folds, not the profile's 3 (slow suite:
    `bash tests/run.sh -m slow -k parallel_folds`, about a minute)."""
    sets = [arg for key in [*TINY, "run.folds=2"] for arg in ("--set", key)]
    done = subprocess.run(["bash", str(REPO / "reproduction" / "run_isbi.sh"), "--profile", "smoke", "--data-dir",
                           str(isbi_dir), "--out", str(tmp_path / "run"), "--results", str(tmp_path / "results"),
                           "--parallel-folds", *sets], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sorted(summary["folds"]) == ["0", "1"] and not (tmp_path / "run" / "fold2").exists()
    assert set(summary["stages"]) == {"fold0", "fold1", "final", "submission"}
    commands = {s["command"] for r in summary["stages"].values() for s in r["sessions"]}
    assert len(commands) == 1 and commands.pop().startswith("bash reproduction/run_isbi.sh --profile smoke")
    assert "## Stages" in (tmp_path / "results" / "README.md").read_text()


# --- run_isbi.sh and the stages' processes ---------------------------------------------------------

def run_script(*args, env=None):
    return subprocess.run(["bash", str(REPO / "reproduction" / "run_isbi.sh"), *args], cwd=REPO,
                          capture_output=True, text=True, env=env)


def test_run_isbi_smoke_end_to_end_writes_every_artefact(isbi_dir, tmp_path):
    done = run_script("--profile", "smoke", "--data-dir", str(isbi_dir), "--out", str(tmp_path / "run"),
                      "--results", str(tmp_path / "results"))
    assert done.returncode == 0, done.stderr[-3000:]
    results = tmp_path / "results"
    for name in ("README.md", "cv_folds.csv", "per_threshold.csv", "summary.json",
                 "figures/training_curves.png", "figures/per_threshold.png", "figures/prediction_fold0.png"):
        assert (results / name).is_file(), name
    readme = (results / "README.md").read_text()
    assert "u-net (paper)" in readme and "NOT the paper setting" in readme and "commit" in readme
    assert "run_isbi.sh --profile smoke --data-dir" in readme  # the command is recorded with its options
    import tifffile
    submission = tifffile.imread(tmp_path / "run" / "submission" / "test-volume-probabilities.tif")
    assert submission.shape == (30, 512, 512) and submission.dtype == np.float32
    assert 0 <= submission.min() and submission.max() <= 1


@pytest.mark.parametrize("args, message", [
    (["--profile", "fast"], "unknown profile"),
    (["--bogus"], "unknown option"),
    (["--data-dir", "/nonexistent/isbi"], "does not exist"),
    (["--profile"], "needs a value"),
])
def test_run_isbi_bad_options_fail_clearly(args, message):
    done = run_script(*args)
    assert done.returncode == 2 and message in done.stderr


def test_run_isbi_help():
    done = run_script("--help")
    assert done.returncode == 0 and "--profile" in done.stdout


def test_cross_validation_alone_then_the_final_model_as_its_own_process_are_gathered(isbi_dir, tmp_path):
    """`reproduce --cv-only` (run_isbi.sh --cv-only): the folds are trained, predicted and scored, no final
    model and no submission are made, and the report says why there is none. Then, as run_isbi.sh
    --parallel-folds runs it beside the folds, `reproduce --only-final` trains the final model and predicts the
    test volume in its own process, leaving the folds alone; the gathering call in the same run directory reuses
    everything (no second training) and takes the final model's stage times from their stage records;
    --started-at gives the run's wall time, and a call without it claims none."""
    from paper_unet.data import load_isbi2012
    from paper_unet.report import write_report
    from paper_unet.reproduce import run_reproduction

    isbi = load_isbi2012(isbi_dir)
    config = load_config("smoke", ["optim.iterations=2", "run.validate_every=2", "run.checkpoint_every=2"])
    out = tmp_path / "run"
    started = time.time()
    with pytest.raises(ValueError, match="no final model"):
        run_reproduction(config, isbi, out, progress=False, cv_only=True, only_final=True)
    summary = run_reproduction(config, isbi, out, progress=False, cv_only=True, started_at=time.time())
    assert summary["submission"] is None and summary["test"] is None and len(summary["folds"]) == 3
    assert not (out / "final").exists() and not (out / "submission").exists()
    assert json.loads((out / "summary.json").read_text())["submission"] is None
    assert_fold_alone_equals_fold_in_sequence(config, isbi, out, tmp_path / "alone", fold=1)
    text = write_report(out, tmp_path / "results", isbi_dir).read_text()
    assert "No final model and no test-volume submission" in text
    assert "the folds trained in parallel processes" in text

    folds = {k: (out / f"fold{k}" / "last.pt").stat().st_mtime_ns for k in range(3)}
    run_reproduction(config, isbi, out, progress=False, only_final=True)
    final = out / "final" / "last.pt"
    assert final.is_file() and (out / "submission" / "test-volume-probabilities.tif").is_file()
    assert {k: (out / f"fold{k}" / "last.pt").stat().st_mtime_ns for k in range(3)} == folds
    final_record = json.loads((out / "final" / "stage.json").read_text())
    assert final_record["status"] == "done" and final_record["did"]["iterations"] == 2
    assert json.loads((out / "submission" / "stage.json").read_text())["status"] == "done"
    trained_at = final.stat().st_mtime_ns
    summary = run_reproduction(config, isbi, out, progress=False)
    assert "wall_s" not in summary  # the first invocation's wall time is not this run's
    summary = run_reproduction(config, isbi, out, progress=False, started_at=started)
    assert final.stat().st_mtime_ns == trained_at  # not trained again
    assert summary["timings_s"]["final_train"] == final_record["did"]["train_s"]
    assert summary["stages"]["final"] == final_record  # the record as its own process wrote it
    assert {f"fold{k}_train" for k in range(3)} <= set(summary["timings_s"])  # the folds kept
    assert 0 < summary["wall_s"] <= time.time() - started + 1
    assert json.loads((out / "summary.json").read_text())["wall_s"] == summary["wall_s"]
    assert "Submission (float32 TIFF" in write_report(out, tmp_path / "results", isbi_dir).read_text()


def assert_fold_alone_equals_fold_in_sequence(config, isbi, sequential, alone, fold):
    """run_isbi.sh --parallel-folds runs `reproduce --only-fold K` per fold: the CPU equivalent of its
    claim that each fold trains exactly as in a sequential run (same logs, weights and scores)."""
    from paper_unet.reproduce import run_reproduction

    run_reproduction(config, isbi, alone, progress=False, only_fold=fold)
    a, b = sequential / f"fold{fold}", alone / f"fold{fold}"
    full, own = weights_of(a / "last.pt"), weights_of(b / "last.pt")
    assert all(torch.equal(full[k], own[k]) for k in full)
    for log in ("train_log.csv", "val_log.csv"):  # every column but the wall-clock seconds
        rows = [[r.split(",")[:-1] for r in (d / log).read_text().splitlines()] for d in (a, b)]
        assert rows[0] == rows[1], log
    scores = [json.loads((d / "metrics.json").read_text()) for d in (a, b)]
    assert {k: v for k, v in scores[0].items() if k not in ("train_seconds", "checkpoint")} == \
        {k: v for k, v in scores[1].items() if k not in ("train_seconds", "checkpoint")}
