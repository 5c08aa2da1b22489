"""Reading your own images and labels, and intensity normalisation (`paper_unet.images`)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from paper_unet.config import load_config
from paper_unet.images import instance_to_binary, normalize, read_labels


def save(path, array, **kwargs):
    """Write a TIFF; a plain stack as grey slices (tifffile would store 3 slices as one RGB image)."""
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, array, **kwargs)


def test_auto_normalisation_by_dtype_and_percentile():
    u16 = np.array([[[0, 65535], [32768, 1000]]], np.uint16)
    np.testing.assert_allclose(normalize(u16, "dtype"), u16 / 65535.0, rtol=1e-7)
    lo, hi = np.percentile(u16.astype(np.float32), (1, 99))  # auto = percentile for uint16
    np.testing.assert_allclose(normalize(u16), np.clip((u16 - lo) / (hi - lo), 0, 1), rtol=1e-6)
    u8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    assert np.array_equal(normalize(u8), u8.astype(np.float32) / np.float32(255))  # the ISBI path
    floats = np.linspace(-5, 500, 101, dtype=np.float32).reshape(1, 1, 101)
    out = normalize(floats)  # auto = percentile for float data: 1st -> 0, 99th -> 1, clipped
    assert out.min() == 0 and out.max() == 1 and out[0, 0, 50] == pytest.approx(0.5, abs=1e-6)
    np.testing.assert_allclose(normalize(floats, "minmax")[0, 0, [0, 100]], [0, 1])
    with pytest.raises(ValueError, match="--normalize percentile"):
        normalize(floats, "dtype")


def test_instance_masks_become_cells_and_membranes():
    instances = np.array([[[1, 1, 2, 2, 0],
                           [1, 1, 2, 2, 0],
                           [3, 3, 3, 0, 0]]], np.uint16)
    expected = np.array([[[1, 0, 0, 1, 0],  # (1, 3) keeps its cell: its other neighbours are background
                          [0, 0, 0, 1, 0],
                          [0, 0, 0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(instance_to_binary(instances), expected)


@pytest.mark.parametrize("encoding", ["0/255", "0/1", "bool", "instances"])
def test_label_encodings(tmp_path, encoding):
    cell = np.zeros((1, 6, 6), bool)
    cell[0, 1:5, 1:5] = True
    stored = {"0/255": cell.astype(np.uint8) * 255, "0/1": cell.astype(np.uint8), "bool": cell,
              "instances": cell.astype(np.uint16) * 9}[encoding]
    save(tmp_path / "l.tif", stored)
    labels, found = read_labels(tmp_path / "l.tif")
    np.testing.assert_array_equal(labels, cell.astype(np.uint8))  # one cell: every encoding agrees
    two = cell.astype(np.uint16)
    two[0, 3:5, 1:5] = 2  # a second cell touching the first
    save(tmp_path / "two.tif", two)
    labels, found = read_labels(tmp_path / "two.tif")
    assert found.startswith("instance mask") and labels[0, 2:4, 1:5].sum() == 0  # the 2-px line between


BIT_DEPTHS = {"8-bit": (np.uint8, 1, 0), "12-bit": (np.uint16, 16, 0), "14-bit": (np.uint16, 64, 0),
              "16-bit": (np.uint16, 257, 0), "float + offset": (np.float32, 1 / 255, 3.0)}


@pytest.mark.parametrize("depth", list(BIT_DEPTHS))
def test_every_bit_depth_gives_the_network_the_same_input_under_auto(isbi_dir, depth):
    """The same EM content as 8-, 12-, 14- and 16-bit integers and as float with an offset: `auto` takes percentile
    for every type but uint8, and percentiles follow gain and offset, so the tensors agree (to float rounding) with
    uint8 under percentile. Under the old auto (dtype for every integer type), 12-bit data spanned 0-0.062."""
    u8 = tifffile.imread(isbi_dir / "train-volume.tif")[:4]
    dtype, gain, offset = BIT_DEPTHS[depth]
    data = (u8.astype(np.float64) * gain + offset).astype(dtype)
    reference = normalize(u8, "percentile")
    got = normalize(data) if depth != "8-bit" else normalize(data, "percentile")
    np.testing.assert_allclose(got, reference, atol=2e-6)
    if depth == "12-bit":
        from paper_unet.images import NARROW_RANGE, dynamic_range

        assert dynamic_range(normalize(data, "dtype")) < NARROW_RANGE < dynamic_range(got)


def test_the_isbi_input_is_bit_identical(isbi_dir):
    """The reproduction's uint8 slices are still divided by 255 under auto: the same tensors as before."""
    u8 = tifffile.imread(isbi_dir / "train-volume.tif")
    assert np.array_equal(normalize(u8), u8.astype(np.float32) / np.float32(255.0))
    assert load_config("cpu").data.normalize == "auto" and load_config("paper").data.normalize == "auto"
