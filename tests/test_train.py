"""Training (`paper_unet.train`): resume equals an uninterrupted run, determinism, stop checks, the train
command, and the optional fast paths against the plain fp32 path."""

from __future__ import annotations

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

from conftest import tiny_config, weights_of
from paper_unet.config import config_from_dict, load_config
from paper_unet.train import TrainingDiverged, load_checkpoint, train


# --- training ----------------------------------------------------------------------------------

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


def test_resume_with_a_different_config_is_refused(tiny_data, tmp_path):
    images, labels = tiny_data
    train(tiny_config(iterations=4), images, labels, tmp_path, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train(tiny_config(iterations=4, lr=0.5), images, labels, tmp_path, progress=False, resume=True)


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
    """A real SIGKILL of `paper-unet train` in the middle of its run (asserted: killed by the signal, its last
    checkpoint short of the end), then --resume: same weights as an uninterrupted run."""
    iterations = 60  # a checkpoint every 2 steps: the run lasts long after its first checkpoint
    common = [sys.executable, "-m", "paper_unet", "train", "--profile", "smoke", "--data-dir", str(isbi_dir),
              "--quiet", "--set", f"optim.iterations={iterations}", "--set", "run.checkpoint_every=2",
              "--set", "run.validate_every=60"]
    subprocess.run(common + ["--out", str(tmp_path / "full")], check=True, capture_output=True)
    victim = subprocess.Popen(common + ["--out", str(tmp_path / "killed")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None and not (tmp_path / "killed" / "last.pt").is_file():
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL  # it was still running: the kill landed
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["iteration"] < iterations  # mid-run
    done = subprocess.run(common + ["--out", str(tmp_path / "killed"), "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    full, resumed = weights_of(tmp_path / "full" / "last.pt"), weights_of(tmp_path / "killed" / "last.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


# --- the train command -------------------------------------------------------------------------

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
def test_torch_compile_reduce_overhead_matches_eager_on_the_gpu(tiny_data, tmp_path, strict_fp32):
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
    """Without dropout: the CPU and CUDA generators draw different masks from one seed (first losses of 5.04 to
    5.30 across seeds on the CPU alone), far beyond the fp32 tolerance; TF32 is off (`strict_fp32`)."""
    cpu = run_variant(tiny_data, tmp_path, "cpu", dropout=0.0, device="cpu")
    gpu = run_variant(tiny_data, tmp_path, "gpu", dropout=0.0, device="cuda")
    np.testing.assert_allclose(losses(gpu)[0], losses(cpu)[0], rtol=1e-3)


def test_a_collapsed_network_stops_with_a_clear_message(tiny_data, tmp_path, monkeypatch):
    """A dead network (constant output) is detected after collapse_patience log intervals."""
    import paper_unet.context as context_module
    from paper_unet.model import UNet
    from paper_unet.train import output_spread

    def dead_model(config):
        model = UNet(base_channels=4, depth=3)
        for parameter in model.parameters():
            torch.nn.init.zeros_(parameter)
        return model

    monkeypatch.setattr(context_module, "build_model", dead_model)  # the run context builds the network
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


