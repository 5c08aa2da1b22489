"""Checkpoints: atomic writes, safe loading, and a network rebuilt from its resolved config.

A checkpoint holds the network's weights, the optimiser, every rank's RNG state, the loss
monitors, the resolved config and, after training with validation data, the mask threshold.
Nothing is lost: a checkpoint is written to a temporary file, fsynced and renamed over the old one
(the training's ``last.pt`` keeps the one it replaced as ``last.prev.pt``), and loaded with
``torch.load(weights_only=True)``, so a downloaded checkpoint cannot run code.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch

from paper_unet.atomic import replacing
from paper_unet.config import Config, config_from_dict
from paper_unet.model import PaddedUNet, UNet

__all__ = ["build_model", "save_checkpoint", "previous_path", "load_checkpoint", "load_weights",
           "model_from_checkpoint", "model_from_state"]


def build_model(config: Config) -> UNet | PaddedUNet:
    """The network of ``config.model``: the paper's unpadded `UNet`, or (``network = "padded"``, an
    ablation) the `PaddedUNet` with the same widths per level (base_channels x 1, 2, 4, ... and a
    bottleneck of twice the last), the same dropout in the same place, and BatchNorm unless
    ``padded_batch_norm`` is off."""
    m = config.model
    if m.network == "padded":
        return PaddedUNet(m.in_channels, m.num_classes,
                          features=tuple(m.base_channels * 2**level for level in range(m.depth - 1)),
                          batch_norm=m.padded_batch_norm, dropout=m.dropout)
    return UNet(m.in_channels, m.num_classes, m.base_channels, m.depth, m.dropout, m.variant)


def previous_path(path: str | Path) -> Path:
    """Where `save_checkpoint(..., keep_previous=True)` keeps the checkpoint it replaced."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: str | Path, state: dict, keep_previous: bool = False) -> None:
    """Write atomically: a temporary file in the same folder, fsync, rename over the target, fsync the
    folder (so the rename itself survives a power cut).

    ``keep_previous``: the checkpoint being replaced stays as `previous_path` (``last.prev.pt``), a
    fallback should the new one ever not load; ``path`` itself exists at every moment. A write that
    fails (a full disk) removes its temporary file and leaves the previous checkpoint as it was."""
    path = Path(path)
    try:
        with replacing(path) as tmp:
            with open(tmp, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            if keep_previous and path.is_file():
                kept = previous_path(path)
                link = kept.with_name(f".{kept.name}.tmp{os.getpid()}")
                link.unlink(missing_ok=True)
                os.link(path, link)  # a second name for the current file: no copy, and path stays in place
                os.replace(link, kept)
    except OSError as error:
        why = " (the disk is full)" if error.errno == errno.ENOSPC else ""
        raise OSError(error.errno, f"could not write checkpoint {path}{why}: {error.strerror or error}; "
                                   f"the previous checkpoint is unchanged") from error


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"checkpoint {path} cannot be loaded safely ({type(error).__name__}: "
                         f"{error}); it may be truncated, or not a paper_unet checkpoint") from error


def load_weights(model: UNet, path: str | Path, device: torch.device | str = "cpu") -> None:
    """Copy a checkpoint's network weights into ``model`` (fine-tuning), or say why they do not fit."""
    state = load_checkpoint(path, device)
    if "model" not in state:
        raise ValueError(f"{path} is not a paper_unet checkpoint (no model weights)")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        theirs = state.get("config", {}).get("model", {})
        raise ValueError(f"{path} holds a different network (base_channels {theirs.get('base_channels')}, depth "
                         f"{theirs.get('depth')}, variant {theirs.get('variant')}) than this run's config "
                         f"(base_channels {model.base_channels}, depth {model.depth}, variant {model.variant}); "
                         f"use the profile it was trained with, or --set model.base_channels=...") from error


def model_from_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, Config]:
    return model_from_state(load_checkpoint(path, device), path, device)


def model_from_state(state: dict, path: str | Path, device: torch.device | str = "cpu") -> tuple[UNet, Config]:
    """The network (in eval mode) and config of a loaded checkpoint ``state`` (read from ``path``)."""
    if "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a paper_unet checkpoint (no model or config)")
    config = config_from_dict(state["config"])
    model = build_model(config).to(device)
    model.load_state_dict(state["model"])
    return model.eval(), config
