"""A dead start is not the end: restart from the initial weights at a lower learning rate.

A learning rate that trains on one data set can kill the network on another (`collapse`): on cells
that cover a few percent of the pixels, the class-balancing weight of Eq. 2 gives each cell pixel
tens of times a background pixel's weight, and with momentum 0.99 every step moves the weights by
about 100 x the rate. When a training stops on a dead network (or a diverging loss),
`train_with_restarts` starts it again from the same initial weights (the same seed) at
``optim.restart_factor`` x the rate, up to ``optim.restarts`` times, and says so each time.

Nothing is silent and nothing of a dead attempt survives as a result: each attempt's rate, warm-up,
outcome and logs are kept in ``attempts.json`` and ``attempt<k>/`` in the run folder; the dead
attempt's checkpoints are deleted; the run's ``config.json`` and every checkpoint hold the rate that
trained. ``--resume`` continues the attempt that was running, at its rate. ``optim.restarts`` is 0
in every profile (the ISBI reproduction never restarts: its rates are the paper's setting and the
budget study's); `paper-unet train` on your own data sets it (README "Your own data").
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

from paper_unet.atomic import read_json, write_json
from paper_unet.config import Config, config_from_dict
from paper_unet.train import TrainingDiverged, TrainResult, train

__all__ = ["train_with_restarts", "read_attempts", "ATTEMPTS"]

ATTEMPTS = "attempts.json"
_DEAD_FILES = ("last.pt", "last.prev.pt", "best.pt")
_LOGS = ("train_log.csv", "val_log.csv", "config.json", "fast_path.json")


def read_attempts(out: str | Path) -> list[dict]:
    """The attempts recorded in ``out`` (empty when the run never restarted). A record that does not parse stops
    the run: counting from zero would allow more restarts than ``optim.restarts``."""
    path = Path(out) / ATTEMPTS
    attempts = read_json(path, "attempts record", torn=f"the run cannot tell how often it restarted. Restore it, or "
                                                      f"delete {path.parent} to start the run afresh")
    return attempts or []


def _write_attempts(out: Path, attempts: list[dict]) -> None:
    write_json(out / ATTEMPTS, attempts)


def _at_rate(config: Config, lr: float) -> Config:
    values = config.to_dict()
    values["optim"]["lr"] = lr
    return config_from_dict(values)


def _set_aside(out: Path, number: int) -> None:
    """Move a dead attempt's logs to ``attempt<number>/`` and delete its checkpoints."""
    folder = out / f"attempt{number}"
    folder.mkdir(exist_ok=True)
    for name in _LOGS:
        if (out / name).is_file():
            shutil.move(str(out / name), folder / name)
    for name in _DEAD_FILES:
        (out / name).unlink(missing_ok=True)


def train_with_restarts(config: Config, images: np.ndarray, labels: np.ndarray, out_dir: str | Path, *,
                        resume: bool = False, check=None, **kwargs) -> tuple[TrainResult, Config]:
    """`train`, restarted at ``optim.restart_factor`` x the rate after a dead network or a diverging loss, up
    to ``optim.restarts`` times; the result and the config that trained. ``check(last_pt, config)``, when given,
    runs after the last iteration and raises `TrainingDiverged` for a network that is dead all the same (which
    restarts it too). Other arguments go to `train`."""
    out = Path(out_dir)
    attempts = read_attempts(out) if resume else []
    if attempts:
        if attempts[0]["lr"] != config.optim.lr:
            raise ValueError(f"{out} was started at optim.lr={attempts[0]['lr']:g}, not {config.optim.lr:g}; "
                             f"resume with the same options, or use a new --out directory")
        config = _at_rate(config, attempts[-1]["lr"])
        print(f"{out.name}: resuming attempt {len(attempts)} at optim.lr={config.optim.lr:g} "
              f"({ATTEMPTS})", file=sys.stderr)
    elif (out / ATTEMPTS).is_file():
        (out / ATTEMPTS).unlink()
    attempts = attempts or [{"lr": config.optim.lr, "warmup": config.optim.warmup, "outcome": "running"}]
    while True:
        if config.optim.restarts:
            out.mkdir(parents=True, exist_ok=True)
            _write_attempts(out, attempts)
        try:
            result = train(config, images, labels, out, resume=resume, **kwargs)
            if check is not None and result.iterations == config.optim.iterations:
                check(out / "last.pt", config)
        except TrainingDiverged as error:
            attempts[-1]["outcome"] = str(error)
            if len(attempts) > config.optim.restarts:
                if config.optim.restarts:
                    _write_attempts(out, attempts)
                    raise TrainingDiverged(f"{error} [after {len(attempts)} attempts at optim.lr = "
                                           + ", ".join(f"{a['lr']:g}" for a in attempts)
                                           + f"; see {out / ATTEMPTS}]") from error
                raise
            _set_aside(out, len(attempts))
            lr = config.optim.lr * config.optim.restart_factor
            print(f"{out.name}: attempt {len(attempts)} at optim.lr={config.optim.lr:g} stopped: {error}\n"
                  f"{out.name}: restarting from the initial weights at optim.lr={lr:g} "
                  f"(optim.restart_factor={config.optim.restart_factor:g}; attempt {len(attempts) + 1} of at most "
                  f"{config.optim.restarts + 1}; recorded in {out / ATTEMPTS})", file=sys.stderr)
            config, resume = _at_rate(config, lr), False
            attempts.append({"lr": lr, "warmup": config.optim.warmup, "outcome": "running"})
            continue
        if config.optim.restarts and result.iterations == config.optim.iterations:
            attempts[-1]["outcome"] = "trained"
            _write_attempts(out, attempts)
        return result, config
