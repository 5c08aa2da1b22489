"""The weight map of paper Eq. 2, which makes the network learn the thin borders between cells.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),   w0 = 10, sigma ~ 5 px

"w_c is the weight map to balance the class frequencies, d1 denotes the distance to the border of
the nearest cell and d2 the distance to the border of the second nearest cell." (Sec. 3)

Our precise reading (docs/spec.md section 2, Decision): cells are the 4-connected components of the
label > 0 phase; d_k(x) is the Euclidean distance from x to the nearest pixel of cell k, d1 <= d2
the two smallest over cells; the border term applies to membrane (label 0) pixels only and is 0
with fewer than two cells; w_c(class) = f_max / f_class (the majority class gets 1).

Exact and fast: for every cell a linear-time squared Euclidean distance transform runs on the
cell's bounding box grown by a cutoff R, and each pixel keeps its two smallest distances. R is one
pixel more than the smallest whole radius r with w0 * exp(-r^2 / (2 sigma^2)) < 1e-7 (a margin), so every distance that can change a
weight by more than 1e-7 is computed exactly; the tests compare with one full distance transform
per cell to 1e-6.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from scipy import ndimage

from paper_unet.metrics import cells, check_binary

__all__ = ["weight_map", "estimate_class_weights", "border_weights", "TOLERANCE"]

TOLERANCE = 1e-7
_INF = 1e20


def _cutoff(w0: float, sigma: float) -> int:
    """Cutoff radius: one more than the smallest whole radius at which the border term is below
    TOLERANCE (d1 + d2 >= d2 > R makes the term smaller still)."""
    if w0 <= TOLERANCE:
        return 0
    return int(math.ceil(sigma * math.sqrt(2.0 * math.log(w0 / TOLERANCE)))) + 1


def _check_label(label: np.ndarray) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be one (H, W) slice, got shape {label.shape}")
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise TypeError(f"label must be an integer or bool array (0 = membrane, > 0 = cell), "
                        f"got {label.dtype}")
    return check_binary(label, "label")


@numba.njit(cache=True)
def _dt_1d(f, n, out, v, z):  # pragma: no cover - compiled
    """Felzenszwalb-Huttenlocher 1D squared distance transform of f[:n] into out[:n]."""
    k = 0
    v[0] = 0
    z[0] = -_INF
    z[1] = _INF
    for q in range(1, n):
        while True:
            p = v[k]
            s = ((f[q] + q * q) - (f[p] + p * p)) / (2.0 * q - 2.0 * p)
            if s <= z[k] and k > 0:
                k -= 1
                continue
            if s <= z[k]:  # k == 0: replace the only parabola
                v[0] = q
                z[0] = -_INF
                z[1] = _INF
                break
            k += 1
            v[k] = q
            z[k] = s
            z[k + 1] = _INF
            break
    k = 0
    for q in range(n):
        while z[k + 1] < q:
            k += 1
        d = q - v[k]
        out[q] = d * d + f[v[k]]


@numba.njit(cache=True)
def _two_nearest(cells, boxes, radius):  # pragma: no cover - compiled
    """Squared distances to the nearest and second-nearest cell for every pixel (<= radius exact)."""
    height, width = cells.shape
    best1 = np.full((height, width), _INF)
    best2 = np.full((height, width), _INF)
    size = max(height, width) + 2 * radius + 2
    f = np.empty(size)
    out = np.empty(size)
    v = np.empty(size, np.int64)
    z = np.empty(size + 1)
    for k in range(boxes.shape[0]):
        y0 = max(0, boxes[k, 0] - radius)
        y1 = min(height, boxes[k, 1] + radius)
        x0 = max(0, boxes[k, 2] - radius)
        x1 = min(width, boxes[k, 3] + radius)
        h, w = y1 - y0, x1 - x0
        grid = np.empty((h, w))
        for x in range(w):  # columns: squared distance to the cell along the column, two scans
            last = -1
            for y in range(h):
                if cells[y0 + y, x0 + x] == k + 1:
                    last = y
                grid[y, x] = _INF if last < 0 else float((y - last) * (y - last))
            last = -1
            for y in range(h - 1, -1, -1):
                if cells[y0 + y, x0 + x] == k + 1:
                    last = y
                if last >= 0:
                    d = float((last - y) * (last - y))
                    if d < grid[y, x]:
                        grid[y, x] = d
        for y in range(h):  # rows
            for x in range(w):
                f[x] = grid[y, x]
            _dt_1d(f, w, out, v, z)
            for x in range(w):
                if cells[y0 + y, x0 + x] != 0:
                    continue  # the border term lives on membrane pixels only
                d = out[x]  # each cell visits a pixel once, so best1 and best2 are distinct cells
                yy, xx = y0 + y, x0 + x
                if d < best1[yy, xx]:
                    best2[yy, xx] = best1[yy, xx]
                    best1[yy, xx] = d
                elif d < best2[yy, xx]:
                    best2[yy, xx] = d
    return best1, best2


def border_weights(label: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """The border term w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) on membrane pixels, float64 (H, W)."""
    cell = _check_label(label)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    labels, count = cells(cell)
    term = np.zeros(cell.shape)
    if count < 2 or w0 == 0:
        return term
    boxes = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop]
                      for s in ndimage.find_objects(labels)], dtype=np.int64)
    radius = _cutoff(abs(w0), sigma)
    best1, best2 = _two_nearest(labels.astype(np.int64), boxes, radius)
    near = ~cell & (best2 < _INF)
    d = np.sqrt(best1[near]) + np.sqrt(best2[near])
    term[near] = w0 * np.exp(-(d * d) / (2.0 * sigma * sigma))
    return term


def estimate_class_weights(labels: np.ndarray) -> tuple[float, float]:
    """(w_membrane, w_cell) = f_max / f_class over one slice or a stack of them.

    A class absent from the labels gets weight 1.0 (it weighs no pixel).
    """
    labels = np.asarray(labels)
    cell = int(np.count_nonzero(labels))
    membrane = labels.size - cell
    most = max(cell, membrane)
    return (most / membrane if membrane else 1.0, most / cell if cell else 1.0)


def weight_map(label: np.ndarray, w0: float = 10.0, sigma: float = 5.0,
               class_weights: tuple[float, float] | None = None) -> np.ndarray:
    """Paper Eq. 2 for one binary label slice (0 = membrane, > 0 = cell): float32 (H, W).

    ``class_weights`` = (w_membrane, w_cell); None derives f_max / f_class from this label. For
    training, pass the weights of the whole training set (`estimate_class_weights`).
    """
    cell = _check_label(label)
    if class_weights is None:
        class_weights = estimate_class_weights(cell)
    w_membrane, w_cell = class_weights
    weights = np.where(cell, w_cell, w_membrane) + border_weights(cell, w0, sigma)
    return weights.astype(np.float32)
