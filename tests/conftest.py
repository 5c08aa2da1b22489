"""Shared fixtures: the real ISBI 2012 stacks live in ../shared/data/isbi2012 (never in git)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PAPER_UNET_SHARED", REPO.parent / "shared"))
ISBI_DIR = SHARED / "data" / "isbi2012"
METRICS_REFERENCE_DIR = SHARED / "metrics_reference"

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", min(2, os.cpu_count() or 1))))


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
