"""Studies: named variants of one configuration, each trained and scored on the same fold.

A variant is a name and a list of ``section.key=value`` overrides of a base profile (never a copy
of the training code). `run_variants` trains each variant on one cross-validation fold with
`reproduce.run_reproduction` (train, overlap-tile prediction with the profile's TTA setting, all
five challenge metrics on the held-out block) and merges one row per variant into a CSV: a
variant run again replaces its row, the others stay, so a study can span several sittings.
The budget study of the `cpu` profile is one such study (results/isbi2012_cpu/budget_study.csv).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from paper_unet.config import Config, load_config
from paper_unet.data import ISBI2012, cv_folds
from paper_unet.tables import (METRICS, PAPER_TABLE1, loss_curve, markdown_table, put_section, read_rows,
                               study_section, write_csv)

__all__ = ["Variant", "parse_variant", "run_variants", "read_rows", "markdown_table", "study_section",
           "put_section", "STUDY_FIELDS", "ABLATIONS", "NOISE", "POPULAR", "CONTROLS", "ablation_variants",
           "touching_cells_window", "write_ablation_report", "adopt_network", "keep_curves", "gather"]

# What each of the paper's ingredients buys: every variant differs from the full method (a profile as
# it is) in one ingredient; "padded_no_bn" is "padded_unet" less its BatchNorm, so that the two
# differences (padding, BatchNorm) can be told apart; "no augmentation" keeps the random tile
# position (random crops of the training slices) and removes elastic deformation, rotation, flip and
# gray values. "no_tta" predicts the full method's own checkpoints without test-time augmentation.
ABLATIONS = {
    "full": [],
    "no_border_term": ["data.w0=0.0"],  # class-balancing weights kept
    "plain_cross_entropy": ["data.weight_map=false"],  # no weight map at all
    "no_elastic": ["data.elastic_std=0.0"],
    "no_augmentation": ["data.elastic_std=0.0", "data.rotate=false", "data.flip=false", "data.gray_values=false"],
    "no_tta": ["run.tta=false"],  # the full method's checkpoints, predicted without TTA
    # same-padding + BatchNorm, whole-slice prediction; the same dropout and the same labelled 388 x 388 centre of
    # the 572 tile as the paper's network (the loss on the centre of the padded network's whole-tile output)
    "padded_unet": ['model.network="padded"'],
    "padded_no_bn": ['model.network="padded"', "model.padded_batch_norm=false"],  # padded_unet less BatchNorm
    "no_dropout": ["model.dropout=0.0"],
}
REUSE = {"no_tta": "full"}
NOISE = {"full_seed1": ["run.seed=1"]}  # the full method again with another seed: the noise floor
# The padded networks as the popular setup trains them (what the first padded rows measured, 2026-11-25):
# no dropout, and labels and loss over the whole 572 tile (about twice the labelled area: 572 x 572 against the 388 x 388 of the paper).
# Runnable by name (--only), not part of the default study.
POPULAR = {"padded_unet_popular": ['model.network="padded"', "model.dropout=0.0", "data.label_whole_tile=true"],
           "padded_no_bn_popular": ['model.network="padded"', "model.padded_batch_norm=false", "model.dropout=0.0",
                                    "data.label_whole_tile=true"]}
# The full method in plain fp32 (NCHW) on any machine: the precision control. `auto` trains in bf16 + channels_last on a
# CPU with native bf16 and in fp32 elsewhere, so rows trained on different CPU classes differ in precision too; this
# row, set beside `full`, measures what precision alone changes. Runnable by name (--only), not part of the default study.
CONTROLS = {"full_fp32": ["run.bf16=false", "run.channels_last=false"]}


def ablation_pairs() -> list[tuple[str, list[str]]]:
    return [*ABLATIONS.items(), *NOISE.items()]


def ablation_variants(names: list[str] | None = None) -> list[Variant]:
    """The ablations and the noise run, in order (``names``: a subset, which may name the popular-setup and
    control rows too)."""
    table = {**ABLATIONS, **NOISE, **POPULAR, **CONTROLS}
    unknown = sorted(set(names or []) - set(table))
    if unknown:
        raise ValueError(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(table)}")
    by_name_only = {**POPULAR, **CONTROLS}
    return [Variant(name, overrides, REUSE.get(name)) for name, overrides in table.items()
            if (name in names if names is not None else name not in by_name_only)]


def _flat(config: Config | dict) -> dict:
    """``{"section.key": value}`` of a config (or of its dict, as a checkpoint holds it)."""
    values = config.to_dict() if isinstance(config, Config) else config
    return {f"{section}.{key}": value for section, keys in values.items()
            if isinstance(keys, dict) for key, value in keys.items()}


def _differing(a: Config | dict, b: Config | dict) -> list[str]:
    """The ``section.key`` settings in which two configs differ."""
    flat_a, flat_b = _flat(a), _flat(b)
    return sorted(k for k in {**flat_a, **flat_b} if flat_a.get(k) != flat_b.get(k))


def touching_cells_window(label: np.ndarray, size: int = 128) -> tuple[slice, slice]:
    """The size x size window of a label slice with the most border weight (Eq. 2's separation
    term): where cells touch, which is where the weight map should make a difference."""
    from paper_unet.weights import border_weights

    border = border_weights(label > 0)
    sums = border.cumsum(0).cumsum(1)
    sums = np.pad(sums, ((1, 0), (1, 0)))
    totals = sums[size:, size:] - sums[:-size, size:] - sums[size:, :-size] + sums[:-size, :-size]
    y, x = np.unravel_index(int(np.argmax(totals)), totals.shape)
    return slice(int(y), int(y) + size), slice(int(x), int(x) + size)


def _save_crop(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(np.asarray(array, np.float64) * 255), 0, 255).astype(np.uint8)).save(path)


STUDY_FIELDS = ["name", "overrides", "tile", "width", "lr", "warmup", "iterations", "lr_decay_at", "tta",
                "seed", "fold", "status", "train_min", "predict_min", *METRICS, "commit", "hardware", "date_utc"]


@dataclass
class Variant:
    name: str
    overrides: list[str] = field(default_factory=list)
    reuse: str | None = None  # predict this variant's trained checkpoints instead of training


PREDICTION_ONLY = {"run.tta"}  # settings that change prediction, not training


def parse_variant(text: str) -> Variant:
    """``"NAME key=value key=value"`` -> Variant (the form of the scripts' --variant option)."""
    parts = text.split()
    if not parts or "=" in parts[0]:
        raise ValueError(f"a variant is 'NAME key=value ...', got {text!r}")
    return Variant(parts[0], parts[1:])


ADOPTED = ("best.pt", "train_log.csv", "val_log.csv", "last.pt")  # last.pt last: it marks a finished copy


def adopt_network(source: Path, fold_dir: Path, config: Config) -> bool:
    """Let ``fold_dir`` start from the finished training in ``source`` (a fold directory of another
    run, e.g. run_isbi.sh's ``runs/isbi2012_cpu/fold2``) instead of training the same network again.

    The source checkpoint must have been written with exactly ``config`` and have finished its
    iterations: then it *is* this variant's training (same profile, overrides, seed and fold), and
    `run_reproduction` resumes from it, finds nothing left to train, and predicts and scores it.
    Its files are copied (each atomically, ``last.pt`` last); nothing is done when ``fold_dir``
    already has a ``last.pt``. Returns whether files were copied.
    """
    from paper_unet.checkpoint import load_checkpoint

    if (fold_dir / "last.pt").is_file():
        return False
    last = source / "last.pt"
    if not last.is_file():
        raise ValueError(f"{last} does not exist: --full-from takes a run directory whose {source.name} "
                         f"has finished training (e.g. runs/isbi2012_cpu after run_isbi.sh)")
    state = load_checkpoint(last)
    if state["config"] != config.to_dict():
        raise ValueError(f"{last} was trained with another configuration than this variant's (differs in "
                         f"{', '.join(_differing(state['config'], config)) or 'the profile name'}); adopt only a "
                         f"run of the same profile, overrides and seed")
    if state["iteration"] != config.optim.iterations:
        raise ValueError(f"{last} stopped at iteration {state['iteration']} of {config.optim.iterations}: "
                         f"finish that run first")
    fold_dir.mkdir(parents=True, exist_ok=True)
    for name in ADOPTED:
        if (source / name).is_file():
            partial = fold_dir / f".{name}.partial"
            shutil.copy2(source / name, partial)
            partial.replace(fold_dir / name)
    return True


def _stamp(record: dict | None, earlier: dict | None) -> dict:
    """The row's commit, hardware and date: from the fold's stage record (the sessions that ran it, so a
    finished variant keeps the provenance of the run that made it when a study is resumed elsewhere); for a
    fold finished before stage records, the row the CSV already has (``earlier``)."""
    from paper_unet.provenance import machine

    sessions = (record or {}).get("sessions", [])
    if not sessions:
        if earlier is None:
            return {"commit": "unknown", "hardware": "unknown", "date_utc": "unknown"}
        return {key: earlier[key] for key in ("commit", "hardware", "date_utc")}
    commits = dict.fromkeys(s["commit"][:10] + ("+dirty" if s.get("dirty") else "") for s in sessions)
    ran_on = dict.fromkeys(f"{machine(s)}; {s['precision']}" for s in sessions)
    last = sessions[-1]
    return {"commit": " then ".join(commits), "hardware": " then ".join(ran_on),
            "date_utc": last.get("end_utc") or last["start_utc"]}


SETTING = ("overrides", "tile", "width", "lr", "warmup", "iterations", "lr_decay_at", "tta", "seed", "fold")


def _same_setting(a: dict, b: dict) -> bool:
    """Whether two rows describe the same training and prediction (a CSV row is text: compared as text)."""
    return all(str(a.get(key)) == str(b.get(key)) for key in SETTING)


def _row(variant: Variant, config: Config, fold: int, status: str, scores: dict, timings: dict) -> dict:
    """The row's setting and scores; its commit, hardware and date come from `_stamp`."""
    o, r = config.optim, config.run
    return {"name": variant.name, "overrides": " ".join(variant.overrides), "tile": config.data.tile,
            "width": config.model.base_channels, "lr": f"{o.lr:g}", "warmup": o.warmup,
            "iterations": o.iterations, "lr_decay_at": o.lr_decay_at, "tta": r.tta, "seed": r.seed,
            "fold": fold, "status": status,
            "train_min": f"{timings.get(f'fold{fold}_train', math.nan) / 60:.1f}",
            "predict_min": f"{timings.get(f'fold{fold}_predict', math.nan) / 60:.1f}",
            **{m: scores.get(m, math.nan) for m in METRICS}}


def keep_curves(fold_dir: Path, curves: Path, name: str) -> bool:
    """Copy a variant's logs (``train_log.csv``, ``val_log.csv`` of its fold) to ``curves/NAME_train.csv`` and
    ``curves/NAME_val.csv``: small files that outlive the run folder, for the report's figure of the training
    curves. False (nothing copied) when the fold has no training log."""
    if not (fold_dir / "train_log.csv").is_file():
        return False
    curves.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fold_dir / "train_log.csv", curves / f"{name}_train.csv")
    if (fold_dir / "val_log.csv").is_file():
        shutil.copyfile(fold_dir / "val_log.csv", curves / f"{name}_val.csv")
    return True


def run_variants(profile: str, variants: list[Variant], isbi: ISBI2012, out: Path, csv_path: Path, *,
                 fold: int = 2, common: list[str] | None = None, progress: bool = True,
                 command: str | None = None, slices: Path | None = None, curves: Path | None = None,
                 adopt: dict[str, Path] | None = None) -> list[dict]:
    """Train and score each variant on ``fold``; merge its row into ``csv_path`` as soon as it ends.

    ``common`` overrides apply to every variant (before its own). An unfinished variant resumes
    from its checkpoints in ``out/NAME``; a finished one (its fold metrics exist) is only re-read, and its row in
    the CSV is kept as the run that made it wrote it (commit, machine, date: a resumed study never re-stamps
    it; a new row's provenance comes from its fold's stage record, `stages`).
    A variant with ``reuse`` predicts and scores that variant's checkpoints (which must exist, and
    whose config may differ only in prediction settings). With ``slices``, a crop of the first
    held-out slice where cells touch is kept per variant (``slices/NAME.png``, P(cell) x 255),
    with the image and labels beside them (``_image.png``, ``_labels.png``), for a figure. With ``curves``,
    each trained variant's training and validation logs are kept there (`keep_curves`).
    ``adopt`` maps a variant name to another run directory whose fold network was trained with
    exactly that variant's config: it is adopted (`adopt_network`) instead of trained again.
    """
    from paper_unet.reproduce import run_reproduction
    from paper_unet.stages import read_stage
    from paper_unet.train import TrainingDiverged

    rows = []
    for variant in variants:
        config = load_config(profile, [*(common or []), *variant.overrides])
        run_dir = out / variant.name
        finished = (run_dir / f"fold{fold}" / "metrics.json").is_file()  # re-read below, not run again
        trained = None
        if variant.reuse:
            base = load_config(profile, [*(common or []), *dict(ablation_pairs()).get(variant.reuse, [])])
            differ = set(_differing(config, base))
            if not differ <= PREDICTION_ONLY:
                raise ValueError(f"{variant.name} reuses {variant.reuse}'s networks but differs in training "
                                 f"settings {sorted(differ - PREDICTION_ONLY)}")
            trained = out / variant.reuse
            if not (trained / f"fold{fold}" / "metrics.json").is_file():
                raise ValueError(f"{variant.name} predicts {variant.reuse}'s networks: run {variant.reuse} first")
        if variant.name in (adopt or {}):
            adopt_network(Path(adopt[variant.name]) / f"fold{fold}", run_dir / f"fold{fold}", config)
        start = time.perf_counter()
        try:
            summary = run_reproduction(config, isbi, run_dir, progress=progress, command=command,
                                       only_fold=fold, trained=trained)
            scores, status, timings = summary["folds"][str(fold)], "ok", summary["timings_s"]
        except TrainingDiverged as error:
            scores, status = {}, f"stopped: {error}"
            timings = {f"fold{fold}_train": time.perf_counter() - start}
        if "train_seconds" in scores:  # the network's own training time: summed over resumptions, kept
            timings = {**timings, f"fold{fold}_train": scores["train_seconds"]}  # when re-read or adopted
        row = _row(variant, config, fold, status, scores, timings)
        existing = read_rows(csv_path)
        earlier = next((r for r in existing if r["name"] == variant.name), None)
        same = earlier is not None and _same_setting(earlier, row)
        row.update(_stamp(read_stage(run_dir / f"fold{fold}"), earlier if same else None))
        if status != "ok":
            shutil.rmtree(run_dir / f"fold{fold}", ignore_errors=True)  # a rerun starts afresh
        if variant.reuse:
            row["train_min"] = f"(= {variant.reuse})"
        if finished and same and status == "ok":
            row = earlier  # a finished variant's row as the run that made it wrote it: never re-stamped
        if curves is not None and status == "ok" and not variant.reuse:
            keep_curves(run_dir / f"fold{fold}", curves, variant.name)
        probabilities = run_dir / f"fold{fold}" / "val_probabilities.tif"
        if slices is not None and probabilities.is_file():
            import tifffile

            val = cv_folds(len(isbi.train_images), config.run.folds)[fold][1][0]
            window = touching_cells_window(isbi.train_labels[val])
            _save_crop(slices / f"{variant.name}.png", tifffile.imread(probabilities, key=0)[window])
            _save_crop(slices / "_image.png", isbi.train_images[val][window] / 255.0)
            _save_crop(slices / "_labels.png", isbi.train_labels[val][window] > 0)
        merged = [r for r in existing if r["name"] != variant.name] + [row]
        write_csv(csv_path, merged, STUDY_FIELDS)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("name", "status", "train_min", *METRICS)}), file=sys.stderr)
    return rows


WHAT = {"full": "the full method (the profile as it is)", "no_border_term": "w0 = 0 (class-balancing weights kept)",
        "plain_cross_entropy": "no weight map: plain cross entropy", "no_elastic": "no elastic deformation",
        "no_augmentation": "no elastic deformation, rotation, flip or gray values (random crops kept)",
        "no_tta": "the full method's networks, predicted without TTA",
        "padded_unet": "PaddedUNet (same-padding + BatchNorm), whole-slice prediction; dropout and labelled centre "
                       "as the U-Net's",
        "padded_no_bn": "PaddedUNet without BatchNorm (same-padding alone), whole-slice prediction; dropout and "
                        "labelled centre as the U-Net's",
        "padded_unet_popular": "PaddedUNet, the popular setup: no dropout, loss over the whole 572 tile",
        "padded_no_bn_popular": "PaddedUNet without BatchNorm, the popular setup: no dropout, loss over the whole tile",
        "no_dropout": "no dropout", "full_seed1": "the full method with seed 1 (noise floor)",
        "full_fp32": "the full method in fp32 (NCHW) whatever the CPU (precision control)"}


def gather(jobs: list[Path], results: Path, csv_name: str) -> list[str]:
    """A study run as one job per variant (a SLURM array: docs/scaling_out.md), gathered: each job's results folder
    (its ``csv_name``, ``slices/``, ``curves/``) merged into ``results`` (a variant in several jobs: the last one
    given wins). Returns the variants gathered. Rows keep their own provenance (`_stamp`)."""
    csv_path = results / csv_name
    merged = {r["name"]: r for r in read_rows(csv_path)}
    names = []
    for job in jobs:
        rows = read_rows(job / csv_name)
        if not rows:
            raise ValueError(f"{job / csv_name} has no rows: is {job} the --results folder of a finished job?")
        for row in rows:
            merged[row["name"]] = row
            names.append(row["name"])
        for folder in ("slices", "curves"):
            if (job / folder).is_dir():
                (results / folder).mkdir(parents=True, exist_ok=True)
                for path in sorted((job / folder).iterdir()):
                    shutil.copyfile(path, results / folder / path.name)
    write_csv(csv_path, list(merged.values()), STUDY_FIELDS)
    return names


def _curves_figure(results: Path, names: list[str]) -> str:
    """``ablations_curves.png`` from the logs kept in ``results/curves`` (`keep_curves`), and its README text;
    "" when no variant's logs were kept."""
    from paper_unet.plots import plot_loss_curves

    kept = [name for name in names if (results / "curves" / f"{name}_train.csv").is_file()]
    if not kept:
        return ""
    curves, validations = {}, {}
    for name in kept:
        curves[name] = loss_curve(read_rows(results / "curves" / f"{name}_train.csv"))
        validations[name] = [{k: float(v) for k, v in r.items()}
                             for r in read_rows(results / "curves" / f"{name}_val.csv")]
    plot_loss_curves(curves, results / "ablations_curves.png", validations, title="training loss")
    return ("\n![training curves of the variants whose logs were kept](ablations_curves.png)\n\nTraining loss and "
            "validation errors (held-out slices, without TTA, every `run.validate_every` steps) of the variants "
            f"whose logs were kept in `curves/` ({', '.join(kept)}"
            + ("; the other rows' logs were not kept" if len(kept) < len(names) else "") + ").\n")


def write_ablation_report(csv_path: Path, results: Path, *, command: str = "", full: str = "full",
                          noise: tuple[str, ...] = tuple(NOISE)) -> Path:
    """results/ablations/README.md from the study's CSV: every variant's five metrics, its difference
    to the full method, whether that exceeds the seed-to-seed spread of the full method, the paper's
    Table 1 row beside them, provenance, and the figure of the kept slice crops."""
    from paper_unet.plots import plot_variant_crops

    rows = {r["name"]: r for r in read_rows(csv_path)}
    results.mkdir(parents=True, exist_ok=True)
    value = lambda r, m: float(r[m]) if r.get(m) not in (None, "", "nan") else math.nan  # noqa: E731
    base = rows.get(full)
    spread = {m: max((abs(value(rows[n], m) - value(base, m)) for n in noise if n in rows), default=math.nan)
              for m in METRICS} if base else {}
    lines = ["| variant | what differs | warping | Rand | pixel | V_rand | V_info | Δ warping | Δ Rand | Δ pixel | "
             "beyond the seed spread |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        deltas = {m: value(r, m) - value(base, m) for m in METRICS} if base else {}
        beyond = [m.split("_")[0] for m in ("warping_error", "rand_error", "pixel_error")
                  if base and name != full and abs(deltas[m]) > spread.get(m, math.nan)]
        fmt = lambda v, d: "-" if math.isnan(v) else f"{v:+.{d}f}"  # noqa: E731
        lines.append(f"| {name} | {WHAT.get(name, r['overrides'])} | {value(r, 'warping_error'):.6f} | "
                     f"{value(r, 'rand_error'):.4f} | {value(r, 'pixel_error'):.4f} | {value(r, 'vrand_thinned'):.4f} | "
                     f"{value(r, 'vinfo_thinned'):.4f} | " + (" | ".join(
                         [fmt(deltas.get('warping_error', math.nan), 6), fmt(deltas.get('rand_error', math.nan), 4),
                          fmt(deltas.get('pixel_error', math.nan), 4)])) + f" | {', '.join(beyond) or '-'} |")
    paper = next(row for row in PAPER_TABLE1 if row[0] == 1)
    lines.append(f"| u-net, paper Table 1 | test set, full network, GPU | {paper[2]:.6f} | {paper[3]:.4f} | "
                 f"{paper[4]:.4f} | - | - | | | | |")
    any_row = next(iter(rows.values()), {})
    provenance = sorted({(r["commit"], r["hardware"]) for r in rows.values()})
    crops = {name: results / "slices" / f"{name}.png" for name in rows}
    figure = ""
    if (results / "slices" / "_image.png").is_file():
        plot_variant_crops(results / "slices", [n for n in rows if crops[n].is_file()], results / "ablations_slice.png")
        figure = ("\n![every variant on one held-out slice](ablations_slice.png)\n\nOne held-out slice, zoomed on the "
                  "128x128 window where cells touch most (the most Eq. 2 border weight): image, labels, and P(cell) of "
                  "every variant (white = cell).\n")
    figure += _curves_figure(results, list(rows))
    text = f"""# Ablations: what each of the paper's ingredients buys (ISBI 2012)

Every variant differs from the full method in one ingredient (`paper_unet.study.ABLATIONS`; a test compares
the resolved configs; `padded_no_bn` is `padded_unet` less its BatchNorm, to tell padding and BatchNorm
apart), except the `*_popular` rows: the padded networks as the popular setup trains them, with no dropout and
the loss over the whole tile (`paper_unet.study.POPULAR`). Each is trained with the same iterations, tile
and seed on the same fold (held-out slices of fold {any_row.get('fold', '?')}), predicted by overlap-tile inference (the padded networks: whole slices) and
scored with all five challenge metrics. The seed-to-seed spread of the full method ({', '.join(noise)} against {full})
is the noise floor: a difference is listed as beyond it when it is larger than that spread.
Data: `ablations.csv` (every row with its commit, hardware, date, training time). Precision is the profile's
`run.bf16` / `run.channels_last` at the row's commit (since 2026-11-30 `auto`: bf16 autocast + channels_last on a
CPU with native bf16, fp32 elsewhere), so rows trained on different CPUs may differ in precision: each row's
`hardware` names its path where it was recorded.

{chr(10).join(lines)}

The paper's row is the challenge's test-set leaderboard (full network on a GPU); ours are held-out training
slices with a reduced network on the CPU: indicative, not comparable entry by entry.
{figure}
## Provenance

Command: `{command}`. {"; ".join(f"commit {c} on {h}" for c, h in provenance)}.
Training time per variant: the `train_min` column of `ablations.csv`.
"""
    notes = results / "NOTES.md"
    if notes.is_file():
        text += "\n" + notes.read_text()
    (results / "README.md").write_text(text)
    return results / "README.md"
