"""The ISBI 2012 experiment (paper Sec. 4): cross-validation, final model, test submission.

`run_reproduction` does what ``reproduction/run_isbi.sh`` promises: 3-fold cross-validation over
contiguous blocks of 10 training slices (train, overlap-tile prediction with TTA, all five challenge
metrics on the held-out block), a final model on all 30 slices, the test-volume submission
(float32 TIFF, 1 = cell), its score when test labels are present, and a record of each stage (`stages`).
`tune_learning_rate` is the learning-rate search whose evidence goes into results/.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from paper_unet.atomic import read_json, replacing, write_json
from paper_unet.config import Config
from paper_unet.context import RunContext
from paper_unet.data import ISBI2012, cv_folds
from paper_unet.distributed import resolve_device
from paper_unet.provenance import provenance
from paper_unet.stages import RECORD, begin_stage, complete, finish_stage, legacy, read_stage
from paper_unet.runlock import hold
from paper_unet.stop import StopFlag, graceful_stop

__all__ = ["run_reproduction", "tune_learning_rate", "provenance"]

AGAIN = "run the same command again to go on from there"
SUBMISSION = "test-volume-probabilities.tif"
PREDICTION_PRECISION = "prediction: fp32 (overlap-tile inference never runs under autocast)"


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
    earlier = (read_json(summary, "learning-rate search") or {"rows": []})["rows"]
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
        write_json(summary, {"config": config.to_dict(), "keep_schedule": keep_schedule,
                             "rows": sorted(kept + rows, key=lambda r: r["lr"]), "provenance": started})
    return rows


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

    The run is a sequence of stages (`stages`: each fold, the final model, the submission, its score), each
    with its own record beside its outputs; the summary (``summary.json``) is built from those records.
    Resumable: a finished stage (its record says done; a fold or score: its metrics.json parses) is only
    re-read, never re-stamped; a torn one is done again; an unfinished training continues from its last
    checkpoint. Fold scores use each fold's *last* checkpoint: choosing
    the best checkpoint on the held-out block and then scoring that same block would flatter it.
    ``only_fold`` runs that fold alone (train, predict, score) and returns: the folds can run as
    independent processes, one per GPU, and a last call without it gathers them. ``only_final``
    trains the final model and predicts the test volume alone (beside the fold processes); the
    gathering call then finds them done and takes their stage times from their stage records.
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


@dataclass
class _Run:
    """What the stages of one invocation share, built once (`context.RunContext` holds the device and path)."""

    config: Config
    isbi: ISBI2012
    out: Path
    ctx: RunContext
    resume: bool
    progress: bool
    command: str | None
    from_previous: bool
    stop: StopFlag
    train_images: np.ndarray
    test_images: np.ndarray

    def begin(self, folder: Path, name: str, training: bool = True) -> dict | None:
        """Rank 0: the stage's record with this process's session (None on the other ranks)."""
        if not self.ctx.main:
            return None
        fast = self.ctx.fast
        return begin_stage(folder, name, self.config.to_dict(), command=self.command,
                           precision=fast.short() if training else "fp32",
                           precision_detail=fast.describe() if training else PREDICTION_PRECISION,
                           device=str(self.ctx.device), fresh=not self.resume)

    def done(self, folder: Path, name: str, legacy_output: Path | None = None) -> dict | None:
        """The record of stage ``name`` when it is finished and may be reused (resume), else None. Outputs
        from before stage records (``legacy_output`` exists, no record) count as finished, said so."""
        if not self.resume:
            return None
        record = read_stage(folder)
        if record is not None:
            return record if record.get("status") == "done" else None
        if legacy_output is not None and legacy_output.is_file():
            return legacy(folder, name, write=self.ctx.main)
        return None


def _fold_stage(run: _Run, k: int, train_idx, val_idx, trained: str | Path | None) -> tuple[dict | None, dict | None]:
    """Fold k: train on the other blocks (or take ``trained``'s network), predict and score block k.
    Returns (scores, record); a finished fold (its metrics.json parses) is only re-read."""
    from paper_unet.checkpoint import load_checkpoint, model_from_state
    from paper_unet.tiling import predict_stack
    from paper_unet.train import train

    folder = run.out / f"fold{k}"
    scores = read_json(folder / "metrics.json", "fold scores") if run.resume else None
    if scores is not None:  # finished: its record as it was written (or a legacy one, or completed now)
        record = read_stage(folder)
        did = {"iterations": scores.get("iterations"), "train_s": scores.get("train_seconds")}
        if record is None:
            torn = (folder / RECORD).is_file()
            record = legacy(folder, f"fold{k}", did, write=run.ctx.main,
                            **({"why": "its record was torn"} if torn else {}))
        elif record.get("status") != "done" and run.ctx.main:
            record = complete(folder, record, did)
        return scores, record
    run.stop.check(f"the stages before fold {k} are done and saved in {run.out}; {AGAIN}")
    record = run.begin(folder, f"fold{k}", training=trained is None)
    checkpoint = (Path(trained) / f"fold{k}" / "last.pt") if trained else folder / "last.pt"
    state = None
    if trained:  # a finished network adopted: loaded once, for its counts and its prediction
        state = load_checkpoint(checkpoint, run.ctx.device)
        iterations, train_seconds = state["iteration"], state["seconds"]
        folder.mkdir(parents=True, exist_ok=True)
    else:
        result = train(run.config, run.train_images[train_idx], run.isbi.train_labels[train_idx], folder,
                       val_images=run.train_images[val_idx], val_labels=run.isbi.train_labels[val_idx],
                       resume=run.resume, progress=run.progress, from_previous=run.from_previous)
        iterations, train_seconds = result.iterations, result.seconds
    if not run.ctx.main:
        return None, None
    t0 = time.perf_counter()
    state = load_checkpoint(checkpoint, run.ctx.device) if state is None else state
    model, _ = model_from_state(state, checkpoint, run.ctx.device)
    probabilities = predict_stack(model, run.train_images[val_idx], tta=run.config.run.tta, device=run.ctx.device,
                                  progress=run.progress)
    tifffile.imwrite(folder / "val_probabilities.tif", probabilities, photometric="minisblack")
    predict_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = _evaluate_stack(probabilities, run.isbi.train_labels[val_idx])
    scores.update(fold=k, val_slices=[int(i) for i in val_idx], iterations=iterations,
                  train_seconds=round(train_seconds, 1), checkpoint=str(checkpoint))
    write_json(folder / "metrics.json", scores)
    did = {"iterations": iterations, "predict_s": round(predict_s, 1),
           "evaluate_s": round(time.perf_counter() - t0, 1), "checkpoint": str(checkpoint),
           # the path the network was trained with, from its checkpoint (an adopted or resumed network's own)
           "trained_with": state.get("fast_path", {}).get("summary")}
    did.update({"predicted": f"the networks of {trained}"} if trained else {"train_s": round(train_seconds, 1)})
    return scores, finish_stage(folder, record, did)


def _final_stage(run: _Run) -> dict | None:
    """The final model on all training slices (resumes an unfinished training)."""
    from paper_unet.train import train

    folder = run.out / "final"
    record = run.done(folder, "final")
    if record is not None:
        return record
    run.stop.check(f"the cross-validation is done and saved in {run.out}; {AGAIN}")
    record = run.begin(folder, "final")
    result = train(run.config, run.train_images, run.isbi.train_labels, folder, resume=run.resume,
                   progress=run.progress, from_previous=run.from_previous)
    if not run.ctx.main:
        return None
    return finish_stage(folder, record, {"iterations": result.iterations, "train_s": round(result.seconds, 1)})


def _submission_stage(run: _Run) -> dict:
    """The test volume predicted by the final model, in the challenge's format (float32, 1 = cell)."""
    from paper_unet.checkpoint import model_from_checkpoint
    from paper_unet.tiling import predict_stack

    folder = run.out / "submission"
    run.stop.check(f"the final model is trained and saved in {run.out / 'final'}; {AGAIN}")
    record = run.begin(folder, "submission", training=False)
    t0 = time.perf_counter()
    model, _ = model_from_checkpoint(run.out / "final" / "last.pt", run.ctx.device)
    probabilities = predict_stack(model, run.test_images, tta=run.config.run.tta, device=run.ctx.device,
                                  progress=run.progress)
    with replacing(folder / SUBMISSION) as partial:
        tifffile.imwrite(partial, probabilities, photometric="minisblack")
    return finish_stage(folder, record, {"predict_s": round(time.perf_counter() - t0, 1),
                                         "slices": len(run.test_images), "tta": run.config.run.tta})


def _test_stage(run: _Run) -> tuple[dict, dict]:
    """The submission scored against the test labels (when they exist): (scores, record)."""
    folder = run.out / "test"
    scores = read_json(folder / "metrics.json", "test scores") if run.resume else None
    record = read_stage(folder) if scores is not None else None
    if scores is not None and record is not None and record.get("status") == "done":
        return scores, record
    record = run.begin(folder, "test", training=False)
    t0 = time.perf_counter()
    scores = _evaluate_stack(tifffile.imread(run.out / "submission" / SUBMISSION), run.isbi.test_labels)
    write_json(folder / "metrics.json", scores)
    return scores, finish_stage(folder, record, {"evaluate_s": round(time.perf_counter() - t0, 1)})


def _run_reproduction(config: Config, isbi: ISBI2012, out: str | Path, *, resume: bool, progress: bool,
                      command: str | None, only_fold: int | None, only_final: bool, cv_only: bool,
                      trained: str | Path | None, started_at: float | None, from_previous: bool,
                      stop: StopFlag) -> dict:
    from paper_unet.images import normalize

    out = Path(out)
    ctx = RunContext.build(config, resolve_device(config.run.device))
    # intensities by data.normalize: for ISBI's uint8 stacks "auto" is uint8 / 255, as always
    run = _Run(config, isbi, out, ctx, resume, progress, command, from_previous, stop,
               normalize(isbi.train_images, config.data.normalize), normalize(isbi.test_images, config.data.normalize))
    if ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.json")
    started = time.perf_counter()
    records, folds = {}, {}
    for k, (train_idx, val_idx) in enumerate(cv_folds(len(isbi.train_images), config.run.folds)):
        if only_final or (only_fold is not None and k != only_fold):
            continue
        _barrier()  # every rank sees the same finished folds
        scores, record = _fold_stage(run, k, train_idx, val_idx, trained)
        if ctx.main:
            folds[str(k)], records[f"fold{k}"] = scores, record
    _barrier()
    if only_fold is not None:
        return _summary(run, records, folds) if ctx.main else {}
    test = None
    if not cv_only:
        submission = run.done(out / "submission", "submission", legacy_output=out / "submission" / SUBMISSION)
        if submission is None:  # the final model (every rank trains it), then rank 0 predicts the test volume
            final = _final_stage(run)
            if ctx.main:
                records.update(final=final, submission=_submission_stage(run))
        else:
            records["submission"] = submission
        if only_final or not ctx.main:
            return _summary(run, records, folds) if ctx.main else {}
        if isbi.test_labels is not None:
            test, records["test"] = _test_stage(run)
    if not ctx.main:
        return {}
    stages = [f"fold{k}" for k in range(config.run.folds)] + ([] if cv_only else ["final", "submission"]) + (
        ["test"] if not cv_only and isbi.test_labels is not None else [])
    summary = _summary(run, _gathered(out, records, stages), folds, cv_only=cv_only, test=test)
    return _finish(summary, out / "summary.json", started, started_at)


def _gathered(out: Path, records: dict, stages: list[str]) -> dict:
    """This invocation's records, and those its sibling processes wrote (`--only-fold`, `--only-final`), of the
    ``stages`` this run has (a cross-validation alone gathers no stale final-model record from an earlier run)."""
    for name in stages:
        if name not in records:
            records[name] = read_stage(out / name)
    return {name: records[name] for name in sorted(records, key=_stage_order)
            if name in stages and records[name] is not None}


def _stage_order(name: str) -> tuple:
    order = {"final": 1, "submission": 2, "test": 3}
    return (order.get(name, 0), name)


def _timings(records: dict) -> dict:
    """The stages' seconds (their records' ``did``): fold<k>_train/_predict/_evaluate, final_train,
    test_predict, test_evaluate."""
    names = {"train_s": "train", "predict_s": "predict", "evaluate_s": "evaluate"}
    timings = {}
    for stage, record in records.items():
        prefix = {"submission": "test", "test": "test"}.get(stage, stage)
        for key, part in names.items():
            if record.get("did", {}).get(key) is not None:
                timings[f"{prefix}_{part}"] = record["did"][key]
    return timings


def _summary(run: _Run, records: dict, folds: dict, *, cv_only: bool = False, test: dict | None = None) -> dict:
    """The run's summary, built from its stage records: the config, each stage's record, the folds' scores,
    the submission and its score, the stages' times. ``provenance`` is the first session's (where the run
    started; never re-stamped by a later invocation); ``gathered_by``: the process that wrote this summary."""
    sessions = sorted((s for r in records.values() for s in r.get("sessions", [])),
                      key=lambda s: (s.get("start_epoch", 0.0), s["start_utc"]))
    now = provenance(run.command)
    devices = [s.get("device", "cpu").split(":")[0] for s in sessions] or [run.ctx.device.type]
    summary = {"config": run.config.to_dict(), "stages": records, "folds": folds, "timings_s": _timings(records),
               "provenance": sessions[0] if sessions else now, "gathered_by": now,
               "device": "cuda" if "cuda" in devices else devices[0],
               "submission": None if cv_only else str(run.out / "submission" / SUBMISSION), "test": test}
    training = [s for s in sessions if not s.get("precision_detail", "").startswith("prediction:")]
    if not training:  # no training session recorded (a run from before stage records): the path it wrote down
        recorded = read_json(run.out / "fold0" / "fast_path.json", "fast path") or read_json(
            run.out / "final" / "fast_path.json", "fast path")
        if recorded is not None:
            summary["fast_path"] = recorded
    estimate = read_json(run.out / "estimate.json", "estimate")  # printed before this invocation (cli)
    if estimate is not None:
        summary["estimate"] = estimate
    return summary


def _finish(summary: dict, summary_path: Path, started: float, started_at: float | None) -> dict:
    """This invocation's time and the run's wall time into the summary, written out. Without
    ``started_at`` the wall time of an earlier invocation (a resumed run's) no longer holds: dropped."""
    summary["timings_s"]["total_this_invocation"] = round(time.perf_counter() - started, 1)
    if started_at is not None:
        summary["wall_s"] = round(time.time() - started_at, 1)
    write_json(summary_path, summary)
    return summary
