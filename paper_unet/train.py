"""Training (paper Sec. 3): SGD with momentum 0.99, one large tile per step, weighted loss.

    "The input images and their corresponding segmentation maps are used to train the network
    with the stochastic gradient descent implementation of Caffe. [...] we favor large input tiles
    over a large batch size and hence reduce the batch to a single image. Accordingly we use a
    high momentum (0.99) such that a large number of the previously seen training samples
    determine the update in the current optimization step."

Nothing is lost: checkpoints (``last.pt`` every ``checkpoint_every`` iterations, ``best.pt`` at
the best validation Rand error) are written atomically and hold the model, the optimiser, every
rank's RNG state, the loss monitors (the divergence and collapse checks' running values and the
partial loss sum of the current log interval) and the resolved config. ``resume=True`` continues a
killed run from its last checkpoint exactly: the same weights, the same training samples (a
deterministic function of the seed and the iteration), the same dropout masks, the same logged
losses and the same stop decisions as an uninterrupted run. Only the wall-clock ``seconds`` differ.
Checkpoints load with ``torch.load(weights_only=True)``, so a downloaded checkpoint cannot run code.

The step (`step.TrainingStep`: sample i drawn on the host, then augmentation, forward, loss, backward
and SGD on the device; with ``run.cuda_graph`` captured once as a CUDA graph) is free of host
synchronisation: the loss is summed on the device and read back only once per log interval
(``run.log_every``), where the divergence and collapse checks run. The fast path (bf16 autocast,
channels_last; "auto" by default) is chosen for the training device by `fastpath.resolve`, printed,
and recorded in ``fast_path.json`` and in every checkpoint, beside the step's levers (`step.Levers`).
"""

from __future__ import annotations

import csv
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from paper_unet import __version__
from paper_unet.atomic import write_json
from paper_unet.config import Config, config_from_dict
from paper_unet.collapse import is_dead, looks_dead, nearly_constant, output_spread, uninformative
from paper_unet.checkpoint import (build_model, load_checkpoint, load_weights, model_from_checkpoint,
                                   previous_path, save_checkpoint)
from paper_unet.context import RunContext, augment_config, training_sampler
from paper_unet.distributed import distributed, is_main_process, reduce_min, resolve_device
from paper_unet.fastpath import FastPath
from paper_unet.model import UNet
from paper_unet.runlock import hold
from paper_unet.segment import label_kind
from paper_unet.step import Levers, TrainingStep, cudnn_benchmark, train_step
from paper_unet.stop import StopFlag, graceful_stop
from paper_unet.tiling import predict_stack

# the checkpoint and distributed names are re-exported here for code that imported them from train
__all__ = ["train", "train_step", "training_sampler", "TrainResult", "TrainingDiverged", "collective_dead", "output_spread", "validate",
           "learning_rate", "augment_config", "resolve_device", "build_model", "distributed", "is_main_process",
           "save_checkpoint", "load_checkpoint", "load_weights", "model_from_checkpoint"]

LOG_FIELDS = ["iteration", "loss", "lr", "seconds"]
VAL_FIELDS = ["iteration", "pixel_error", "rand_error", "seconds"]
CELL_FIELDS = ["iou", "seg"]  # val_log.csv of cells on a background (segment.label_kind) adds these


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf, grew far beyond its start, or the network output became constant."""


def collective_dead(logits: torch.Tensor, confirm, world: int) -> bool:
    """Whether the network is dead (`collapse`: the training logits look constant and an fp32 pass of the
    same tile, ``confirm()``, finds it so), on any rank (collective under DDP: every rank calls it).

    Every rank therefore takes the same collapse decision: a constant output on any rank (the
    replicas share their weights, so a dead network is dead everywhere) stops all ranks together
    instead of leaving the others waiting in the next all-reduce.
    """
    dead = looks_dead(logits) and confirm()
    return reduce_min(0.0 if dead else 1.0, logits.device) == 0.0 if world > 1 else dead


@dataclass
class TrainResult:
    out_dir: Path
    iterations: int
    last_loss: float
    best_rand_error: float
    seconds: float
    model: UNet | None = None  # the trained network (in memory; not part of any file)
    monitors: dict | None = None  # the loss monitors at the end (as saved in checkpoints)


def validate(model: UNet, images: np.ndarray, labels: np.ndarray, device: torch.device,
             tta: bool = False) -> dict:
    """Pixel and Rand error of the model's P(cell) on held-out slices (overlap-tile inference); for cells on a
    background (`segment.label_kind`) also the paper's Table 2 IOU and the SEG measure, at the grid's
    threshold with the best IOU; ``uninformative``: every threshold of the grid gives an empty or a full mask
    (`collapse.uninformative`); ``dead``: uninformative and nearly constant (`collapse.nearly_constant`)."""
    from paper_unet import metrics
    from paper_unet.cell_metrics import scores_at_best_iou

    probabilities = predict_stack(model, images, tta=tta, device=device, progress=False)
    scores = {"pixel_error": metrics.pixel_error(probabilities, labels),
              "rand_error": metrics.rand_error(probabilities, labels)}
    if label_kind(labels) == "cells":
        cells = scores_at_best_iou(probabilities, labels)
        scores.update(iou=cells["iou"], seg=cells["seg"])
    return {**scores, "uninformative": uninformative(probabilities), "dead": nearly_constant(probabilities)}


class _CsvLog:
    """Append rows to a CSV; on resume, drop rows past the checkpoint's iteration."""

    def __init__(self, path: Path, fields: list[str], keep_until: int | None) -> None:
        rows = []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as handle:
                # a row cut short by a crash (fewer fields) is dropped, then rows past the checkpoint
                rows = [r for r in csv.DictReader(handle) if None not in r.values() and r["iteration"].isdigit()
                        and int(r["iteration"]) <= keep_until]
        self.handle = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=fields)
        self.writer.writeheader()
        self.writer.writerows(rows)

    def write(self, row: dict) -> None:
        self.writer.writerow(row)
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _rng_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


def learning_rate(config: Config, iteration: int) -> float:
    """The rate of (0-based) ``iteration``: a linear warm-up over the first ``optim.warmup``
    iterations [ours, off by default], then ``optim.lr``, times ``optim.lr_decay`` from
    ``optim.lr_decay_at`` x ``optim.iterations`` on [ours]."""
    o = config.optim
    warm = (iteration + 1) / o.warmup if iteration < o.warmup else 1.0
    return o.lr * warm * (o.lr_decay if iteration >= o.lr_decay_at * o.iterations else 1.0)


def _path_record(fast: FastPath, levers: Levers) -> dict:
    """The path a run takes here (fast_path.json and every checkpoint's ``fast_path``): bf16 / channels_last
    with the reason, and the step's levers."""
    return {**fast.as_dict(), "levers": asdict(levers)}


def _record_run(out: Path, config: Config, fast: FastPath, levers: Levers) -> None:
    """The resolved config (config.json) and the fast path it takes here (fast_path.json, and the log)."""
    config.save(out / "config.json")
    write_json(out / "fast_path.json", _path_record(fast, levers))
    print(f"{out.name}: {fast.describe()}; {levers.describe()}", file=sys.stderr)


def train(config: Config, images: np.ndarray, labels: np.ndarray, out_dir: str | Path, *,
          val_images: np.ndarray | None = None, val_labels: np.ndarray | None = None,
          resume: bool = False, progress: bool = True, stop_after: int | None = None,
          init_from: str | Path | None = None, from_previous: bool = False) -> TrainResult:
    """Train a UNet on (images, labels) stacks; write logs and checkpoints to ``out_dir``.

    Images are uint8 (divided by 255) or float in [0, 1]; labels 0 = membrane, > 0 = cell.
    ``init_from`` starts from that checkpoint's weights (fine-tuning; the network's width and depth
    must match; the optimiser starts afresh). ``resume`` continues from ``out_dir/last.pt`` (it must
    hold the same config) and takes precedence over ``init_from``. ``stop_after``
    ends the run after that iteration (as if killed right after a checkpoint there). Under
    ``torchrun`` the processes train one model together (see `distributed`); only rank 0 logs,
    validates and writes checkpoints, and every rank resumes from them.

    One run per folder: ``out_dir`` is locked for the run (`runlock`; a second process on it stops
    at once). SIGTERM or SIGINT (`stop`): the current step finishes, a checkpoint of the iteration
    reached is written and `StopRequested` is raised; ``resume`` then continues exactly.
    ``from_previous`` resumes from ``last.prev.pt`` (the checkpoint before ``last.pt``), for a
    ``last.pt`` that does not load.
    """
    with hold(out_dir, enabled=distributed()[0] == 0), graceful_stop() as stop, \
            cudnn_benchmark(config.run.cudnn_benchmark):
        return _train(config, images, labels, Path(out_dir), val_images=val_images, val_labels=val_labels,
                      resume=resume, progress=progress, stop_after=stop_after, init_from=init_from,
                      from_previous=from_previous, stop=stop)


def _resume_state(last: Path, device: torch.device, from_previous: bool) -> dict:
    """The checkpoint a resumed run starts from; a ``last.pt`` that does not load names the fallback."""
    previous = previous_path(last)
    if from_previous:
        if not previous.is_file():
            raise FileNotFoundError(f"no previous checkpoint {previous} to resume from")
        return load_checkpoint(previous, device)
    try:
        return load_checkpoint(last, device)
    except ValueError as error:
        if not previous.is_file():
            raise
        raise ValueError(f"{error}. The checkpoint before it is kept as {previous}: resume from it with "
                         f"--from-previous (train: --resume --from-previous; it repeats the steps since then), "
                         f"or delete {last.parent} to start afresh") from error


def _stop_checks(m: dict, last_loss: float, dead, o, iteration: int) -> None:
    """The checks at the end of a log interval (``m``: the monitors, updated): raise `TrainingDiverged`
    for a non-finite loss, a smoothed loss above ``divergence_factor`` x its start, or a dead network
    (``dead()``: `collective_dead`) for ``collapse_patience`` intervals in a row (decided collectively under
    DDP)."""
    if not math.isfinite(last_loss):
        raise TrainingDiverged(f"loss became {last_loss} at iteration {iteration}; lower "
                               f"optim.lr (now {o.lr:g}) and start again")
    m["start_loss"] = last_loss if m["start_loss"] is None else m["start_loss"]
    m["smoothed"] = last_loss if m["smoothed"] is None else 0.9 * m["smoothed"] + 0.1 * last_loss
    if m["smoothed"] > o.divergence_factor * m["start_loss"]:
        raise TrainingDiverged(f"loss diverged: {m['smoothed']:.4g} at iteration {iteration} vs "
                               f"{m['start_loss']:.4g} at the start; lower optim.lr (now {o.lr:g})")
    m["flat"] = m["flat"] + 1 if o.collapse_patience and dead() else 0  # dead(): collective under DDP
    if o.collapse_patience and m["flat"] >= o.collapse_patience:
        raise TrainingDiverged(_dead_message(iteration, o, "on its training tiles"))


def _dead_message(iteration: int, o, where: str) -> str:
    return (f"the network collapsed to a constant output (dead ReLUs) by iteration {iteration}, {where}: its "
            f"output no longer depends on the image, and no further step revives it. Start again (a new --out) with "
            f"a lower learning rate, e.g. --set optim.lr={o.lr * 0.1:g} (now {o.lr:g}), or a warm-up, e.g. --set "
            f"optim.warmup={max(o.warmup * 2, 500)} (now {o.warmup})")


def _stop_now(stop: StopFlag, world: int, logged: bool, device: torch.device) -> bool:
    """Whether to stop after this step: a signal in this process, or under DDP on any rank (decided
    collectively at log intervals, where the ranks already synchronise, so all stop together)."""
    if world == 1:
        return stop.requested
    return logged and reduce_min(0.0 if stop.requested else 1.0, device) == 0.0


class _Records:
    """What a run keeps beside its steps: the loss monitors and train_log.csv, validation (val_log.csv,
    ``best.pt``) and the checkpoints. Rank 0 writes; the checkpoint's RNG gathering is collective."""

    def __init__(self, out: Path, config: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, fast: FastPath, levers: Levers, state: dict | None, init_from,
                 cells: bool = False) -> None:
        self.rank, self.world, _ = distributed()
        self.main = self.rank == 0
        self.out, self.config, self.model, self.optimizer, self.device = out, config, model, optimizer, device
        self.fast, self.levers, self.init_from = fast, levers, init_from
        self.start, self.best, self.seconds_before = 0, math.inf, 0.0
        # running: loss sum of the current log interval, count: its steps; start_loss / smoothed: the
        # divergence check; flat: log intervals in a row with a constant output (the collapse check)
        self.m = {"running": 0.0, "count": 0, "start_loss": None, "smoothed": None, "flat": 0, "last_loss": math.nan}
        if state is not None:
            self.start, self.best, self.seconds_before = state["iteration"], state["best_rand_error"], state["seconds"]
            self.m = state.get("monitors", self.m)  # absent in checkpoints before 0.2: restart them
        self.running: torch.Tensor | None = None  # the step's device loss sum (`attach`)
        self.log = _CsvLog(out / "train_log.csv", LOG_FIELDS, self.start) if self.main else None
        fields = VAL_FIELDS[:3] + (CELL_FIELDS if cells else []) + VAL_FIELDS[3:]
        self.val_log = _CsvLog(out / "val_log.csv", fields, self.start) if self.main else None
        self.started = time.perf_counter()

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started

    def checkpoint(self, path: Path, iteration: int, gather: bool = True) -> None:
        """Rank 0 writes; with ``gather`` (collective: every rank calls it) all ranks' RNG states."""
        rng = [_rng_state(self.device)]
        if self.world > 1 and gather:  # every rank's RNG, so that a resumed run continues each stream exactly
            import torch.distributed as dist

            rng = [None] * self.world
            dist.all_gather_object(rng, {k: v.cpu() for k, v in _rng_state(self.device).items()})
        if self.main:
            save_checkpoint(path, {
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "iteration": iteration, "best_rand_error": self.best, "config": self.config.to_dict(),
                "rng": rng, "world_size": self.world, "monitors": self.monitors(),
                "fast_path": _path_record(self.fast, self.levers), "seconds": self.seconds(),
                "version": __version__, "torch": str(torch.__version__),
                "init_from": str(self.init_from) if self.init_from is not None else None},
                keep_previous=path.name == "last.pt")

    def monitors(self) -> dict:
        return {**self.m, "running": float(self.running)}

    def end_of_interval(self, iteration: int, lr: float, logits: torch.Tensor, confirm, bar) -> None:
        """The log interval's one host sync: its mean loss (averaged over ranks), the stop checks, the log."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(self.running)
            self.running /= self.world
        last_loss = self.m["last_loss"] = self.running.item() / self.m["count"]
        self.running.zero_()
        self.m["count"] = 0
        _stop_checks(self.m, last_loss, lambda: collective_dead(logits, confirm, self.world), self.config.optim,
                     iteration)
        if self.main:
            self.log.write({"iteration": iteration, "loss": f"{last_loss:.6f}", "lr": f"{lr:g}",
                            "seconds": f"{self.seconds():.1f}"})
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:g}")

    def validate(self, iteration: int, images: np.ndarray, labels: np.ndarray) -> None:
        """Rank 0: the validation errors into val_log.csv, and ``best.pt`` at a new best Rand error, never from an
        uninformative output (a dead network is not a trained one). Nearly constant at two validations in a row
        stops a single-process run as dead (`TrainingDiverged`; with the collapse check on)."""
        scores = validate(self.model, images, labels, self.device)
        useless, dead = scores.pop("uninformative"), scores.pop("dead")
        self.val_log.write({"iteration": iteration, **{k: f"{v:.6f}" for k, v in scores.items()},
                            "seconds": f"{self.seconds():.1f}"})
        self.m["dead_validations"] = self.m.get("dead_validations", 0) + 1 if dead else 0
        if useless:
            print(f"{self.out.name}: iteration {iteration}: the network's P(cell) on the validation images lies within "
                  f"one step of the threshold grid: every mask would be empty or full (a dead network); no best.pt "
                  f"is written from it", file=sys.stderr)
            o = self.config.optim
            if self.m["dead_validations"] >= 2 and o.collapse_patience and self.world == 1:
                raise TrainingDiverged(_dead_message(iteration, o, "on the validation images at two validations "
                                                                   "in a row"))
        elif scores["rand_error"] < self.best:
            self.best = scores["rand_error"]
            self.checkpoint(self.out / "best.pt", iteration, gather=False)  # rank 0 only: no collective
        self.model.train()

    def close(self) -> None:
        if self.main:
            self.log.close()
            self.val_log.close()


def _start_state(config: Config, out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, resume: bool, init_from, from_previous: bool) -> dict | None:
    """Load what the run starts from: the checkpoint to resume (returned), else ``init_from``'s weights."""
    rank, world, _ = distributed()
    last = out / "last.pt"
    if resume and (last.is_file() or from_previous):
        state = _resume_state(last, device, from_previous)
        if config_from_dict(state["config"]).to_dict() != config.to_dict():  # keys added since: their defaults
            raise ValueError(f"{last} was written with a different configuration; resume with the "
                             f"same profile and overrides, or use a new --out directory")
        if state.get("world_size", 1) != world:
            raise ValueError(f"{last} was written by {state.get('world_size', 1)} process(es); "
                             f"resume with the same number (now {world})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # 0.1.0 wrote one dict
        _set_rng_state(rng[rank], device)
        if rank == 0:
            print(f"resuming {out} from iteration {state['iteration']}", file=sys.stderr)
        return state
    if resume and rank == 0:
        print(f"no checkpoint in {out}: starting {'from ' + str(init_from) if init_from else 'from scratch'}",
              file=sys.stderr)
    if init_from is not None:
        load_weights(model, init_from, device)
    return None


def _train(config: Config, images: np.ndarray, labels: np.ndarray, out: Path, *, val_images, val_labels,
           resume: bool, progress: bool, stop_after: int | None, init_from, from_previous: bool,
           stop: StopFlag) -> TrainResult:
    from tqdm import tqdm

    ctx = RunContext.build(config)  # device, fast path ("auto": chosen for this device), levers
    rank, world, local_rank, main = ctx.rank, ctx.world, ctx.local_rank, ctx.main
    device, fast, levers = ctx.device, ctx.fast, ctx.levers
    if main:
        out.mkdir(parents=True, exist_ok=True)
    o, r = config.optim, config.run
    if levers.cuda_graph and device.type != "cuda":
        print(f"run.cuda_graph: nothing to capture on {device.type}; the same static-buffer step runs eagerly",
              file=sys.stderr)
    model = ctx.model()  # the same initial weights on every rank
    if world > 1:
        torch.manual_seed(r.seed + 1_000_003 * rank)  # rank-specific dropout masks
    optimizer = ctx.optimizer(model)
    state = _start_state(config, out, model, optimizer, device, resume, init_from, from_previous)
    if main:
        _record_run(out, config, fast, levers)
    train_model = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    sampler = ctx.sampler(images, labels, o.iterations * o.batch_size, stream=rank)
    cells = val_labels is not None and label_kind(val_labels) == "cells"  # val_log.csv adds IOU and SEG
    rec = _Records(out, config, model, optimizer, device, fast, levers, state, init_from, cells)
    step = TrainingStep(torch.compile(train_model, mode=r.compile_mode) if r.compile else train_model, optimizer,
                        sampler, batch_size=o.batch_size, weight_map=config.data.weight_map, fast=fast,
                        graph=levers.cuda_graph, compiled_graphs=r.compile and r.compile_mode == "reduce-overhead",
                        running=rec.m["running"])
    rec.running = step.running  # the loss sum of the log interval, on the device
    end = o.iterations if stop_after is None else min(o.iterations, stop_after)
    bar = tqdm(range(rec.start, end), initial=rec.start, total=o.iterations, disable=not (progress and main),
               desc=f"train {out.name}", file=sys.stderr, dynamic_ncols=True)
    last = out / "last.pt"
    try:
        for it in bar:
            lr = learning_rate(config, it)
            step(it, lr)
            rec.m["count"] += 1
            logged = (it + 1) % r.log_every == 0 or it + 1 == end
            if logged:  # one host sync per log interval
                rec.end_of_interval(it + 1, lr, step.logits, lambda: is_dead(model, sampler.batch([it * o.batch_size])[0]),
                                    bar)
            if main and val_images is not None and ((it + 1) % r.validate_every == 0 or it + 1 == o.iterations):
                rec.validate(it + 1, val_images, val_labels)
            saved = (it + 1) % r.checkpoint_every == 0 or it + 1 == o.iterations
            if saved:
                rec.checkpoint(last, it + 1)
            if it + 1 < end and _stop_now(stop, world, logged, device):  # a signal: save, then stop
                if not saved:
                    rec.checkpoint(last, it + 1)
                stop.check(f"checkpoint {last} holds iteration {it + 1} of {o.iterations}; run the same command "
                           f"again to resume (paper-unet train: with --resume)")
    finally:
        bar.close()
        rec.close()
    return TrainResult(out, end, rec.m["last_loss"], rec.best, rec.seconds(), model, rec.monitors())
