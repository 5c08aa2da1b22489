"""From P(cell) to a segmentation: a threshold and a minimum size chosen on validation data, a mask, cells.

The challenge scores probability maps over a grid of thresholds (docs/spec.md section 6); a researcher
who wants a mask needs one threshold. Which one is best depends on what the labels are
(`label_kind`):

- **membranes** (EM, ISBI 2012: cells fill most of the image, thin membranes between them): the
  challenge grid's threshold with the best pixel F-score (`best_threshold`); no minimum size.
- **cells on a background** (light microscopy, the paper's Table 2: the background, label 0, covers
  most of the image): the grid's threshold with the best IOU (`cell_metrics.best_iou_threshold`,
  the paper's Table 2 measure), then the minimum cell size with the best IOU (`best_min_size`: a speck
  of false cell pixels lowers the IOU; SEG cannot choose it, as it never counts a false object).

A checkpoint that was trained with validation data stores both (`calibrate_checkpoint`, which refuses
a network whose output is uninformative: `collapse`), and `paper-unet predict --save-mask/--save-cells` uses them,
else 0.5 and no minimum size. Cells are the 4-connected components of the mask, the connectivity of the
metrics, labelled 1, 2, ... over the whole stack (each slice's cells get their own ids);
`remove_small` drops components of fewer than ``min_size`` pixels (`--min-size`, as cellpose and
stardist offer) from the mask and so from the cells.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["best_threshold", "binary_mask", "label_cells", "remove_small", "label_kind", "best_min_size",
           "choose_post_processing", "calibrate_checkpoint", "DEFAULT_THRESHOLD", "MIN_SIZE_FRACTIONS", "ConstantOutput"]

DEFAULT_THRESHOLD = 0.5
# candidate minimum sizes, as fractions of the median reference cell's area (0: keep everything)
MIN_SIZE_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.4)


class ConstantOutput(ValueError):
    """The network's output is the same everywhere: there is nothing to threshold."""


def label_kind(labels: np.ndarray) -> str:
    """``cells`` when the background (label 0) covers more than half of the pixels (cells on a
    background), else ``membranes`` (EM: cells separated by thin membranes)."""
    return "cells" if float(np.mean(np.asarray(labels) == 0)) > 0.5 else "membranes"


def best_threshold(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The threshold of the challenge's grid (0.0, 0.1, ..., 1.0) with the best pixel F-score."""
    from paper_unet.metrics import THRESHOLDS, pixel_fscores

    return float(THRESHOLDS[int(np.argmax(pixel_fscores(probabilities, labels)))])


def binary_mask(probabilities: np.ndarray, threshold: float = DEFAULT_THRESHOLD, rows: int = 1024) -> np.ndarray:
    """uint8 mask, 255 = cell (P(cell) > threshold, compared in float64 as the metrics do), 0 = membrane.

    Computed ``rows`` rows at a time, so a large (memory-mapped) P(cell) needs the mask's own memory plus a band."""
    probabilities = np.asarray(probabilities)  # a memory map stays one (no copy)
    out = np.empty(probabilities.shape, np.uint8)
    flat_in, flat_out = probabilities.reshape(-1, probabilities.shape[-1]), out.reshape(-1, out.shape[-1])
    for start in range(0, flat_in.shape[0], rows):
        band = np.asarray(flat_in[start:start + rows], dtype=np.float64) > np.float64(threshold)
        np.multiply(band, 255, out=flat_out[start:start + rows], casting="unsafe")
    return out


def remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    """The mask (Z, H, W) without its 4-connected components of fewer than ``min_size`` pixels (same dtype)."""
    from paper_unet.metrics import cells

    mask = np.asarray(mask)
    if min_size <= 1:
        return mask
    out = mask.copy()
    for z in range(mask.shape[0]):
        labels, _ = cells(mask[z] > 0)
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        out[z][small[labels]] = 0
    return out


def label_cells(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """4-connected cells of a (Z, H, W) mask (components of fewer than ``min_size`` pixels dropped),
    ids unique over the stack: uint16, or uint32 when there are more than 65,535 cells. Slice by slice into the
    output, so memory holds the output, the mask and one slice's labels."""
    from paper_unet.metrics import cells

    mask = remove_small(np.asarray(mask) > 0, min_size)
    out = np.zeros(mask.shape, dtype=np.uint32)
    offset = 0
    for z in range(mask.shape[0]):
        labels, count = cells(mask[z])
        if offset + count > np.iinfo(np.uint32).max:
            raise ValueError(f"more than {np.iinfo(np.uint32).max} cells do not fit a uint32 label image")
        np.add(labels, offset, out=out[z], where=labels > 0, casting="unsafe")
        offset += count
    return out.astype(np.uint16) if offset <= np.iinfo(np.uint16).max else out


def best_min_size(mask: np.ndarray, reference: np.ndarray) -> int:
    """The minimum size (a fraction of ``MIN_SIZE_FRACTIONS`` of the median reference cell's area, in
    pixels) with the best IOU of ``mask`` against ``reference``; the smallest of equals."""
    from paper_unet.cell_metrics import iou, objects

    areas = [np.bincount(objects(r).ravel())[1:] for r in np.asarray(reference)]
    areas = np.concatenate(areas) if areas else np.zeros(0)
    if areas.size == 0:
        return 0
    median = float(np.median(areas))
    candidates = sorted({int(round(f * median)) for f in MIN_SIZE_FRACTIONS})
    scores = [iou(remove_small(mask, size), reference) for size in candidates]
    return candidates[int(np.argmax(scores))]


def choose_post_processing(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """What `calibrate_checkpoint` stores: the label kind, the threshold, the minimum size and the scores
    at them. Raises `ConstantOutput` for an uninformative P(cell) (`collapse.uninformative`)."""
    from paper_unet.cell_metrics import best_iou_threshold, cell_scores
    from paper_unet.collapse import uninformative

    if uninformative(probabilities):
        raise ConstantOutput(f"the network's P(cell) is nearly the same everywhere on the images it was checked on "
                             f"({float(np.min(probabilities)):.4f} to {float(np.max(probabilities)):.4f}, within one "
                             f"step of the threshold grid, so every mask is empty or full): it has not learnt, and "
                             f"no threshold can be chosen on it")
    kind = label_kind(labels)
    if kind == "membranes":
        return {"label_kind": kind, "threshold": best_threshold(probabilities, labels), "min_size": 0,
                "chosen_by": "pixel F-score"}
    threshold = best_iou_threshold(probabilities, labels)
    mask = binary_mask(probabilities, threshold)
    min_size = best_min_size(mask, labels)
    return {"label_kind": kind, "threshold": threshold, "min_size": min_size, "chosen_by": "IOU",
            **cell_scores(remove_small(mask, min_size), labels)}


def calibrate_checkpoint(checkpoint: str | Path, images: np.ndarray, labels: np.ndarray, *,
                         device=None, progress: bool = False) -> dict:
    """Predict held-out ``images`` with the checkpoint (its TTA setting), store the chosen post-processing
    in it (``threshold``, ``min_size``, ``post_processing``; rewritten atomically) and return it.
    `ConstantOutput` (nothing stored) for a network whose output is uninformative."""
    from paper_unet.tiling import predict_stack
    from paper_unet.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from paper_unet.distributed import resolve_device

    device = resolve_device("auto") if device is None else device
    model, config = model_from_checkpoint(checkpoint, device)
    probabilities = predict_stack(model, images, tta=config.run.tta, device=device, progress=progress)
    chosen = choose_post_processing(probabilities, labels)
    state = load_checkpoint(checkpoint)
    state.update(threshold=chosen["threshold"], min_size=chosen["min_size"], post_processing=chosen)
    save_checkpoint(checkpoint, state)
    return chosen
