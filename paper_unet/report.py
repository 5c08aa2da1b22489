"""results/ from a reproduction run: tables beside paper Table 1, CSVs, figures, provenance."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from paper_unet.atomic import read_json, write_json, write_text
from paper_unet.config import Config, load_config
from paper_unet.provenance import machine, provenance
from paper_unet.stages import machines
from paper_unet.tables import (METRICS, PAPER_TABLE1, PER_THRESHOLD, fmt, loss_curve, read_csv, study_section,
                               write_csv)

__all__ = ["write_report", "write_lr_check", "PAPER_TABLE1", "prediction_method", "single_tile"]


def prediction_method(config: dict) -> str:
    """How the run predicts, from its config: "overlap-tile + TTA" or "overlap-tile, no TTA"."""
    return "overlap-tile + TTA (8 dihedral views)" if config["run"]["tta"] else "overlap-tile, no TTA"


def single_tile(config: dict, slice_size: int = 512) -> int:
    """The smallest valid input tile covering a slice (700 for 512 px at depth 5)."""
    from paper_unet.tiling import valid_input_size

    return valid_input_size(slice_size, config["model"]["depth"])


def _figures(run: Path, results: Path, summary: dict, isbi_dir: Path | None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    from paper_unet.metrics import THRESHOLDS

    made = []
    figures = results / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(12, 4))
    for name in sorted(p.name for p in run.iterdir() if p.is_dir() and (p / "train_log.csv").is_file()):
        it, loss = loss_curve(read_csv(run / name / "train_log.csv"))
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(it[window - 1:], smooth, label=name)
        val = read_csv(run / name / "val_log.csv")
        if val:
            ax_val.plot([int(r["iteration"]) for r in val], [float(r["rand_error"]) for r in val],
                        marker="o", label=f"{name} Rand")
            ax_val.plot([int(r["iteration"]) for r in val], [float(r["pixel_error"]) for r in val],
                        marker="x", linestyle="--", label=f"{name} pixel")
    ax_loss.set(xlabel="iteration", ylabel="weighted cross entropy (smoothed)", title="training loss")
    ax_val.set(xlabel="iteration", ylabel="error (held-out block, no TTA)", title="validation", yscale="log")
    if ax_loss.lines:
        ax_loss.legend()
    if ax_val.lines:
        ax_val.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "training_curves.png", dpi=110)
    plt.close(fig)
    made.append("figures/training_curves.png")

    folds = summary.get("folds", {})
    if folds:
        fig, axes = plt.subplots(1, 5, figsize=(18, 3.4))
        for ax, metric in zip(axes, METRICS):
            key = PER_THRESHOLD[metric]
            for k, scores in sorted(folds.items()):
                values = scores[key]
                ax.plot(THRESHOLDS[: len(values)], values, marker=".", label=f"fold {k}")
            ax.set(title=key.replace("_per_threshold", ""), xlabel="threshold t (P(cell) > t)")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(figures / "per_threshold.png", dpi=110)
        plt.close(fig)
        made.append("figures/per_threshold.png")

    probabilities = run / "fold0" / "val_probabilities.tif"
    if probabilities.is_file() and isbi_dir is not None and (isbi_dir / "train-volume.tif").is_file():
        k0 = folds.get("0", {}).get("val_slices", [0])[0]
        image = tifffile.imread(isbi_dir / "train-volume.tif", key=k0)
        label = tifffile.imread(isbi_dir / "train-labels.tif", key=k0)
        prob = tifffile.imread(probabilities)[0]
        fig, axes = plt.subplots(1, 3, figsize=(13, 4.6))
        for ax, shown, title in zip(axes, (image, label, prob),
                                    (f"training slice {k0} (held out in fold 0)", "labels (white = cell)",
                                     f"predicted P(cell), {prediction_method(summary['config'])}")):
            ax.imshow(shown, cmap="gray")
            ax.set_title(title)
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(figures / "prediction_fold0.png", dpi=100)
        plt.close(fig)
        made.append("figures/prediction_fold0.png")
    return made


def _lr_table(run: Path) -> str:
    path = run / "lr_search.json"
    if not path.is_file():
        return ""
    data = json.loads(path.read_text())
    lines = ["| learning rate | iterations | final train loss | val pixel error | val Rand error | status |",
             "|---|---|---|---|---|---|"]
    for row in data["rows"]:
        status = row["status"] if row["status"] == "ok" else row["status"].split(":")[0]
        lines.append(f"| {row['lr']:g} | {row['iterations']} | {fmt(row['final_loss'], 4)} | "
                     f"{fmt(row['val_pixel_error'], 4)} | {fmt(row['val_rand_error'], 4)} | {status} |")
    p = data["provenance"]
    lines.append(f"\nFold {data['rows'][0]['fold']} (train on the other blocks, validate on its block, "
                 f"no TTA). Command: `{p['command']}`; commit {p['commit'][:10]}; {p['cpu']}, "
                 f"{p['torch_threads']} threads; {p['date_utc']} UTC; "
                 f"wall time {sum(r['seconds'] for r in data['rows']) / 60:.1f} min.")
    return "\n".join(lines)


def _reduced(config: dict, paper: Config | None = None) -> str:
    """What a run's config reduces against the paper profile, for the README's label (CPU or GPU)."""
    paper = paper or load_config("paper")
    smaller = [what for what, ours, theirs in (
        ("width", config["model"]["base_channels"], paper.model.base_channels),
        ("tile", config["data"]["tile"], paper.data.tile),
        ("iterations", config["optim"]["iterations"], paper.optim.iterations)) if ours < theirs]
    return f": reduced {', '.join(smaller)}" if smaller else ""


def _submission_line(summary: dict) -> str:
    """Where the test-volume submission is, or why there is none (a `--cv-only` run)."""
    if summary.get("submission"):
        return f"Submission (float32 TIFF, 1 = cell): `{Path(summary['submission']).name}` in the run directory."
    return ("No final model and no test-volume submission: this run was the cross-validation alone "
            "(`reproduce --cv-only`, `run_isbi.sh --cv-only`).")


def _fast_path_row(summary: dict) -> str:
    """What the run trained with: the path `fastpath.resolve` chose in its training stages (their records), or,
    for a run recorded before them, the summary's path or the profile's fixed setting."""
    paths = sorted({s["precision_detail"] for record in summary.get("stages", {}).values()
                    for s in record.get("sessions", []) if not s["precision_detail"].startswith("prediction:")})
    if len(paths) == 1:
        return paths[0]
    if paths:
        return "**differs between stages** (see Stages): " + "; ".join(paths)
    if "fast_path" in summary:
        return summary["fast_path"]["summary"]
    r = summary["config"]["run"]
    return f"bf16 autocast {r['bf16']}, channels_last {r['channels_last']} (set in the profile)"


def _estimate_row(summary: dict) -> str:
    e = summary.get("estimate")
    if not e:
        return ""
    return (f"\n| estimated beforehand | {e['seconds'] / 60:.1f} min of work for what was left then "
            f"({', '.join(f'{k} {v:,}' for k, v in e['networks'].items()) or 'no'} training steps; "
            f"{e['step_s']:.3g} s per step, measured at the start{'; ' + str(e['parallel']) + ' processes' if e['parallel'] > 1 else ''}) |")


def _labels(config: dict, cpu_run: bool) -> tuple[str, str]:
    """(banner, label): how the README's top and its Table 1 rows name a run that is not the paper setting."""
    paper = load_config("paper")
    reduced = _reduced(config, paper)
    if cpu_run:
        return (f"**CPU run{reduced}, NOT the paper setting.** ",
                f"ours, `{config['name']}` profile (CPU run, NOT the paper setting)")
    if reduced:  # a GPU run cut down to fit the time it had: say so wherever its numbers appear
        return ((f"**GPU run{reduced} against the `paper` profile (width {config['model']['base_channels']}, "
                 f"tile {config['data']['tile']}, {config['optim']['iterations']} iterations; the profile: "
                 f"{paper.model.base_channels}, {paper.data.tile}, {paper.optim.iterations}), NOT the paper "
                 f"setting.** "),
                f"ours, `{config['name']}` profile ({reduced[2:]}: {config['optim']['iterations']} iterations)")
    return "", f"ours, `{config['name']}` profile"


def _fold_rows(folds: dict) -> list[dict]:
    return [{"fold": int(k), "val_slices": f"{s['val_slices'][0]}-{s['val_slices'][-1]}",
             **{m: s[m] for m in METRICS}} for k, s in sorted(folds.items())]


def _write_csvs(results: Path, folds: dict, fold_rows: list[dict]) -> None:
    """cv_folds.csv (one row per fold) and per_threshold.csv (every threshold of every fold)."""
    from paper_unet.metrics import THRESHOLDS

    write_csv(results / "cv_folds.csv", fold_rows)
    per_threshold = [{"fold": int(k), "metric": key, "threshold": repr(THRESHOLDS[i]), "value": value}
                     for k, s in sorted(folds.items()) for key in PER_THRESHOLD.values() for i, value in enumerate(s[key])]
    write_csv(results / "per_threshold.csv", per_threshold)


def _mean_std(fold_rows: list[dict]) -> tuple[dict, dict]:
    if not fold_rows:
        return {}, {}
    mean = {m: float(np.mean([r[m] for r in fold_rows])) for m in METRICS}
    std = {m: float(np.std([r[m] for r in fold_rows], ddof=1)) if len(fold_rows) > 1 else math.nan for m in METRICS}
    return mean, std


def _cv_table(fold_rows: list[dict], mean: dict, std: dict) -> str:
    if not fold_rows:
        return "(no folds)"
    cv = ["| fold | held-out slices | warping error | Rand error | pixel error | V_rand (thinned) | V_info (thinned) |",
          "|---|---|---|---|---|---|---|"]
    cv += [f"| {r['fold']} | {r['val_slices']} | " + " | ".join(fmt(r[m]) for m in METRICS) + " |" for r in fold_rows]
    cv.append("| **mean ± std** | | " + " | ".join(f"**{mean[m]:.6f}** ± {std[m]:.6f}" for m in METRICS) + " |")
    return "\n".join(cv)


def _table1(label: str, fold_rows: list[dict], mean: dict, test: dict | None, n_slices: int) -> str:
    """The paper's Table 1 rows with ours beside them (cross-validation mean; test volume when scored)."""
    table1 = ["| rank | group | warping error | Rand error | pixel error | V_rand | V_info |",
              "|---|---|---|---|---|---|---|"]
    table1 += [f"| {rank} | {group} | {w:.6f} | {r:.4f} | {p:.4f} | - | - |" for rank, group, w, r, p in PAPER_TABLE1]
    if fold_rows:
        table1.append(f"| - | {label}: {len(fold_rows)}-fold CV on the {n_slices} training slices | "
                      f"{mean['warping_error']:.6f} | {mean['rand_error']:.4f} | {mean['pixel_error']:.4f} | "
                      f"{mean['vrand_thinned']:.4f} | {mean['vinfo_thinned']:.4f} |")
    if test:
        table1.append(f"| - | {label}: test volume | {test['warping_error']:.6f} | {test['rand_error']:.4f} | "
                      f"{test['pixel_error']:.4f} | {test['vrand_thinned']:.4f} | {test['vinfo_thinned']:.4f} |")
    return "\n".join(table1)


def _wall_time(summary: dict) -> str:
    """The wall-time row: from start to end for stages in parallel processes, else the stages' sum."""
    folds = summary.get("folds", {})
    timings = summary.get("timings_s", {})
    stage_s = {k: v for k, v in timings.items() if k != "total_this_invocation"}
    stages = ", ".join(f"{k} {v / 60:.1f} min" for k, v in stage_s.items())
    if summary.get("wall_s") is None:
        return f"{sum(stage_s.values()) / 60:.1f} min in all stages ({stages})"
    train_min = ", ".join(f"fold {k} {s['train_seconds'] / 60:.1f} min" for k, s in sorted(folds.items())
                          if s.get("train_seconds") is not None)  # stages ran in parallel processes
    together = "the folds and the final model" if summary.get("submission") else "the folds"
    others = f"; other stages: {stages}" if stages else ""
    return (f"{summary['wall_s'] / 60:.1f} min from start to end; {together} trained in "
            f"parallel processes (training: {train_min}{others})")


def _hardware(summary: dict) -> str:
    """The hardware row: the run's machine, or, when its stages ran on several, that they did."""
    ran_on = machines(summary.get("stages", {}))
    if len(ran_on) > 1:
        return ("**several machines**: " + "; ".join(f"{m} ({', '.join(stages)})" for m, stages in ran_on.items())
                + " (see Stages)")
    prov = summary["provenance"]
    return prov["gpu"] or (f"{prov.get('cpu_capability', prov['cpu'])} ({prov['cpu_cores']} cores, "
                           f"{prov['torch_threads']} torch threads), no GPU")


def _stages_section(summary: dict) -> str:
    """## Stages: each stage's own record (what it did, on which machine, precision, commit, when, how long)."""
    records = summary.get("stages")
    if not records:
        return ""
    lines = ["| stage | did | machine | precision | commit | torch | started (UTC) | ended (UTC) | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, record in records.items():
        did = ", ".join(f"{k} {v}" for k, v in record.get("did", {}).items() if k not in ("checkpoint", "trained_with"))
        if not record.get("sessions"):
            lines.append(f"| {name} | {did} | {record.get('legacy', 'unknown')} | - | - | - | - | - | - |")
        for s in record.get("sessions", []):
            wall = f"{s['wall_s'] / 60:.1f} min" if s.get("wall_s") is not None else "stopped before its end"
            lines.append(f"| {name} | {did} | {machine(s)} | {s['precision']} | "
                         f"`{s['commit'][:10]}`{'+dirty' if s.get('dirty') else ''} | {s['torch']} | {s['start_utc']} "
                         f"| {s.get('end_utc') or '-'} | {wall} |")
    ran_on = machines(records)
    note = (f"\n\nThe stages ran on {len(ran_on)} different machines: a stage with two rows was interrupted and "
            f"resumed. Timings of different machines do not add up to one machine's." if len(ran_on) > 1 else "")
    return ("## Stages\n\nEach stage of the run keeps its own record (`stage.json` in its folder of the run directory), "
            "written when it starts and when it ends; one row per process that worked on it.\n\n"
            + "\n".join(lines) + note + "\n")


def _read_summary(run: Path) -> dict:
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path} not found: run the reproduction first "
                                f"(bash reproduction/run_isbi.sh --out {run})")
    return read_json(summary_path, "run summary", torn="run the reproduction again with the same options; it "
                     "rebuilds the summary from the stage records without training again")


def _provenance_table(summary: dict) -> str:
    config, prov = summary["config"], summary["provenance"]
    m, o, d = config["model"], config["optim"], config["data"]
    warmup = f" (linear warm-up over {o['warmup']} iterations)" if o.get('warmup') else ""
    dirty = " (uncommitted changes in paper_unet/ or reproduction/)" if prov.get('dirty') else ""
    return f"""| | |
|---|---|
| command | `{prov['command']}` |
| commit | `{prov['commit']}`{dirty} |
| hardware | {_hardware(summary)} |
| software | torch {prov['torch']}, Python {prov['python']}, {prov['platform']} |
| date (UTC) | {prov['date_utc']} |
| seed | {config['run']['seed']} |
| wall time | {_wall_time(summary)} |{_estimate_row(summary)}
| fast path | {_fast_path_row(summary)} |
| network | UNet base_channels {m['base_channels']}, depth {m['depth']}, dropout {m['dropout']}, variant {m['variant']} |
| training | tile {d['tile']}, SGD lr {o['lr']:g}{warmup} (x{o['lr_decay']:g} after {o['lr_decay_at']:.0%}), momentum {o['momentum']}, weight decay {o['weight_decay']:g}, {o['iterations']} iterations, batch {o['batch_size']} |
| inference | {prediction_method(config)}; one tile per slice (the smallest valid one covering 512 px: {single_tile(config)} at depth {m['depth']}) |"""


def _extra_sections(results: Path, lr_search: str | Path | None, made: list[str]) -> str:
    """The learning-rate search, the budget study, the figures and the hand-written NOTES.md, when present."""
    text = ""
    lr_table = _lr_table(Path(lr_search)) if lr_search else ""
    if lr_table:
        text += f"\n## Learning-rate search\n\n{lr_table}\n"
    study = results / "budget_study.csv"  # reproduction/budget_study.py merges its rows there
    if study.is_file():
        notes = results / "budget_study_notes.md"
        text += "\n" + study_section(study, notes.read_text() if notes.is_file() else "")
    text += "\n## Figures\n\n" + "\n".join(f"![{Path(f).stem}]({f})" for f in made) + "\n"
    notes = results / "NOTES.md"  # hand-written remarks, kept when the report is regenerated
    if notes.is_file():
        text += "\n" + notes.read_text()
    return text


def write_report(run: str | Path, results: str | Path, isbi_dir: str | Path | None = None,
                 lr_search: str | Path | None = None) -> Path:
    """Write results/ (README.md, CSVs, figures, summary.json) from a `run_reproduction` output directory.

    A hand-written ``NOTES.md`` in the results directory is appended to the README. The results'
    ``summary.json`` carries the run's stage records and the report's own record (``report``).
    """
    run, results = Path(run), Path(results)
    summary = _read_summary(run)
    results.mkdir(parents=True, exist_ok=True)
    folds, config = summary.get("folds", {}), summary["config"]
    block_sizes = sorted({len(s["val_slices"]) for s in folds.values()})
    blocks = (f"{len(folds)} contiguous blocks of {' or '.join(map(str, block_sizes))} training slices"
              if folds else f"{config['run']['folds']} folds")
    fold_rows = _fold_rows(folds)
    _write_csvs(results, folds, fold_rows)
    mean, std = _mean_std(fold_rows)
    banner, label = _labels(config, summary.get("device", "cpu").startswith("cpu"))
    test = summary.get("test")
    made = _figures(run, results, summary, Path(isbi_dir) if isbi_dir else None)
    stages = _stages_section(summary)
    unscored = "The test volume was not scored: test-labels.tif was not available to this run." if not test else ""
    text = f"""# ISBI 2012 reproduction — `{config['name']}` profile

{banner}Generated by
`paper-unet report` from the run directory of `paper-unet reproduce` (what `reproduction/run_isbi.sh` runs).

## Provenance

{_provenance_table(summary)}
{chr(10) + stages if stages else ""}
## Cross-validation ({blocks}; last checkpoint of each fold)

{_cv_table(fold_rows, mean, std)}

Data: `cv_folds.csv`; every threshold of every fold: `per_threshold.csv`, `figures/per_threshold.png`.

## Beside the paper's Table 1

{_table1(label, fold_rows, mean, test, sum(len(s['val_slices']) for s in folds.values()))}

The paper's rows are the challenge's **test-set** leaderboard (6 March 2015, scored by the organisers).
Our cross-validation rows are scored on held-out **training** slices with the same evaluator's metrics
(`paper_unet.metrics`, which reproduces the evaluator's printed values to 1e-12 at the optima and 1e-9 at
every threshold): a different data split, so the
comparison is indicative, not a leaderboard entry. {unscored}
{_submission_line(summary)}
"""
    text += _extra_sections(results, lr_search, made)
    write_text(results / "README.md", text)
    write_json(results / "summary.json", {k: v for k, v in summary.items() if k != "folds"}
               | {"cv_mean": mean, "cv_std": std, "report": provenance()})
    return results / "README.md"


def _lr_curves(run: Path, data: dict, results: Path) -> tuple[dict, dict]:
    """Each rate's loss curve and validations; loss_curves.csv and loss_curves.png written."""
    from paper_unet.plots import plot_loss_curves

    curves, validations, csv_rows = {}, {}, []
    for row in data["rows"]:
        name = f"lr {row['lr']:g}"
        log = read_csv(run / f"lr_{row['lr']:g}" / "train_log.csv")
        curves[name] = loss_curve(log)
        validations[name] = row.get("validation", [])
        csv_rows += [{"lr": f"{row['lr']:g}", **r} for r in log]
    write_csv(results / "loss_curves.csv", csv_rows)
    plot_loss_curves(curves, results / "loss_curves.png", validations, title="training loss by learning rate")
    return curves, validations


def _lr_check_table(data: dict, curves: dict, validations: dict) -> str:
    """One row per rate: steps, wall time, final smoothed loss, each validation, whether a check stopped it."""
    every = sorted({int(v["iteration"]) for rows in validations.values() for v in rows})
    head = "| lr | steps logged | wall time (min) | final smoothed loss | " + " | ".join(
        f"val pixel @{i} | val Rand @{i}" for i in every) + " | stopped |"
    lines = [head, "|" + "---|" * (5 + 2 * len(every))]
    for row in data["rows"]:
        name = f"lr {row['lr']:g}"
        _, loss = curves[name]
        smoothed = float(loss[-10:].mean()) if len(loss) else math.nan
        by_step = {int(v["iteration"]): v for v in validations[name]}
        cells = " | ".join(f"{fmt(by_step[i]['pixel_error'], 4)} | {fmt(by_step[i]['rand_error'], 4)}"
                           if i in by_step else "- | -" for i in every)
        stopped = "no" if row["status"] == "ok" else row["status"].replace("|", "/")
        steps = int(curves[name][0][-1]) if len(loss) else 0
        lines.append(f"| {row['lr']:g} | {steps} | {row['seconds'] / 60:.1f} | {fmt(smoothed, 4)} | {cells} | {stopped} |")
    return "\n".join(lines)


def _lr_invocations(data: dict) -> str:
    """One provenance row per search invocation (command, commit, start) with the rates it ran."""
    runs: dict[tuple, list[str]] = {}
    for row in data["rows"]:
        q = row.get("provenance", data["provenance"])
        runs.setdefault((q["command"], q["commit"], q["date_utc"], q.get("note", "")), []).append(f"{row['lr']:g}")
    return "\n".join(f"| rates {', '.join(rates)} | `{command}` | `{commit}` | {date} |" + (f" {note} |" if note else " |")
                     for (command, commit, date, note), rates in runs.items())


def _lr_schedule_and_checks(data: dict) -> tuple[str, str]:
    """What schedule the rates ran, and which checks could stop them."""
    o = data["config"]["optim"]
    steps = max(row["iterations"] for row in data["rows"])
    decay_at = o["lr_decay_at"] * o["iterations"]
    schedule = (f"the first {steps} steps of the profile's own schedule ({o['iterations']} iterations, x{o['lr_decay']:g} "
                f"from iteration {decay_at:.0f}: {'not reached' if steps <= decay_at else 'reached'} here)"
                if data.get("keep_schedule") else "a complete short schedule per rate (its decay included)")
    collapse = (f"the collapse check (a constant output on the training tiles for {o['collapse_patience']} log "
                f"intervals in a row, or nearly constant validation predictions at two validations in a row)"
                if o["collapse_patience"] else "the collapse check was off;")
    return schedule, collapse


def write_lr_check(run: str | Path, results: str | Path, title: str = "Learning-rate check") -> Path:
    """results/ for a `reproduce.tune_learning_rate` run: README table, loss-curve CSV and figure.

    One row per rate: steps run, wall time, the final smoothed loss (mean of the last 10 logged
    values), each validation, and whether training stopped (divergence or collapse). A hand-written
    ``NOTES.md`` in ``results`` is appended.
    """
    run, results = Path(run), Path(results)
    data = read_json(run / "lr_search.json", "learning-rate search")
    if data is None:
        raise FileNotFoundError(f"{run / 'lr_search.json'} is missing or torn: run the search (reproduction/tune_lr.py)")
    results.mkdir(parents=True, exist_ok=True)
    curves, validations = _lr_curves(run, data, results)
    p, config = data["provenance"], data["config"]
    m, o, d, r = config["model"], config["optim"], config["data"], config["run"]
    schedule, collapse = _lr_schedule_and_checks(data)
    hardware = p["gpu"] or f"{p['cpu']} ({p['cpu_cores']} cores, {p['torch_threads']} torch threads), no GPU"
    auto = " (auto: chosen per machine, see each rate's fast_path.json)" if "auto" in (r['bf16'], r['channels_last']) else ""
    text = f"""# {title}

Profile `{config['name']}`: UNet width {m['base_channels']}, depth {m['depth']}, dropout {m['dropout']}; tile {d['tile']};
SGD momentum {o['momentum']}, batch {o['batch_size']}; bf16 autocast {r['bf16']}, channels_last {r['channels_last']}{auto};
fold {data['rows'][0]['fold']} (train on the other blocks, validate on its block, no TTA); seed {r['seed']};
{schedule}.

{_lr_check_table(data, curves, validations)}

Loss logged every {r['log_every']} steps (the mean over those steps): `loss_curves.csv`; figure: `loss_curves.png`.
Checks during training: {collapse} and the divergence check (the smoothed loss above
{o['divergence_factor']:g}x its start); "stopped" says whether one of them ended a run.

![loss curves](loss_curves.png)

## Provenance

| runs | command | commit | started (UTC) | note |
|---|---|---|---|---|
{_lr_invocations(data)}

Hardware: {hardware}; torch {p['torch']}, Python {p['python']}. Wall time: {sum(row['seconds'] for row in data['rows']) / 60:.1f} min for all rates, run one after another.
"""
    notes = results / "NOTES.md"
    if notes.is_file():
        text += "\n" + notes.read_text()
    write_text(results / "README.md", text)
    return results / "README.md"
