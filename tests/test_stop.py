"""A clean stop on SIGTERM and SIGINT (`paper_unet.stop`): the step finishes, a checkpoint is written, the exit
status says which signal, and the same command resumes exactly. The tests start real `paper-unet` processes and
send real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, logged_rows, same_weights, train_command, wait_for
from paper_unet.checkpoint import load_checkpoint
from paper_unet.config import load_config
from paper_unet.stop import StopRequested

STEPS = 600  # about 4 s of smoke training: time enough for the signal to land before the end
EXTRA = ["--set", f"optim.iterations={STEPS}", "--set", "run.checkpoint_every=1000", "--set", "run.log_every=2"]

def stop_a_training(isbi_dir, out: Path, signum: int) -> int:
    """Start a real training, send ``signum`` once it logs; check the clean stop; the step it reached."""
    victim = subprocess.Popen(train_command(isbi_dir, out, *EXTRA), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    wait_for(lambda: logged_rows(out) > 0, process=victim)
    victim.send_signal(signum)
    _, stderr = victim.communicate(timeout=120)
    assert victim.returncode == 128 + signum, stderr
    reached = load_checkpoint(out / "last.pt")["iteration"]
    assert 0 < reached < STEPS
    assert f"stopped by {signal.Signals(signum).name}" in stderr and f"iteration {reached} of {STEPS}" in stderr
    assert "--resume" in stderr
    return reached

def test_ctrl_c_checkpoints_the_step_reached_and_exits_130(isbi_dir, tmp_path):
    stop_a_training(isbi_dir, tmp_path / "stopped", signal.SIGINT)

def test_sigterm_checkpoints_the_step_reached_and_resume_equals_an_uninterrupted_run(isbi_dir, tmp_path):
    """Dropout on, a checkpoint period longer than the run: the only checkpoint before the end is
    the one the signal makes, at whatever step it arrives."""
    extra = EXTRA
    subprocess.run(train_command(isbi_dir, tmp_path / "full", *extra), check=True, capture_output=True)
    stop_a_training(isbi_dir, tmp_path / "stopped", signal.SIGTERM)
    done = subprocess.run(train_command(isbi_dir, tmp_path / "stopped", *extra, "--resume"), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert same_weights(tmp_path / "full" / "last.pt", tmp_path / "stopped" / "last.pt")
    full = (tmp_path / "full" / "train_log.csv").read_text().splitlines()
    resumed = (tmp_path / "stopped" / "train_log.csv").read_text().splitlines()
    assert [r.split(",")[:3] for r in resumed] == [r.split(",")[:3] for r in full]  # all but the seconds

def test_a_second_signal_ends_the_process_at_once():
    code = ("import os, signal, time; from paper_unet.stop import graceful_stop\n"
            "with graceful_stop() as flag:\n"
            "    os.kill(os.getpid(), signal.SIGTERM); deadline = time.time() + 30\n"
            "    while not flag.requested and time.time() < deadline: time.sleep(0.01)\n"
            "    print('first recorded:', flag.requested, flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5); print('survived')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and done.stdout == "first recorded: True\n"

def test_a_signal_stops_the_reproduction_with_the_training_checkpointed(isbi_dir, tmp_path, monkeypatch):
    """In-process: the signal arrives as the first fold's training starts; it stops after one step,
    checkpointed, and the reproduction raises instead of going on to the next stage."""
    import paper_unet.train
    from paper_unet.data import load_isbi2012
    from paper_unet.reproduce import run_reproduction

    real_train = paper_unet.train.train

    def signalled_train(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(paper_unet.train, "train", signalled_train)
    with pytest.raises(StopRequested, match="stopped by SIGTERM: checkpoint .*iteration 1 of 6") as stopped:
        run_reproduction(load_config("smoke"), load_isbi2012(isbi_dir), tmp_path / "run", progress=False)
    assert stopped.value.exit_status == 143
    assert load_checkpoint(tmp_path / "run" / "fold0" / "last.pt")["iteration"] == 1
    assert not (tmp_path / "run" / "fold1").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are given back

def test_run_isbi_passes_sigterm_on_and_exits_with_its_status(isbi_dir, tmp_path):
    """`docker stop` / a cluster's preemption signal the script: it hands SIGTERM to the training,
    which checkpoints; the script reports a clean stop and exits 143."""
    out = tmp_path / "run"
    script = subprocess.Popen(["bash", str(REPO / "reproduction" / "run_isbi.sh"), "--profile", "smoke", "--data-dir",
                               str(isbi_dir), "--out", str(out), "--results", str(tmp_path / "results"),
                               "--set", "optim.iterations=3000", "--set", "run.checkpoint_every=5000",
                               "--set", "run.validate_every=5000"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    wait_for(lambda: logged_rows(out / "fold0") > 0, process=script)
    script.send_signal(signal.SIGTERM)
    _, stderr = script.communicate(timeout=120)
    assert script.returncode == 143, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "run_isbi.sh: stopped cleanly (exit 143)" in stderr
    assert 0 < load_checkpoint(out / "fold0" / "last.pt")["iteration"] < 3000

