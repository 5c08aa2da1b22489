"""The weighted cross entropy of paper Eq. 1 (`paper_unet.loss`), checked by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from paper_unet.loss import weighted_cross_entropy


def test_weighted_ce_equals_plain_ce_when_w_is_one():
    torch.manual_seed(0)
    logits, target = torch.randn(2, 2, 5, 6), torch.randint(0, 2, (2, 5, 6))
    plain = F.cross_entropy(logits, target)
    assert torch.allclose(weighted_cross_entropy(logits, target, torch.ones(2, 5, 6)), plain)
    assert torch.allclose(weighted_cross_entropy(logits, target), plain)


def test_weighted_ce_by_hand():
    # one pixel, logits (0, ln 3): softmax = (1/4, 3/4); target 1, w = 2 -> -2 ln(3/4);
    # second pixel, logits (0, 0): p = 1/2; target 0, w = 0.5 -> -0.5 ln(1/2); mean of the two.
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    weight = torch.tensor([[[2.0, 0.5]]])
    expected = (-2 * math.log(0.75) - 0.5 * math.log(0.5)) / 2
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)


def test_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="weight shape"):
        weighted_cross_entropy(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(4, 4))
