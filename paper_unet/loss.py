"""The training objective of paper Sec. 3, Eq. 1.

    "The energy function is computed by a pixel-wise soft-max over the final feature map combined
    with the cross entropy loss function. [...] The cross entropy then penalizes at each position
    the deviation of p_l(x)(x) from 1 using  E = sum_x w(x) log(p_l(x)(x))."

The paper prints Eq. 1 without the minus sign; we minimise -sum_x w(x) log p_l(x)(x).
Decision: the sum over pixels is normalised by the number of output pixels (a mean), which keeps
the learning rate independent of the tile size; the paper does not say (a sum rescales the
learning rate by 388^2 = 150,544 for the paper's tile).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["weighted_cross_entropy"]


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                           weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pixels of -w(x) log softmax(logits)_target(x).

    Args:
        logits: (N, C, H, W) raw network output.
        target: (N, H, W) int64 class indices (ISBI: 0 = membrane, 1 = cell).
        weight: (N, H, W) per-pixel weights w(x) (Eq. 2); None means w = 1 (plain cross entropy).
    """
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits (N, C, H, W) {tuple(logits.shape)} and target (N, H, W) "
                         f"{tuple(target.shape)} do not match")
    nll = F.cross_entropy(logits.float(), target, reduction="none")  # -log p_l(x)(x), softmax in fp32
    if weight is None:
        return nll.mean()
    if weight.shape != nll.shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} differs from target shape {tuple(nll.shape)}")
    return (weight * nll).mean()
