"""Helpers shared by the benchmarks: machine description and results/performance.md sections."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
STARTED = time.perf_counter()
PERFORMANCE_MD = REPO / "results" / "performance.md"
ISBI_DIR = Path(os.environ.get("PAPER_UNET_SHARED", REPO.parent / "shared")) / "data" / "isbi2012"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads){gpu}, Python {platform.python_version()}")


def commit() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "paper_unet"], cwd=REPO,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Minimum wall time over ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


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
        "(`reproduction/benchmarks/`), which measures our code and its baseline in one run.\n")
    section = (f"## {title}\n\nCommand: `{command}`  \nCommit: {commit()}  \n"
               f"Machine: {machine()}  \nDate: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  \n"
               f"Wall time of the benchmark: {time.perf_counter() - STARTED:.0f} s  \nSeed: {seed}\n\n"
               f"{body.strip()}\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    PERFORMANCE_MD.write_text(text.rstrip() + "\n")
    print(f"wrote section '{title}' of {PERFORMANCE_MD}")
