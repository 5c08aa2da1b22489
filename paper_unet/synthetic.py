"""Synthetic sparse-cell images: a stand-in for the light-microscopy data of the paper's Table 2.

The paper's second experiment segments cells in phase-contrast (PhC-U373) and DIC (HeLa) images of
the ISBI cell tracking challenge: a few cells on a large background, instance masks. Those data sets
are not shipped here, so the tests and ``reproduction/own_cells_study.py`` use this generator, which
makes what matters for training on such data:

- a few cells per frame (``cells`` drawn from a range) covering a few percent of the pixels;
- cells as irregular blobs (an ellipse whose radius is modulated by low harmonics), darker inside
  with their own texture, ringed by a bright halo outside the border (as phase contrast shows them);
- a textured background (smooth low-frequency shading plus pixel noise), so that the background is
  not a constant that a network could learn by its mean;
- some cells touching another cell (``touching`` of them), so that the instance masks must be split;
- uint8 images and uint16 instance masks (0 = background, one id per cell).

Everything is a deterministic function of the seed (NumPy's PCG64 generator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["SparseCells", "sparse_cells", "DIM", "PRESETS"]


@dataclass(frozen=True)
class SparseCells:
    """Parameters of a synthetic sparse-cell data set (defaults: the size and density of PhC-U373)."""

    height: int = 520
    width: int = 696
    cells: tuple[int, int] = (3, 7)  # cells per frame, inclusive range
    radius: tuple[float, float] = (18.0, 34.0)  # mean cell radius in px, drawn uniformly
    touching: float = 0.3  # fraction of cells placed against an existing cell
    contrast: float = 0.25  # cell interior darker than the background by this (of the 0-1 range)
    halo: float = 0.3  # brightness of the halo ring outside each cell
    noise: float = 0.05  # pixel noise (std, of the 0-1 range)
    gain: float = 1.0  # the whole image is mapped to background + gain x (image - background): < 1 for dim data
    background: float = 0.5  # the mean background grey value (of the 0-1 range)


# Dim, low-contrast frames (the whole image within grey values ~40-130 of 255; cells 8 grey levels darker than
# the background, under 6 levels of noise): the kind on which the `cpu` profile's rate killed the network in the
# own-data study (results/own_data/), as it did on a public phase-contrast set.
DIM = SparseCells(contrast=0.08, halo=0.12, noise=0.06, gain=0.4, background=0.35)
PRESETS = {"default": SparseCells(), "dim": DIM}


def _blob(shape: tuple[int, int], centre: tuple[float, float], radius: float, rng: np.random.Generator
          ) -> tuple[tuple[slice, slice], np.ndarray]:
    """A filled irregular blob (an ellipse with a radius modulated by harmonics 2 to 4): its bounding
    box in the frame and its mask there."""
    reach = int(np.ceil(1.3 * radius)) + 1
    y0, x0 = max(0, int(centre[0]) - reach), max(0, int(centre[1]) - reach)
    y1, x1 = min(shape[0], int(centre[0]) + reach + 1), min(shape[1], int(centre[1]) + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dy, dx = yy - centre[0], xx - centre[1]
    angle = np.arctan2(dy, dx)
    elongation = rng.uniform(0.7, 1.0)
    tilt = rng.uniform(0, np.pi)
    ellipse = radius * elongation / np.sqrt((elongation * np.cos(angle - tilt)) ** 2 + np.sin(angle - tilt) ** 2)
    wobble = sum(rng.uniform(0, 0.08) * np.cos(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4))
    return (slice(y0, y1), slice(x0, x1)), np.hypot(dy, dx) <= ellipse * (1.0 + wobble)


def _place(labels: np.ndarray, radius: float, touch: bool, rng: np.random.Generator) -> tuple[float, float] | None:
    """A centre for a new cell: against an existing cell (``touch``) or away from all; None if none fits."""
    h, w = labels.shape
    margin = radius + 2
    rim = np.nonzero(ndimage.binary_dilation(labels > 0) & (labels == 0)) if touch and labels.any() else None
    for _ in range(200):
        if rim is not None:  # a point just outside an existing cell, and the new centre one radius from it
            ys, xs = rim
            k = rng.integers(len(ys))
            direction = rng.uniform(0, 2 * np.pi)
            centre = (ys[k] + radius * np.sin(direction), xs[k] + radius * np.cos(direction))
        else:
            centre = (rng.uniform(margin, h - margin), rng.uniform(margin, w - margin))
        if not (margin <= centre[0] <= h - margin and margin <= centre[1] <= w - margin):
            continue
        r = int(0.6 * radius)
        cy, cx = int(centre[0]), int(centre[1])
        yy, xx = np.ogrid[cy - r: cy + r + 1, cx - r: cx + r + 1]
        core = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (0.6 * radius) ** 2
        if not (labels[cy - r: cy + r + 1, cx - r: cx + r + 1][core] > 0).any():  # a neighbour may touch, never cover the new cell's core
            return centre
    return None


def _frame(p: SparseCells, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = (p.height, p.width)
    labels = np.zeros(shape, np.uint16)
    for cell in range(1, int(rng.integers(p.cells[0], p.cells[1] + 1)) + 1):
        radius = rng.uniform(*p.radius)
        centre = _place(labels, radius, bool(rng.random() < p.touching), rng)
        if centre is None:
            continue
        box, blob = _blob(shape, centre, radius, rng)
        labels[box][blob & (labels[box] == 0)] = cell
    # background: smooth shading plus noise; cells darker with their own texture; a bright halo outside
    coarse = rng.normal(0, 1, (p.height // 64 + 2, p.width // 64 + 2))  # shading: noise on a 64-px grid, smoothed
    shading = ndimage.zoom(coarse, 64, order=3)[: p.height, : p.width]
    shading = 0.08 * shading / (np.abs(shading).max() + 1e-12)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape), 2)
    texture = 0.06 * texture / (texture.std() + 1e-12)
    image = 0.5 + shading + np.where(labels > 0, texture - p.contrast, 0.3 * texture)
    outside = ndimage.distance_transform_edt(labels == 0)
    image += p.halo * np.exp(-((outside - 2.0) ** 2) / 4.0) * (labels == 0)
    image += rng.normal(0, p.noise, shape)
    image = p.background + p.gain * (image - 0.5)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), labels


def sparse_cells(count: int, seed: int = 0, params: SparseCells | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames: uint8 images (Z, H, W) and uint16 instance masks (Z, H, W), 0 = background."""
    params = params or SparseCells()
    rng = np.random.default_rng(seed)
    frames = [_frame(params, rng) for _ in range(count)]
    return np.stack([f[0] for f in frames]), np.stack([f[1] for f in frames])
