"""A dead network: one whose output no longer depends on its input.

A too-large step can kill every ReLU of a level, or all but a few: the output is then (almost) the
same at every pixel, the loss sits at its class-prior value, and no gradient revives it. Such a
network must never pass as a trained one, whatever the precision it trained in.

How it is told, in two stages (both exact functions of the weights and the tile, so a resumed run
takes the same decisions):

1. **Suspect** (`looks_dead`, on the training step's own logits, free): the spread over the tile of
   the class-1 minus class-0 logit margin, relative to the logits' magnitude (`output_spread`), is
   below ``SUSPECT``. Relative, because under bf16 autocast a constant output is not constant to the
   bit: rounding moves each logit by up to 2^-8 of its magnitude (0.4 %), so an absolute bound (as
   before: a spread below 1e-6) never fires there. ``SUSPECT`` = 2 % is five times that rounding
   and far below the spread of a live network (a random initial network, or any that separates
   its classes, varies by tens of percent of its magnitude over a tile).
2. **Confirm** (`is_dead`, only when suspected): the same tile through the network again in fp32,
   without dropout (evaluation mode, no autocast); dead when the relative spread there is below
   ``DEAD`` = 1e-4. This removes bf16's rounding from the decision, and a live network that merely
   predicts one class confidently over a tile still varies far above 1e-4 of its magnitude.

Predictions (`uninformative`): a network can also sit just above dead, its P(cell) varying by a few
thousandths around one value (0.4926 to 0.4957 on a whole frame, in the synthetic study of
results/own_data/), which no spread bound separates from a live network without also catching live
ones. What makes such a network useless is plain, though: every threshold of the challenge's grid
(0.0, 0.1, ..., 1.0) gives an empty or a full mask, because its P(cell) lies within one interval of
the grid. Validation never makes such a network the best checkpoint; a threshold is never chosen on
it; and `paper-unet predict` warns. When its P(cell) also spans less than ``NEARLY_CONSTANT`` = 0.02
over the validation images at two validations in a row (`nearly_constant`), training stops it as dead
(`train`): the nearly dead network above spanned 0.003, while the same network restarted at a tenth of
the rate, still uninformative but learning, already spanned 0.06 at its first validation.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["output_spread", "looks_dead", "is_dead", "uninformative", "nearly_constant", "SUSPECT", "DEAD",
           "NEARLY_CONSTANT"]

SUSPECT = 0.02
DEAD = 1e-4
NEARLY_CONSTANT = 0.02


def output_spread(logits: torch.Tensor) -> float:
    """Standard deviation over the tile of the class-1 minus class-0 logit margin, divided by
    max(1, mean |logit|); 0 for a constant output."""
    logits = logits.detach().float()
    margin = logits[:, 1] - logits[:, 0] if logits.shape[1] > 1 else logits[:, 0]
    scale = max(1.0, float(logits.abs().mean()))
    return float(margin.std()) / scale


def looks_dead(logits: torch.Tensor) -> bool:
    """Stage 1: the training logits' relative spread is below ``SUSPECT``."""
    return output_spread(logits) < SUSPECT


@torch.no_grad()
def is_dead(model: torch.nn.Module, image: torch.Tensor) -> bool:
    """Stage 2: ``image`` (N, 1, H, W) through ``model`` in fp32 without dropout; dead when the relative
    spread of its output is below ``DEAD``. The model's training mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(image.device.type, enabled=False):
            logits = model(image.float().contiguous())
    finally:
        model.train(was_training)
    return output_spread(logits) < DEAD


def uninformative(probabilities: np.ndarray) -> bool:
    """Every threshold t of the challenge's grid gives an empty or a full mask (P(cell) > t nowhere or
    everywhere): P(cell) lies within one interval of the grid, and no mask says anything."""
    from paper_unet.metrics import THRESHOLDS

    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.size == 0:
        return False
    lo, hi = float(probabilities.min()), float(probabilities.max())
    return not any(lo <= t < hi for t in THRESHOLDS)  # some pixel above t and some not: t splits


def nearly_constant(probabilities: np.ndarray) -> bool:
    """Uninformative, and P(cell) spans less than ``NEARLY_CONSTANT``: a network that is not learning."""
    probabilities = np.asarray(probabilities)
    return uninformative(probabilities) and float(probabilities.max()) - float(probabilities.min()) < NEARLY_CONSTANT
