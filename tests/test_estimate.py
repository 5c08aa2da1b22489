"""The step timer and the whole-run estimate (`paper_unet.estimate`): hand-checkable sums, hints, RNG kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paper_unet.config import load_config
from paper_unet.estimate import LONG_S, Estimate, estimate_run, time_step
from paper_unet.fastpath import CpuInfo, resolve

AVX2 = CpuInfo("AMD EPYC 7B13", "AVX2", avx512_bf16=False, amx=False)
AVX512_BF16 = CpuInfo("AMD EPYC 9B14", "AVX512", avx512_bf16=True, amx=False)


def _isbi_train(isbi_dir):
    import tifffile
    return tifffile.imread(isbi_dir / "train-volume.tif"), tifffile.imread(isbi_dir / "train-labels.tif")


def test_time_step_keeps_the_callers_random_state(isbi_dir):
    images, labels = _isbi_train(isbi_dir)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    seconds = time_step(load_config("smoke"), images[:2], labels[:2], "cpu", bf16=False, channels_last=False,
                        steps=2, timings=(timings := {}))
    assert seconds > 0 and timings["setup_s"] > 0
    assert torch.equal(torch.get_rng_state(), before)


def test_the_estimate_adds_up_what_is_left_of_the_run(isbi_dir, tmp_path):
    """Hand-checkable: smoke profile (6 iterations, validation every 6, checkpoint every 3, no TTA):
    4 networks x 6 steps; each fold validates once on its 10 held-out slices, predicts them once and
    scores them; the final model predicts and (with test labels) scores the 30 test slices."""
    config = load_config("smoke")
    images, labels = _isbi_train(isbi_dir)
    e = estimate_run(config, images.astype(np.float32) / 255, labels, tmp_path / "run", device="cpu")
    assert e.networks == {"fold 0": 6, "fold 1": 6, "fold 2": 6, "final": 6}
    assert e.parts["training"] == pytest.approx(24 * e.step_s)
    assert e.parts["validation"] == pytest.approx(3 * 10 * e.predict_s)
    assert e.predict_final_s == e.predict_s  # no TTA in the smoke profile
    assert e.parts["prediction"] == pytest.approx((30 + 30) * e.predict_s)
    assert e.parts["scores"] == pytest.approx((30 + 30) * e.score_s)
    assert e.parts["set-up"] == pytest.approx(4 * e.setup_s)
    assert e.seconds == pytest.approx(sum(e.parts.values()))
    assert "whole run: about" in e.report() and e.path.describe() in e.report()

    # a resumed run: fold 0 done, fold 1 checkpointed at 3 (e.g. stopped by a signal), fold 2's checkpoint
    # unreadable (trained again from the start), the submission written
    from paper_unet.checkpoint import save_checkpoint
    run = tmp_path / "run"
    (run / "fold0").mkdir(parents=True)
    (run / "fold0" / "metrics.json").write_text("{}")
    (run / "fold1").mkdir()
    save_checkpoint(run / "fold1" / "last.pt", {"iteration": 3, "model": {"w": torch.zeros(2)}})
    (run / "fold2").mkdir()
    (run / "fold2" / "last.pt").write_bytes(b"not a checkpoint")
    (run / "submission").mkdir()
    (run / "submission" / "test-volume-probabilities.tif").write_bytes(b"")
    e = estimate_run(config, images.astype(np.float32) / 255, labels, run, device="cpu", cv_only=False)
    assert e.networks == {"fold 1": 3, "fold 2": 6}
    assert e.parts["training"] == pytest.approx(9 * e.step_s)
    assert estimate_run(config, images.astype(np.float32) / 255, labels, tmp_path / "new", device="cpu",
                        cv_only=True).networks == {"fold 0": 6, "fold 1": 6, "fold 2": 6}


def test_a_long_estimate_says_what_to_do():
    def estimate(seconds, cpu):
        path = resolve("auto", "auto", "cpu", cpu)
        return Estimate(seconds, 0.6, 0.3, 8.0, 0.2, 1.0, {"fold 0": 8000}, path, "cpu",
                        parts={"training": seconds})

    long_avx2 = estimate(LONG_S + 1, AVX2).report()
    assert "This is long" in long_avx2 and "native bf16" in long_avx2 and "--profile smoke" in long_avx2
    assert "native bf16" not in estimate(LONG_S + 1, AVX512_BF16).report().split("This is long")[1]
    assert "This is long" not in estimate(LONG_S - 1, AVX2).report()
    assert "processes sharing" in Estimate(100, 0.1, 0.1, 0.1, 0.1, 0.1, {}, resolve("auto", "auto", "cuda"),
                                           "cuda", parallel=4).report()
