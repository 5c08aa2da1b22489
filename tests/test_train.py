"""Loss, configuration, training with checkpoints and resume, and the one-command reproduction."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import REPO
from paper_unet.config import Config, config_from_dict, load_config, profiles
from paper_unet.loss import weighted_cross_entropy
from paper_unet.train import (TrainingDiverged, load_checkpoint, model_from_checkpoint,
                              save_checkpoint, train)


# --- loss --------------------------------------------------------------------------------------

def test_weighted_ce_equals_plain_ce_when_w_is_one():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 5, 6), torch.randint(0, 2, (2, 5, 6))
    plain = F.cross_entropy(logits, target)
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.ones(2, 5, 6)), plain)
    assert torch.allclose(weighted_cross_entropy(logits, target), plain)


def test_weighted_ce_by_hand():
    # one pixel, logits (0, ln 3): softmax = (1/4, 3/4); target 1, w = 2 -> -2 ln(3/4);
    # second pixel, logits (0, 0): p = 1/2; target 0, w = 0.5 -> -0.5 ln(1/2); mean of the two.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    weight = torch.tensor([[[2.0, 0.5]]])
    expected = (-2 * math.log(0.75) - 0.5 * math.log(0.5)) / 2
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight shape"):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(4, 4))


# --- configuration -----------------------------------------------------------------------------

def test_defaults_are_the_papers_constants():
    c = Config()
    assert (c.model.base_channels, c.model.depth, c.data.tile) == (64, 5, 572)
    assert (c.optim.momentum, c.optim.batch_size, c.data.w0, c.data.sigma) == (0.99, 1, 10.0, 5.0)
    assert (c.data.elastic_grid, c.data.elastic_std) == (3, 10.0)


def test_profiles_load_and_unknown_keys_are_rejected():
    assert {"paper", "cpu", "smoke"} <= set(profiles())
    assert load_config("paper").model.base_channels == 64
    assert load_config("cpu", ["optim.lr=3e-4"]).optim.lr == 3e-4
    with pytest.raises(ValueError, match="unknown key.*lrr.*valid keys"):
        load_config("cpu", ["optim.lrr=1"])
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("fast")
    with pytest.raises(ValueError, match="must be float"):
        config_from_dict({"optim": {"lr": "high"}})
    with pytest.raises(ValueError, match="nearest valid"):
        config_from_dict({"data": {"tile": 570}})


def test_learning_rate_schedule_by_hand():
    """lr 1e-3, 10 iterations, warm-up 4, decay x0.1 from 80 % (iteration 8) on."""
    from paper_unet.train import learning_rate
    config = load_config("smoke", ["optim.lr=1e-3", "optim.iterations=10", "optim.warmup=4"])
    expected = [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4]
    np.testing.assert_allclose([learning_rate(config, i) for i in range(10)], expected, rtol=1e-12)
    plain = load_config("smoke", ["optim.lr=1e-3", "optim.iterations=10"])  # warm-up off by default
    assert learning_rate(plain, 0) == 1e-3 and learning_rate(plain, 8) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="warmup"):
        load_config("smoke", ["optim.iterations=10", "optim.warmup=10"])


def test_config_round_trips_through_dict():
    c = load_config("smoke")
    assert config_from_dict(c.to_dict()) == c


# --- training ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(isbi_dir):
    import tifffile
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:3, :128, :128]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:3, :128, :128]
    return images, labels


def tiny_config(**optim) -> Config:
    values = load_config("smoke").to_dict()
    values["optim"].update({"iterations": 8, **optim})
    values["run"].update(checkpoint_every=4, validate_every=4, log_every=1)
    return config_from_dict(values)


def weights_of(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tiny_data, tmp_path):
    images, labels = tiny_data
    config = tiny_config()
    train(config, images, labels, tmp_path / "full", val_images=images[:1], val_labels=labels[:1], progress=False)
    train(config, images, labels, tmp_path / "split", val_images=images[:1], val_labels=labels[:1],
          progress=False, stop_after=6)  # "killed" after iteration 6; last checkpoint at 4
    assert load_checkpoint(tmp_path / "split" / "last.pt")["iteration"] == 4
    train(config, images, labels, tmp_path / "split", val_images=images[:1], val_labels=labels[:1],
          progress=False, resume=True)
    full, split = weights_of(tmp_path / "full" / "last.pt"), weights_of(tmp_path / "split" / "last.pt")
    for name in full:
        assert torch.equal(full[name], split[name]), name
    log = (tmp_path / "split" / "train_log.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in log[1:]] == [str(i) for i in range(1, 9)]


def test_resume_restores_the_loss_monitors_exactly(tiny_data, tmp_path):
    """The divergence and collapse checks and the partial loss sum resume where they stopped."""
    images, labels = tiny_data
    values = tiny_config().to_dict()
    values["run"].update(log_every=3, checkpoint_every=4)  # a checkpoint inside a log interval
    config = config_from_dict(values)
    full = train(config, images, labels, tmp_path / "full", progress=False)
    train(config, images, labels, tmp_path / "split", progress=False, stop_after=6)
    saved = load_checkpoint(tmp_path / "split" / "last.pt")["monitors"]
    assert saved["count"] == 1 and saved["running"] > 0 and saved["start_loss"] is not None
    split = train(config, images, labels, tmp_path / "split", progress=False, resume=True)
    assert split.monitors == full.monitors
    assert load_checkpoint(tmp_path / "split" / "last.pt")["monitors"] == full.monitors
    assert (tmp_path / "split" / "train_log.csv").read_text().count(",") == \
        (tmp_path / "full" / "train_log.csv").read_text().count(",")
    logged = [[row.split(",")[:2] for row in (tmp_path / name / "train_log.csv").read_text().splitlines()]
              for name in ("full", "split")]
    assert logged[0] == logged[1]


def test_training_is_deterministic_for_a_seed(tiny_data, tmp_path):
    images, labels = tiny_data
    config = tiny_config(iterations=3)
    for name in ("a", "b"):
        train(config, images, labels, tmp_path / name, progress=False)
    a, b = weights_of(tmp_path / "a" / "last.pt"), weights_of(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_holds_config_and_loads_weights_only(tiny_data, tmp_path):
    images, labels = tiny_data
    config = tiny_config(iterations=4)
    train(config, images, labels, tmp_path, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["config"] == config.to_dict() and state["iteration"] == 4
    model, loaded = model_from_checkpoint(tmp_path / "last.pt")
    assert loaded == config and not model.training
    assert (tmp_path / "config.json").is_file()


def test_resume_with_a_different_config_is_refused(tiny_data, tmp_path):
    images, labels = tiny_data
    train(tiny_config(iterations=4), images, labels, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train(tiny_config(iterations=4, lr=0.5), images, labels, tmp_path, progress=False, resume=True)


def test_atomic_checkpoint_leaves_no_partial_file(tmp_path):
    save_checkpoint(tmp_path / "x.pt", {"a": torch.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def test_a_diverging_loss_stops_with_a_clear_message(tiny_data, tmp_path):
    images, labels = tiny_data
    with pytest.raises(TrainingDiverged, match="lower optim.lr"):
        train(tiny_config(lr=1e4, iterations=8), images, labels, tmp_path, progress=False)


def test_absent_gpu_gives_a_clear_error(tiny_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    values = tiny_config().to_dict()
    values["run"]["device"] = "cuda"
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        train(config_from_dict(values), *tiny_data, tmp_path, progress=False)


def test_paper_profile_runs_a_few_iterations_on_cpu(isbi_dir, tmp_path):
    """The full-width paper profile (572 tile, 31 M parameters) really trains: 2 steps on the CPU."""
    import tifffile
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:2]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:2]
    config = load_config("paper", ["optim.iterations=2", "run.log_every=1"])
    result = train(config, images, labels, tmp_path, progress=False)
    assert result.iterations == 2 and math.isfinite(result.last_loss)


def test_killed_training_process_resumes_to_the_same_weights(isbi_dir, tmp_path):
    """A real SIGKILL of `paper-unet train`, then --resume: same weights as an uninterrupted run."""
    common = [sys.executable, "-m", "paper_unet", "train", "--profile", "smoke", "--data-dir", str(isbi_dir),
              "--quiet", "--set", "optim.iterations=12", "--set", "run.checkpoint_every=2"]
    subprocess.run(common + ["--out", str(tmp_path / "full")], check=True, capture_output=True)
    victim = subprocess.Popen(common + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if (tmp_path / "killed" / "last.pt").is_file():
            break
        time.sleep(0.05)
    if victim.poll() is None:
        os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    done = subprocess.run(common + ["--out", str(tmp_path / "killed"), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    full, resumed = weights_of(tmp_path / "full" / "last.pt"), weights_of(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


# --- the one-command reproduction --------------------------------------------------------------

def run_script(*args, env=None):
    return subprocess.run(["bash", str(REPO / "reproduction" / "run_isbi.sh"), *args], cwd=REPO,
                          capture_output=True, text=True, env=env)


def test_run_isbi_smoke_end_to_end_writes_every_artefact(isbi_dir, tmp_path):
    start = time.time()
    done = run_script("--profile", "smoke", "--data-dir", str(isbi_dir), "--out", str(tmp_path / "run"),
                      "--results", str(tmp_path / "results"))
    elapsed = time.time() - start
    assert done.returncode == 0, done.stderr[-3000:]
    assert elapsed < 180, f"smoke run took {elapsed:.0f} s (budget 3 min)"
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


def test_train_command_with_missing_data_dir_fails_clearly(tmp_path, capsys):
    from paper_unet.cli import main
    code = main(["train", "--profile", "smoke", "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2 and "paper-unet download" in capsys.readouterr().err


# --- optional fast paths: each must match the plain fp32 path ----------------------------------

def losses(path: Path) -> np.ndarray:
    rows = (path / "train_log.csv").read_text().splitlines()[1:]
    return np.array([float(r.split(",")[1]) for r in rows])


def run_variant(tiny_data, tmp_path, name, dropout=0.5, **run) -> Path:
    values = tiny_config(iterations=3).to_dict()
    values["run"].update(dict(bf16=False, channels_last=False, compile=False), **run)  # fp32 eager unless told
    values["model"]["dropout"] = dropout
    train(config_from_dict(values), *tiny_data, tmp_path / name, progress=False)
    return tmp_path / name


def test_channels_last_matches_the_plain_path(tiny_data, tmp_path):
    # without dropout: a channels_last tensor draws its dropout mask in memory order, so the same
    # RNG state gives a different (equally valid) mask. On the CPU on any machine: on a GPU, cuDNN picks
    # other (TF32) algorithms for the other memory format, about 1e-3 apart (seen on an H100)
    plain = run_variant(tiny_data, tmp_path, "plain", dropout=0.0, device="cpu")
    fast = run_variant(tiny_data, tmp_path, "cl", dropout=0.0, channels_last=True, device="cpu")
    np.testing.assert_allclose(losses(fast), losses(plain), rtol=1e-4)
    a, b = weights_of(plain / "last.pt"), weights_of(fast / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)


def test_bf16_autocast_stays_close_to_fp32(tiny_data, tmp_path):
    plain = run_variant(tiny_data, tmp_path, "plain")
    fast = run_variant(tiny_data, tmp_path, "bf16", bf16=True)
    np.testing.assert_allclose(losses(fast)[0], losses(plain)[0], rtol=0.03)  # same weights, same tile


def test_the_cpu_fast_path_stays_close_to_fp32_eager_for_a_few_steps(tiny_data, tmp_path):
    """bf16 autocast + channels_last (what `auto` takes on a CPU with native bf16) vs fp32 eager, 3 steps without
    dropout: every logged loss within 3 % (bf16 keeps 8 bits of mantissa) and the same weights
    to within the size of three bf16-rounded SGD steps."""
    plain = run_variant(tiny_data, tmp_path, "plain", dropout=0.0)
    fast = run_variant(tiny_data, tmp_path, "fast", dropout=0.0, bf16=True, channels_last=True)
    np.testing.assert_allclose(losses(fast), losses(plain), rtol=0.03)
    a, b = weights_of(plain / "last.pt"), weights_of(fast / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=2e-3, rtol=0.05)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_torch_compile_matches_the_plain_path(tiny_data, tmp_path, mode):
    # without dropout: compiled code draws dropout masks with its own RNG, not eager's. On the CPU
    # "reduce-overhead" compiles without CUDA graphs: the training loop's code path (a new graph step per
    # iteration); the graphs themselves are checked on a GPU below
    plain = run_variant(tiny_data, tmp_path, "plain", dropout=0.0, device="cpu")
    fast = run_variant(tiny_data, tmp_path, "compiled", dropout=0.0, compile=True, compile_mode=mode, device="cpu")
    np.testing.assert_allclose(losses(fast), losses(plain), rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_training_matches_eager_on_the_gpu(tiny_data, tmp_path, strict_fp32):
    """run.compile_mode="reduce-overhead": the training step replayed as CUDA graphs gives eager's losses
    and weights (3 steps, no dropout: compiled code draws its masks with its own RNG)."""
    plain = run_variant(tiny_data, tmp_path, "plain", dropout=0.0, device="cuda")
    graphs = run_variant(tiny_data, tmp_path, "graphs", dropout=0.0, compile=True, compile_mode="reduce-overhead",
                         device="cuda")
    np.testing.assert_allclose(losses(graphs), losses(plain), rtol=1e-4)
    a, b = weights_of(plain / "last.pt"), weights_of(graphs / "last.pt")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_training_matches_cpu_first_loss(tiny_data, tmp_path, strict_fp32):
    cpu = run_variant(tiny_data, tmp_path, "cpu", device="cpu")
    gpu = run_variant(tiny_data, tmp_path, "gpu", device="cuda")
    np.testing.assert_allclose(losses(gpu)[0], losses(cpu)[0], rtol=1e-3)


def test_resume_accepts_a_single_process_rng_dict(tiny_data, tmp_path):
    """Checkpoints written before multi-process training stored one RNG dict, not a list."""
    images, labels = tiny_data
    config = tiny_config(iterations=8)
    train(config, images, labels, tmp_path, progress=False, stop_after=4)
    state = load_checkpoint(tmp_path / "last.pt")
    state["rng"] = state["rng"][0]
    save_checkpoint(tmp_path / "last.pt", state)
    assert train(config, images, labels, tmp_path, progress=False, resume=True).iterations == 8


def test_a_collapsed_network_stops_with_a_clear_message(tiny_data, tmp_path, monkeypatch):
    """A dead network (constant output) is detected after collapse_patience log intervals."""
    import paper_unet.train as train_module
    from paper_unet.train import output_spread

    def dead_model(config):
        model = train_module.UNet(base_channels=4, depth=3)
        for parameter in model.parameters():
            torch.nn.init.zeros_(parameter)
        return model

    monkeypatch.setattr(train_module, "build_model", dead_model)
    values = tiny_config(iterations=8).to_dict()
    values["optim"]["collapse_patience"] = 3
    with pytest.raises(TrainingDiverged, match="collapsed to a constant output"):
        train(config_from_dict(values), *tiny_data, tmp_path, progress=False)
    assert output_spread(torch.zeros(1, 2, 4, 4)) == 0.0  # the relative spread of collapse.py
    assert output_spread(torch.randn(1, 2, 4, 4)) > 0.0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_training_step_does_not_synchronise_with_the_gpu(tiny_data):
    """Sampling (augmentation on the GPU) and the step queue work without waiting for the device."""
    from paper_unet.sampler import TileSampler
    from paper_unet.train import train_step
    from paper_unet.model import UNet
    images, labels = tiny_data
    sampler = TileSampler(images, labels, tile=188, length=4, seed=0, device="cuda")
    model = UNet(base_channels=4).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.99)
    x, y, w = sampler.batch([0])
    train_step(model, optimizer, x, y, w)  # warm-up: allocations, cuDNN plans
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in (1, 2, 3):
            x, y, w = sampler.batch([i])
            train_step(model, optimizer, x, y, w, bf16=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_the_paper_profiles_rate_is_the_highest_that_trained_steadily_in_the_check():
    """results/paper_lr_check/ (full width, fold 2): the profile uses the highest rate that no stop
    check ended, and its comment points to that evidence."""
    import json
    from conftest import REPO
    rows = json.loads((REPO / "results" / "paper_lr_check" / "lr_search.json").read_text())["rows"]
    steady = [row["lr"] for row in rows if row["status"] == "ok"]
    assert max(steady) < max(row["lr"] for row in rows)  # a higher rate was tried and failed
    assert load_config("paper").optim.lr == max(steady)
    assert "results/paper_lr_check" in (REPO / "paper_unet" / "profiles" / "paper.toml").read_text()


def test_final_model_as_its_own_process_is_gathered_with_its_stage_times(isbi_dir, tmp_path):
    """run_isbi.sh --parallel-folds: `reproduce --only-final` trains the final model and predicts the test
    volume beside the fold processes; the gathering call reuses both (no second training) and takes the
    final model's stage times from final/timings.json; --started-at gives the run's wall time."""
    from paper_unet.data import load_isbi2012
    from paper_unet.reproduce import run_reproduction

    isbi = load_isbi2012(isbi_dir)
    config = load_config("smoke", ["optim.iterations=2", "run.validate_every=2", "run.checkpoint_every=2"])
    out = tmp_path / "run"
    started = time.time()
    run_reproduction(config, isbi, out, progress=False, only_final=True)
    final = out / "final" / "last.pt"
    assert final.is_file() and (out / "submission" / "test-volume-probabilities.tif").is_file()
    assert not (out / "summary.json").exists()  # the gathering call writes it
    assert not any((out / f"fold{k}").exists() for k in range(3))
    stages = json.loads((out / "final" / "timings.json").read_text())
    assert set(stages) == {"final_train", "test_predict"}
    trained_at = final.stat().st_mtime_ns
    summary = run_reproduction(config, isbi, out, progress=False, started_at=started)
    assert final.stat().st_mtime_ns == trained_at  # not trained again
    assert summary["timings_s"]["final_train"] == stages["final_train"]
    assert {f"fold{k}_train" for k in range(3)} <= set(summary["timings_s"])
    assert 0 < summary["wall_s"] <= time.time() - started + 1
    assert json.loads((out / "summary.json").read_text())["wall_s"] == summary["wall_s"]


def test_cross_validation_alone_trains_no_final_model_and_its_report_says_so(isbi_dir, tmp_path):
    """`reproduce --cv-only` (run_isbi.sh --cv-only): the folds are trained, predicted and scored, no final
    model and no submission are made, and the report says why there is none. A later call without it
    resumes the same run directory and adds the final model."""
    from paper_unet.data import load_isbi2012
    from paper_unet.report import write_report
    from paper_unet.reproduce import run_reproduction

    isbi = load_isbi2012(isbi_dir)
    config = load_config("smoke", ["optim.iterations=2", "run.validate_every=2", "run.checkpoint_every=2"])
    out = tmp_path / "run"
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
    summary = run_reproduction(config, isbi, out, progress=False)
    assert (out / "submission" / "test-volume-probabilities.tif").is_file()
    assert "final_train" in summary["timings_s"] and "fold0_train" in summary["timings_s"]  # folds kept
    assert "wall_s" not in summary  # the first invocation's wall time is not this run's
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

