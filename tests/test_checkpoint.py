"""Checkpoints (`paper_unet.checkpoint`): the resolved config inside, safe loading, atomic writes."""

from __future__ import annotations

import errno
import subprocess

import numpy as np
import pytest
import torch

from conftest import same_weights, tiny_config, train_command
from paper_unet.checkpoint import previous_path
from paper_unet.config import config_from_dict, load_config
from paper_unet.train import load_checkpoint, model_from_checkpoint, save_checkpoint, train


def test_checkpoint_holds_config_and_loads_weights_only(tiny_data, tmp_path):
    images, labels = tiny_data
    config = tiny_config(iterations=4)
    train(config, images, labels, tmp_path, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["config"] == config.to_dict() and state["iteration"] == 4
    model, loaded = model_from_checkpoint(tmp_path / "last.pt")
    assert loaded == config and not model.training
    assert (tmp_path / "config.json").is_file()


def test_atomic_checkpoint_leaves_no_partial_file(tmp_path):
    save_checkpoint(tmp_path / "x.pt", {"a": torch.ones(3)})
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot be loaded safely"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "none.pt")


def test_resume_accepts_a_single_process_rng_dict(tiny_data, tmp_path):
    """Checkpoints written before multi-process training stored one RNG dict, not a list."""
    images, labels = tiny_data
    config = tiny_config(iterations=8)
    train(config, images, labels, tmp_path, progress=False, stop_after=4)
    state = load_checkpoint(tmp_path / "last.pt")
    state["rng"] = state["rng"][0]
    save_checkpoint(tmp_path / "last.pt", state)
    assert train(config, images, labels, tmp_path, progress=False, resume=True).iterations == 8


def test_a_checkpoint_keeps_the_one_it_replaced(tmp_path):
    path = tmp_path / "last.pt"
    for i in range(3):
        save_checkpoint(path, {"iteration": i}, keep_previous=True)
    assert load_checkpoint(path)["iteration"] == 2 and load_checkpoint(previous_path(path))["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.prev.pt", "last.pt"]


def test_a_failed_checkpoint_write_leaves_the_previous_one_and_no_temporary_file(tmp_path, monkeypatch):
    """A full disk, injected: torch.save writes part of the file, then fails with ENOSPC."""
    import paper_unet.checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1, "w": torch.arange(10.0)}, keep_previous=True)
    before = path.read_bytes()

    def full_disk(state, handle):
        handle.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paper_unet.checkpoint.torch, "save", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint .*last\.pt \(the disk is full\).*unchanged"):
        save_checkpoint(path, {"iteration": 2}, keep_previous=True)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_truncated_last_pt_names_the_previous_one_which_resumes_exactly(isbi_dir, tmp_path):
    import tifffile
    from paper_unet.train import train

    images = tifffile.imread(isbi_dir / "train-volume.tif")[:2]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:2]
    values = load_config("smoke").to_dict()
    values["run"].update(checkpoint_every=2, log_every=1)
    config = config_from_dict(values)  # 6 iterations
    train(config, images, labels, tmp_path / "full", progress=False)
    train(config, images, labels, tmp_path / "cut", progress=False, stop_after=4)
    last = tmp_path / "cut" / "last.pt"
    assert load_checkpoint(previous_path(last))["iteration"] == 2
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as by a crash of the storage
    with pytest.raises(ValueError, match=r"cannot be loaded.*last\.prev\.pt.*--from-previous"):
        train(config, images, labels, tmp_path / "cut", progress=False, resume=True)
    train(config, images, labels, tmp_path / "cut", progress=False, resume=True, from_previous=True)
    assert same_weights(tmp_path / "full" / "last.pt", last)
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "full" / "train_log.csv", delimiter=",", skiprows=1)[:, :3],
                                  np.loadtxt(tmp_path / "cut" / "train_log.csv", delimiter=",", skiprows=1)[:, :3])


def test_from_previous_needs_resume(isbi_dir, tmp_path):
    done = subprocess.run(train_command(isbi_dir, tmp_path / "x", "--from-previous"), capture_output=True, text=True)
    assert done.returncode == 2 and "--from-previous goes with --resume" in done.stderr
