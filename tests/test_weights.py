"""Weight map of paper Eq. 2 (docs/spec.md section 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from paper_unet.weights import border_weights, estimate_class_weights, weight_map

FOUR = ndimage.generate_binary_structure(2, 1)


def reference_border(label: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The plain definition: one full Euclidean distance transform per cell."""
    cells, n = ndimage.label(label > 0, FOUR)
    if n < 2:
        return np.zeros(label.shape)
    d = np.sort(np.stack([ndimage.distance_transform_edt(cells != k) for k in range(1, n + 1)]), axis=0)
    term = w0 * np.exp(-(d[0] + d[1]) ** 2 / (2 * sigma**2))
    term[label > 0] = 0
    return term


def test_two_cell_toy_by_hand():
    # Two cells (columns 0-1 and 5-6) separated by a 3-px membrane (columns 2-4), 5 rows.
    # Membrane pixel in column 3: d1 = d2 = 2 -> w0 * exp(-16 / 50); column 2: d1 = 1, d2 = 3, same sum.
    label = np.zeros((5, 7), np.uint8)
    label[:, :2] = 255
    label[:, 5:] = 255
    w = weight_map(label, w0=10, sigma=5, class_weights=(2.0, 1.0))
    expected_membrane = 2.0 + 10 * math.exp(-(4.0**2) / 50)
    np.testing.assert_allclose(w[:, 2:5], expected_membrane, rtol=1e-6)
    np.testing.assert_allclose(w[:, :2], 1.0)
    np.testing.assert_allclose(w[:, 5:], 1.0)


def test_equals_the_plain_per_cell_reference_on_real_isbi_labels(isbi_dir):
    labels = tifffile.imread(isbi_dir / "train-labels.tif")
    for z in (0, 17, 29):
        np.testing.assert_allclose(border_weights(labels[z]), reference_border(labels[z]), rtol=0, atol=1e-6)


def test_other_w0_and_sigma_match_reference():
    rng = np.random.default_rng(0)
    label = (ndimage.gaussian_filter(rng.random((80, 90)), 3) > 0.5).astype(np.uint8)
    for w0, sigma in [(10, 5), (5, 3), (20, 8)]:
        np.testing.assert_allclose(border_weights(label, w0, sigma), reference_border(label, w0, sigma),
                                   rtol=0, atol=1e-6)


def test_no_border_term_with_fewer_than_two_cells():
    label = np.zeros((20, 20), np.uint8)
    assert border_weights(label).max() == 0
    label[5:10, 5:10] = 1
    assert border_weights(label).max() == 0
    np.testing.assert_allclose(weight_map(label), np.where(label > 0, 375 / 25, 1.0))


def test_border_term_only_on_membrane_and_cells_are_4_connected():
    label = np.zeros((6, 6), np.uint8)
    label[1, 1] = label[2, 2] = 1  # diagonal neighbours: two cells under 4-connectivity
    term = border_weights(label)
    assert term[label > 0].max() == 0
    assert term[1, 2] == pytest.approx(10 * math.exp(-4 / 50))  # d1 = d2 = 1


def test_class_weights_are_f_max_over_f_class():
    label = np.zeros((10, 10), np.uint8)
    label[:, :7] = 255  # 70 % cell
    assert estimate_class_weights(label) == pytest.approx((70 / 30, 1.0))
    assert estimate_class_weights(np.ones((4, 4))) == (1.0, 1.0)


def test_isbi_membrane_class_weight_is_about_3_5(isbi_dir):
    labels = tifffile.imread(isbi_dir / "train-labels.tif")
    w_membrane, w_cell = estimate_class_weights(labels)
    assert w_cell == 1.0 and w_membrane == pytest.approx((1 - 0.2196) / 0.2196, rel=1e-3)


@pytest.mark.parametrize("label, error", [
    (np.zeros((2, 3, 3), np.uint8), ValueError),
    (np.array([[0, 1], [2, 0]], np.uint8), ValueError),
    (np.zeros((3, 3), np.float32), TypeError),
])
def test_bad_labels_are_rejected(label, error):
    with pytest.raises(error):
        weight_map(label)
