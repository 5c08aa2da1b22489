"""A dead network never passes as a trained one (paper_unet/collapse.py), at any precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paper_unet.collapse import DEAD, SUSPECT, is_dead, looks_dead, output_spread, uninformative
from paper_unet.model import UNet
from paper_unet.tiling import valid_input_size


class NearlyDead(torch.nn.Module):
    """The issue's dead network: a constant output (P(cell) = 0.4772, a margin of -0.0913) plus an
    input dependence of 1e-5, far below anything a threshold can use."""

    def forward(self, x):
        margin = -0.0913 + 1e-5 * x[:, :1, 92:-92, 92:-92]
        return torch.cat([torch.zeros_like(margin) + 2.0, 2.0 + margin], dim=1)


def test_spread_is_relative_to_the_logits_scale():
    assert output_spread(torch.zeros(1, 2, 8, 8)) == 0.0
    logits = torch.randn(1, 2, 8, 8)
    assert output_spread(logits) == pytest.approx(float((logits[:, 1] - logits[:, 0]).std()) / max(1.0, float(logits.abs().mean())))
    # scaled beyond magnitude 1, the spread is the margin's std over the mean |logit|: scale-free
    expected = float((logits[:, 1] - logits[:, 0]).std()) / float(logits.abs().mean())
    assert output_spread(100 * logits) == pytest.approx(expected, rel=1e-5)


def test_a_nearly_dead_network_in_bf16_is_suspected_and_confirmed_in_fp32():
    """Under bf16 rounding the absolute spread of such a network is far above the old 1e-6 bound; the relative
    check suspects it and the fp32 pass confirms it."""
    x = torch.rand(1, 1, 572, 572)
    logits = NearlyDead()(x).to(torch.bfloat16)
    logits = logits + torch.randint(0, 2, logits.shape).to(torch.bfloat16) * 2 ** -6  # bf16 rounding noise
    margin = (logits[:, 1] - logits[:, 0]).float()
    assert float(margin.std()) > 1e-6  # the old check (absolute spread below 1e-6) never fired here
    assert looks_dead(logits)
    assert is_dead(NearlyDead(), x)


def test_a_live_network_is_neither_suspected_nor_confirmed():
    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=3)
    x = torch.rand(1, 1, valid_input_size(40, 3), valid_input_size(40, 3))
    with torch.no_grad():
        logits = model.train()(x)
    assert output_spread(logits) > SUSPECT  # a random network varies far above the bound
    assert not is_dead(model, x)
    assert model.training  # is_dead restores the mode


def test_a_zero_network_is_dead():
    model = UNet(base_channels=4, depth=3)
    for parameter in model.parameters():
        torch.nn.init.zeros_(parameter)
    assert is_dead(model, torch.rand(1, 1, valid_input_size(40, 3), valid_input_size(40, 3)))
    assert DEAD < SUSPECT


def test_uninformative_predictions_by_the_threshold_grid():
    assert uninformative(np.full((2, 5, 5), 0.4772, np.float32))
    assert uninformative(0.4772 + 1e-6 * np.random.default_rng(0).random((2, 5, 5)))
    assert uninformative(np.linspace(0.4926, 0.4957, 25).reshape(1, 5, 5))  # the synthetic study's nearly dead net
    assert not uninformative(np.linspace(0.45, 0.55, 25).reshape(1, 5, 5))  # P > 0.5 splits it
    assert uninformative(np.linspace(0.41, 0.5, 25).reshape(1, 5, 5))  # P > 0.5 nowhere, P > 0.4 everywhere
    assert not uninformative(np.array([0.0, 1.0]))


def small_cells(count, seed, preset):
    from paper_unet.synthetic import PRESETS, sparse_cells
    import dataclasses

    return sparse_cells(count, seed=seed, params=dataclasses.replace(PRESETS[preset], height=260, width=348))


def test_a_forced_too_high_rate_on_sparse_cells_is_caught_as_a_dead_network(tmp_path):
    """The `cpu` network (252-px tiles) on dim synthetic sparse cells at 3x its rate, in the precision `auto` takes
    here (bf16 on an AVX512-BF16 CPU): the network dies, the checks stop it as dead (here: 150 steps, by two nearly
    constant validations), no best.pt is ever written from it, and the message says what to change. (30x the
    rate gives a NaN loss instead, stopped by the divergence check.)"""
    from paper_unet.config import load_config
    from paper_unet.images import instance_to_binary, normalize
    from paper_unet.train import TrainingDiverged, train

    images, instances = small_cells(4, 0, "dim")
    config = load_config("cpu", ["optim.lr=3e-3", "optim.iterations=400", "run.validate_every=50", "data.tile=252"])
    with pytest.raises(TrainingDiverged, match="collapsed to a constant output") as stopped:
        train(config, normalize(images[:3]), instance_to_binary(instances[:3]), tmp_path, progress=False,
              val_images=normalize(images[3:]), val_labels=instance_to_binary(instances[3:]))
    assert "lower learning rate, e.g. --set optim.lr=0.0003" in str(stopped.value)
    assert not (tmp_path / "best.pt").exists()
