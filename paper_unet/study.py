"""Studies: named variants of one configuration, each trained and scored on the same fold.

A variant is a name and a list of ``section.key=value`` overrides of a base profile (never a copy
of the training code). `run_variants` trains each variant on one cross-validation fold with
`reproduce.run_reproduction` (train, overlap-tile prediction with the profile's TTA setting, all
five challenge metrics on the held-out block) and merges one row per variant into a CSV: a
variant run again replaces its row, the others stay, so a study can span several sittings.
The budget study of the `cpu` profile is one such study (results/isbi2012_cpu/budget_study.csv).
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from paper_unet.config import Config, load_config
from paper_unet.data import ISBI2012

__all__ = ["Variant", "parse_variant", "run_variants", "read_rows", "markdown_table", "study_section",
           "put_section", "STUDY_FIELDS", "ABLATIONS"]

# What each of the paper's ingredients buys: every variant differs from the full method (a profile as
# it is) in one setting; "no augmentation" keeps the random tile position (random crops of the
# training slices) and removes elastic deformation, rotation, flip and gray values. "no_tta"
# predicts the full method's own checkpoints without test-time augmentation.
ABLATIONS = {
    "full": [],
    "no_border_term": ["data.w0=0.0"],  # class-balancing weights kept
    "plain_cross_entropy": ["data.weight_map=false"],  # no weight map at all
    "no_elastic": ["data.elastic_std=0.0"],
    "no_augmentation": ["data.elastic_std=0.0", "data.rotate=false", "data.flip=false", "data.gray_values=false"],
    "no_tta": ["run.tta=false"],
    "padded_unet": ['model.network="padded"'],  # same-padding + BatchNorm, whole-slice prediction
    "no_dropout": ["model.dropout=0.0"],
}

METRICS = ["warping_error", "rand_error", "pixel_error", "vrand_thinned", "vinfo_thinned"]
STUDY_FIELDS = ["name", "overrides", "tile", "width", "lr", "warmup", "iterations", "lr_decay_at", "tta",
                "seed", "fold", "status", "train_min", "predict_min", *METRICS, "commit", "hardware", "date_utc"]


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """``"NAME key=value key=value"`` -> Variant (the form of the scripts' --variant option)."""
    parts = text.split()
    if not parts or "=" in parts[0]:
        raise ValueError(f"a variant is 'NAME key=value ...', got {text!r}")
    return Variant(parts[0], parts[1:])


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=STUDY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _row(variant: Variant, config: Config, fold: int, status: str, scores: dict, timings: dict,
         prov: dict) -> dict:
    o, r = config.optim, config.run
    hardware = prov["gpu"] or f"{prov['cpu']}, {prov['torch_threads']} threads"
    return {"name": variant.name, "overrides": " ".join(variant.overrides), "tile": config.data.tile,
            "width": config.model.base_channels, "lr": f"{o.lr:g}", "warmup": o.warmup,
            "iterations": o.iterations, "lr_decay_at": o.lr_decay_at, "tta": r.tta, "seed": r.seed,
            "fold": fold, "status": status,
            "train_min": f"{timings.get(f'fold{fold}_train', math.nan) / 60:.1f}",
            "predict_min": f"{timings.get(f'fold{fold}_predict', math.nan) / 60:.1f}",
            **{m: scores.get(m, math.nan) for m in METRICS},
            "commit": prov["commit"][:10] + ("+dirty" if prov.get("dirty") else ""), "hardware": hardware,
            "date_utc": prov["date_utc"]}


def run_variants(profile: str, variants: list[Variant], isbi: ISBI2012, out: Path, csv_path: Path, *,
                 fold: int = 2, common: list[str] | None = None, progress: bool = True,
                 command: str | None = None) -> list[dict]:
    """Train and score each variant on ``fold``; merge its row into ``csv_path`` as soon as it ends.

    ``common`` overrides apply to every variant (before its own). An unfinished variant resumes
    from its checkpoints in ``out/NAME``; a finished one (its fold metrics exist) is only re-read.
    """
    from paper_unet.reproduce import provenance, run_reproduction
    from paper_unet.train import TrainingDiverged

    rows = []
    for variant in variants:
        config = load_config(profile, [*(common or []), *variant.overrides])
        run_dir = out / variant.name
        prov = provenance(command)
        start = time.perf_counter()
        try:
            summary = run_reproduction(config, isbi, run_dir, progress=progress, command=command,
                                       only_fold=fold)
            scores, status, timings = summary["folds"][str(fold)], "ok", summary["timings_s"]
        except TrainingDiverged as error:
            scores, status = {}, f"stopped: {error}"
            timings = {f"fold{fold}_train": time.perf_counter() - start}
            shutil.rmtree(run_dir / f"fold{fold}", ignore_errors=True)  # a rerun starts afresh
        if "fold" in scores and f"fold{fold}_train" not in timings:  # re-read: the stage timed itself
            timings = {f"fold{fold}_train": scores.get("train_seconds", math.nan)}
        row = _row(variant, config, fold, status, scores, timings, prov)
        merged = [r for r in read_rows(csv_path) if r["name"] != variant.name] + [row]
        _write_rows(csv_path, merged)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("name", "status", "train_min", *METRICS)}), file=sys.stderr)
    return rows


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
