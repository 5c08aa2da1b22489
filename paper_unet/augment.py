"""Data augmentation of paper Sec. 3.1, composed into one sampling grid per sample.

    "we primarily need shift and rotation invariance as well as robustness to deformations and
    gray value variations. Especially random elastic deformations of the training samples seem to
    be the key concept [...]. We generate smooth deformations using random displacement vectors
    on a coarse 3 by 3 grid. The displacements are sampled from a Gaussian distribution with
    10 pixels standard deviation. Per-pixel displacements are then computed using bicubic
    interpolation."

Our reading (docs/spec.md section 2, Decision): the 3x3 grid nodes span the *input* tile the network sees
(corners on its corners), so the labelled output region in its centre sees the interpolated
interior of the field (for 572 -> 388, a corner node's displacement arrives at the output tile's
corners at about half its size); a random flip, a rotation by a uniform angle, a shift (a uniformly drawn tile
centre) and the elastic field are composed into **one** sampling grid; each array is resampled
once through it: the image bicubic, the labels nearest, the weights bilinear, and outside the
slice everything is mirrored (reflect, edge pixel not repeated). Gray values: a random gamma,
contrast and brightness (ranges in `AugmentConfig`), clipped to [0, 1].

Written in torch, so the same code runs on the CPU and on the training GPU; every sample is drawn
from its own seeded generator, so results are reproducible and independent of worker layout.
`augment` is the plain one-sample path; `augment_batch` does the same for a batch of samples in
one pass on the training device (the parameters are still drawn per sample on the host), and
equals `augment` sample for sample (tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "AugmentParams", "draw_params", "sampling_grid", "resample", "augment",
           "augment_batch", "augment_packed", "pack_params", "has_gray_values", "to_device"]


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation; defaults are the paper's elastic settings plus our documented ranges."""

    elastic_grid: int = 3  # [paper] coarse 3x3 grid of displacement vectors
    elastic_std: float = 10.0  # [paper] px, per displacement component
    rotate: bool = True  # [ours] uniform angle in [0, 360)
    flip: bool = True  # [ours] mirror with probability 1/2 (with rotation: all 8 symmetries)
    shift: bool = True  # [ours] tile centre uniform over the slice
    gamma: tuple[float, float] = (0.8, 1.25)  # [ours] log-uniform
    contrast: tuple[float, float] = (0.9, 1.1)  # [ours] uniform multiplier around 0.5
    brightness: tuple[float, float] = (-0.05, 0.05)  # [ours] uniform offset


@dataclass
class AugmentParams:
    """One sample's random draw (all in pixels / radians of the source slice)."""

    center: tuple[float, float]  # (y, x) of the tile centre in the slice
    angle: float
    flip: bool
    displacement: torch.Tensor  # (2, g, g): (dy, dx) at the grid nodes
    gamma: float = 1.0
    contrast: float = 1.0
    brightness: float = 0.0


def identity_params(center: tuple[float, float], grid: int = 3) -> AugmentParams:
    return AugmentParams(center=center, angle=0.0, flip=False, displacement=torch.zeros(2, grid, grid))


def draw_params(config: AugmentConfig, slice_shape: tuple[int, int],
                generator: torch.Generator) -> AugmentParams:
    """Draw one sample's parameters from ``generator`` (a fixed number of draws, in fixed order)."""
    u = torch.rand(7, generator=generator, dtype=torch.float64).tolist()
    g = config.elastic_grid
    displacement = torch.randn(2, g, g, generator=generator, dtype=torch.float64) * config.elastic_std
    height, width = slice_shape
    center = ((u[0] * height, u[1] * width) if config.shift else ((height - 1) / 2, (width - 1) / 2))
    lo, hi = math.log(config.gamma[0]), math.log(config.gamma[1])
    return AugmentParams(
        center=center,
        angle=2 * math.pi * u[2] if config.rotate else 0.0,
        flip=bool(u[3] < 0.5) if config.flip else False,
        displacement=displacement.float(),
        gamma=math.exp(lo + (hi - lo) * u[4]),
        contrast=config.contrast[0] + (config.contrast[1] - config.contrast[0]) * u[5],
        brightness=config.brightness[0] + (config.brightness[1] - config.brightness[0]) * u[6],
    )


def displacement_field(displacement: torch.Tensor, size: int) -> torch.Tensor:
    """Per-pixel (dy, dx) on a size x size tile: bicubic up-sampling of the coarse grid [paper]."""
    return F.interpolate(displacement[None], size=(size, size), mode="bicubic", align_corners=True)[0]


def sampling_grid(params: AugmentParams, tile: int, slice_shape: tuple[int, int],
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Source coordinates for every pixel of a tile x tile output, in grid_sample's [-1, 1] units.

    Output pixel (i, j), centred at (v, u) = (i - c, j - c) with c = (tile - 1) / 2, samples the
    slice at centre + R(angle) @ flip(v, u) + elastic(i, j). Returns (1, tile, tile, 2) as (x, y).
    """
    c = (tile - 1) / 2
    axis = torch.arange(tile, dtype=torch.float32, device=device) - c
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    if params.flip:
        u = -u
    cos, sin = math.cos(params.angle), math.sin(params.angle)
    dy, dx = displacement_field(params.displacement.to(device), tile)
    y = params.center[0] + cos * v + sin * u + dy
    x = params.center[1] - sin * v + cos * u + dx
    height, width = slice_shape
    # align_corners=True: -1 and 1 are the centres of the first and last pixel
    gx = 2 * x / max(width - 1, 1) - 1
    gy = 2 * y / max(height - 1, 1) - 1
    return torch.stack([gx, gy], dim=-1)[None]


def resample(array: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample a (H, W) array through ``grid``, mirroring outside (numpy 'reflect')."""
    out = F.grid_sample(array[None, None].float(), grid, mode=mode, padding_mode="reflection",
                        align_corners=True)
    return out[0, 0]


def gray_values(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    """Gamma, then contrast around 0.5, then brightness; clipped to [0, 1]."""
    if _is_identity_gray(params):
        return image
    out = image.clamp(0, 1).pow(params.gamma)
    out = (out - 0.5) * params.contrast + 0.5 + params.brightness
    return out.clamp(0, 1)


def augment(image: torch.Tensor, label: torch.Tensor | None, weight: torch.Tensor | None,
            params: AugmentParams, tile: int, out_tile: int
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One training sample: (tile x tile image, out_tile^2 labels, out_tile^2 weights).

    The labels and weights are read through the centre out_tile x out_tile part of the same grid,
    so they align with the network's valid output for the image tile.
    """
    grid = sampling_grid(params, tile, tuple(image.shape[-2:]), image.device)
    image_tile = gray_values(resample(image, grid, "bicubic").clamp(0, 1), params)  # no overshoot
    margin = (tile - out_tile) // 2
    inner = grid[:, margin : margin + out_tile, margin : margin + out_tile]
    label_tile = resample(label, inner, "nearest") if label is not None else None
    weight_tile = resample(weight, inner, "bilinear") if weight is not None else None
    return image_tile, label_tile, weight_tile


def _is_identity_gray(params: AugmentParams) -> bool:
    return params.gamma == 1.0 and params.contrast == 1.0 and params.brightness == 0.0


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a small host tensor to ``device`` without waiting for the device: through pinned memory
    (a copy from pageable memory would first wait for the device's queued work to finish)."""
    if device.type == "cuda":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def pack_params(params: list[AugmentParams], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The N draws as one host tensor (N, 8 + 2 g^2), one row per sample, rounded to ``dtype`` like a
    Python scalar: centre (y, x), cos, sin, flip, gamma, contrast, brightness, then the (2, g, g)
    displacements. What `augment_packed` reads on the device."""
    return torch.tensor([[p.center[0], p.center[1], math.cos(p.angle), math.sin(p.angle), float(p.flip), p.gamma,
                          p.contrast, p.brightness, *p.displacement.flatten().tolist()] for p in params], dtype=dtype)


def has_gray_values(params: list[AugmentParams]) -> bool:
    """Whether any draw changes gray values (decided on the host, from the draws)."""
    return not all(_is_identity_gray(p) for p in params)


def augment_batch(images: torch.Tensor, labels: torch.Tensor | None, weights: torch.Tensor | None,
                  params: list[AugmentParams], tile: int, out_tile: int, dtype: torch.dtype = torch.float32
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """`augment` for a batch, in one pass on the device of ``images``.

    Args:
        images, labels, weights: (N, H, W) source slices, one per sample (a slice may repeat);
            labels and weights may be None.
        params: N parameter draws (`draw_params`), as for `augment`.
        dtype: the arithmetic's precision. Training uses float32; float64 gives the tests a reference
            against which the float32 results of the CPU and of a GPU are held.
    Returns (N, tile, tile) images and (N, out_tile, out_tile) labels and weights: the same values
    as N calls of `augment` (the same float32 operations, batched). The parameters travel to the
    device in one asynchronous copy (`pack_params`, `to_device`), so the host never waits for the
    device here; the device part is `augment_packed`.
    """
    n = len(params)
    if images.ndim != 3 or images.shape[0] != n:
        raise ValueError(f"images {tuple(images.shape)} must be (N, H, W) with N = {n} parameter draws")
    packed = to_device(pack_params(params, dtype), images.device)
    return augment_packed(images, labels, weights, packed, tile, out_tile, gray=has_gray_values(params))


def augment_packed(images: torch.Tensor, labels: torch.Tensor | None, weights: torch.Tensor | None,
                   packed: torch.Tensor, tile: int, out_tile: int, *, gray: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The device part of `augment_batch`: ``packed`` (N, 8 + 2 g^2) parameter rows (`pack_params`,
    already on the device, in the arithmetic's dtype). Only device operations, with shapes fixed by
    (N, g, tile): a whole-step CUDA graph captures it. ``gray``: apply the gray-value changes (a
    draw without any is left exact by ``torch.where``, so True gives the same tiles, at the price of
    a few kernels; False skips them, for draws known to have none)."""
    n, dtype, device = packed.shape[0], packed.dtype, images.device
    height, width = images.shape[-2:]
    g = math.isqrt((packed.shape[1] - 8) // 2)
    cy, cx, cos, sin, flip, gamma, contrast, brightness = (packed[:, i, None, None] for i in range(8))
    displacement = packed[:, 8:].reshape(n, 2, g, g)
    c = (tile - 1) / 2
    axis = torch.arange(tile, dtype=dtype, device=device) - c
    v, u = torch.meshgrid(axis, axis, indexing="ij")
    u = torch.where(flip > 0.5, -u, u)
    field = F.interpolate(displacement, size=(tile, tile), mode="bicubic", align_corners=True)
    y = cy + cos * v + sin * u + field[:, 0]
    x = cx - sin * v + cos * u + field[:, 1]
    grid = torch.stack([2 * x / max(width - 1, 1) - 1, 2 * y / max(height - 1, 1) - 1], dim=-1)

    def sample(array: torch.Tensor, where: torch.Tensor, mode: str) -> torch.Tensor:
        return F.grid_sample(array[:, None].to(dtype), where, mode=mode, padding_mode="reflection",
                             align_corners=True)[:, 0]

    image_tiles = sample(images, grid, "bicubic").clamp(0, 1)
    if gray:
        changed = (gamma != 1) | (contrast != 1) | (brightness != 0)
        varied = ((image_tiles.pow(gamma) - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
        image_tiles = torch.where(changed, varied, image_tiles)  # (x - 0.5) + 0.5 is not exact in float32
    margin = (tile - out_tile) // 2
    inner = grid[:, margin : margin + out_tile, margin : margin + out_tile]
    label_tiles = sample(labels, inner, "nearest") if labels is not None else None
    weight_tiles = sample(weights, inner, "bilinear") if weights is not None else None
    return image_tiles, label_tiles, weight_tiles
