"""Restarts at a lower rate (paper_unet/restart.py): a dead or diverging start is redone, recorded, never hidden."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from paper_unet.checkpoint import load_checkpoint
from paper_unet.cli import main
from paper_unet.config import OWN_DATA, load_config

# the `cpu` network on 188-px tiles at a forced, absurd rate (1.0: the loss becomes NaN within 4 steps);
# x 0.001 it is the profile's 1e-3, which trains
FAST = ["--profile", "cpu", "--quiet", "--set", "data.tile=188", "--set", "optim.iterations=20", "--set",
        "run.log_every=2", "--set", "optim.lr=1.0", "--set", "optim.restart_factor=0.001"]


@pytest.fixture()
def em_files(isbi_dir, tmp_path):
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:3, :200, :200]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:3, :200, :200]
    tifffile.imwrite(tmp_path / "img.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "lab.tif", labels, photometric="minisblack")
    return ["--images", str(tmp_path / "img.tif"), "--labels", str(tmp_path / "lab.tif")]


def test_own_data_restarts_a_diverged_run_at_a_lower_rate_and_records_it(em_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, *em_files, "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "own data: optim.restarts=2" in err  # the own-data default, said at the start
    assert "restarting from the initial weights at optim.lr=0.001" in err
    attempts = json.loads((out / "attempts.json").read_text())
    assert [a["lr"] for a in attempts] == [1.0, pytest.approx(1e-3)]
    assert attempts[0]["outcome"] != "trained" and attempts[1]["outcome"] == "trained"
    assert (out / "attempt1" / "train_log.csv").is_file()  # the dead attempt's log is kept aside
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == pytest.approx(1e-3)
    assert load_checkpoint(out / "last.pt")["config"]["optim"]["lr"] == pytest.approx(1e-3)
    # --resume of the finished run resumes the second attempt at its rate (not the first's): nothing to redo
    assert main(["train", *FAST, *em_files, "--out", str(out), "--resume"]) == 0
    assert "resuming attempt 2 at optim.lr=0.001" in capsys.readouterr().err


def test_without_restarts_the_run_stops_with_a_message_that_says_what_to_do(em_files, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *FAST, *em_files, "--out", str(out), "--set", "optim.restarts=0"]) == 2
    err = capsys.readouterr().err
    assert "lower optim.lr" in err and "trained" not in err.split("error:")[-1]
    assert not (out / "attempts.json").exists()


def test_the_profiles_never_restart_and_own_data_defaults_are_listed():
    for profile in ("paper", "cpu", "smoke"):
        assert load_config(profile).optim.restarts == 0  # the ISBI reproduction: the paper's setting
    assert OWN_DATA == {"optim.restarts": 2}
    assert np.isclose(load_config("cpu").optim.restart_factor, 0.1)
