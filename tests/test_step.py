"""The training step as one unit (step.py) and its speed levers: each equals the plain step on the CPU;
the CUDA-only parts (the captured graph, cuDNN's search, the fused kernel on a GPU) are checked on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paper_unet.config import config_from_dict, load_config
from paper_unet.model import UNet
from paper_unet.sampler import TileSampler
from paper_unet.step import (Levers, TrainingStep, cudnn_benchmark, make_optimizer, resolve_levers,
                             train_step)
from paper_unet.train import load_checkpoint, train

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def small_config(iterations=20, dropout=0.5, **run):
    values = load_config("smoke").to_dict()
    values["model"].update(dropout=dropout)
    values["optim"].update(iterations=iterations)
    values["run"].update(dict(log_every=1, checkpoint_every=10, validate_every=1000, bf16=False,
                              channels_last=False), **run)
    return config_from_dict(values)


def log_rows(out):
    """train_log.csv without the wall-clock column."""
    return [row.rsplit(",", 1)[0] for row in (out / "train_log.csv").read_text().splitlines()]


def weights(out):
    return load_checkpoint(out / "last.pt")["model"]


# --- the step unit on the CPU --------------------------------------------------------------------

def plain_loop(images, labels, steps, lr=1e-3, seed=0, fused=None):
    """Today's step written out by hand: sample i, forward, weighted loss, backward, SGD."""
    torch.manual_seed(seed)
    model = UNet(base_channels=4, depth=3, dropout=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99, fused=fused)
    sampler = TileSampler(images, labels, tile=92, depth=3, length=steps, seed=seed)
    losses = []
    for i in range(steps):
        x, y, w = sampler.batch([i])
        loss, _ = train_step(model, optimizer, x, y, w)
        losses.append(loss.item())
    return model, losses


def unit_loop(images, labels, steps, graph, warmup=None, lr=1e-3, seed=0):
    torch.manual_seed(seed)
    model = UNet(base_channels=4, depth=3, dropout=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.99, fused=True if graph else None)
    sampler = TileSampler(images, labels, tile=92, depth=3, length=steps, seed=seed)
    step = TrainingStep(model, optimizer, sampler, graph=graph, warmup=warmup)
    losses = []
    for i in range(steps):
        before = float(step.running)
        step(i, lr)
        losses.append(float(step.running) - before)
    return model, losses


@pytest.mark.parametrize("graph, warmup", [(False, None), (True, None), (True, 2)])
def test_the_step_unit_equals_the_plain_step_bit_for_bit(tiny_data, graph, warmup):
    """20 steps with dropout: the eager unit, and the static-buffer step a CUDA graph captures (on the
    CPU run eagerly; with warm-up steps that are then undone, as before a capture), reach the plain
    loop's weights exactly, with the same SGD (the graph step's is the fused one: it reads the learning
    rate from a device tensor); the losses agree to the float64 sum's rounding."""
    plain, plain_losses = plain_loop(*tiny_data, 20, fused=True if graph else None)
    unit, unit_losses = unit_loop(*tiny_data, 20, graph, warmup)
    np.testing.assert_allclose(unit_losses, plain_losses, rtol=1e-6)
    for (name, a), b in zip(plain.state_dict().items(), unit.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_levers_train_as_the_plain_run_on_the_cpu(tiny_data, tmp_path):
    """train(), 20 steps with dropout: run.cuda_graph (the static-buffer step, eager on the CPU) gives
    the same train_log.csv and bit-identical weights as the loop with the same (fused) SGD; fused and
    unfused SGD differ by float rounding only (seen: 6e-8 in a weight after 20 steps); cudnn_benchmark
    changes nothing on the CPU."""
    runs = {}
    for name, run in [("plain", {}), ("fused", {"fused_sgd": True}), ("graph", {"cuda_graph": True}),
                      ("cudnn", {"cudnn_benchmark": True})]:
        train(small_config(**run), *tiny_data, tmp_path / name, progress=False)
        runs[name] = tmp_path / name
    assert len(log_rows(runs["plain"])) == 21
    for name, same_as in (("graph", "fused"), ("cudnn", "plain")):
        assert log_rows(runs[name]) == log_rows(runs[same_as]), name
        a, b = weights(runs[same_as]), weights(runs[name])
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = weights(runs["plain"]), weights(runs["fused"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
    loss = lambda out: [float(r.split(",")[1]) for r in log_rows(out)[1:]]  # noqa: E731
    np.testing.assert_allclose(loss(runs["fused"]), loss(runs["plain"]), rtol=1e-5)
    assert load_checkpoint(runs["graph"] / "last.pt")["fast_path"]["levers"] == {
        "cudnn_benchmark": False, "fused_sgd": True, "cuda_graph": True}


def test_a_graph_run_resumes_exactly(tiny_data, tmp_path):
    config = small_config(iterations=12, cuda_graph=True)
    train(config, *tiny_data, tmp_path / "full", progress=False)
    train(config, *tiny_data, tmp_path / "split", progress=False, stop_after=10)
    train(config, *tiny_data, tmp_path / "split", progress=False, resume=True)
    assert log_rows(tmp_path / "split") == log_rows(tmp_path / "full")
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("gray", [True, False])
def test_the_device_part_of_the_sampler_gives_the_same_tiles(tiny_data, gray):
    """draw_batch (host) + device_batch (device, gray values applied to every sample) == batch, also
    for draws without gray-value changes (then batch skips those kernels)."""
    from paper_unet.augment import AugmentConfig
    config = AugmentConfig() if gray else AugmentConfig(gamma=(1, 1), contrast=(1, 1), brightness=(0, 0))
    sampler = TileSampler(*tiny_data, tile=92, depth=3, length=8, seed=3, augment_config=config)
    assert sampler.gray_values is gray
    for indices in ([0], [1, 2, 3]):
        expected = sampler.batch(indices)
        slices, packed = sampler.draw_batch(indices)
        for forced in (True, gray):
            got = sampler.device_batch(slices, packed, gray=forced)
            for a, b in zip(expected, got):
                assert torch.equal(a, b)


def test_lever_settings_and_their_refusals(monkeypatch):
    run = small_config(cuda_graph=True).run
    assert resolve_levers(run, torch.device("cpu")) == Levers(cudnn_benchmark=False, fused_sgd=True, cuda_graph=True)
    assert resolve_levers(small_config(cudnn_benchmark=True).run, torch.device("cpu")).cudnn_benchmark is False
    with pytest.raises(ValueError, match="DDP"):
        resolve_levers(run, torch.device("cpu"), world=2)
    with pytest.raises(ValueError, match="cuda_graph and run.compile"):
        small_config(cuda_graph=True, compile=True)
    with pytest.raises(ValueError, match="must be bool"):
        small_config(fused_sgd="yes")
    model = UNet(base_channels=4, depth=3)
    with pytest.raises(ValueError, match="fused SGD"):
        TrainingStep(model, torch.optim.SGD(model.parameters(), lr=1e-3), None, graph=True)
    before = torch.backends.cudnn.benchmark
    with cudnn_benchmark(not before):
        assert torch.backends.cudnn.benchmark is (not before)
    assert torch.backends.cudnn.benchmark is before
    assert make_optimizer(model, small_config().optim, Levers(fused_sgd=True)).param_groups[0]["fused"]


# --- on a GPU ---------------------------------------------------------------------------------------

@pytest.fixture
def deterministic_fp32(strict_fp32):
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = saved


@pytest.mark.cuda
@cuda
def test_the_captured_graph_trains_as_eager_on_the_gpu(tiny_data, tmp_path, deterministic_fp32):
    """12 graph replays (more than the ring of pinned input buffers) give eager's losses and weights
    without dropout (a graph draws its masks per replay); the same with cuDNN's search and fused SGD."""
    runs = {}
    for name, run in [("eager", {}), ("graph", {"cuda_graph": True}),
                      ("levers", {"cudnn_benchmark": True, "fused_sgd": True})]:
        train(small_config(iterations=12, dropout=0.0, device="cuda", **run), *tiny_data, tmp_path / name,
              progress=False)
        runs[name] = tmp_path / name
    plain = np.array([float(r.split(",")[1]) for r in log_rows(runs["eager"])[1:]])
    for name in ("graph", "levers"):
        got = np.array([float(r.split(",")[1]) for r in log_rows(runs[name])[1:]])
        np.testing.assert_allclose(got, plain, rtol=1e-4, err_msg=name)
        a, b = weights(runs["eager"]), weights(runs[name])
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-4, rtol=1e-4, msg=f"{name}: {k}")


@pytest.mark.cuda
@cuda
def test_a_graph_run_resumes_exactly_on_the_gpu(tiny_data, tmp_path, deterministic_fp32):
    """With dropout: the replays' random numbers continue from the checkpoint's generator state."""
    config = small_config(iterations=12, device="cuda", cuda_graph=True)
    train(config, *tiny_data, tmp_path / "full", progress=False)
    train(config, *tiny_data, tmp_path / "split", progress=False, stop_after=10)
    train(config, *tiny_data, tmp_path / "split", progress=False, resume=True)
    np.testing.assert_allclose([float(r.split(",")[1]) for r in log_rows(tmp_path / "split")[1:]],
                               [float(r.split(",")[1]) for r in log_rows(tmp_path / "full")[1:]], rtol=1e-6)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-6)


@pytest.mark.cuda
@cuda
def test_graph_replays_do_not_wait_for_the_gpu(tiny_data):
    images, labels = tiny_data
    model = UNet(base_channels=4, depth=3).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.99, fused=True)
    sampler = TileSampler(images, labels, tile=92, depth=3, length=8, seed=0, device="cuda")
    step = TrainingStep(model, optimizer, sampler, graph=True, fast=None)
    step(0, 1e-3)  # warm-up and capture
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in (1, 2, 3):  # fresh pinned buffers: nothing to wait for
            step(i, 1e-3)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(step.running).item()


# --- the step profiler -------------------------------------------------------------------------------

def test_profile_step_runs_every_variant_the_cpu_can_run(isbi_dir, tmp_path):
    """reproduction/benchmarks/profile_step.py --device cpu --quick: each variant's figures in the JSON
    (the GPU-only ones absent or empty), and the table."""
    import json
    import subprocess
    import sys
    from conftest import REPO
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, str(REPO / "reproduction" / "benchmarks" / "profile_step.py"), "--device",
                           "cpu", "--quick", "--no-write", "--out", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["variants"]) == {"A", "B", "C", "D", "E", "F", "H", "I", "G0"}
    for name, figures in report["variants"].items():
        assert "error" not in figures, (name, figures)
        assert figures["wall_ms"] > 0 and figures["host_ms"] > 0 and figures["gpu_busy_ms"] is None
        assert figures["conv_ms"] > 0 and "conv forward" in figures["categories_ms"]
    assert "| A | fp32 eager, as shipped |" in done.stdout
