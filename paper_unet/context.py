"""The run context: what one process trains with, resolved once.

`RunContext.build` resolves the device (under DDP on CUDA: this process's GPU), the fast path
(`fastpath.resolve`: bf16 autocast and channels_last for this device) and the step's levers
(`step.resolve_levers`), and holds the factories of the network (its initial weights from the seed), the
optimiser and the training sampler. The training loop (`train`), the step timer (`estimate.time_step`,
and through it `estimate_run` and bench_train.py), the step profiler (profile_step.py), the reproduction's
stage records (`reproduce`) and the studies' rows take it, so that the set-up exists once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from paper_unet.augment import AugmentConfig
from paper_unet.checkpoint import build_model
from paper_unet.config import Config
from paper_unet.distributed import distributed, resolve_device
from paper_unet.fastpath import FastPath, resolve
from paper_unet.sampler import TileSampler
from paper_unet.step import Levers, make_optimizer, resolve_levers

__all__ = ["RunContext", "augment_config", "training_sampler", "training_device"]


def augment_config(config: Config) -> AugmentConfig:
    """The augmentation of ``config``'s data section (gray values off: the identity transform)."""
    d = config.data
    fixed = dict(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=(0.0, 0.0))
    return AugmentConfig(elastic_grid=d.elastic_grid, elastic_std=d.elastic_std, rotate=d.rotate,
                         flip=d.flip, **({} if d.gray_values else fixed))


def training_sampler(config: Config, images: np.ndarray, labels: np.ndarray, device: torch.device,
                     length: int, stream: int = 0) -> TileSampler:
    """The augmented tiles ``config`` trains on (sample stream ``stream``: the rank under DDP), labelled
    on the centre the unpadded network predicts (388 of 572); the padded ablation network too, unless
    ``data.label_whole_tile`` (the popular setup: its whole tile)."""
    d = config.data
    return TileSampler(images, labels, tile=d.tile, depth=config.model.depth, length=length, seed=config.run.seed,
                       stream=stream, augment_config=augment_config(config), w0=d.w0, sigma=d.sigma, device=device,
                       out_tile=d.tile if d.label_whole_tile else None)


def training_device(config: Config) -> torch.device:
    """The device this process trains on (under DDP on CUDA: its own GPU)."""
    _, world, local_rank = distributed()
    device = resolve_device(config.run.device)
    if device.type == "cuda" and world > 1:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"{world} training processes were started on this machine, but it has "
                               f"{torch.cuda.device_count()} CUDA GPU(s): start one process per GPU "
                               f"(run_isbi.sh --gpus {torch.cuda.device_count()}), or train on the CPU "
                               f"(--device cpu)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class RunContext:
    """One process's device, fast path and levers for ``config``, and the factories built on them."""

    config: Config
    device: torch.device
    fast: FastPath
    levers: Levers
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def build(cls, config: Config, device: torch.device | str | None = None, *, fast: FastPath | None = None,
              levers: Levers | None = None) -> "RunContext":
        """Resolve everything once. ``device``: default the training device (`training_device`); ``fast`` and
        ``levers``: a forced path (a benchmark's variant), default what ``config.run`` asks for here."""
        rank, world, local_rank = distributed()
        device = training_device(config) if device is None else torch.device(device)
        fast = fast or resolve(config.run.bf16, config.run.channels_last, device)
        levers = levers or resolve_levers(config.run, device, world)
        return cls(config, device, fast, levers, rank, world, local_rank)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def model(self) -> torch.nn.Module:
        """The network with its initial weights (from ``run.seed``, the same on every rank), on the device, in
        channels_last memory order when the fast path takes it."""
        torch.manual_seed(self.config.run.seed)
        model = build_model(self.config).to(self.device)
        return model.to(memory_format=torch.channels_last) if self.fast.channels_last else model

    def optimizer(self, model: torch.nn.Module) -> torch.optim.SGD:
        return make_optimizer(model, self.config.optim, self.levers)

    def sampler(self, images: np.ndarray, labels: np.ndarray, length: int, stream: int = 0) -> TileSampler:
        return training_sampler(self.config, images, labels, self.device, length, stream)
