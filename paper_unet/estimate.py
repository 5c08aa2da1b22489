"""An honest estimate before the long work: the whole reproduction's wall time on this machine.

`time_step` times real training steps (a config's network at its tile, real augmented ISBI tiles,
forward, weighted loss, backward, SGD) on a device with a given fast path; `bench_train.py` measures
with the same helper. `estimate_run` projects the wall time of a whole `reproduce` run from a few
such steps and one timed slice prediction, with the path the run will take on this machine: every
network still to train, its validations, the held-out and test-volume predictions (with TTA when
the config has it) and their scores. It takes seconds (a few steps), and says what to do when the
answer is hours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from paper_unet.config import Config
from paper_unet.context import RunContext
from paper_unet.fastpath import FastPath
from paper_unet.measurements import say

__all__ = ["time_step", "time_prediction", "Estimate", "estimate_run", "announce", "save_estimate"]

LONG_S = 2 * 3600  # an estimate above this gets a hint


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(config: Config, images: np.ndarray, labels: np.ndarray, device: torch.device | str, *,
              bf16: bool, channels_last: bool, steps: int = 3, warmup: int = 1,
              compile: bool | str = False, budget_s: float | None = None, timings: dict | None = None) -> float:
    """Seconds per training step of ``config``'s network at its tile on ``device``.

    ``warmup`` steps (compilation included, for ``compile``: True or a torch.compile mode), then the
    mean of ``steps`` timed ones, synchronised. The tiles are drawn beforehand (the sampler's own
    rate is measured separately). With ``budget_s``, ``steps`` is lowered (not below 2) so that the
    timed steps take about that long, judged by the last warm-up step. The caller's RNG state is
    left as it was. ``timings`` (a dict) receives ``setup_s``: building the network and the sampler
    (its weight maps), which every training run pays once. The step's levers apply as in the run
    (``run.cudnn_benchmark``, ``run.fused_sgd``), except ``run.cuda_graph``: its step is timed eagerly
    (with the fused SGD it implies), so a graph run's estimate errs long.
    """
    from paper_unet.step import cudnn_benchmark, train_step

    device = torch.device(device)
    path = FastPath(bf16, channels_last, bf16, channels_last, "the caller's setting", device.type)
    ctx = RunContext.build(config, device, fast=path)  # its levers' cuda_graph is not used: the step runs eagerly
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            cudnn_benchmark(ctx.levers.cudnn_benchmark):
        setup = time.perf_counter()
        model = ctx.model()
        optimizer = ctx.optimizer(model)
        mode = compile if isinstance(compile, str) else "default"
        step_model = torch.compile(model, mode=mode) if compile else model
        sampler = ctx.sampler(images, labels, warmup + steps)
        if timings is not None:
            timings["setup_s"] = time.perf_counter() - setup
        batches = [sampler.batch([i]) for i in range(warmup + steps)]

        def step(x, y, w):
            if compile and mode == "reduce-overhead":  # CUDA graphs: a new step, as train.train marks it
                torch.compiler.cudagraph_mark_step_begin()
            loss, _ = train_step(step_model, optimizer, x, y, w if config.data.weight_map else None,
                                 bf16=bf16, channels_last=channels_last)
            return loss

        last = 0.0
        for x, y, w in batches[:warmup]:
            start = time.perf_counter()
            step(x, y, w)
            _sync(device)
            last = time.perf_counter() - start
        if budget_s is not None and last > 0:
            steps = max(2, min(steps, int(budget_s / last)))
        _sync(device)
        start = time.perf_counter()
        for x, y, w in batches[warmup:warmup + steps]:
            loss = step(x, y, w)
        float(loss.detach())  # the step is done
        _sync(device)
        return (time.perf_counter() - start) / steps


def time_prediction(config: Config, image: np.ndarray, device: torch.device | str, *,
                    tta: bool, warmup: bool = True) -> float:
    """Seconds to predict one slice (overlap-tile, as `reproduce` does) with ``config``'s network
    (as initialised), after one warm-up prediction of the same slice (unless ``warmup`` is False)."""
    from paper_unet.checkpoint import build_model
    from paper_unet.tiling import predict_stack

    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = build_model(config).to(device).eval()
    if warmup:
        predict_stack(model, image[None], tta=tta, device=device, progress=False)
        _sync(device)
    start = time.perf_counter()
    predict_stack(model, image[None], tta=tta, device=device, progress=False)
    _sync(device)
    return time.perf_counter() - start


@dataclass
class Estimate:
    """The projected wall time of a run on this machine, and what it rests on."""

    seconds: float
    step_s: float
    predict_s: float  # one slice, no TTA (validation)
    predict_final_s: float  # one slice as the held-out / test predictions run (TTA if configured)
    score_s: float  # all five metrics on one slice
    setup_s: float  # per training run: the network and the sampler's weight maps
    networks: dict[str, int]  # network -> training steps still to run
    path: FastPath
    device: str
    parallel: int = 1
    parts: dict[str, float] = field(default_factory=dict)
    probe_s: float = 0.0

    def as_dict(self) -> dict:
        return {"seconds": round(self.seconds, 1), "step_s": self.step_s, "predict_s": self.predict_s,
                "predict_final_s": self.predict_final_s, "score_s": self.score_s, "setup_s": self.setup_s,
                "networks": self.networks,
                "parts_s": {k: round(v, 1) for k, v in self.parts.items()}, "parallel": self.parallel,
                "device": self.device, "fast_path": self.path.describe(), "probe_s": round(self.probe_s, 1),
                "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}

    def report(self) -> str:
        """A few lines for the terminal, with a hint when the run is long."""
        steps = sum(self.networks.values())
        where = (self.path.cpu.describe() + f", {torch.get_num_threads()} torch threads"
                 if self.path.cpu else self.device)
        lines = [f"Estimate for this machine ({where}):",
                 f"  path: {self.path.describe()}",
                 f"  training step {_duration(self.step_s, precise=True)} (measured just now) x {steps:,} steps "
                 f"still to run ({', '.join(f'{k} {v:,}' for k, v in self.networks.items()) or 'none'}) = "
                 f"{_duration(self.parts.get('training', 0.0))}",
                 f"  set-up, validation, held-out and test prediction, scores: "
                 f"{_duration(self.seconds - self.parts.get('training', 0.0))} "
                 f"(one slice: predicted in {_duration(self.predict_s, precise=True)}, "
                 f"{_duration(self.predict_final_s, precise=True)} as scored"
                 f"{' (with TTA)' if self.predict_final_s != self.predict_s else ''}, "
                 f"metrics {_duration(self.score_s, precise=True)})"]
        total = f"  whole run: about {_duration(self.seconds)}"
        if self.parallel > 1:
            total += (f" of work for {self.parallel} processes sharing this machine (at most that long; "
                      f"less where they overlap: 4 processes on one H100 ran {say('h100_four_processes_gain')} one)")
        finish = time.strftime("%H:%M", time.localtime(time.time() + self.seconds))
        lines.append(total + f", ending about {finish} (local time)")
        if self.seconds > LONG_S:
            lines.append("  This is long. Faster: " + "; ".join(self.hints()) + ".")
        return "\n".join(lines)

    def hints(self) -> list[str]:
        hints = []
        if self.device == "cpu":
            if self.path.cpu is not None and not self.path.cpu.native_bf16:
                hints.append(f"a CPU with native bf16 (AVX512_BF16 or AMX) runs the `cpu` network's step "
                             f"{say('cpu_bf16_speedup_width16')} as fast as fp32 (on 2 cores of one the whole `cpu` "
                             f"run took {say('cpu_profile_wall_min_avx512bf16')})")
            hints.append("more cores (the step uses all torch threads)")
            hints.append(f"a CUDA GPU (`--profile paper`: one H100 ran {say('h100_steps_per_s_full')} at full width)")
        hints.append("`--profile smoke` checks the whole pipeline in minutes")
        return hints


def _duration(seconds: float, precise: bool = False) -> str:
    if precise and seconds < 10:
        return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _steps_done(run_dir: Path, iterations: int) -> int:
    """Training steps a resumed run will not repeat: its last checkpoint's iteration (0 for a new run,
    or for a checkpoint that does not load)."""
    if (run_dir / "metrics.json").is_file():
        return iterations
    try:  # memory-mapped: the full-width checkpoint's 370 MB are not read for one number
        return int(torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True, mmap=True)["iteration"])
    except Exception:
        return 0


def estimate_run(config: Config, train_images: np.ndarray, train_labels: np.ndarray, out: str | Path, *,
                 device: torch.device | str, n_test: int = 30, score_test: bool = True, cv_only: bool = False,
                 parallel: int = 1, budget_s: float = 5.0) -> Estimate:
    """Project the wall time of ``reproduce`` into ``out`` (what is left of it, for a resumed run).

    Measures the training step of the path this machine takes (`context.RunContext`) in a few steps
    (about ``budget_s`` seconds of timed steps after one warm-up), and one slice's prediction
    without and (when ``run.tta``) with TTA, and the metrics on one slice (its labels blurred by 2 px,
    standing in for a trained network's output). ``parallel``: processes that will share this machine
    (their work is summed: an upper bound for the wall time).
    """
    from paper_unet import metrics
    from paper_unet.data import cv_folds

    started = time.perf_counter()
    out, device = Path(out), torch.device(device)
    o, r = config.optim, config.run
    path = RunContext.build(config, device).fast  # the path the run will take here
    timings = {}
    step_s = time_step(config, train_images, train_labels, device, bf16=path.bf16,
                       channels_last=path.channels_last, steps=20, budget_s=budget_s, timings=timings)
    predict_s = time_prediction(config, train_images[0], device, tta=False)
    predict_final_s = time_prediction(config, train_images[0], device, tta=True, warmup=False) if r.tta else predict_s
    # a trained network's output is close to the labels: score them blurred (as bench_metrics.py does)
    proposal = gaussian_filter((train_labels[:1] > 0).astype(np.float32), (0, 2, 2))
    metrics.evaluate(proposal, train_labels[:1])  # numba's compilation or cache load, once per process
    start = time.perf_counter()
    metrics.evaluate(proposal, train_labels[:1])
    score_s = time.perf_counter() - start

    folds = cv_folds(len(train_images), r.folds)
    networks = {}
    parts = {"set-up": 0.0, "training": 0.0, "validation": 0.0, "prediction": 0.0, "scores": 0.0}
    for k, (_, val_idx) in enumerate(folds):
        left = o.iterations - _steps_done(out / f"fold{k}", o.iterations)
        if not left and (out / f"fold{k}" / "metrics.json").is_file():
            continue
        networks[f"fold {k}"] = left
        parts["set-up"] += timings["setup_s"] if left else 0.0
        done = o.iterations - left
        validations = (o.iterations // r.validate_every - done // r.validate_every
                       + (o.iterations % r.validate_every > 0))  # every validate_every, and at the end
        parts["training"] += left * step_s
        parts["validation"] += validations * len(val_idx) * predict_s
        parts["prediction"] += len(val_idx) * predict_final_s
        parts["scores"] += len(val_idx) * score_s
    submission = out / "submission" / "test-volume-probabilities.tif"
    if not cv_only and not submission.is_file():
        left = o.iterations - _steps_done(out / "final", o.iterations)
        networks["final"] = left
        parts["set-up"] += timings["setup_s"] if left else 0.0
        parts["training"] += left * step_s
        parts["prediction"] += n_test * predict_final_s
        parts["scores"] += n_test * score_s if score_test else 0.0
    return Estimate(sum(parts.values()), step_s, predict_s, predict_final_s, score_s, timings["setup_s"],
                    networks, path, device.type, parallel, parts, time.perf_counter() - started)


def announce(config: Config, isbi, out: str | Path, *, cv_only: bool = False, parallel: int = 1) -> Estimate:
    """Measure, print (stderr) and keep (``out/estimate.json``) the estimate of a reproduction of
    ``isbi`` (an `ISBI2012`) into ``out``: what `reproduce` and `run_isbi.sh` show first."""
    import sys

    from paper_unet.distributed import resolve_device
    from paper_unet.images import normalize

    print("Measuring the training step on this machine for an estimate of the whole run ...", file=sys.stderr)
    estimate = estimate_run(config, normalize(isbi.train_images, config.data.normalize), isbi.train_labels, out,
                            device=resolve_device(config.run.device), n_test=len(isbi.test_images),
                            score_test=isbi.test_labels is not None, cv_only=cv_only, parallel=parallel)
    print(estimate.report(), file=sys.stderr)
    save_estimate(estimate, out)
    return estimate


def save_estimate(estimate: Estimate, out: str | Path) -> None:
    """``out/estimate.json``: the report sets it beside the measured wall time."""
    from paper_unet.atomic import write_json

    write_json(Path(out) / "estimate.json", estimate.as_dict())
