"""The one atomic writer (`paper_unet.atomic`): whole files or none, and torn files are not trusted."""

from __future__ import annotations

import json
import os

import pytest

from paper_unet.atomic import read_json, write_json, write_text


def test_write_json_round_trips_and_leaves_no_temporary_file(tmp_path):
    write_json(tmp_path / "a" / "record.json", {"x": [1, 2.5], "y": None})
    assert read_json(tmp_path / "a" / "record.json") == {"x": [1, 2.5], "y": None}
    assert os.listdir(tmp_path / "a") == ["record.json"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json(path, {"old": True})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        write_text(path, json.dumps({"new": True}))
    assert read_json(path) == {"old": True} and os.listdir(tmp_path) == ["summary.json"]


def test_a_torn_file_is_reported_and_treated_as_absent(tmp_path, capsys):
    path = tmp_path / "metrics.json"
    path.write_text('{"warping_error": 0.00')  # what a crash in the middle of a plain write leaves
    assert read_json(path, "fold scores") is None
    assert "fold scores" in capsys.readouterr().err
    assert read_json(tmp_path / "missing.json") is None
