"""Size arithmetic and overlap-tile inference (paper Fig. 2; docs/spec.md section 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from paper_unet import UNet
from paper_unet import tiling


def test_paper_sizes():
    assert tiling.output_size(572) == 388
    assert tiling.output_size(700) == 516
    assert tiling.output_size(188) == 4
    assert tiling.context() == 92  # (572 - 388) / 2
    assert tiling.valid_input_size(388) == 572
    assert tiling.valid_input_size(512) == 700  # one tile covers an ISBI slice
    assert tiling.valid_input_size(1) == 188


def test_valid_sizes_are_16k_plus_60_from_k_8():
    valid = [n for n in range(1, 1200) if tiling.is_valid_input_size(n)]
    assert valid == [16 * k + 60 for k in range(8, 72)]
    assert all(tiling.output_size(n) == n - 184 for n in valid)  # output 16k - 124


@given(depth=st.integers(1, 6), min_output=st.integers(1, 600))
def test_valid_input_size_is_the_smallest_valid_input_covering_min_output(depth, min_output):
    n = tiling.valid_input_size(min_output, depth)
    assert tiling.output_size(n, depth) >= min_output
    assert n - tiling.output_size(n, depth) == 2 * tiling.context(depth)
    smaller = [m for m in range(1, n) if tiling.is_valid_input_size(m, depth)]
    assert all(tiling.output_size(m, depth) < min_output for m in smaller)


@pytest.mark.parametrize("size, message", [(573, "nearest valid: 572 or 588"),
                                           (100, "188 \\(the smallest\\)"),
                                           (0, "188")])
def test_invalid_sizes_name_the_nearest_valid_ones(size, message):
    with pytest.raises(ValueError, match=message):
        tiling.output_size(size)


def test_invalid_depth_is_rejected():
    with pytest.raises(ValueError, match="depth"):
        tiling.output_size(572, depth=0)


def test_mirror_pad_reflects_without_repeating_the_edge():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    padded = tiling.mirror_pad(image, ((2, 1), (1, 3)))
    np.testing.assert_array_equal(padded, np.pad(image, ((2, 1), (1, 3)), mode="reflect"))
    assert padded[2, 0] == image[0, 1]  # column -1 mirrors column 1, not column 0
    wide = tiling.mirror_pad(image, ((20, 20), (20, 20)))  # wider than the image: repeated reflection
    assert wide.shape == (43, 44)
    assert tiling.mirror_pad(np.ones((1, 5)), ((3, 3), (0, 0))).shape == (7, 5)
    row = np.arange(5.0)[None]  # a 1-pixel axis is repeated, the other still reflected
    padded = tiling.mirror_pad(row, ((1, 1), (2, 0)))
    np.testing.assert_array_equal(padded, np.tile([[2.0, 1.0, 0.0, 1.0, 2.0, 3.0, 4.0]], (3, 1)))


@given(length=st.integers(1, 2000), tile_output=st.sampled_from([20, 36, 388, 516]))
def test_tile_starts_are_on_the_16_px_grid_and_cover_the_image(length, tile_output):
    starts = tiling.tile_starts(length, tile_output, 16)
    assert starts[0] == 0 and all(s % 16 == 0 for s in starts)
    assert starts[-1] + tile_output >= length
    assert all(b - a <= tile_output for a, b in zip(starts, starts[1:]))


def test_tiles_smaller_than_the_pooling_period_are_rejected():
    with pytest.raises(ValueError, match="larger tile_size"):
        tiling.tile_starts(100, 4, 16)


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet(base_channels=4, depth=5).eval()


def test_predict_equals_a_direct_whole_image_pass(model):
    """Reference: mirror-pad by hand and run the network once on the whole image."""
    rng = np.random.default_rng(0)
    image = rng.random((100, 100), dtype=np.float32)
    size = tiling.valid_input_size(100)  # 284 -> 100
    padded = np.pad(image, 92, mode="reflect")
    with torch.no_grad():
        logits = model(torch.from_numpy(padded)[None, None])[0]
    expected = torch.softmax(logits, dim=0).numpy()
    assert size == padded.shape[0]
    np.testing.assert_allclose(tiling.predict(model, image), expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(100, 100), (37, 130), (130, 21), (1, 1), (64, 203)])
def test_predict_with_small_tiles_equals_one_whole_image_pass(model, shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape, dtype=np.float32)
    whole = tiling.predict(model, image)
    assert whole.shape == (2, *shape) and whole.dtype == np.float32
    np.testing.assert_allclose(whole.sum(axis=0), 1.0, atol=1e-6)
    for tile_size in (204, 220, 252):
        tiled = tiling.predict(model, image, tile_size=tile_size, batch_size=3)
        np.testing.assert_allclose(tiled, whole, rtol=0, atol=1e-5)


@settings(max_examples=4, deadline=None)
@given(transform=st.sampled_from(tiling.dihedral_transforms()))
def test_tta_is_equivariant_to_the_dihedral_group(model, transform):
    rng = np.random.default_rng(3)
    image = rng.random((40, 56), dtype=np.float32)
    moved = np.ascontiguousarray(tiling._apply(image, transform))
    np.testing.assert_allclose(tiling.predict(model, moved, tta=True),
                               tiling._apply(tiling.predict(model, image, tta=True), transform),
                               atol=1e-5)


def test_dihedral_inverse_undoes_each_transform():
    array = np.arange(24).reshape(2, 3, 4)
    assert len(set(tiling.dihedral_transforms())) == 8
    for t in tiling.dihedral_transforms():
        np.testing.assert_array_equal(tiling._invert(tiling._apply(array, t), t), array)


@pytest.mark.parametrize("shape, tile_size", [((40, 40), None), ((40, 56), None), ((70, 70), 204)])
def test_batched_tta_equals_sequential_tta(model, shape, tile_size):
    """The 8 views of a tile in one forward pass (batch_size 8, square or not, one tile or many)
    give the probabilities of one view at a time (batch_size 1)."""
    image = np.random.default_rng(5).random(shape, dtype=np.float32)
    sequential = tiling.predict(model, image, tile_size=tile_size, tta=True, batch_size=1)
    batched = tiling.predict(model, image, tile_size=tile_size, tta=True, batch_size=8)
    assert np.abs(batched - sequential).max() <= 1e-6


def test_batched_tta_passes_the_8_views_of_a_square_tile_in_one_forward_pass(model):
    calls = []
    handle = model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        tiling.predict(model, np.zeros((40, 40), dtype=np.float32), tta=True, batch_size=8)
    finally:
        handle.remove()
    assert calls == [8]


def test_tta_differs_from_plain_prediction(model):
    image = np.random.default_rng(4).random((40, 40), dtype=np.float32)
    assert np.abs(tiling.predict(model, image, tta=True) - tiling.predict(model, image)).max() > 1e-4


def test_predict_restores_training_mode():
    model = UNet(base_channels=2, depth=2).train()
    tiling.predict(model, np.zeros((10, 10), np.float32))
    assert model.training


@pytest.mark.parametrize("image, error, match", [
    (np.zeros((10, 10), np.uint8), TypeError, "image / 255"),
    (np.zeros((2, 10, 10), np.float32), ValueError, r"\(H, W\)"),
    (np.full((10, 10), 2.0), ValueError, r"\[0, 1\]"),
    (np.full((10, 10), np.nan), ValueError, "NaN"),
    (np.zeros((0, 10)), ValueError, "empty"),
])
def test_predict_rejects_bad_images_clearly(model, image, error, match):
    with pytest.raises(error, match=match):
        tiling.predict(model, image)


def test_predict_rejects_invalid_tile_sizes_and_other_networks(model):
    image = np.zeros((30, 30), np.float32)
    with pytest.raises(ValueError, match="nearest valid: 572 or 588"):
        tiling.predict(model, image, tile_size=580)
    with pytest.raises(TypeError, match="unpadded"):
        tiling.predict(torch.nn.Conv2d(1, 2, 1), image)


def test_the_padded_ablation_baseline_predicts_whole_images():
    """PaddedUNet (ablation only) has no valid-size arithmetic: whole images, TTA as for the UNet."""
    from paper_unet import PaddedUNet
    torch.manual_seed(0)
    padded = PaddedUNet(features=(4, 8)).eval()
    image = np.random.default_rng(1).random((48, 40), dtype=np.float32)
    with torch.no_grad():
        expected = torch.softmax(padded(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    np.testing.assert_allclose(tiling.predict(padded, image), expected, atol=1e-6)
    assert tiling.predict(padded, image, tta=True).shape == (2, 48, 40)
    with pytest.raises(ValueError, match="whole images"):
        tiling.predict(padded, image, tile_size=572)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without a GPU")
def test_predict_on_absent_gpu_says_what_to_do(model):
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        tiling.predict(model, np.zeros((30, 30), np.float32), device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_predict_on_cuda_equals_cpu(model, strict_fp32):
    image = np.random.default_rng(5).random((90, 70), dtype=np.float32)
    cpu = tiling.predict(model, image, tile_size=204)
    gpu_model = UNet(base_channels=4, depth=5).eval()
    gpu_model.load_state_dict(model.state_dict())
    gpu = tiling.predict(gpu_model.cuda(), image, tile_size=204)
    np.testing.assert_allclose(gpu, cpu, atol=1e-4)
