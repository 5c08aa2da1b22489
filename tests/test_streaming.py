"""Large images in bounded memory (`paper_unet.streaming`): the same P(cell) as `tiling`, tile by tile."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from paper_unet.images import normalize, normalizer
from paper_unet.model import UNet
from paper_unet.streaming import predict_streamed, reflect_index
from paper_unet.tiling import mirror_pad, predict_stack, valid_input_size


@pytest.mark.parametrize("length, before, after", [(5, 3, 4), (5, 9, 12), (2, 3, 3), (1, 2, 2), (7, 0, 6)])
def test_reflect_index_is_mirror_pad(length, before, after):
    line = np.arange(length, dtype=np.float32)[None, :]
    padded = mirror_pad(np.repeat(line, 2, axis=0), ((0, 0), (before, after)))[0]
    assert np.array_equal(line[0][reflect_index(np.arange(-before, length + after), length)], padded)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(3)
    return UNet(base_channels=4, depth=3, dropout=0.0).eval()


@pytest.mark.parametrize("tta", [False, True])
def test_streamed_prediction_equals_the_whole_image_path(isbi_dir, model, tta):
    """A non-square crop of real EM (uint8), several tiles per view: P(cell) as `predict_stack` gives it."""
    raw = tifffile.imread(isbi_dir / "train-volume.tif", key=0)[:300, :412]
    tile = valid_input_size(100, 3)
    expected = predict_stack(model, normalize(raw[None]), tile_size=tile, tta=tta, progress=False)[0]
    got = predict_streamed(model, raw, normalizer(raw), tile_size=tile, tta=tta, progress=False)
    assert got.dtype == np.float32 and got.shape == raw.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_streamed_prediction_writes_into_a_memory_mapped_tiff(isbi_dir, model, tmp_path):
    raw = (tifffile.imread(isbi_dir / "train-volume.tif", key=1)[:200, :260].astype(np.uint16) * 16)  # 12-bit
    norm = normalizer(raw, "percentile")
    out = tifffile.memmap(tmp_path / "p.tif", shape=raw.shape, dtype=np.float32, photometric="minisblack")
    predict_streamed(model, raw, norm, tile_size=valid_input_size(60, 3), out=out, progress=False)
    out.flush()
    del out
    expected = predict_stack(model, normalize(raw[None], "percentile"), tile_size=valid_input_size(60, 3),
                             progress=False)[0]
    np.testing.assert_allclose(tifffile.imread(tmp_path / "p.tif"), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype, method", [(np.uint8, "dtype"), (np.uint16, "percentile"), (np.uint16, "minmax"),
                                           (np.float64, "dtype"), (np.float32, "percentile")])
def test_a_tile_normalised_alone_is_the_normalised_images_tile_bit_for_bit(dtype, method):
    rng = np.random.default_rng(0)
    stack = rng.random((2, 40, 50)) if dtype in (np.float64, np.float32) else rng.integers(0, 4000, (2, 40, 50))
    stack = stack.astype(dtype)
    whole = normalize(stack, method)
    assert np.array_equal(normalizer(stack, method)(stack[:, 5:30, 7:44]), whole[:, 5:30, 7:44])
