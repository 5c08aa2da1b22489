"""The paper's Table 2 scores (IOU) and the Cell Tracking Challenge's SEG, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile

from paper_unet.cell_metrics import best_iou_threshold, iou, objects, seg
from paper_unet.cli import main


def two_cells():
    """A 6x6 reference with cell 1 (2x2 = 4 px, top left) and cell 2 (2x3 = 6 px, rows 3-4, columns 2-4)."""
    reference = np.zeros((6, 6), np.uint16)
    reference[0:2, 0:2] = 1
    reference[3:5, 2:5] = 2
    return reference


def test_iou_and_seg_by_hand():
    reference = two_cells()
    mask = np.zeros((6, 6), np.uint8)
    mask[0:2, 0:3] = 255  # A: 6 px, covers all 4 px of cell 1 (more than half): J = 4 / (4 + 6 - 4) = 2/3
    mask[4, 2:5] = 255  # B: 3 px inside cell 2, exactly half of its 6 px: not "more than half", so 0
    # IOU: |P & G| = 4 + 3 = 7, |P | G| = 9 + 10 - 7 = 12
    assert iou(mask, reference) == pytest.approx(7 / 12)
    assert seg(mask, reference) == pytest.approx((2 / 3 + 0) / 2)
    mask[3, 2] = 255  # B grows to 4 px, all inside cell 2: J = 4 / 6
    assert seg(mask, reference) == pytest.approx((2 / 3 + 4 / 6) / 2)


def test_touching_reference_cells_stay_two_objects_and_a_merge_scores_half_each():
    reference = np.zeros((1, 4, 4), np.uint16)
    reference[0, 0:2, 0:2] = 5  # two 4-px cells side by side, touching
    reference[0, 0:2, 2:4] = 7
    assert objects(reference[0]).max() == 2
    merged = (reference > 0).astype(np.uint8)  # one predicted object over both: J = 4 / 8 for each
    assert seg(merged, reference) == pytest.approx(0.5)
    assert iou(merged, reference) == 1.0
    # a binary reference of the same pixels is one 4-connected object: the merge is then a perfect match
    assert seg(merged, reference > 0) == pytest.approx(1.0)


def test_edge_cases():
    empty = np.zeros((2, 3, 3), np.uint8)
    assert iou(empty, empty) == 1.0  # nothing to find, nothing found
    assert math.isnan(seg(empty, empty))  # no reference object: SEG is undefined
    reference = two_cells()
    assert seg(np.zeros_like(reference), reference) == 0.0
    assert iou(np.zeros_like(reference), reference) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        iou(empty, empty[0])


def test_best_iou_threshold_picks_the_grid_value_that_reproduces_the_cells():
    reference = two_cells()
    probabilities = np.where(reference > 0, 0.75, 0.2).astype(np.float32)
    probabilities[5, 5] = 0.65  # a background pixel above 0.6: only thresholds >= 0.7 drop it
    assert best_iou_threshold(probabilities, reference) == pytest.approx(0.7)
    assert iou(probabilities > 0.7, reference) == 1.0


def test_evaluate_prints_iou_and_seg_for_an_instance_mask(tmp_path, capsys):
    reference = np.zeros((1, 64, 64), np.uint16)
    reference[0, 10:30, 10:30] = 1
    reference[0, 10:30, 30:50] = 2  # touching cell 1
    probabilities = np.where(reference > 0, 0.9, 0.05).astype(np.float32)
    tifffile.imwrite(tmp_path / "p.tif", probabilities)
    tifffile.imwrite(tmp_path / "l.tif", reference)
    assert main(["evaluate", "--proposal", str(tmp_path / "p.tif"), "--labels", str(tmp_path / "l.tif"),
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "IOU" in out and "SEG" in out and "cells on a background" in out
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    assert result["iou"] == pytest.approx(1.0)  # every cell pixel found, nothing else
    assert result["seg"] == pytest.approx(0.5)  # the two touching cells come out as one object: 400/800 each
