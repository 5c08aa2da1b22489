"""One run per folder (`paper_unet.runlock`): an OS file lock that names its holder and dies with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import logged_rows, train_command, wait_for
from paper_unet.checkpoint import load_checkpoint
from paper_unet.runlock import LOCK_NAME, hold


HOLD_AND_SLEEP = ("import sys, time; from paper_unet.runlock import hold\n"
                  "with hold(sys.argv[1], shared=sys.argv[2] == 'shared'):\n"
                  "    print('holding', flush=True); time.sleep(60)")
TRY_HOLD = ("import sys; from paper_unet.runlock import hold, RunFolderBusy\n"
            "try:\n    with hold(sys.argv[1], shared=sys.argv[2] == 'shared'): print('got it')\n"
            "except RunFolderBusy as e: print('busy:', e)")


def try_hold(folder: Path, mode: str = "exclusive") -> str:
    return subprocess.run([sys.executable, "-c", TRY_HOLD, str(folder), mode], capture_output=True, text=True,
                          check=True).stdout


def test_a_folder_lock_refuses_other_processes_names_the_holder_and_dies_with_it(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_SLEEP, str(tmp_path / "run"), "exclusive"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = try_hold(tmp_path / "run")
        assert refused.startswith("busy:") and f"(PID {holder.pid})" in refused and "--out" in refused
        assert try_hold(tmp_path / "run", "shared").startswith("busy:")
    finally:
        holder.kill()  # SIGKILL: no clean-up of ours runs, the OS drops the lock
        holder.wait()
    assert try_hold(tmp_path / "run") == "got it\n"


def test_parallel_stage_processes_share_the_run_folder_but_a_whole_run_is_refused(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_AND_SLEEP, str(tmp_path / "run"), "shared"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        assert try_hold(tmp_path / "run", "shared") == "got it\n"  # a sibling fold process
        assert try_hold(tmp_path / "run").startswith("busy:")  # a whole reproduction on the same folder
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with hold(tmp_path / "run"):
        with hold(tmp_path / "run"):  # a reproduction holds the folder, and a nested call on it
            assert try_hold(tmp_path / "run").startswith("busy:")
        assert try_hold(tmp_path / "run").startswith("busy:")  # still held by the outer block
        assert (tmp_path / "run" / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert try_hold(tmp_path / "run") == "got it\n"
    with hold(tmp_path / "x", enabled=False):  # ranks other than 0 take no lock
        assert not (tmp_path / "x").exists()


def test_a_second_training_on_the_same_folder_is_refused_and_the_first_is_unharmed(isbi_dir, tmp_path):
    out = tmp_path / "run"
    # 2,000 smoke steps (about 15 s): the second process starts (imports, data) well before the first ends
    first = subprocess.Popen(train_command(isbi_dir, out, "--set", "optim.iterations=2000", "--set",
                                           "run.checkpoint_every=2000"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_rows(out) > 0, process=first)
    second = subprocess.run(train_command(isbi_dir, out, "--set", "optim.iterations=2000", "--resume"),
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2
    assert f"in use by another run (PID {first.pid})" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert load_checkpoint(out / "last.pt")["iteration"] == 2000
