"""The tables results/ is made of (`paper_unet.tables`): the paper's Table 1 once, CSVs written atomically."""

from __future__ import annotations

import os

from paper_unet.tables import PAPER_TABLE1, PAPER_UNET, read_csv, write_csv


def test_the_papers_unet_row_is_table1_row_1():
    """Paper Table 1: u-net, warping 0.000353, Rand 0.0382, pixel 0.0611 (ISBI 2012 leaderboard, 6 March 2015)."""
    assert PAPER_UNET == {"warping_error": 0.000353, "rand_error": 0.0382, "pixel_error": 0.0611}
    assert [row[0] for row in PAPER_TABLE1 if row[1] == "u-net (paper)"] == [1]


def test_csv_round_trip_and_no_temporary_file(tmp_path):
    rows = [{"name": "a", "value": "1.5"}, {"name": "b", "value": ""}]
    write_csv(tmp_path / "t.csv", rows)
    assert read_csv(tmp_path / "t.csv") == rows and os.listdir(tmp_path) == ["t.csv"]
    write_csv(tmp_path / "t.csv", [{"name": "c", "value": "2", "extra": "dropped"}], ["name", "value"])
    assert read_csv(tmp_path / "t.csv") == [{"name": "c", "value": "2"}]
    assert read_csv(tmp_path / "missing.csv") == []
