"""The scores of the paper's Table 2 for cells on a background: IOU, and the Cell Tracking Challenge's SEG.

    "We report the IOU ("intersection over union") [...]" (Sec. 4, Table 2: PhC-U373 0.9203,
    DIC-HeLa 0.7756 for the u-net)

- **IOU** (`iou`): the foreground Jaccard index |P & G| / |P | G| of the binary masks (cell = 1),
  pooled over the whole stack (the intersections and unions of all frames summed before the ratio).
  A frame without cells in either mask adds nothing; a stack without any: 1.0 (nothing to find,
  nothing found).
- **SEG** (`seg`), as the Cell Tracking Challenge defines it: for every reference object R (a cell
  id of an instance mask; for a binary reference, a 4-connected component), the predicted object S
  (a 4-connected component of the predicted mask) with |R & S| > 0.5 |R| (at most one can), and its
  Jaccard index |R & S| / |R | S|; 0 when no predicted object covers more than half of R. SEG is the
  mean over all reference objects of the stack; NaN when the reference holds no object.

`best_iou_threshold` picks the challenge grid's threshold (0.0, 0.1, ..., 1.0; P(cell) > t = cell)
with the highest IOU, as `segment.best_threshold` picks the best pixel F-score for EM membranes.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["iou", "seg", "best_iou_threshold", "cell_scores", "scores_at_best_iou", "objects"]

_FOUR = ndimage.generate_binary_structure(2, 1)


def _stack(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{name} must be (H, W) or (Z, H, W), got shape {array.shape}")
    return array


def _pair(prediction, reference) -> tuple[np.ndarray, np.ndarray]:
    prediction, reference = _stack(prediction, "prediction"), _stack(reference, "reference")
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} must have one shape")
    return prediction, reference


def iou(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Foreground Jaccard index of two masks (> 0 = cell), pooled over the stack."""
    prediction, reference = _pair(prediction, reference)
    p, g = prediction > 0, reference > 0
    union = int(np.count_nonzero(p | g))
    return 1.0 if union == 0 else int(np.count_nonzero(p & g)) / union


def objects(mask_or_ids: np.ndarray) -> np.ndarray:
    """One 2-D slice's objects as labels 1..n: the ids of an instance mask kept apart (each id's
    4-connected pieces stay one object, as the challenge counts them), a binary mask's 4-connected
    components."""
    array = np.asarray(mask_or_ids)
    values = np.unique(array)
    if len(values) <= 2 and values[0] == 0 or array.dtype == bool:
        labelled, _ = ndimage.label(array > 0, structure=_FOUR)
        return labelled
    _, inverse = np.unique(array, return_inverse=True)  # ids -> 0..n (0 stays background: the smallest)
    return inverse.reshape(array.shape) if values[0] == 0 else inverse.reshape(array.shape) + 1


def _seg_slice(prediction: np.ndarray, reference: np.ndarray) -> list[float]:
    """The Jaccard index of each reference object of one slice with its matching predicted object."""
    ref = objects(reference)
    pred, _ = ndimage.label(prediction > 0, structure=_FOUR)
    n_ref, n_pred = int(ref.max()), int(pred.max())
    if n_ref == 0:
        return []
    overlap = np.zeros((n_ref + 1, n_pred + 1), np.int64)  # pixel counts of every (reference, predicted) pair
    np.add.at(overlap, (ref.ravel(), pred.ravel()), 1)
    ref_size, pred_size = overlap.sum(axis=1), overlap.sum(axis=0)
    scores = []
    for r in range(1, n_ref + 1):
        row = overlap[r, 1:]
        s = int(np.argmax(row)) + 1 if n_pred else 0
        if s and 2 * overlap[r, s] > ref_size[r]:  # more than half of R: at most one S can
            scores.append(overlap[r, s] / (ref_size[r] + pred_size[s] - overlap[r, s]))
        else:
            scores.append(0.0)
    return scores


def seg(prediction: np.ndarray, reference: np.ndarray) -> float:
    """The Cell Tracking Challenge's SEG: mean Jaccard index of the reference objects with the predicted
    objects that cover more than half of them (0 where none does); NaN without reference objects."""
    prediction, reference = _pair(prediction, reference)
    scores = [s for z in range(len(reference)) for s in _seg_slice(prediction[z], reference[z])]
    return float(np.mean(scores)) if scores else float("nan")


def best_iou_threshold(probabilities: np.ndarray, reference: np.ndarray) -> float:
    """The threshold of the challenge's grid with the highest IOU (the first of equals)."""
    from paper_unet.metrics import THRESHOLDS

    probabilities = np.asarray(probabilities, dtype=np.float64)
    values = [iou(probabilities > t, reference) for t in THRESHOLDS]
    return float(THRESHOLDS[int(np.argmax(values))])


def cell_scores(mask: np.ndarray, reference: np.ndarray) -> dict:
    """IOU and SEG of a binary mask against the reference (an instance mask or a binary one)."""
    return {"iou": iou(mask, reference), "seg": seg(mask, reference)}


def scores_at_best_iou(probabilities: np.ndarray, reference: np.ndarray) -> dict:
    """IOU and SEG of the mask P(cell) > t (compared in float64, as the metrics do) at the grid's threshold t with
    the best IOU, and that t (``iou_threshold``): what validation and `paper-unet evaluate` report."""
    threshold = best_iou_threshold(probabilities, reference)
    mask = np.asarray(probabilities, dtype=np.float64) > threshold
    return {**cell_scores(mask, reference), "iou_threshold": threshold}
