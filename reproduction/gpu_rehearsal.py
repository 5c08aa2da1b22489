"""The GPU slot rehearsed on this CPU: `bash reproduction/gpu_session.sh rehearse`.

Runs the slot's whole control flow (`gpu_session.sh first`, then `finish`) with the real scripts, the CPU as the
device, the `smoke` profile, profile_step.py in its quick mode, shorter time caps and a temporary OUTDIR, once per
branch, and checks what a real slot depends on:

    ok           everything works: a plan from the measured rates, one launch, a finished run
    profile      profile_step.py crashes before writing anything: the plan falls back to the recorded rate
    graph_tests  a graph test fails: the plan leaves the graph out
    run_dies     the launched run dies at once: the liveness check relaunches it eagerly, and that one finishes

In every branch: at most 8 files in OUTDIR, every JSON there parses, and the slot's time plan
(`gpu_session.sh budget`: machine start + call 1 + gap + call 2 <= 900 s) holds. The failures are injected by
GPU_SESSION_FAULT where the CPU cannot produce them (a CUDA graph test cannot fail on a CPU). Exit 0 when every
branch passed. tests/test_environment.py runs it (slow suite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SESSION = REPO / "reproduction" / "gpu_session.sh"
SCENARIOS = ("ok", "profile", "graph_tests", "run_dies")
TIMES = {"GPU_SESSION_TESTS_S": "120", "GPU_SESSION_PROFILE_S": "120", "GPU_SESSION_LIVENESS_S": "45",
         "GPU_SESSION_FOLLOW_S": "300", "GPU_SESSION_FINISH_S": "200", "GPU_SESSION_POLL_S": "2"}


def session(*args: str, env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SESSION), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def plan_value(plan: str, key: str) -> str:
    """The last ``key=`` line of plan.txt (a relaunch appends a second plan); "" when there is none."""
    values = [line.split("=", 1)[1] for line in plan.splitlines() if line.startswith(f"{key}=")]
    return values[-1] if values else ""


def check(name: str, out: Path, log: Path) -> list[str]:
    """What must hold after the slot's two calls in branch ``name``; the problems found."""
    if not out.is_dir():
        return ["no OUTDIR was made"]
    problems = []
    files = sorted(p.name for p in out.iterdir())
    if len(files) > 8:
        problems.append(f"{len(files)} files in OUTDIR (at most 8 come back): {files}")
    for path in out.glob("*.json"):
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"{path.name} does not parse: {error}")
    plan = (out / "plan.txt").read_text() if (out / "plan.txt").is_file() else ""
    exit_status = (log / "run.exit").read_text().strip() if (log / "run.exit").is_file() else "none"
    launches = plan.count("launch: ")
    note, variant = plan_value(plan, "note"), plan_value(plan, "variant")
    expected = {
        "ok": [("a measured plan", bool(note) and "FALLBACK" not in note), ("one launch", launches == 1),
               ("profile_step.json", (out / "profile_step.json").is_file())],
        "profile": [("the fallback plan", note.startswith("FALLBACK")),
                    ("no profile JSON", not (out / "profile_step.json").exists())],
        "graph_tests": [("graphs excluded", "graphs excluded" in note), ("no graph variant", variant not in ("", "E"))],
        "run_dies": [("the liveness check", "relaunched eagerly" in plan), ("two launches", launches == 2),
                     ("the relaunch is eager H", variant == "H")],
    }[name]
    problems += [f"expected {what}" for what, ok in expected if not ok]
    if exit_status != "0":
        problems.append(f"the (last) run did not end well: exit {exit_status}")
    if not (out / "run.tgz").is_file():
        problems.append("no run.tgz")
    return problems


def rehearse(name: str, work: Path) -> list[str]:
    out, log = work / f"out_{name}", work / f"log_{name}"
    env = dict(os.environ, GPU_SESSION_DEVICE="cpu", GPU_SESSION_PROFILE="smoke", GPU_SESSION_FAULT=name,
               GPU_SESSION_LOG=str(log), PAPER_UNET_PYTHON=os.environ.get("PAPER_UNET_PYTHON", sys.executable),
               **TIMES)
    first = session("first", str(out), env=env, timeout=700)
    finish = session("finish", str(out), env=env, timeout=400)
    (work / f"{name}.log").write_text(first.stdout + first.stderr + finish.stdout + finish.stderr)
    problems = check(name, out, log)
    if problems:
        problems.append(f"(the calls' output: {work / f'{name}.log'})")
    return problems


def main(argv: list[str]) -> int:
    names = argv or list(SCENARIOS)
    budget = session("budget", env=dict(os.environ), timeout=60)
    print(budget.stdout.strip())
    failed = {} if budget.returncode == 0 else {"budget": ["the time plan exceeds the slot"]}
    work = Path(tempfile.mkdtemp(prefix="gpu_rehearsal_"))
    for name in names:
        problems = rehearse(name, work)
        print(f"rehearsal {name}: {'passed' if not problems else 'FAILED: ' + '; '.join(problems)}", flush=True)
        if problems:
            failed[name] = problems
    print(f"rehearsal: {len(names) - len(failed)} of {len(names)} branches passed (work folder {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
