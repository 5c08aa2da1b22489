"""Shared fixtures: the real ISBI 2012 stacks live in ../shared/data/isbi2012 (never in git)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PAPER_UNET_SHARED", REPO.parent / "shared"))
ISBI_DIR = SHARED / "data" / "isbi2012"
METRICS_REFERENCE_DIR = SHARED / "metrics_reference"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


# a smoke run of two steps in fp32 (stage and study tests)
TINY = ["optim.iterations=2", "run.validate_every=2", "run.checkpoint_every=2", "run.bf16=false",
        "run.channels_last=false"]


def _cpu(aten: str):
    from paper_unet.fastpath import CpuInfo
    return CpuInfo("Test CPU A", aten, avx512_bf16=True, amx=False)


CPU_A, CPU_B = _cpu("AVX512"), _cpu("AVX2")  # one chip, the second lowered to AVX2 (ATEN_CPU_CAPABILITY=avx2)


def on_cpu(monkeypatch, cpu) -> None:
    """A patched CPU probe: what `fastpath.cpu_info` reports (provenance and the fast path read it)."""
    import paper_unet.fastpath
    monkeypatch.setattr(paper_unet.fastpath, "cpu_info", lambda: cpu)


@pytest.fixture(scope="session")
def isbi_dir() -> Path:
    if not (ISBI_DIR / "train-labels.tif").is_file():
        pytest.skip(f"ISBI 2012 stacks not found in {ISBI_DIR} (set PAPER_UNET_SHARED)")
    return ISBI_DIR


@pytest.fixture
def strict_fp32():
    """fp32 arithmetic on CUDA for the tests that compare a GPU result with the CPU's.

    PyTorch runs cuDNN convolutions in TF32 by default (`torch.backends.cudnn.allow_tf32`), which keeps
    10 bits of mantissa: differences of about 1e-3, far above the fp32 tolerances of those tests (seen on
    an H100, 2026-11-25). The tests check the fp32 computation; training and inference keep PyTorch's
    defaults. Restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# --- a tiny training set-up, shared by the training, checkpoint and reproduction tests ---------------------

@pytest.fixture(scope="module")
def tiny_data(isbi_dir):
    import tifffile
    images = tifffile.imread(isbi_dir / "train-volume.tif")[:3, :128, :128]
    labels = tifffile.imread(isbi_dir / "train-labels.tif")[:3, :128, :128]
    return images, labels


def tiny_config(**optim):
    from paper_unet.config import config_from_dict, load_config
    values = load_config("smoke").to_dict()
    values["optim"].update({"iterations": 8, **optim})
    values["run"].update(checkpoint_every=4, validate_every=4, log_every=1)
    return config_from_dict(values)


def weights_of(path: Path) -> dict:
    from paper_unet.checkpoint import load_checkpoint
    return load_checkpoint(path)["model"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights_of(a), weights_of(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def wait_for(condition, seconds: float = 120, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended first (exit {process.returncode}): "
                                 f"{process.stderr.read() if process.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("timed out")


def train_command(isbi_dir, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "paper_unet", "train", "--profile", "smoke", "--data-dir", str(isbi_dir),
            "--quiet", "--out", str(out), *extra]


def logged_rows(out: Path) -> int:
    log = out / "train_log.csv"
    return len(log.read_text().splitlines()) - 1 if log.is_file() else 0
