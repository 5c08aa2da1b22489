"""Overlap-tile inference of large images in memory bounded by the tile (paper Fig. 2, for any image size).

`tiling.predict` builds each view of the image whole: the mirror-padded image, its eight dihedral views with
TTA, their logits and their sum, a few times the image's size in float32 and float64. `predict_streamed`
computes the same P(cell) tile by tile: each tile of each view is cut from the *raw* image through index maps
(the view is a numpy view of the image, the mirror padding an index reflection: nothing is copied whole),
normalised alone (`images.Normalizer`, elementwise, so bit for bit the normalised image's tile), and its logit
difference (cell minus membrane) is added into one float32 plane of the image's size, each pixel from the one
tile of the view that owns it (`tile_plan`: the tile `tiling.predict` writes last there); at the end that plane
becomes P(cell) = sigmoid(mean logit difference) in place. That plane is the output: with ``out`` a memory-mapped
TIFF (`tifffile.memmap`) the output is on disk and the process holds the raw image plus a few tiles.

The tiles are those `tiling.predict` uses (the same grid of each view, the same context), so the result equals
it up to float rounding: float32 sums instead of float64, the sigmoid of the difference instead of the softmax
of two logits (tests: equal to 1e-5 on images that fit either way).
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from paper_unet.tiling import (check_input_size, context, dihedral_transforms, output_size, tile_starts,
                               valid_input_size, _apply)

__all__ = ["predict_streamed", "reflect_index", "tile_plan"]


def reflect_index(index: np.ndarray, length: int) -> np.ndarray:
    """The source index of each (possibly out-of-range) index under repeated mirroring without repeating the
    edge (numpy ``reflect``, what `tiling.mirror_pad` does); an axis of one pixel repeats it."""
    if length == 1:
        return np.zeros_like(index)
    period = 2 * (length - 1)
    folded = np.mod(index, period)
    return np.where(folded < length, folded, period - folded)


def tile_plan(height: int, width: int, tile: int, depth: int) -> tuple[int, int, list[tuple[int, int, int, int]]]:
    """(output edge, context margin, tiles) of one view on the grid `tiling.predict` uses. Each tile is (y, x, h, w):
    its output offset and the part of its output it owns. Neighbouring tiles overlap (the last one of a row or
    column is pulled back onto the pooling grid); as in `tiling.predict`, where the later tile overwrites the
    earlier, the overlap belongs to the later tile, so every pixel is owned by exactly one tile."""
    out = output_size(tile, depth)
    period, margin = 2 ** (depth - 1), context(depth)
    ys, xs = tile_starts(height, out, period), tile_starts(width, out, period)

    def owned(starts: list[int], length: int) -> list[int]:
        ends = starts[1:] + [length]
        return [min(end, start + out, length) - start for start, end in zip(starts, ends)]

    return out, margin, [(y, x, h, w) for y, h in zip(ys, owned(ys, height)) for x, w in zip(xs, owned(xs, width))]


def _tiles(model, raw, normalizer, tile: int, transforms, batch_size: int):
    """Batches of (view index, y, x, input tiles) over every view's grid, cut from ``raw`` by index maps."""
    for v, transform in enumerate(transforms):
        view = _apply(raw, transform)  # a numpy view: rotations and flips copy nothing
        height, width = view.shape
        _, margin, positions = tile_plan(height, width, tile, model.depth)
        for i in range(0, len(positions), batch_size):
            batch = positions[i:i + batch_size]
            tiles = np.stack([normalizer(view[np.ix_(reflect_index(np.arange(y - margin, y - margin + tile), height),
                                                      reflect_index(np.arange(x - margin, x - margin + tile), width))])
                              for y, x, _, _ in batch])
            yield v, batch, tiles


def predict_streamed(model: torch.nn.Module, raw: np.ndarray, normalizer, *, tile_size: int | None = None,
                     tta: bool = False, batch_size: int = 8, device: torch.device | str | None = None,
                     out: np.ndarray | None = None, progress: bool = True) -> np.ndarray:
    """P(cell) float32 (H, W) of one raw (H, W) image of any size, in memory bounded by the tile.

    ``normalizer``: `images.normalizer` of the image (or its stack), applied per tile. ``tile_size``: the input
    tile edge (default the paper's 572 at depth 5: 388 output px). ``out``: where to write (an (H, W) float32
    array or a memory-mapped TIFF page); it is used as the accumulator, so it must not alias ``raw``.
    """
    if getattr(model, "same_padding", False) or getattr(model, "num_classes", 2) != 2:
        raise ValueError("streamed prediction needs the unpadded U-Net with two classes (cell, membrane)")
    tile = check_input_size(tile_size, model.depth) if tile_size else valid_input_size(388, model.depth)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    height, width = raw.shape
    plane = np.zeros((height, width), np.float32) if out is None else out
    plane[...] = 0.0
    transforms = dihedral_transforms() if tta else [(0, False)]
    total = sum(len(tile_plan(*_apply(raw, t).shape, tile, model.depth)[2]) for t in transforms)
    from tqdm import tqdm

    bar = tqdm(total=total, desc="predict (tiles)", unit="tile", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for v, batch, tiles in _tiles(model, raw, normalizer, tile, transforms, batch_size):
                logits = model(torch.from_numpy(tiles[:, None]).to(device)).float().cpu().numpy()
                view = _apply(plane, transforms[v])  # writes through to the plane
                for (y, x, h, w), tile_logits in zip(batch, logits):  # each pixel once per view: its owner tile
                    view[y:y + h, x:x + w] += tile_logits[1, :h, :w] - tile_logits[0, :h, :w]
                bar.update(len(batch))
    finally:
        model.train(was_training)
        bar.close()
    _to_probability(plane, len(transforms))
    return plane


def _to_probability(plane: np.ndarray, views: int, rows: int = 1024) -> None:
    """The summed logit difference of ``views`` views -> P(cell) = sigmoid(mean), in place, a band at a time."""
    for start in range(0, plane.shape[0], rows):
        band = plane[start:start + rows].astype(np.float64) / views
        plane[start:start + rows] = 1.0 / (1.0 + np.exp(-band))
