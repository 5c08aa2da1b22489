"""The ISBI 2012 challenge metrics, exactly as the challenge's evaluator computes them.

The paper's Table 1 ranks by the *warping error*, then lists the *Rand error* and the *pixel error*;
the leaderboard later added *V_rand* and *V_info* after border thinning. The reference
implementation is Fiji's Trainable_Segmentation (``trainableSegmentation.metrics``); docs/spec.md section 6
states every rule that matters for matching values, and the tests check them against the values
that evaluator printed (``shared/metrics_reference``), to 1e-12 at the optima and 1e-9 per threshold.

Conventions: the proposal holds P(cell) in [0, 1] (1 = cell, 0 = membrane, the challenge's
submission format); the ground truth is binary (> 0 = cell). Cells are 4-connected components.
Each metric binarises the proposal *strictly* (P > t, compared in float64) at every threshold of a
fixed grid and reports the best value over the grid:

- pixel, Rand, V_rand, V_info: t in T11 = 0.0, 0.1, ..., 1.0 (accumulated by ``+= 0.1`` in double);
- warping: t in T10 = the first ten of those.

Errors are "lower is better" (pixel, Rand, warping); V_rand and V_info are "higher is better".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
from scipy import ndimage

__all__ = [
    "THRESHOLDS",
    "WARPING_THRESHOLDS",
    "pixel_error",
    "pixel_fscores",
    "rand_error",
    "warping_error",
    "vrand_thinned",
    "vinfo_thinned",
    "evaluate",
    "Evaluation",
    "check_binary",
    "cells",
]


def _thresholds(count: int) -> tuple[float, ...]:
    values, t = [], 0.0
    for _ in range(count):
        values.append(t)
        t += 0.1  # the evaluator's loop: 0.30000000000000004, 0.7999999999999999, ...
    return tuple(values)


THRESHOLDS = _thresholds(11)
WARPING_THRESHOLDS = THRESHOLDS[:10]
WARPING_WINDOW_RADIUS = 20  # the 41x41 window used to tell a split from a hole deletion
_FOUR = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)


# --------------------------------------------------------------------------------------------
# input checks

def _as_stacks(proposal, ground_truth) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (P float32 (Z,H,W), G bool (Z,H,W))."""
    proposal = np.asarray(proposal)
    ground_truth = np.asarray(ground_truth)
    if proposal.shape != ground_truth.shape:
        raise ValueError(f"proposal shape {proposal.shape} differs from ground truth shape "
                         f"{ground_truth.shape}: both must be (Z, H, W) or (H, W) and match")
    if proposal.ndim not in (2, 3) or proposal.size == 0:
        raise ValueError(f"expected (Z, H, W) or (H, W) arrays, got shape {proposal.shape}")
    if proposal.ndim == 2:
        proposal, ground_truth = proposal[None], ground_truth[None]
    if not (np.issubdtype(proposal.dtype, np.floating) or proposal.dtype == bool):
        raise TypeError(f"proposal must be float probabilities in [0, 1] (1 = cell), got dtype "
                        f"{proposal.dtype}; divide a uint8 map by 255 first")
    proposal = proposal.astype(np.float32, copy=False)
    if np.isnan(proposal).any():
        raise ValueError("proposal contains NaN values")
    lo, hi = float(proposal.min()), float(proposal.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"proposal values must lie in [0, 1] (1 = cell), got [{lo:.4g}, {hi:.4g}]")
    return proposal, check_binary(ground_truth, "ground truth")


def check_binary(labels: np.ndarray, what: str = "labels") -> np.ndarray:
    """``labels > 0`` if ``labels`` is binary (0 = membrane, one positive value = cell), else ValueError."""
    values = np.unique(labels)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0) or (values < 0).any():
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise ValueError(f"{what} must be binary (0 = membrane, one positive value = cell), "
                         f"found values {{{shown}}}")
    return labels > 0


def cells(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Cells: the 4-connected components of a boolean mask, labelled 1..count (0 = membrane)."""
    labels, count = ndimage.label(mask, structure=_FOUR)
    return labels.astype(np.int32, copy=False), int(count)


# --------------------------------------------------------------------------------------------
# pixel error

def _pixel_fscores(proposal: np.ndarray, truth: np.ndarray, thresholds) -> list[float]:
    positives = int(truth.sum())
    scores = []
    for t in thresholds:
        predicted = proposal > np.float64(t)
        tp = int(np.count_nonzero(predicted & truth))
        fp = int(np.count_nonzero(predicted)) - tp
        fn = positives - tp
        precision = tp / (tp + fp) if fp else 1.0
        recall = tp / (tp + fn) if fn else 1.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return scores


# --------------------------------------------------------------------------------------------
# Rand statistics (foreground-restricted, proposal membrane pixels as singletons)

@dataclass
class _Pairs:
    tp: float  # sum_ij n_ij^2 + N0
    a: float  # sum_i a_i^2
    b: float  # sum_j b_j^2 + N0
    h_g: float  # entropies for V_info (natural log)
    h_s: float
    h_gs: float


def _pair_counts(gt_labels: np.ndarray, seg_labels: np.ndarray) -> _Pairs | None:
    """Contingency statistics over ground-truth cell pixels; segment 0 pixels are singletons."""
    inside = gt_labels > 0
    n = int(np.count_nonzero(inside))
    if n == 0:
        return None
    g = gt_labels[inside].astype(np.int64)
    s = seg_labels[inside].astype(np.int64)
    singletons = int(np.count_nonzero(s == 0))
    a = np.bincount(g)[1:]
    a = a[a > 0]
    joined = s > 0
    b = np.bincount(s[joined])
    b = b[b > 0]
    pair_keys = g[joined] * (int(s.max()) + 1) + s[joined]
    nij = np.bincount(pair_keys)
    nij = nij[nij > 0]
    a_f, b_f, nij_f = a.astype(np.float64), b.astype(np.float64), nij.astype(np.float64)
    log_n = math.log(n)
    singleton_entropy = singletons * log_n / n
    h_g = -float(np.sum(a_f / n * np.log(a_f / n)))
    h_s = -float(np.sum(b_f / n * np.log(b_f / n))) + singleton_entropy
    h_gs = -float(np.sum(nij_f / n * np.log(nij_f / n))) + singleton_entropy
    return _Pairs(tp=float(np.sum(nij * nij) + singletons), a=float(np.sum(a * a)),
                  b=float(np.sum(b * b) + singletons), h_g=h_g, h_s=h_s, h_gs=h_gs)


def _vinfo(p: _Pairs) -> float:
    if p.h_g == 0.0 or p.h_s == 0.0:
        return 0.0
    mutual = p.h_g + p.h_s - p.h_gs
    if mutual == 0.0:
        return math.nan
    return 2.0 * mutual / (p.h_g + p.h_s)


# --------------------------------------------------------------------------------------------
# border thinning: Vincent-Soille flooding of the two-level image, 4-connected, with dams

_MASK, _INQUEUE, _DAM = -2, -3, 0


@numba.njit(cache=True)
def _flood_with_dams(labels):  # pragma: no cover - compiled
    """Flood membrane pixels (label 0) from the labelled basins; meeting fronts leave dams (0).

    Single-level Vincent-Soille propagation: the initial queue holds the membrane pixels that
    touch a basin or a dam, in x-major order (x outer, y inner); neighbours are visited left, up,
    right, down.
    """
    height, width = labels.shape
    out = labels.copy()
    for y in range(height):
        for x in range(width):
            if out[y, x] == 0:
                out[y, x] = _MASK
    queue = np.empty(height * width, np.int64)
    head, tail = 0, 0
    dy = (0, -1, 0, 1)
    dx = (-1, 0, 1, 0)
    for x in range(width):
        for y in range(height):
            if out[y, x] != _MASK:
                continue
            for k in range(4):
                qy, qx = y + dy[k], x + dx[k]
                if 0 <= qy < height and 0 <= qx < width and out[qy, qx] > 0:
                    out[y, x] = _INQUEUE
                    queue[tail] = y * width + x
                    tail += 1
                    break
    while head < tail:
        index = queue[head]
        head += 1
        y, x = index // width, index % width
        flag = False
        for k in range(4):
            qy, qx = y + dy[k], x + dx[k]
            if not (0 <= qy < height and 0 <= qx < width):
                continue
            q = out[qy, qx]
            p = out[y, x]
            if q > 0:
                if p == _INQUEUE or (p == _DAM and flag):
                    out[y, x] = q
                elif p > 0 and p != q:
                    out[y, x] = _DAM
                    flag = False
            elif q == _DAM:
                if p == _INQUEUE:
                    out[y, x] = _DAM
                    flag = True
            elif q == _MASK:
                out[qy, qx] = _INQUEUE
                queue[tail] = qy * width + qx
                tail += 1
    for y in range(height):
        for x in range(width):
            if out[y, x] < 0:
                out[y, x] = 0
    return out


# --------------------------------------------------------------------------------------------
# warping error: simple-point relaxation of the ground truth towards the thresholded proposal

# 8-neighbourhood in ring order N, NE, E, SE, S, SW, W, NW as (dy, dx); bit k of a LUT index.
_RING = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def _components(nodes: list[tuple[int, int]], adjacent) -> list[set]:
    groups: list[set] = []
    for node in nodes:
        touching = [g for g in groups if any(adjacent(node, other) for other in g)]
        merged = {node}.union(*touching)
        groups = [g for g in groups if g not in touching] + [merged]
    return groups


def _simple_point_table() -> np.ndarray:
    """LUT over the 8 neighbours: is the centre a simple point in (4, 8) topology?

    Simple iff exactly one 4-connected foreground component of the 8-neighbourhood touches an
    edge neighbour and exactly one 8-connected background component exists (Bertrand &
    Malandain 1994, as the evaluator applies it to a 2D patch). The centre's own value does not
    enter the test.
    """
    four = lambda p, q: abs(p[0] - q[0]) + abs(p[1] - q[1]) == 1  # noqa: E731
    eight = lambda p, q: max(abs(p[0] - q[0]), abs(p[1] - q[1])) == 1  # noqa: E731
    table = np.zeros(256, dtype=np.bool_)
    for code in range(256):
        fg = [_RING[k] for k in range(8) if code >> k & 1]
        bg = [_RING[k] for k in range(8) if not code >> k & 1]
        fg_touching_edge = [g for g in _components(fg, four) if any(abs(a) + abs(b) == 1 for a, b in g)]
        table[code] = len(fg_touching_edge) == 1 and len(_components(bg, eight)) == 1
    return table


SIMPLE_POINT = _simple_point_table()
_RING_DY = np.array([d[0] for d in _RING], dtype=np.int64)
_RING_DX = np.array([d[1] for d in _RING], dtype=np.int64)


@numba.njit(cache=True)
def _relax(source, ys, xs, table, ring_dy, ring_dx):  # pragma: no cover - compiled
    """Flip simple mismatched pixels of ``source`` (framed, 0/1) in list order until none flips.

    ``ys, xs`` (framed coordinates) list the mismatches already stable-sorted by |P - t|
    descending. Returns a mask over that list of the mismatches that remain.
    """
    remaining = np.ones(ys.shape[0], np.bool_)
    changed = True
    while changed:
        changed = False
        for i in range(ys.shape[0]):
            if not remaining[i]:
                continue
            y, x = ys[i], xs[i]
            code = 0
            for k in range(8):
                if source[y + ring_dy[k], x + ring_dx[k]] != 0:
                    code |= 1 << k
            if table[code]:
                source[y, x] = 1 - source[y, x]
                remaining[i] = False
                changed = True
    return remaining


@numba.njit(cache=True)
def _splits_in_window(source, y, x, radius):  # pragma: no cover - compiled
    """Distinct labels (0 included) among the 8 neighbours of (y, x) after setting it to 0,
    with 4-connected components computed inside the (2r+1)^2 window (outside the image = 0)."""
    size = 2 * radius + 1
    height, width = source.shape
    window = np.zeros((size, size), np.int32)
    for i in range(size):
        for j in range(size):
            yy, xx = y - radius + i, x - radius + j
            if 0 <= yy < height and 0 <= xx < width and source[yy, xx] != 0:
                window[i, j] = -1  # foreground, unlabelled
    window[radius, radius] = 0
    stack = np.empty(size * size, np.int64)
    next_label = 0
    seen_zero = False
    distinct = 0
    for k in range(8):
        i, j = radius + _RING_DY_C[k], radius + _RING_DX_C[k]
        if window[i, j] == 0:
            if not seen_zero:
                seen_zero = True
                distinct += 1
            continue
        if window[i, j] > 0:
            continue  # already part of a counted component
        next_label += 1
        distinct += 1
        window[i, j] = next_label
        top = 0
        stack[top] = i * size + j
        top += 1
        while top > 0:
            top -= 1
            ci, cj = stack[top] // size, stack[top] % size
            for d in range(4):
                ni, nj = ci + _DY4[d], cj + _DX4[d]
                if 0 <= ni < size and 0 <= nj < size and window[ni, nj] == -1:
                    window[ni, nj] = next_label
                    stack[top] = ni * size + nj
                    top += 1
    return distinct


_RING_DY_C = _RING_DY
_RING_DX_C = _RING_DX
_DY4 = np.array([0, -1, 0, 1], dtype=np.int64)
_DX4 = np.array([-1, 0, 1, 0], dtype=np.int64)


@numba.njit(cache=True)
def _count_splits_and_mergers(source, labels, ys, xs, radius):  # pragma: no cover - compiled
    """Classify the remaining mismatches; return (#split, #merge) pixels.

    U = distinct labels of the in-image 8-neighbours: {0} -> object addition/deletion;
    {a} -> hole addition/deletion; two labels -> hole addition if the pixel is 0, else
    split if the window test finds > 2 labels, else hole deletion; three or more -> merge if
    the pixel is 0, else split.
    """
    height, width = labels.shape
    splits, merges = 0, 0
    seen = np.empty(8, np.int64)
    for i in range(ys.shape[0]):
        y, x = ys[i], xs[i]
        n_seen = 0
        for k in range(8):
            yy, xx = y + _RING_DY_C[k], x + _RING_DX_C[k]
            if 0 <= yy < height and 0 <= xx < width:
                value = labels[yy, xx]
                new = True
                for m in range(n_seen):
                    if seen[m] == value:
                        new = False
                        break
                if new:
                    seen[n_seen] = value
                    n_seen += 1
        if n_seen <= 1:
            continue  # object or hole addition/deletion
        if n_seen == 2:
            if labels[y, x] != 0 and _splits_in_window(source, y, x, radius) > 2:
                splits += 1
            continue
        if labels[y, x] == 0:
            merges += 1
        else:
            splits += 1
    return splits, merges


def _warping_errors_slice(truth: np.ndarray, proposal: np.ndarray, thresholds) -> list[int]:
    """Split + merge pixel counts of one slice at each threshold."""
    height, width = truth.shape
    counts = []
    for t in thresholds:
        target = proposal > np.float64(t)
        source = np.zeros((height + 2, width + 2), np.uint8)  # 1-px membrane frame
        source[1:-1, 1:-1] = truth
        # mismatches in column-major order (x outer, y inner), stable-sorted by |P - t| descending
        xs, ys = np.nonzero((truth != target).T)
        priority = np.abs(proposal[ys, xs].astype(np.float64) - t).astype(np.float32)
        order = np.argsort(-priority, kind="stable")
        ys, xs = ys[order] + 1, xs[order] + 1
        remaining = _relax(source, ys, xs, SIMPLE_POINT, _RING_DY, _RING_DX)
        warped = source[1:-1, 1:-1]
        labels, _ = cells(warped)
        splits, merges = _count_splits_and_mergers(warped, labels, ys[remaining] - 1,
                                                   xs[remaining] - 1, WARPING_WINDOW_RADIUS)
        counts.append(splits + merges)
    return counts


# --------------------------------------------------------------------------------------------
# public API

@dataclass
class Evaluation:
    """All five challenge metrics with their per-threshold values (names as in the reference)."""

    pixel_error: float
    pixel_fscore_per_threshold: list[float]
    rand_error: float
    rand_fscore_per_threshold: list[float]
    warping_error: float
    warping_error_per_threshold: list[float]
    vrand_thinned: float
    vrand_thinned_per_threshold: list[float]
    vinfo_thinned: float
    vinfo_thinned_per_threshold: list[float]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _nanmax(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return max(finite) if finite else math.nan


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _segmentation_scores(proposal, truth, thresholds, thinned: bool, want_rand: bool):
    """Per threshold: Rand F (stack sums) and the per-slice means of V_rand and V_info."""
    gt_labels = [cells(g)[0] for g in truth]
    rand, vrand, vinfo = [], [], []
    for t in thresholds:
        tp = a = b = 0.0
        vr, vi = [], []
        for z in range(truth.shape[0]):
            seg, _ = cells(proposal[z] > np.float64(t))
            if want_rand:
                pairs = _pair_counts(gt_labels[z], seg)
                if pairs is not None:
                    tp, a, b = tp + pairs.tp, a + pairs.a, b + pairs.b
            if thinned:
                pairs = _pair_counts(gt_labels[z], _flood_with_dams(seg))
                if pairs is not None:
                    vr.append(2.0 * pairs.tp / (pairs.a + pairs.b))
                    vi.append(_vinfo(pairs))
        rand.append(2.0 * tp / (a + b) if a + b else math.nan)
        vrand.append(_nanmean(vr))
        vinfo.append(_nanmean(vi))
    return rand, vrand, vinfo


def pixel_fscores(proposal, ground_truth) -> list[float]:
    """The pixel F-score at each threshold of T11 (cell = positive class, counts over the stack)."""
    p, g = _as_stacks(proposal, ground_truth)
    return _pixel_fscores(p, g, THRESHOLDS)


def pixel_error(proposal, ground_truth) -> float:
    """1 - max over T11 of the pixel F-score (cell = positive class, counts over the stack)."""
    return 1.0 - max(pixel_fscores(proposal, ground_truth))


def rand_error(proposal, ground_truth) -> float:
    """Foreground-restricted Rand error: 1 - max over T11 of the Rand F-score."""
    p, g = _as_stacks(proposal, ground_truth)
    return 1.0 - _nanmax(_segmentation_scores(p, g, THRESHOLDS, thinned=False, want_rand=True)[0])


def warping_error(proposal, ground_truth) -> float:
    """Minimum over T10 of (split + merge pixels) / (W * H * slices) after simple-point warping."""
    p, g = _as_stacks(proposal, ground_truth)
    return min(_warping_per_threshold(p, g))


def vrand_thinned(proposal, ground_truth) -> float:
    """V_rand after border thinning: per-slice mean, max over T11 (higher is better)."""
    p, g = _as_stacks(proposal, ground_truth)
    return _nanmax(_segmentation_scores(p, g, THRESHOLDS, thinned=True, want_rand=False)[1])


def vinfo_thinned(proposal, ground_truth) -> float:
    """V_info after border thinning: per-slice mean, max over T11 (higher is better)."""
    p, g = _as_stacks(proposal, ground_truth)
    return _nanmax(_segmentation_scores(p, g, THRESHOLDS, thinned=True, want_rand=False)[2])


def _warping_per_threshold(p: np.ndarray, g: np.ndarray) -> list[float]:
    totals = np.zeros(len(WARPING_THRESHOLDS), dtype=np.int64)
    for z in range(g.shape[0]):
        totals += np.array(_warping_errors_slice(g[z], p[z], WARPING_THRESHOLDS), dtype=np.int64)
    return [float(c) / g.size for c in totals]


def evaluate(proposal, ground_truth) -> Evaluation:
    """All five metrics and their per-threshold values, sharing the thresholded components."""
    p, g = _as_stacks(proposal, ground_truth)
    pixel = _pixel_fscores(p, g, THRESHOLDS)
    rand, vrand, vinfo = _segmentation_scores(p, g, THRESHOLDS, thinned=True, want_rand=True)
    warping = _warping_per_threshold(p, g)
    return Evaluation(
        pixel_error=1.0 - max(pixel), pixel_fscore_per_threshold=pixel,
        rand_error=1.0 - _nanmax(rand), rand_fscore_per_threshold=rand,
        warping_error=min(warping), warping_error_per_threshold=warping,
        vrand_thinned=_nanmax(vrand), vrand_thinned_per_threshold=vrand,
        vinfo_thinned=_nanmax(vinfo), vinfo_thinned_per_threshold=vinfo,
    )
