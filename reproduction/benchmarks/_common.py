"""Helpers shared by the benchmarks: machine description and results/performance.md sections."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from paper_unet.atomic import write_text
from paper_unet.provenance import provenance

REPO = Path(__file__).resolve().parents[2]
STARTED = time.perf_counter()
PERFORMANCE_MD = REPO / "results" / "performance.md"
ISBI_DIR = Path(os.environ.get("PAPER_UNET_SHARED", REPO.parent / "shared")) / "data" / "isbi2012"


SHIPPED_MODEL = REPO / "results" / "isbi2012_cpu" / "model" / "unet_isbi2012_cpu.pt"  # the `cpu` profile's


def tiled_em_image(side: int):
    """A uint8 EM image of side x side: the first four ISBI test slices (2 x 2) tiled, contiguous, nothing more
    held than the image itself (what the large-image benchmarks predict)."""
    import numpy as np
    import tifffile

    slices = tifffile.imread(ISBI_DIR / "test-volume.tif")[:4]
    plane = np.concatenate([np.concatenate(list(slices[:2]), 1), np.concatenate(list(slices[2:]), 1)], 0)
    reps = -(-side // plane.shape[0])
    return np.ascontiguousarray(np.tile(plane, (reps, reps))[:side, :side])


def in_fresh_process(script: str, *args: str, env: dict | None = None) -> dict:
    """Run ``script --child args`` in a fresh Python process; its last line of output, parsed as JSON."""
    import json
    import subprocess

    done = subprocess.run([sys.executable, script, "--child", *args], capture_output=True, text=True, check=True,
                          env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def machine() -> str:
    p = provenance()
    gpu = f", GPU {p['gpu']}" if p["gpu"] else ", no GPU"
    return (f"{p['cpu_capability']}, {p['cpu_cores']} cores, torch {p['torch']} ({p['torch_threads']} threads)"
            f"{gpu}, Python {p['python']}")


def commit() -> str:
    p = provenance()
    return p["commit"][:7] + ("+dirty" if p["dirty"] else "")


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Minimum wall time over ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def record(figures: dict[str, tuple[float, str, str]], source: str, write: bool) -> None:
    """Write measured figures into results/measurements.json (the data that code and docs quote, read by
    `paper_unet.measurements`): ``figures`` maps a key to (value, unit, what), stamped with this machine, commit,
    date and ``source`` (the performance.md section). Other keys are kept."""
    import json

    from paper_unet.measurements import MEASUREMENTS
    if not write or not figures:
        return
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.is_file() else {}
    stamp = {"machine": machine(), "commit": commit(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
             "source": f"results/performance.md: {source}"}
    for key, (value, unit, what) in figures.items():
        data[key] = {"value": round(value, 2), "unit": unit, "what": what, **stamp}
    write_text(MEASUREMENTS, json.dumps(data, indent=2) + "\n")
    print(f"wrote {', '.join(figures)} into {MEASUREMENTS}")


def publish(title: str, body: str, write: bool, seed: str = "0") -> None:
    """Print the result; unless told not to, record it (with its command) in results/performance.md."""
    print(body)
    if write:
        command = "python reproduction/benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
        write_section(title, body, command, seed)


def write_section(title: str, body: str, command: str, seed: str = "0") -> None:
    """Replace (or append) the ``## title`` section of results/performance.md."""
    PERFORMANCE_MD.parent.mkdir(parents=True, exist_ok=True)
    text = PERFORMANCE_MD.read_text() if PERFORMANCE_MD.exists() else (
        "# Performance\n\nEvery section is written by the benchmark named in it "
        "(`reproduction/benchmarks/`), which measures our code and its baseline in one run, except where a "
        "section says otherwise (a quoted baseline time, a section copied from a device log, an expectation "
        "marked \"not measured\").\n")
    section = (f"## {title}\n\nCommand: `{command}`  \nCommit: {commit()}  \n"
               f"Machine: {machine()}  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  \n"
               f"Wall time of the benchmark: {time.perf_counter() - STARTED:.0f} s  \nSeed: {seed}\n\n"
               f"{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    write_text(PERFORMANCE_MD, text.rstrip() + "\n")
    print(f"wrote section '{title}' of {PERFORMANCE_MD}")
