"""Own-data studies: the README's own-data commands, run as a user runs them, on data with known answers.

Two studies, each a list of arms (the same command with other options), each arm one
``paper-unet train`` in a subprocess (the real command line, its exit status and its messages), then
``paper-unet predict`` on the validation images, scored here:

- **sparse cells** (`sparse_cells_data`): the synthetic phase-contrast-like set of `synthetic` (14
  training and 5 validation frames of 520 x 696 px, cells on a few percent of the pixels, instance
  masks), scored by the paper's Table 2 IOU and the Cell Tracking Challenge's SEG (`cell_metrics`)
  of the mask `predict --save-mask` writes (its stored threshold and minimum size);
- **bit depth** (`bit_depth_data`): ISBI 2012's training slices 0-19 to train and 20-29 to
  validate, written as uint8 (as published), as 12-bit values in a 16-bit file (x 16), as 14-bit
  (x 64), as 16-bit (x 257) and as float32 with an offset; scored by the held-out Rand and pixel
  error of `val_log.csv`.

Each arm's row (CSV) carries its command, exit status, what stopped it, its scores, its wall time,
the commit, the CPU class and the date, so that results/own_data/ holds the evidence as data.
"""

from __future__ import annotations

import csv
import datetime
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["Arm", "sparse_cells_data", "bit_depth_data", "run_arm", "write_rows", "BIT_DEPTHS"]

# name -> (dtype, gain, offset) applied to ISBI's uint8 values
BIT_DEPTHS = {"uint8": ("uint8", 1, 0), "12bit": ("uint16", 16, 0), "14bit": ("uint16", 64, 0),
              "16bit": ("uint16", 257, 0), "float_offset": ("float32", 1 / 255, 3.0)}


@dataclass
class Arm:
    name: str
    data: str  # a folder written by sparse_cells_data or bit_depth_data
    args: list[str] = field(default_factory=list)  # extra `paper-unet train` options
    code: str | None = None  # run the paper_unet of this checkout (e.g. an older commit's worktree): "before"


def _write(folder: Path, name: str, array: np.ndarray) -> None:
    tifffile.imwrite(folder / f"{name}.tif", array)


def sparse_cells_data(folder: str | Path, seed: int = 0, preset: str = "dim") -> Path:
    """The synthetic sparse-cell set (14 training, 5 validation frames; `synthetic.PRESETS`) as TIFFs in ``folder``."""
    from paper_unet.synthetic import PRESETS, sparse_cells

    folder = Path(folder) / preset
    if (folder / "val_labels.tif").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = sparse_cells(19, seed=seed, params=PRESETS[preset])
    for name, array in (("train_images", images[:14]), ("train_labels", labels[:14]),
                        ("val_images", images[14:]), ("val_labels", labels[14:])):
        _write(folder, name, array)
    return folder


def bit_depth_data(folder: str | Path, data_dir: str | Path | None, variant: str) -> Path:
    """ISBI 2012 slices 0-19 (training) and 20-29 (validation) as ``variant`` of `BIT_DEPTHS`, in ``folder``."""
    from paper_unet.data import load_isbi2012

    folder = Path(folder) / variant
    if (folder / "val_labels.tif").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    isbi = load_isbi2012(data_dir)
    dtype, gain, offset = BIT_DEPTHS[variant]
    images = (isbi.train_images.astype(np.float64) * gain + offset).astype(dtype)
    for name, array in (("train_images", images[:20]), ("train_labels", isbi.train_labels[:20]),
                        ("val_images", images[20:]), ("val_labels", isbi.train_labels[20:])):
        _write(folder, name, array)
    return folder


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "paper_unet", *args]


def _stopped(stderr: str) -> str:
    """What stopped a failed training, from its last error line."""
    errors = [line for line in stderr.splitlines() if "error:" in line]
    return errors[-1].split("error:", 1)[1].strip()[:300] if errors else stderr.strip().splitlines()[-1][:300]


def _commit(folder: str | None) -> str:
    return subprocess.run(["git", "-C", folder or ".", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                          text=True).stdout.strip() + ("" if folder else " (this checkout)")


def _provenance() -> dict:
    from paper_unet.fastpath import cpu_info

    return {"cpu": cpu_info().describe(), "threads": os.cpu_count(),
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M")}


def _score_cells(data: Path, out: Path) -> dict:
    """``predict --save-mask`` on the validation frames, scored by IOU and SEG against their instance masks."""
    from paper_unet.cell_metrics import iou, seg
    from paper_unet.segment import label_cells

    done = subprocess.run(_cli("predict", "--checkpoint", str(out / "last.pt"), "--input", str(data / "val_images.tif"),
                               "--output", str(out / "val_probs.tif"), "--save-mask", str(out / "val_mask.tif"),
                               "--quiet"), capture_output=True, text=True)
    if done.returncode != 0:
        return {"status": f"predict failed: {_stopped(done.stderr)}"}
    mask = tifffile.imread(out / "val_mask.tif")
    reference = tifffile.imread(data / "val_labels.tif")
    mask = mask[None] if mask.ndim == 2 else mask
    from paper_unet.checkpoint import load_checkpoint

    chosen = load_checkpoint(out / "last.pt").get("post_processing") or {}
    state = {f"chosen_{k}": chosen[k] for k in ("threshold", "min_size") if k in chosen}
    return {"iou": iou(mask, reference), "seg": seg(mask, reference),
            "components_per_frame": int(label_cells(mask).max()) / len(mask),
            "warning": "constant output" if "WARNING" in done.stderr else "", **state}


def _val_scores(out: Path) -> dict:
    """The validation rows of val_log.csv: Rand and pixel error (and IOU, SEG) at each validation."""
    path = out / "val_log.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"validations": " ".join(f"{r['iteration']}:rand={float(r['rand_error']):.3f},"
                                    f"pixel={float(r['pixel_error']):.4f}" for r in rows)}


def run_arm(arm: Arm, runs: str | Path, *, cells: bool, base: list[str]) -> dict:
    """Train ``arm`` (``base`` + its options) with the real command line, then score it; its CSV row."""
    data, out = Path(arm.data).resolve(), (Path(runs) / arm.name).resolve()
    command = _cli("train", *base, "--images", str(data / "train_images.tif"), "--labels",
                   str(data / "train_labels.tif"), "--val-images", str(data / "val_images.tif"), "--val-labels",
                   str(data / "val_labels.tif"), "--out", str(out), "--quiet", *arm.args)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=arm.code)  # python -m: that checkout's code
    minutes = (time.perf_counter() - start) / 60
    (Path(runs) / f"{arm.name}.log").write_text(done.stdout + done.stderr)
    shown = shlex.join(["paper-unet", *command[3:]]).replace(f"{Path.cwd()}/", "")  # paths as typed in the clone
    row = {"arm": arm.name, "code": _commit(arm.code), "command": shown,
           "exit": done.returncode,
           "status": "trained" if done.returncode == 0 else f"stopped: {_stopped(done.stderr)}",
           "train_min": round(minutes, 2), **_provenance()}
    trained = re.search(r"trained (\d+) iterations", done.stdout)
    row["iterations"] = int(trained.group(1)) if trained else ""
    row["messages"] = " | ".join(line for line in done.stderr.splitlines()
                                 if line.startswith(("warning", "own data", "labels are", "training:")))[:600]
    if cells and done.returncode == 0:
        row.update(_score_cells(data, out))
    row.update(_val_scores(out))
    return row


def write_rows(rows: list[dict], path: str | Path) -> Path:
    """The rows as a CSV (columns: the union, in first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
