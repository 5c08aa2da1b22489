"""The tables results/ is made of, in one place: the paper's Table 1 rows, the metrics' names, CSV
files, and the table of a study's variants (budget study, ablations).

`report` (a reproduction's results) and `study` (variants on one fold) both write them; neither
imports the other.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from paper_unet.atomic import write_text

__all__ = ["PAPER_TABLE1", "PAPER_UNET", "PAPER_TABLE2_IOU", "METRICS", "PER_THRESHOLD", "fmt", "read_csv", "read_rows", "loss_curve", "write_csv",
           "markdown_table", "study_section", "put_section"]

# Paper Table 1: ISBI 2012 leaderboard of 6 March 2015, sorted by warping error.
PAPER_TABLE1 = [
    ("-", "human values", 0.000005, 0.0021, 0.0010),
    (1, "u-net (paper)", 0.000353, 0.0382, 0.0611),
    (2, "DIVE-SCI", 0.000355, 0.0305, 0.0584),
    (3, "IDSIA (Ciresan et al.)", 0.000420, 0.0504, 0.0613),
    (4, "DIVE", 0.000430, 0.0545, 0.0582),
    (10, "IDSIA-SCI", 0.000653, 0.0189, 0.1027),
]
# Row 1 (the u-net) as the metrics' names, for what prints our scores beside it (`paper-unet evaluate`).
PAPER_UNET = dict(zip(["warping_error", "rand_error", "pixel_error"], next(r[2:] for r in PAPER_TABLE1 if r[0] == 1)))
# Paper Table 2: the u-net's IOU on the two cell data sets of the ISBI cell tracking challenge 2015.
PAPER_TABLE2_IOU = {"PhC-U373": 0.9203, "DIC-HeLa": 0.7756}
METRICS = ["warping_error", "rand_error", "pixel_error", "vrand_thinned", "vinfo_thinned"]
PER_THRESHOLD = {"pixel_error": "pixel_fscore_per_threshold", "rand_error": "rand_fscore_per_threshold",
                 "warping_error": "warping_error_per_threshold",
                 "vrand_thinned": "vrand_thinned_per_threshold", "vinfo_thinned": "vinfo_thinned_per_threshold"}


def fmt(value: float | None, digits: int = 6) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV file as dicts; no file, no rows."""
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def loss_curve(log: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(iterations, losses) of the rows of a run's ``train_log.csv`` (`read_csv`)."""
    return np.array([int(r["iteration"]) for r in log]), np.array([float(r["loss"]) for r in log])


def write_csv(path: Path, rows: list[dict], fieldnames: list[str] | None = None) -> None:
    """Write rows (columns: ``fieldnames``, else the first row's keys) atomically (`atomic.write_text`);
    without rows and fieldnames nothing is written."""
    if not rows and fieldnames is None:
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fieldnames or list(rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


read_rows = read_csv  # a study's rows (its CSV)


def markdown_table(rows: list[dict]) -> str:
    """The study's rows as a Markdown table (the results READMEs show it)."""
    lines = ["| variant | overrides | tile | width | lr | warm-up | iterations | train (min) | warping | Rand | pixel "
             "| V_rand | V_info | status |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def num(value: str, digits: int) -> str:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return "-"
        return "-" if math.isnan(number) else f"{number:.{digits}f}"

    for r in rows:
        status = r["status"] if r["status"] == "ok" else r["status"].split(";")[0]
        lines.append(f"| {r['name']} | `{r['overrides'] or '-'}` | {r['tile']} | {r['width']} | {r['lr']} | "
                     f"{r['warmup']} | {r['iterations']} | {r['train_min']} | {num(r['warping_error'], 6)} | "
                     f"{num(r['rand_error'], 4)} | {num(r['pixel_error'], 4)} | {num(r['vrand_thinned'], 4)} | "
                     f"{num(r['vinfo_thinned'], 4)} | {status} |")
    return "\n".join(lines)


def study_section(csv_path: Path, notes: str = "") -> str:
    """The "## Budget study" section of a results README, from the study's CSV (and notes beside it)."""
    rows = read_rows(csv_path)
    return ("## Budget study\n\nCandidate settings, each trained and scored on one fold "
            f"(`{csv_path.name}` has every row with its commit, hardware and date; "
            "`reproduction/budget_study.py`):\n\n" + markdown_table(rows) + "\n" + (f"\n{notes.strip()}\n" if notes else ""))


def put_section(readme: Path, section: str, before: str = "## Figures") -> None:
    """Replace the README's section with the same ``## `` title, or insert it before ``before``
    (at the end when that heading is absent)."""
    import re

    title = section.splitlines()[0]
    text = readme.read_text() if readme.is_file() else ""
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip() + "\n\n", text)
    elif f"\n{before}\n" in text:
        text = text.replace(f"\n{before}\n", f"\n{section.rstrip()}\n\n{before}\n", 1)
    else:
        text = text.rstrip() + "\n\n" + section
    readme.write_text(text.rstrip() + "\n")
