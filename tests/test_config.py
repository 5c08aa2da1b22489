"""Typed configuration and profiles (`paper_unet.config`): the paper's constants, unknown keys rejected, the
default profile by device, `paper-unet config`."""

from __future__ import annotations

import numpy as np
import pytest

from paper_unet.config import Config, config_from_dict, load_config, profiles


def test_defaults_are_the_papers_constants():
    c = Config()
    assert (c.model.base_channels, c.model.depth, c.data.tile) == (64, 5, 572)
    assert (c.optim.momentum, c.optim.batch_size, c.data.w0, c.data.sigma) == (0.99, 1, 10.0, 5.0)
    assert (c.data.elastic_grid, c.data.elastic_std) == (3, 10.0)


def test_profiles_load_and_unknown_keys_are_rejected():
    assert {"paper", "cpu", "smoke"} <= set(profiles())
    assert load_config("paper").model.base_channels == 64
    assert load_config("cpu", ["optim.lr=3e-4"]).optim.lr == 3e-4
    with pytest.raises(ValueError, match="unknown key.*lrr.*valid keys"):
        load_config("cpu", ["optim.lrr=1"])
    with pytest.raises(ValueError, match="unknown profile"):
        load_config("fast")
    with pytest.raises(ValueError, match="must be float"):
        config_from_dict({"optim": {"lr": "high"}})
    with pytest.raises(ValueError, match="nearest valid"):
        config_from_dict({"data": {"tile": 570}})


def test_learning_rate_schedule_by_hand():
    """lr 1e-3, 10 iterations, warm-up 4, decay x0.1 from 80 % (iteration 8) on."""
    from paper_unet.train import learning_rate
    config = load_config("smoke", ["optim.lr=1e-3", "optim.iterations=10", "optim.warmup=4"])
    expected = [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4]
    np.testing.assert_allclose([learning_rate(config, i) for i in range(10)], expected, rtol=1e-12)
    plain = load_config("smoke", ["optim.lr=1e-3", "optim.iterations=10"])  # warm-up off by default
    assert learning_rate(plain, 0) == 1e-3 and learning_rate(plain, 8) == pytest.approx(1e-4)
    with pytest.raises(ValueError, match="warmup"):
        load_config("smoke", ["optim.iterations=10", "optim.warmup=10"])


def test_config_round_trips_through_dict():
    c = load_config("smoke")
    assert config_from_dict(c.to_dict()) == c


def test_the_paper_profiles_rate_is_the_highest_that_trained_steadily_in_the_check():
    """results/paper_lr_check/ (full width, fold 2): the profile uses the highest rate that no stop
    check ended, and its comment points to that evidence."""
    import json
    from conftest import REPO
    rows = json.loads((REPO / "results" / "paper_lr_check" / "lr_search.json").read_text())["rows"]
    steady = [row["lr"] for row in rows if row["status"] == "ok"]
    assert max(steady) < max(row["lr"] for row in rows)  # a higher rate was tried and failed
    assert load_config("paper").optim.lr == max(steady)
    assert "results/paper_lr_check" in (REPO / "paper_unet" / "profiles" / "paper.toml").read_text()


def test_the_default_profile_is_one_rule_by_device_at_every_entry_point(monkeypatch, capsys):
    import torch

    from paper_unet.cli import build_parser, main
    from paper_unet.config import DEFAULT_PROFILE_RULE, default_profile
    for cuda, expected in ((True, "paper"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert default_profile() == expected
        assert main(["config", "--get", "name"]) == 0 and capsys.readouterr().out.strip() == expected
    commands = build_parser()._subparsers._group_actions[0].choices
    for name in ("train", "reproduce", "estimate", "ablations", "config"):
        assert DEFAULT_PROFILE_RULE in " ".join(commands[name].format_help().split()), name


def test_the_config_command_resolves_overrides_as_a_run_does(capsys):
    import json

    from paper_unet.cli import main
    assert main(["config", "--profile", "smoke", "--set", "run.folds=2", "--get", "run.folds"]) == 0
    assert capsys.readouterr().out.strip() == "2"
    assert main(["config", "--profile", "smoke"]) == 0
    assert json.loads(capsys.readouterr().out) == load_config("smoke").to_dict()
    assert main(["config", "--profile", "smoke", "--set", "run.fold=2"]) == 2
    assert "unknown key(s) fold" in capsys.readouterr().err
