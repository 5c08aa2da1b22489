"""From P(cell) to masks and cells: label kinds, the minimum size, the post-processing chosen on validation data."""

from __future__ import annotations

import numpy as np
import pytest

from paper_unet.segment import (ConstantOutput, best_min_size, binary_mask, choose_post_processing, label_cells,
                                label_kind, remove_small)


def test_label_kind_by_the_background_share():
    em = np.ones((1, 10, 10), np.uint8)
    em[0, 5, :] = 0  # a membrane line: label 0 covers 10 %
    assert label_kind(em) == "membranes"
    cells = np.zeros((1, 10, 10), np.uint8)
    cells[0, 2:4, 2:4] = 1  # a cell on a background: label 0 covers 96 %
    assert label_kind(cells) == "cells"


def test_remove_small_drops_components_below_the_size_by_hand():
    mask = np.zeros((2, 6, 6), np.uint8)
    mask[0, 0:2, 0:2] = 255  # 4 px
    mask[0, 4, 4] = 255  # 1 px
    mask[1, 0:3, 0:3] = 255  # 9 px
    mask[1, 5, 0:3] = 255  # 3 px
    out = remove_small(mask, 4)
    assert out.dtype == np.uint8
    assert out[0].sum() == 4 * 255 and out[0, 4, 4] == 0  # 4 px kept (not below 4), 1 px dropped
    assert out[1].sum() == 9 * 255  # 9 kept, 3 dropped
    np.testing.assert_array_equal(remove_small(mask, 0), mask)
    cells = label_cells(mask, min_size=4)
    assert cells.max() == 2 and (cells > 0).sum() == 13


def test_best_min_size_removes_specks_when_they_cost_iou():
    reference = np.zeros((1, 40, 40), np.uint16)
    reference[0, 5:15, 5:15] = 1  # two 100-px cells
    reference[0, 25:35, 25:35] = 2
    mask = (reference > 0).astype(np.uint8) * 255
    specks = mask.copy()
    specks[0, 5:15, 16] = 255  # a 10-px speck beside cell 1 (its own object): IOU 200 / 210
    # candidates: 0, 5, 10, 20, 40 px (0.05 ... 0.4 x the median area, 100): 20 is the first below which it falls
    assert best_min_size(specks, reference) == 20
    assert best_min_size(mask, reference) == 0  # nothing to remove: the smallest of equals
    split = mask.copy()
    split[0, 5:15, 9] = 0  # cell 1 cut in two pieces of 40 and 50 px: removing either would cost IOU
    assert best_min_size(split, reference) == 0  # no candidate removes them: all equal, the smallest

    assert best_min_size(mask, np.zeros_like(reference)) == 0  # no reference cells: no size


def test_post_processing_refuses_a_constant_output():
    labels = np.zeros((1, 20, 20), np.uint8)
    labels[0, 5:10, 5:10] = 1
    with pytest.raises(ConstantOutput, match="every mask is empty or full"):
        choose_post_processing(np.full((1, 20, 20), 0.4772, np.float32), labels)
    probabilities = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
    chosen = choose_post_processing(probabilities, labels)
    assert chosen["label_kind"] == "cells" and chosen["iou"] == 1.0 and chosen["seg"] == 1.0
    assert chosen["threshold"] == pytest.approx(0.2)  # P > 0.1 takes float32 0.1 as cell; 0.2 ... 0.7 are exact
    em = 1 - labels  # the same picture read as membranes: the pixel F-score decides, no size
    chosen = choose_post_processing(np.where(em > 0, 0.8, 0.1).astype(np.float32), em)
    assert chosen["label_kind"] == "membranes" and chosen["min_size"] == 0


def test_mask_and_cells_equal_the_whole_array_formulas_band_by_band():
    """binary_mask works in bands of rows and label_cells slice by slice into its output (large images): the
    same arrays as the whole-array formulas, across band edges and past 65,535 cells (a checkerboard of isolated
    4-connected pixels: 512 x 512 / 2 = 131,072 cells in one slice)."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    probabilities = rng.random((2, 37, 23)).astype(np.float32)
    probabilities[0, 0, :3] = [0.5, np.nextafter(np.float32(0.5), np.float32(1)), 0.4999999]
    plain = np.where(probabilities.astype(np.float64) > 0.5, 255, 0).astype(np.uint8)
    for rows in (1, 5, 1024):
        np.testing.assert_array_equal(binary_mask(probabilities, 0.5, rows=rows), plain)
    checker = (np.indices((512, 512)).sum(0) % 2 == 0)
    for mask, kind in (((rng.random((3, 40, 50)) > 0.5), np.uint16), (np.stack([checker, ~checker]), np.uint32)):
        cells = label_cells(mask)
        offset, expected = 0, np.zeros(mask.shape, np.int64)
        for z in range(len(mask)):
            labels, count = ndimage.label(mask[z], structure=[[0, 1, 0], [1, 1, 1], [0, 1, 0]])
            expected[z] = np.where(labels > 0, labels + offset, 0)
            offset += count
        assert cells.dtype == kind
        np.testing.assert_array_equal(cells, expected)
