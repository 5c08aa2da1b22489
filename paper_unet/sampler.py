"""Training samples: one large tile per step, as in the paper (Sec. 3).

    "To minimize the overhead and make maximum use of the GPU memory, we favor large input tiles
    over a large batch size and hence reduce the batch to a single image."

`TileSampler` yields (572x572 input tile with mirrored context, 388x388 labels, 388x388 weights)
drawn from the training slices through the augmentation of `paper_unet.augment`; the output size
follows the network (`tiling.output_size`). Weight maps (Eq. 2) are computed once per slice with
class weights estimated over all training slices, and warped with the image. Sample ``i`` comes
from its own generator seeded by (seed, stream, i): deterministic, and the same whichever worker,
process or device draws it.

Augmentation on the training device: the slices, labels and weight maps are moved to ``device``
once; `TileSampler.batch` draws each sample's parameters on the host (a few numbers per sample)
and builds the sampling grids and the three resamplings for the whole batch on the device
(`augment.augment_batch`). On a GPU these kernels are queued asynchronously, so the host draws
the next step's parameters while the device is still busy with the current step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from paper_unet.augment import (AugmentConfig, AugmentParams, augment_packed, draw_params, has_gray_values,
                                pack_params, to_device)
from paper_unet.tiling import check_input_size, output_size
from paper_unet.weights import estimate_class_weights, weight_map

__all__ = ["TileSampler", "sample_seed", "as_unit_float"]


def as_unit_float(images: np.ndarray) -> np.ndarray:
    """float32 intensities in [0, 1]: uint8 / 255 (ISBI), float data as it is (checked)."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)
    if images.dtype.kind != "f":
        raise TypeError(f"training images must be uint8 or float in [0, 1], got {images.dtype}; "
                        f"normalise them first (paper_unet.images.normalize)")
    if images.size and (float(images.min()) < 0 or float(images.max()) > 1):
        raise ValueError("training images must lie in [0, 1]; normalise them first (paper_unet.images.normalize)")
    return np.ascontiguousarray(images, dtype=np.float32)


def sample_seed(seed: int, index: int, stream: int = 0) -> int:
    """A 63-bit seed for sample ``index`` of ``stream`` (e.g. a data-parallel rank)."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(2, np.uint64)[0] >> 1)


class TileSampler(Dataset):
    """Map-style dataset of augmented training tiles (index -> sample, reproducible).

    Args:
        images: (N, H, W) uint8 (divided by 255) or float in [0, 1] (`images.normalize`).
        labels: (N, H, W); 0 = membrane, > 0 = cell.
        tile: input tile edge (a valid input size, 572 in the paper).
        depth: network depth, for the output size (388 for 572 at depth 5).
        length: number of samples (training iterations x batch size).
        seed, stream: seed of the whole sequence, and a stream id (the rank under DDP).
        augment_config: `AugmentConfig`; None disables augmentation (centred, unwarped tiles).
        w0, sigma: Eq. 2 parameters.
        device: where the slices live and the augmentation runs (the training device).
        out_tile: edge of the labelled centre (default: the unpadded network's output for
            ``tile``; the tile itself for a same-padding network).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, tile: int = 572, depth: int = 5,
                 length: int = 1000, seed: int = 0, stream: int = 0,
                 augment_config: AugmentConfig | None = AugmentConfig(),
                 w0: float = 10.0, sigma: float = 5.0, device: torch.device | str = "cpu",
                 out_tile: int | None = None) -> None:
        if images.shape != labels.shape or images.ndim != 3:
            raise ValueError(f"images {images.shape} and labels {labels.shape} must be equal (N, H, W)")
        self.tile = check_input_size(tile, depth)
        self.out_tile = output_size(tile, depth) if out_tile is None else int(out_tile)
        self.length, self.seed, self.stream = int(length), int(seed), int(stream)
        self.config = augment_config
        self.device = torch.device(device)
        self.images = torch.from_numpy(as_unit_float(images)).to(self.device)
        self.labels = torch.from_numpy((labels > 0).astype(np.float32)).to(self.device)
        self.class_weights = estimate_class_weights(labels > 0)
        self.weights = torch.from_numpy(np.stack(
            [weight_map(label, w0, sigma, self.class_weights) for label in labels])).to(self.device)

    def __len__(self) -> int:
        return self.length

    def draw(self, index: int) -> tuple[int, AugmentParams]:
        """Sample ``index``'s slice and augmentation parameters, from its own seeded generator."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(sample_seed(self.seed, index, self.stream))
        z = int(torch.randint(len(self.images), (1,), generator=generator))
        shape = tuple(self.images.shape[-2:])
        config = self.config or AugmentConfig(rotate=False, flip=False, shift=False, elastic_std=0.0,
                                              gamma=(1, 1), contrast=(1, 1), brightness=(0, 0))
        return z, draw_params(config, shape, generator)

    def batch(self, indices, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples ``indices`` stacked on the device: (N, 1, tile, tile) images, (N, out, out) int64
        labels and weights, one augmentation pass for the batch in ``dtype`` (as `augment_batch`: the
        draws travel in one asynchronous copy; the gray-value kernels run only when a draw needs them)."""
        slices, params = self._draws(indices)
        packed = pack_params(params, dtype)
        return self.device_batch(to_device(slices, self.device), to_device(packed, self.device),
                                 gray=has_gray_values(params))

    def _draws(self, indices) -> tuple[torch.Tensor, list[AugmentParams]]:
        draws = [self.draw(int(i)) for i in indices]
        return torch.tensor([z for z, _ in draws]), [p for _, p in draws]

    def draw_batch(self, indices, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """The host part of `batch`: the slice numbers (N,) and the packed parameters (N, 8 + 2 g^2)
        of ``indices`` as host tensors, for `device_batch` (a whole-step CUDA graph copies them into
        its static buffers)."""
        slices, params = self._draws(indices)
        return slices, pack_params(params, dtype)

    def device_batch(self, slices: torch.Tensor, packed: torch.Tensor, *, gray: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The device part of `batch`, from `draw_batch`'s tensors on the device: device operations
        only, with fixed shapes (`augment_packed`); ``gray``: as there. The same tiles as `batch`."""
        image, label, weight = augment_packed(self.images[slices], self.labels[slices], self.weights[slices],
                                              packed, self.tile, self.out_tile, gray=gray)
        return image[:, None], label.round().long(), weight

    @property
    def gray_values(self) -> bool:
        """Whether the augmentation can change gray values (False only when every draw is the identity)."""
        c = self.config
        return c is not None and (tuple(c.gamma), tuple(c.contrast), tuple(c.brightness)) != ((1, 1), (1, 1), (0, 0))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image, label, weight = self.batch([index])
        return image[0], label[0], weight[0]
