"""Synthetic sparse cells (`paper_unet.synthetic`): deterministic per seed, sparse, with their instance masks."""

from __future__ import annotations

import numpy as np

from paper_unet.synthetic import PRESETS, SparseCells, sparse_cells


def test_frames_are_a_function_of_the_seed_and_the_cells_are_sparse():
    small = SparseCells(height=130, width=174, radius=(5.0, 9.0))
    images, labels = sparse_cells(3, seed=4, params=small)
    again, _ = sparse_cells(3, seed=4, params=small)
    assert images.dtype == np.uint8 and labels.dtype == np.uint16 and images.shape == labels.shape == (3, 130, 174)
    assert np.array_equal(images, again) and not np.array_equal(images, sparse_cells(3, seed=5, params=small)[0])
    per_frame = [len(np.unique(frame)) - 1 for frame in labels]
    assert all(1 <= n <= small.cells[1] for n in per_frame)  # at most the asked number (a cell that finds no room is left out)
    assert 0 < (labels > 0).mean() < 0.5  # sparse: background is most of the image
    inside, outside = images[labels > 0].mean(), images[labels == 0].mean()
    assert inside < outside  # cells darker than the background, as asked (contrast > 0)


def test_the_dim_preset_uses_a_narrow_grey_range():
    images, _ = sparse_cells(1, seed=0, params=PRESETS["dim"])
    assert np.percentile(images, 99.9) - np.percentile(images, 0.1) < 0.5 * 255
