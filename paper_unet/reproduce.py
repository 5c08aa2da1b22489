"""The ISBI 2012 experiment (paper Sec. 4): cross-validation, final model, test submission.

`run_reproduction` does what ``reproduction/run_isbi.sh`` promises: 3-fold cross-validation over
contiguous blocks of 10 training slices (train, overlap-tile prediction with TTA, all five challenge
metrics on the held-out block), a final model on all 30 slices, the test-volume submission
(float32 TIFF, 1 = cell), its score when test labels are present, and a provenance record.
`tune_learning_rate` is the learning-rate search whose evidence goes into results/.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from paper_unet.config import Config
from paper_unet.data import ISBI2012, cv_folds
from paper_unet.runlock import hold
from paper_unet.stop import StopFlag, graceful_stop

__all__ = ["run_reproduction", "tune_learning_rate", "provenance"]

REPO = Path(__file__).resolve().parents[1]
AGAIN = "run the same command again to go on from there"


def provenance(command: str | None = None) -> dict:
    """Commit, hardware and software of this run.

    The commit is read from the source checkout that holds this package; an installed package
    (a wheel in site-packages) is "not a git checkout", whatever repository happens to surround it.
    """
    from paper_unet import __version__

    checkout = (REPO / ".git").exists() and (REPO / "pyproject.toml").is_file()

    def git(*args: str) -> str:
        if not checkout:
            return f"not a git checkout (installed paper_unet {__version__})"
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "unknown (git failed)"

    from paper_unet.fastpath import cpu_info

    cpu = cpu_info()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "command": command or " ".join(sys.argv), "commit": git("rev-parse", "HEAD"),
        "dirty": checkout and bool(git("status", "--porcelain", "--", "paper_unet", "reproduction")),
        "cpu": cpu.model, "cpu_class": cpu.cpu_class, "cpu_capability": cpu.describe(),
        "cpu_cores": __import__("os").cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": gpu, "cuda": torch.version.cuda if gpu else None, "torch": str(torch.__version__),
        "python": platform.python_version(), "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _evaluate_stack(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    from paper_unet import metrics

    return metrics.evaluate(probabilities, labels).as_dict()


def tune_learning_rate(config: Config, isbi: ISBI2012, out: Path, rates: list[float],
                       iterations: int, fold: int = 0, progress: bool = True, *,
                       keep_schedule: bool = False, validate_every: int | None = None,
                       command: str | None = None) -> list[dict]:
    """Short runs per learning rate on one fold; validation pixel and Rand error (no TTA).

    By default each run is a complete short schedule of ``iterations`` steps (its decay included).
    With ``keep_schedule`` the profile's own schedule is kept and every run stops after
    ``iterations`` steps: these are the first steps of the real run (no decay before
    ``optim.lr_decay_at`` of the profile's iterations). Validation runs every ``validate_every``
    steps (default: once, at the end). ``lr_search.json`` is rewritten after every rate, so a
    search cut short keeps the rates it finished; rates already in it from an earlier search in
    the same ``out`` are kept (a rate run again replaces its row), each row with its own provenance.
    """
    from paper_unet.config import config_from_dict
    from paper_unet.train import TrainingDiverged, train

    train_idx, val_idx = cv_folds(len(isbi.train_images), config.run.folds)[fold]
    started = provenance(command)  # at the start: the code that runs is the code of this commit
    every = validate_every or iterations
    rows = []
    summary = out / "lr_search.json"
    earlier = json.loads(summary.read_text())["rows"] if summary.is_file() else []
    for lr in rates:
        values = config.to_dict()
        values["optim"]["lr"] = lr
        if not keep_schedule:
            values["optim"]["iterations"] = iterations
        values["run"].update(validate_every=every, checkpoint_every=every)
        trial = config_from_dict(values)
        start = time.perf_counter()
        row = {"lr": lr, "iterations": iterations, "fold": fold}
        run_dir = out / f"lr_{lr:g}"
        try:
            result = train(trial, isbi.train_images[train_idx], isbi.train_labels[train_idx],
                           run_dir, val_images=isbi.train_images[val_idx],
                           val_labels=isbi.train_labels[val_idx], progress=progress,
                           stop_after=iterations if keep_schedule else None)
            row.update(final_loss=result.last_loss, status="ok")
        except TrainingDiverged as error:
            row.update(final_loss=float("nan"), status=f"stopped: {error}")
        with open(run_dir / "val_log.csv") as handle:
            validations = list(csv.DictReader(handle))
        row["validation"] = [{k: float(v) for k, v in entry.items()} for entry in validations]
        done = validations[-1] if validations and row["status"] == "ok" else None
        row["val_pixel_error"] = float(done["pixel_error"]) if done else float("nan")
        row["val_rand_error"] = float(done["rand_error"]) if done else float("nan")
        row["seconds"] = time.perf_counter() - start
        row["provenance"] = started
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
        kept = [r for r in earlier if r["lr"] not in {x["lr"] for x in rows}]
        summary.write_text(json.dumps(
            {"config": config.to_dict(), "keep_schedule": keep_schedule,
             "rows": sorted(kept + rows, key=lambda r: r["lr"]), "provenance": started}, indent=2) + "\n")
    return rows


def _stage(timings: dict, name: str, start: float) -> None:
    timings[name] = round(time.perf_counter() - start, 1)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def run_reproduction(config: Config, isbi: ISBI2012, out: str | Path, *, resume: bool = True,
                     progress: bool = True, command: str | None = None,
                     only_fold: int | None = None, only_final: bool = False, cv_only: bool = False,
                     trained: str | Path | None = None, started_at: float | None = None,
                     from_previous: bool = False, estimate: bool = False) -> dict:
    """Cross-validation, final model, test prediction and scores; returns the summary dict.

    Resumable: a finished stage (its metrics file exists) is skipped, an unfinished training
    continues from its last checkpoint. Fold scores use each fold's *last* checkpoint: choosing
    the best checkpoint on the held-out block and then scoring that same block would flatter it.
    ``only_fold`` runs that fold alone (train, predict, score) and returns: the folds can run as
    independent processes, one per GPU, and a last call without it gathers them. ``only_final``
    trains the final model and predicts the test volume alone (beside the fold processes); the
    gathering call then finds them done and takes their stage times from ``final/timings.json``.
    ``started_at`` (a ``time.time()``) records the wall time since then in the summary, for runs
    whose stages ran in parallel processes. ``cv_only`` stops after the cross-validation: no final
    model, no test-volume submission (``summary["submission"]`` is None). Under torchrun
    all processes train together and rank 0 alone predicts, scores and writes. ``trained``: a run
    directory whose fold checkpoints are predicted and scored instead of training new ones (a
    prediction-only variant, e.g. the same networks without TTA).

    One run per folder (`runlock`): a whole run holds ``out``; an ``only_fold`` / ``only_final``
    process shares ``out`` with its siblings and holds its own stage's folder. SIGTERM or SIGINT
    (`stop`) stops the run cleanly: a training in progress checkpoints the iteration it reached, a
    stage in progress finishes, then `StopRequested` is raised; the same call again goes on from there.
    ``from_previous``: a training resumes from its ``last.prev.pt`` (see `train.train`).
    ``estimate``: first measure a few steps and print the whole run's estimate (`estimate.announce`;
    a whole run in one process only: run_isbi.sh estimates before it starts parallel processes).
    """
    from paper_unet.distributed import distributed

    if cv_only and only_final:
        raise ValueError("--cv-only trains no final model: it cannot be combined with --only-final")
    whole = only_fold is None and not only_final
    stage = out if whole else Path(out) / (f"fold{only_fold}" if only_fold is not None else "final")
    rank, world, _ = distributed()
    with hold(out, enabled=rank == 0, shared=not whole), hold(stage, enabled=rank == 0), graceful_stop() as stop:
        if estimate and whole and world == 1:
            from paper_unet.estimate import announce

            announce(config, isbi, out, cv_only=cv_only)
        return _run_reproduction(config, isbi, out, resume=resume, progress=progress, command=command,
                                 only_fold=only_fold, only_final=only_final, cv_only=cv_only, trained=trained,
                                 started_at=started_at, from_previous=from_previous, stop=stop)


def _run_reproduction(config: Config, isbi: ISBI2012, out: str | Path, *, resume: bool, progress: bool,
                      command: str | None, only_fold: int | None, only_final: bool, cv_only: bool,
                      trained: str | Path | None, started_at: float | None, from_previous: bool,
                      stop: StopFlag) -> dict:
    from paper_unet.checkpoint import load_checkpoint, model_from_checkpoint
    from paper_unet.distributed import distributed, resolve_device
    from paper_unet.fastpath import resolve as resolve_fast_path
    from paper_unet.images import normalize
    from paper_unet.tiling import predict_stack
    from paper_unet.train import train

    out = Path(out)
    main = distributed()[0] == 0
    # intensities by data.normalize: for ISBI's uint8 stacks "auto" is uint8 / 255, as always
    train_images = normalize(isbi.train_images, config.data.normalize)
    test_images = normalize(isbi.test_images, config.data.normalize)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
    device = resolve_device(config.run.device)
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if resume and summary_path.is_file() else {}
    fast = resolve_fast_path(config.run.bf16, config.run.channels_last, device)
    summary.update(config=config.to_dict(), provenance=provenance(command), device=str(device),
                   fast_path=fast.as_dict())
    if (out / "estimate.json").is_file():  # printed before this invocation (cli: reproduce, estimate)
        summary["estimate"] = json.loads((out / "estimate.json").read_text())
    timings = summary.setdefault("timings_s", {})
    folds = summary.setdefault("folds", {})
    started = time.perf_counter()

    for k, (train_idx, val_idx) in enumerate(cv_folds(len(isbi.train_images), config.run.folds)):
        fold_dir = out / f"fold{k}"
        if only_final or (only_fold is not None and k != only_fold):
            continue
        _barrier()  # every rank sees the same finished folds
        if resume and (fold_dir / "metrics.json").is_file():
            folds[str(k)] = json.loads((fold_dir / "metrics.json").read_text())
            continue
        stop.check(f"the stages before fold {k} are done and saved in {out}; {AGAIN}")
        t0 = time.perf_counter()
        checkpoint = (Path(trained) / f"fold{k}" / "last.pt") if trained else fold_dir / "last.pt"
        if trained:
            state = load_checkpoint(checkpoint)
            iterations, train_seconds = state["iteration"], state["seconds"]
            fold_dir.mkdir(parents=True, exist_ok=True)
        else:
            result = train(config, train_images[train_idx], isbi.train_labels[train_idx], fold_dir,
                           val_images=train_images[val_idx], val_labels=isbi.train_labels[val_idx],
                           resume=resume, progress=progress, from_previous=from_previous)
            iterations, train_seconds = result.iterations, result.seconds
            _stage(timings, f"fold{k}_train", t0)
        if not main:
            continue
        t0 = time.perf_counter()
        model, _ = model_from_checkpoint(checkpoint, device)
        probabilities = predict_stack(model, train_images[val_idx], tta=config.run.tta,
                                      device=device, progress=progress)
        tifffile.imwrite(fold_dir / "val_probabilities.tif", probabilities, photometric="minisblack")
        _stage(timings, f"fold{k}_predict", t0)
        t0 = time.perf_counter()
        scores = _evaluate_stack(probabilities, isbi.train_labels[val_idx])
        _stage(timings, f"fold{k}_evaluate", t0)
        scores.update(fold=k, val_slices=[int(i) for i in val_idx], iterations=iterations,
                      train_seconds=round(train_seconds, 1), checkpoint=str(checkpoint))
        (fold_dir / "metrics.json").write_text(json.dumps(scores, indent=2) + "\n")
        folds[str(k)] = scores
        if only_fold is None:
            summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    _barrier()
    if only_fold is not None:
        return summary
    if cv_only:
        summary.update(submission=None, test=None)
        return _finish(summary, summary_path, timings, started, started_at) if main else summary

    final_dir = out / "final"
    submission = out / "submission" / "test-volume-probabilities.tif"
    final_timings = final_dir / "timings.json"
    if only_final:
        timings = {}  # this process's stages, for the gathering call
    elif resume and submission.is_file() and final_timings.is_file():
        timings.update(json.loads(final_timings.read_text()))
    if not submission.is_file() or not resume:
        stop.check(f"the cross-validation is done and saved in {out}; {AGAIN}")
        t0 = time.perf_counter()
        train(config, train_images, isbi.train_labels, final_dir, resume=resume, progress=progress,
              from_previous=from_previous)
        _stage(timings, "final_train", t0)
    if not main:
        return summary
    if not submission.is_file() or not resume:
        stop.check(f"the final model is trained and saved in {final_dir}; {AGAIN}")
        t0 = time.perf_counter()
        model, _ = model_from_checkpoint(final_dir / "last.pt", device)
        probabilities = predict_stack(model, test_images, tta=config.run.tta, device=device,
                                      progress=progress)
        submission.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(submission, probabilities, photometric="minisblack")
        _stage(timings, "test_predict", t0)
        if only_final:
            final_timings.write_text(json.dumps(timings, indent=2) + "\n")
    if only_final:
        return summary
    summary["submission"] = str(submission)
    if isbi.test_labels is not None:
        t0 = time.perf_counter()
        summary["test"] = _evaluate_stack(tifffile.imread(submission), isbi.test_labels)
        _stage(timings, "test_evaluate", t0)
    else:
        summary["test"] = None
    return _finish(summary, summary_path, timings, started, started_at)


def _finish(summary: dict, summary_path: Path, timings: dict, started: float, started_at: float | None) -> dict:
    """This invocation's time and the run's wall time into the summary, written out. Without
    ``started_at`` the wall time of an earlier invocation (a resumed run's) no longer holds: dropped."""
    timings["total_this_invocation"] = round(time.perf_counter() - started, 1)
    summary.pop("wall_s", None)
    if started_at is not None:
        summary["wall_s"] = round(time.time() - started_at, 1)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
