"""The C allocator's handling of the network's large buffers on a CPU (glibc, Linux).

PyTorch's CPU tensors come from the C library's ``malloc``. glibc serves every block above its mmap threshold
(dynamic, at most 32 MiB by default) with a fresh ``mmap`` and returns it with ``munmap`` when freed, and it gives
the top of its heap back to the system above a trim threshold. A U-Net's activations at the paper's 572-px tile are
larger than that (one width-16 layer of a batch of 8 tiles: 8 x 16 x 570 x 570 x 4 bytes), so every forward pass
maps fresh pages, and the kernel faults in and zeroes each of them again: system time that grows with the tile
batch, on top of the convolutions (reproduction/benchmarks/bench_allocator.py measures both settings side by side;
the figures are in results/performance.md).

`keep_freed_memory` raises both thresholds (``mallopt``), so freed blocks stay in the process and the next pass
reuses them. The numbers a pass computes do not change, only where its buffers come from; the price is that the
process keeps its peak memory mapped instead of returning it between passes. Every ``paper-unet`` command calls it
at start; a library user may call it once. ``PAPER_UNET_MALLOC=system`` (or a ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` of the user's own in the environment) leaves the allocator as it is. Other C libraries
(macOS, musl) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

__all__ = ["keep_freed_memory", "OPT_OUT"]

OPT_OUT = "PAPER_UNET_MALLOC"  # =system: leave the C allocator's thresholds as they are
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_LARGEST = 2**31 - 1  # mallopt takes a C int
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed large blocks in the process (glibc ``mallopt``); True when the thresholds were set, False where
    the C library is not glibc, the user opted out, or the environment sets them already. Idempotent."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if (os.environ.get(OPT_OUT, "").lower() == "system"
            or any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGEST))
    return _applied
