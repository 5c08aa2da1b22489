"""paper_unet/allocator.py: freed large blocks are reused, not mapped afresh (counted in page faults, not timed)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from paper_unet import allocator

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the setting is glibc's (mallopt); other C libraries are left alone")

# A small U-Net's pass over 4 tiles of 572 px: its first layers' activations are 4 x 8 x 570 x 570 x 4 bytes
# = 42 MB each, above glibc's largest dynamic mmap threshold (32 MiB on 64-bit), so the defaults map them afresh,
# and the kernel faults their pages in, on every pass.
PASSES = """
import json, resource, sys, torch
from paper_unet.allocator import keep_freed_memory
from paper_unet.model import UNet
applied = keep_freed_memory() if sys.argv[1] == "kept" else False
torch.manual_seed(0)
torch.set_num_threads(1)
model, x = UNet(base_channels=8, depth=3, dropout=0.0).eval(), torch.rand(4, 1, 572, 572)
with torch.inference_mode():
    for _ in range(2):  # the first passes fault in either way (the heap grows to hold them)
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        total = float(model(x).double().sum())
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "total": total}))
"""


def _passes(setting: str, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.pop(allocator.OPT_OUT, None)
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", PASSES, setting], capture_output=True, text=True, check=True,
                          env=environment)
    return json.loads(done.stdout.strip().splitlines()[-1])


@glibc
def test_kept_blocks_are_reused_instead_of_faulted_in_again():
    pages = 4 * 8 * 570 * 570 * 4 // 4096  # one first-layer activation, in 4 KiB pages
    system, kept = _passes("system"), _passes("kept")
    assert kept["applied"] and not system["applied"]
    assert system["faults"] >= 2 * pages  # each pass maps and faults in its activations anew
    assert kept["faults"] < pages  # both passes together fault in less than one activation
    assert kept["total"] == system["total"]  # the same numbers either way


@glibc
@pytest.mark.parametrize("env", [{allocator.OPT_OUT: "system"}, {"MALLOC_MMAP_THRESHOLD_": "1048576"}])
def test_the_user_opts_out_or_sets_the_thresholds_himself(env):
    assert not _passes("kept", **env)["applied"]


def test_every_command_applies_it(monkeypatch, capsys):
    from paper_unet import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["config", "--profile", "cpu", "--get", "run.folds"]) == 0
    assert calls == [1]
