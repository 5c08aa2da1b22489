"""The own-data studies (paper_unet/own_data_study.py): their records, and README's numbers tied to them."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from paper_unet.own_data_study import BIT_DEPTHS, write_rows

RESULTS = Path(__file__).resolve().parents[1] / "results" / "own_data"
README = Path(__file__).resolve().parents[1] / "README.md"


def rows(name: str) -> dict[str, dict]:
    with open(RESULTS / name, newline="") as handle:
        return {row["arm"]: row for row in csv.DictReader(handle)}


def validation(row: dict, iteration: int) -> float:
    return float(re.search(rf"{iteration}:rand=([0-9.]+)", row["validations"]).group(1))


def test_readme_quotes_the_recorded_study_numbers():
    text = " ".join(README.read_text().split())
    cells, bits = rows("sparse_cells.csv"), rows("bit_depth.csv")
    assert cells["before"]["exit"] == "2" and "iteration 630" in cells["before"]["status"]
    assert "stopped at iteration 630" in text
    after = cells["after"]
    assert after["exit"] == "0" and after["iterations"] == "1500"
    assert f"IOU {float(after['iou']):.2f}, SEG {float(after['seg']):.2f} after a shortened 1,500" in text
    assert f"Rand error {validation(bits['12bit'], 800):.3f} against {validation(bits['uint8'], 800):.3f}" in text
    assert f"{validation(bits['12bit_before'], 800):.3f}, flat, before" in text
    assert validation(bits["12bit_before"], 400) == validation(bits["12bit_before"], 800)


def test_every_row_names_its_code_machine_and_date():
    for name in ("sparse_cells.csv", "bit_depth.csv"):
        for row in rows(name).values():
            assert row["code"] and "CPU" in row["cpu"] and row["date_utc"].startswith("2026")
            assert row["command"].startswith("paper-unet train --profile cpu")


def test_write_rows_takes_the_union_of_columns(tmp_path):
    path = write_rows([{"arm": "a", "x": 1}, {"arm": "b", "y": 2}], tmp_path / "r.csv")
    assert path.read_text().splitlines() == ["arm,x,y", "a,1,", "b,,2"]
    assert set(BIT_DEPTHS) >= {"uint8", "12bit"}
