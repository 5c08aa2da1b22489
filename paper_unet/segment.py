"""From P(cell) to a segmentation: a threshold chosen on validation data, a mask, labelled cells.

The challenge scores probability maps over a grid of thresholds (SPEC section 6); a researcher
who wants a mask needs one threshold. `best_threshold` picks the challenge grid's threshold with
the lowest pixel error on held-out slices (P(cell) > t = cell); a checkpoint that was trained with
validation data stores it (`calibrate_checkpoint`), and `paper-unet predict --save-mask` uses it,
else 0.5. Cells are the 4-connected components of the mask, the connectivity of the metrics,
labelled 1, 2, ... over the whole stack (each slice's cells get their own ids).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["best_threshold", "binary_mask", "label_cells", "calibrate_checkpoint", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.5


def best_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The threshold of the challenge's grid (0.0, 0.1, ..., 1.0) with the best pixel F-score."""
    from paper_unet.metrics import THRESHOLDS, pixel_fscores

    return float(THRESHOLDS[int(np.argmax(pixel_fscores(probabilities, labels)))])


def binary_mask(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """uint8 mask, 255 = cell (P(cell) > threshold, compared in float64 as the metrics do), 0 = membrane."""
    return np.where(np.asarray(probabilities, dtype=np.float64) > np.float64(threshold), 255, 0).astype(np.uint8)


def label_cells(mask: np.ndarray) -> np.ndarray:
    """4-connected cells of a (Z, H, W) mask, ids unique over the stack: uint16, or uint32 when
    there are more than 65,535 cells."""
    from paper_unet.metrics import cells

    mask = np.asarray(mask) > 0
    out = np.zeros(mask.shape, dtype=np.int64)
    offset = 0
    for z in range(mask.shape[0]):
        labels, count = cells(mask[z])
        out[z] = np.where(labels > 0, labels + offset, 0)
        offset += count
    return out.astype(np.uint16 if offset <= np.iinfo(np.uint16).max else np.uint32)


def calibrate_checkpoint(checkpoint: str | Path, images: np.ndarray, labels: np.ndarray, *,
                         device=None, progress: bool = False) -> float:
    """Predict held-out ``images`` with the checkpoint (its TTA setting), store the best threshold in it
    (``threshold``, rewritten atomically) and return it."""
    from paper_unet.tiling import predict_stack
    from paper_unet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from paper_unet.distributed import resolve_device

    device = resolve_device("auto") if device is None else device
    model, config = model_from_checkpoint(checkpoint, device)
    probabilities = predict_stack(model, images, tta=config.run.tta, device=device, progress=progress)
    threshold = best_threshold(probabilities, labels)
    state = load_checkpoint(checkpoint)
    state["threshold"] = threshold
    save_checkpoint(checkpoint, state)
    return threshold
