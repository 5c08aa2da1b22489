"""Figures for results/ (`paper_unet.plots`): each writes a real PNG from real inputs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from paper_unet.plots import plot_loss_curves, plot_variant_crops, plot_weight_map
from paper_unet.weights import weight_map


def test_the_weight_map_figure_and_the_loss_curves_are_drawn(isbi_dir, tmp_path):
    import tifffile
    image = tifffile.imread(isbi_dir / "train-volume.tif", key=0)[:128, :128]
    label = tifffile.imread(isbi_dir / "train-labels.tif", key=0)[:128, :128]
    path = plot_weight_map(image, label, weight_map(label > 0), tmp_path / "w.png")
    assert Image.open(path).size[0] > 300
    curves = {"a": (np.arange(1, 21), np.linspace(1.0, 0.5, 20))}
    path = plot_loss_curves(curves, tmp_path / "c.png", {"a": [{"iteration": 20, "rand_error": 0.2,
                                                               "pixel_error": 0.1}]})
    assert Image.open(path).size[0] > 300


def test_the_variant_crops_figure_has_a_panel_per_crop(tmp_path):
    for stem in ("_image", "_labels", "full", "no_tta"):
        Image.fromarray(np.full((16, 16), 128, np.uint8)).save(tmp_path / f"{stem}.png")
    path = plot_variant_crops(tmp_path, ["full", "no_tta"], tmp_path / "crops.png")
    assert Image.open(path).size[0] > 300
