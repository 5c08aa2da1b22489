"""Overlap-tile inference (paper Fig. 2) and the size arithmetic of the unpadded U-Net.

    "This strategy allows the seamless segmentation of arbitrarily large images by an overlap-tile
    strategy. To predict the pixels in the border region of the image, the missing context is
    extrapolated by mirroring the input image." (Sec. 2)

Sizes. Each level of the contracting path loses 4 px to its two unpadded 3x3 convs, then halves
in a 2x2 max-pool (which needs an even size); the expansive path doubles and loses 4 px per level.
For depth 5: input 16k + 60 -> output 16k - 124 (k >= 8), e.g. 572 -> 388 and 700 -> 516, and every
output pixel is computed from 92 px of context on each side.

Exactness (Decision). Because of the 2x2 pools, the network is equivariant to shifts by multiples
of 2**(depth-1) = 16 px, not to every shift. `predict` therefore places every tile so that its
output starts at a multiple of 16 in image coordinates, all tiles sharing the origin of one
conceptual whole-image pass over the mirror-padded image. Any tile size whose output is at least
16 px (input >= 204 at depth 5) then gives the same probabilities as that single pass (up to float
rounding), which the tests check; smaller tiles cannot sit on the 16-px grid and raise.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

__all__ = [
    "output_size",
    "valid_input_size",
    "is_valid_input_size",
    "check_input_size",
    "context",
    "mirror_pad",
    "tile_starts",
    "dihedral_transforms",
    "predict",
    "predict_stack",
]


def _trace(input_size: int, depth: int) -> int | None:
    """Output edge for ``input_size``, or None when some layer would get an invalid size."""
    n = int(input_size)
    for _ in range(depth - 1):
        n -= 4  # two unpadded 3x3 convs
        if n <= 0 or n % 2:
            return None  # the 2x2 max-pool needs an even, positive size
        n //= 2
    n -= 4  # the bottom level's two convs
    if n <= 0:
        return None
    for _ in range(depth - 1):
        n = 2 * n - 4  # 2x2 up-conv, then two 3x3 convs
        if n <= 0:
            return None
    return n


def _check_depth(depth: int) -> int:
    if int(depth) != depth or depth < 1:
        raise ValueError(f"depth must be a positive integer, got {depth!r}")
    return int(depth)


def is_valid_input_size(input_size: int, depth: int = 5) -> bool:
    """True when a U-Net of this depth accepts ``input_size`` (16k + 60, k >= 8, for depth 5)."""
    return _trace(input_size, _check_depth(depth)) is not None


def _smallest_valid(depth: int) -> int:
    n = 1
    while _trace(n, depth) is None:
        n += 1
    return n


def _nearest_valid(input_size: int, depth: int) -> tuple[int | None, int]:
    period = 2 ** (depth - 1)
    first = _smallest_valid(depth)
    if input_size < first:
        return None, first
    below = first + (input_size - first) // period * period
    return below, below if below == input_size else below + period


def check_input_size(input_size: int, depth: int = 5) -> int:
    """Return ``input_size`` if valid, else raise a ValueError naming the nearest valid sizes."""
    depth = _check_depth(depth)
    if _trace(input_size, depth) is not None:
        return int(input_size)
    below, above = _nearest_valid(int(input_size), depth)
    period = 2 ** (depth - 1)
    nearest = f"{below} or {above}" if below is not None else f"{above} (the smallest)"
    raise ValueError(
        f"invalid input size {input_size} for an unpadded U-Net of depth {depth}: every pooled size "
        f"must be even and every output positive, so valid sizes step by {period} "
        f"({_smallest_valid(depth)}, {_smallest_valid(depth) + period}, ...); nearest valid: {nearest}"
    )


def output_size(input_size: int, depth: int = 5) -> int:
    """Output edge of the unpadded U-Net for an input edge: 572 -> 388 (depth 5)."""
    check_input_size(input_size, depth)
    return _trace(input_size, depth)  # type: ignore[return-value]


def context(depth: int = 5) -> int:
    """Context lost per side (input - output) / 2: 92 px for depth 5."""
    first = _smallest_valid(_check_depth(depth))
    return (first - _trace(first, depth)) // 2  # type: ignore[operator]


def valid_input_size(min_output: int, depth: int = 5) -> int:
    """Smallest valid input edge whose output edge is at least ``min_output`` (512 -> 700)."""
    depth = _check_depth(depth)
    if min_output < 1:
        raise ValueError(f"min_output must be >= 1, got {min_output}")
    period = 2 ** (depth - 1)  # the output grows by one period per valid input step
    first = _smallest_valid(depth)
    steps = max(0, math.ceil((min_output - _trace(first, depth)) / period))  # type: ignore[operator]
    return first + steps * period


def mirror_pad(image: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """Extend the last two axes by mirroring (edge pixel not repeated, numpy ``reflect``).

    Pads wider than the image are filled by repeated reflection. An axis of 1 pixel is repeated
    instead (``symmetric``: reflect is undefined there); the other axis is still reflected.
    """
    lead = [(0, 0)] * (image.ndim - 2)
    for axis, (before, after) in enumerate(pad):
        pad_width = lead + [(0, 0), (0, 0)]
        pad_width[image.ndim - 2 + axis] = (before, after)
        mode = "reflect" if image.shape[image.ndim - 2 + axis] >= 2 else "symmetric"
        image = np.pad(image, pad_width, mode=mode)
    return image


def tile_starts(length: int, tile_output: int, period: int) -> list[int]:
    """Output offsets of tiles covering ``[0, length)``, each a multiple of ``period``.

    The tiles overlap as little as the period allows; the last one may reach past ``length``
    (into the mirrored border), which keeps every start on the period grid.
    """
    if length <= tile_output:
        return [0]
    step = tile_output // period * period
    if step == 0:
        raise ValueError(
            f"tiles with {tile_output} output px are smaller than the {period}-px pooling period, "
            f"so they cannot cover an image exactly; use a larger tile_size"
        )
    last = math.ceil((length - tile_output) / period) * period
    return sorted(set(range(0, last, step)) | {last})


def dihedral_transforms() -> list[tuple[int, bool]]:
    """The 8 symmetries of the square as (quarter turns k, flip first); (0, False) = identity."""
    return [(k, flip) for flip in (False, True) for k in range(4)]


def _apply(array: np.ndarray, transform: tuple[int, bool]) -> np.ndarray:
    k, flip = transform
    if flip:
        array = np.flip(array, axis=-1)
    return np.rot90(array, k, axes=(-2, -1))


def _invert(array: np.ndarray, transform: tuple[int, bool]) -> np.ndarray:
    k, flip = transform
    array = np.rot90(array, -k, axes=(-2, -1))
    return np.flip(array, axis=-1) if flip else array


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"predict expects one (H, W) image, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError(
            f"image dtype is {image.dtype}; predict expects float values in [0, 1] "
            f"(for a uint8 slice pass image / 255)"
        )
    if image.size == 0:
        raise ValueError("image is empty")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    lo, hi = float(image.min()), float(image.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"image values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]")
    return image.astype(np.float32, copy=False)


def _plan(model: torch.nn.Module, image: np.ndarray, tile_size: int | None):
    """Tile plan of one image: the mirror-padded image, tile edges and the output offsets."""
    depth = model.depth
    height, width = image.shape
    if tile_size is None:  # one tile, possibly non-square, that covers the whole image
        tile_h, tile_w = valid_input_size(height, depth), valid_input_size(width, depth)
    else:
        tile_h = tile_w = check_input_size(tile_size, depth)
    out_h, out_w = output_size(tile_h, depth), output_size(tile_w, depth)
    period, margin = 2 ** (depth - 1), context(depth)
    ys, xs = tile_starts(height, out_h, period), tile_starts(width, out_w, period)
    padded = mirror_pad(image, ((margin, ys[-1] + out_h - height + margin),
                                (margin, xs[-1] + out_w - width + margin)))
    return padded, (tile_h, tile_w), (out_h, out_w), [(y, x) for y in ys for x in xs]


def _summed_logits(model: torch.nn.Module, image: np.ndarray, transforms: list[tuple[int, bool]],
                   tile_size: int | None, batch_size: int, device: torch.device) -> np.ndarray:
    """Sum over ``transforms`` of the back-transformed logits (C, H, W) float64.

    For each transform, the logits of the transformed image equal one whole-image pass over it.
    The tiles of all views are batched together: tiles of the same shape are ordered by position,
    then by view, so the 8 dihedral views of a square tile go through the network side by side
    (one forward pass when ``batch_size`` >= 8). Batching changes no tile's input.
    """
    views = [np.ascontiguousarray(_apply(image, transform)) for transform in transforms]
    plans = [_plan(model, view, tile_size) for view in views]
    results = [np.empty((model.num_classes, *view.shape), dtype=np.float32) for view in views]
    jobs: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
    for v, (_, tile, _, positions) in enumerate(plans):
        for p, (y, x) in enumerate(positions):
            jobs.setdefault(tile, []).append((p, v, y, x))
    for (tile_h, tile_w), group in jobs.items():
        group.sort()
        for i in range(0, len(group), batch_size):
            batch = group[i : i + batch_size]
            tiles = np.stack([plans[v][0][y : y + tile_h, x : x + tile_w] for _, v, y, x in batch])
            logits = model(torch.from_numpy(tiles[:, None]).to(device)).float().cpu().numpy()
            for (_, v, y, x), tile_logits in zip(batch, logits):
                out_h, out_w = plans[v][2]
                height, width = views[v].shape
                h, w = min(out_h, height - y), min(out_w, width - x)
                results[v][:, y : y + h, x : x + w] = tile_logits[:, :h, :w]
    total = np.zeros((model.num_classes, *image.shape), dtype=np.float64)
    for transform, result in zip(transforms, results):
        total += _invert(result, transform)
    return total


def predict(model: torch.nn.Module, image: np.ndarray, *, tile_size: int | None = None,
            tta: bool = False, batch_size: int = 4,
            device: torch.device | str | None = None) -> np.ndarray:
    """Softmax probabilities (num_classes, H, W) float32 for one (H, W) image in [0, 1].

    Args:
        model: an unpadded `paper_unet.UNet` (needs ``depth`` and ``num_classes``), or the
            same-padding `PaddedUNet` ablation baseline, which predicts whole images (no tiles).
        image: (H, W) float array in [0, 1]; any size, also smaller than one tile, non-square.
        tile_size: edge of the square *input* tile, a valid input size (e.g. 572). None uses the
            smallest single tile that covers the image (700 for a 512x512 ISBI slice). Every tile
            size whose output is at least the 16-px pooling period (input >= 204 at depth 5) gives
            the same result as one whole-image pass; a smaller tile that would need several tiles
            raises a ValueError (it cannot be placed on the 16-px grid).
        tta: test-time augmentation (Decision: the paper averages "7 rotated versions of the
            input data" without saying which; we average the logits of the 8 dihedral transforms,
            identity included, then apply the softmax).
        batch_size: tiles per forward pass. With ``tta`` the views of one tile position are
            batched together: 8 passes the 8 views of a square tile as one batch.
        device: where to run; default: the device of the model's parameters.
    """
    padded = getattr(model, "same_padding", False)  # the PaddedUNet ablation baseline
    if not padded and (not hasattr(model, "depth") or not hasattr(model, "num_classes")):
        raise TypeError("predict needs an unpadded paper_unet.UNet (with .depth and .num_classes)")
    if padded and tile_size is not None:
        raise ValueError("a same-padding network (PaddedUNet) predicts whole images: leave tile_size None")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    image = _check_image(image)
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is available; use device='cpu'")
    transforms = dihedral_transforms() if tta else [(0, False)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if padded:  # whole images through the network, no overlap-tile
                total = np.zeros((model.num_classes, *image.shape), dtype=np.float64)
                for transform in transforms:
                    view = torch.from_numpy(np.ascontiguousarray(_apply(image, transform)))[None, None]
                    total += _invert(model(view.to(device)).float().cpu().numpy()[0], transform)
            else:
                total = _summed_logits(model, image, transforms, tile_size, batch_size, device)
            mean_logits = torch.from_numpy(total / len(transforms))
            return torch.softmax(mean_logits, dim=0).numpy().astype(np.float32)
    finally:
        model.train(was_training)


def predict_stack(model: torch.nn.Module, images: np.ndarray, *, tile_size: int | None = None,
                  tta: bool = False, batch_size: int | None = None,
                  device: torch.device | str | None = None, progress: bool = True) -> np.ndarray:
    """P(cell) (class 1) for every slice of a uint8 (Z, H, W) or float [0, 1] stack: float32 (Z, H, W).

    This is the challenge's submission format (1 = cell, 0 = membrane). ``batch_size`` (tiles per
    forward pass) defaults to 8 with TTA (the 8 views of a tile in one pass), else 4.
    """
    if batch_size is None:
        batch_size = 8 if tta else 4
    from tqdm import tqdm

    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"expected an image stack (Z, H, W), got shape {images.shape}")
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    out = np.empty(images.shape, dtype=np.float32)
    for z in tqdm(range(len(images)), desc="predict", disable=not progress, file=sys.stderr):
        image = images[z].astype(np.float32) / scale
        out[z] = predict(model, image, tile_size=tile_size, tta=tta, batch_size=batch_size,
                         device=device)[1]
    return out
