"""Where a result comes from: the commit, the machine (CPU class or GPU), the software and the time.

`provenance` is what every stage record (`stages`), study row and results README carries; `machine` is
its one-line hardware description, the key by which a report tells whether two stages ran on the same
kind of machine.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

__all__ = ["provenance", "machine", "REPO"]

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    from paper_unet import __version__

    if not ((REPO / ".git").exists() and (REPO / "pyproject.toml").is_file()):
        return f"not a git checkout (installed paper_unet {__version__})"
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (git failed)"


def provenance(command: str | None = None) -> dict:
    """Commit, hardware and software of this process, now.

    The commit is read from the source checkout that holds this package; an installed package
    (a wheel in site-packages) is "not a git checkout", whatever repository happens to surround it.
    """
    from paper_unet.fastpath import cpu_info

    checkout = (REPO / ".git").exists() and (REPO / "pyproject.toml").is_file()
    cpu = cpu_info()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "command": command or " ".join(sys.argv), "commit": _git("rev-parse", "HEAD"),
        "dirty": checkout and bool(_git("status", "--porcelain", "--", "paper_unet", "reproduction")),
        "cpu": cpu.model, "cpu_class": cpu.cpu_class, "cpu_capability": cpu.describe(),
        "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "gpu": gpu, "cuda": torch.version.cuda if gpu else None, "torch": str(torch.__version__),
        "python": platform.python_version(), "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def machine(prov: dict) -> str:
    """The hardware of a provenance record in one line: the GPU, or the CPU with its class and threads."""
    if prov.get("gpu"):
        return f"{prov['gpu']} (CUDA {prov.get('cuda')})"
    cpu = f"{prov['cpu']} ({prov['cpu_class']} CPU)" if prov.get("cpu_class") else prov.get("cpu", "unknown CPU")
    return f"{cpu}, {prov.get('torch_threads', '?')} threads"
