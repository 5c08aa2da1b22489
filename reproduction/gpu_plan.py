"""What a short GPU slot can run of the `paper` profile as shipped, from the step rates just measured.

Input: profile_step.py's JSON (measured on this GPU a minute before), the seconds left for the run, and
(--tests) the log of the slot's CUDA tests. Fail-safe: a graph candidate is dropped when a graph test failed
or the tests did not finish; when profiling measured none of the candidates (it crashed, or its cap cut it),
the plan falls back to eager H at the full-width rate recorded in results/measurements.json, less a margin
(FALLBACK_MARGIN), so that a slot still ends with a trained run.
The candidates train the profile as shipped (fp32, the same method; profile_step.py variants H, I, E):

    H  eager, no lever (as shipped)            --set: nothing
    I  eager + cudnn.benchmark + fused SGD     --set run.cudnn_benchmark=true run.fused_sgd=true
    E  the whole step as a CUDA graph          --set run.cudnn_benchmark=true run.cuda_graph=true

The choice, in this order:
1. the whole reproduction (3 folds + the final model, 4 x 50,000 steps, run_isbi.sh --parallel-folds:
   four processes on the one GPU) when the aggregate rate reaches 200,000 steps in the time left less
   RESERVE_WHOLE s (start-up, cuDNN's search or the capture, validations, predictions with TTA, scores,
   the report). Four processes share a GPU by time-slicing: eager steps gained over one process on an H100
   (results/measurements.json: h100_four_processes_gain), counted here as PARALLEL_EAGER, a little below that
   figure for a margin; graph replays leave the GPU little idle time
   to fill, counted as 1.0 (not measured);
2. else fold 2 alone to the end, as shipped (50,000 steps, the x0.1 decay at 40,000), when one process
   makes 50,000 steps in the time left less RESERVE_FOLD s;
3. else fold 2 shortened to what fits (rounded down to 1,000 steps; the decay at 80 % of them), and the
   rate the shipped run would need.

    python reproduction/gpu_plan.py PROFILE_JSON SECONDS [--tests LOG] [--profile NAME]
                                    # prints the plan as KEY=VALUE lines (--profile smoke: the CPU rehearsal)
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ITERATIONS = 50_000  # the `paper` profile's (another --profile: its own)
NETWORKS = 4  # 3 folds + the final model
# beyond the steps: start-up, cuDNN's search or the capture, validations, TTA prediction, scores, the report, and
# the checkpoints (sparse in the slot: gpu_session.sh sets run.checkpoint_every); s
RESERVE_WHOLE = 300.0
RESERVE_FOLD = 150.0
FALLBACK_MARGIN = 0.8  # of the recorded rate, when this GPU's rate could not be measured
PARALLEL_EAGER = 1.2  # four eager processes on one GPU vs one: h100_four_processes_gain (measurements.json) less a margin
CANDIDATES = {  # profile_step variant: (--set overrides, is a graph)
    "H": ([], False),
    "I": (["run.cudnn_benchmark=true", "run.fused_sgd=true"], False),
    "E": (["run.cudnn_benchmark=true", "run.cuda_graph=true"], True),
}


@dataclass
class Plan:
    scope: str  # full | fold2 | fold2-shortened
    iterations: int
    variant: str
    overrides: list[str]
    rate: float  # one process's steps/s, as measured
    aggregate: float  # steps/s of everything the plan runs at once
    expected_s: float
    note: str

    def lines(self) -> str:
        return "\n".join([f"scope={self.scope}", f"iterations={self.iterations}", f"variant={self.variant}",
                          f"overrides={' '.join(self.overrides)}", f"rate={self.rate:.1f}",
                          f"aggregate={self.aggregate:.1f}", f"expected_s={self.expected_s:.0f}",
                          f"note={self.note}"])


def rates(profile: dict) -> dict[str, float]:
    """One process's steps/s of each candidate that ran (variants with an error are left out)."""
    found = {}
    for name in CANDIDATES:
        figures = profile.get("variants", {}).get(name, {})
        if "steps_per_s" in figures and "error" not in figures:
            found[name] = float(figures["steps_per_s"])
    return found


def graph_tests_passed(log: str | None) -> bool:
    """Whether the slot's CUDA tests allow a graph, on positive evidence only: pytest finished (its totals line,
    and no interruption: a cap that cut it prints its totals too), a graph test is reported PASSED (`-rA`), no
    test with "graph" in its name failed or erred, and no test file failed to import. No log: not allowed."""
    if not log:
        return False
    finished = re.search(r"^=* ?(\d+ (passed|failed|skipped|deselected|errors?)).* in [\d.]+s", log, re.M)
    interrupted = re.search(r"KeyboardInterrupt|Interrupted", log)
    lines = log.splitlines()
    passed = [line for line in lines if line.startswith("PASSED") and "graph" in line]
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR")) and ("graph" in line or "::" not in line)]
    return bool(finished) and not interrupted and bool(passed) and not failed


def fallback_rate() -> float | None:
    """The full-width eager rate recorded in results/measurements.json, less FALLBACK_MARGIN."""
    from paper_unet.measurements import value
    recorded = value("h100_steps_per_s_full")
    return None if recorded is None else recorded * FALLBACK_MARGIN


def choose(profile: dict, seconds: float, *, graphs: bool = True, iterations: int | None = None,
           eager: bool = False) -> Plan:
    """The plan for ``seconds``: ``graphs`` False drops the graph candidates (their tests failed); ``eager``
    keeps H alone (the relaunch after a run died); ``iterations``: the profile's (default the `paper` profile's)."""
    measured = {name: rate for name, rate in rates(profile).items()
                if (graphs or not CANDIDATES[name][1]) and (not eager or name == "H")}
    fallback = ""
    if not measured:
        rate = fallback_rate()
        if rate is None:
            raise ValueError("profile_step.py measured none of the variants H, I, E, and no rate is recorded in "
                             "results/measurements.json: nothing to size the run from")
        measured = {"H": rate}
        fallback = f"FALLBACK: no candidate measured here; H at the recorded rate x {FALLBACK_MARGIN}; "
    plan = _choose(measured, seconds, iterations or ITERATIONS)
    plan.note = fallback + ("" if graphs else "graphs excluded (their tests failed or did not finish); ") + plan.note
    return plan


def _choose(measured: dict[str, float], seconds: float, total: int) -> Plan:
    def gain(name: str) -> float:
        return 1.0 if CANDIDATES[name][1] else PARALLEL_EAGER

    whole = max(measured, key=lambda name: measured[name] * gain(name))
    aggregate = measured[whole] * gain(whole)
    needed_whole = NETWORKS * total / max(seconds - RESERVE_WHOLE, 1.0)
    if aggregate >= needed_whole:
        return Plan("full", total, whole, CANDIDATES[whole][0], measured[whole], aggregate,
                    NETWORKS * total / aggregate + RESERVE_WHOLE,
                    f"the whole reproduction fits: {aggregate:.0f} aggregate steps/s >= {needed_whole:.0f} needed")
    one = max(measured, key=measured.get)
    rate = measured[one]
    needed_fold = total / max(seconds - RESERVE_FOLD, 1.0)
    shortfall = f"the whole run would need {needed_whole:.0f} aggregate steps/s (measured {aggregate:.0f})"
    if rate >= needed_fold:
        return Plan("fold2", total, one, CANDIDATES[one][0], rate, rate, total / rate + RESERVE_FOLD,
                    f"{shortfall}; fold 2 alone as shipped fits: {rate:.0f} steps/s >= {needed_fold:.0f} needed")
    iterations = int(rate * (seconds - RESERVE_FOLD) // 1000) * 1000
    if iterations < 1000:
        raise ValueError(f"too little time ({seconds:.0f} s) for 1,000 steps at {rate:.1f} steps/s")
    return Plan("fold2-shortened", iterations, one, CANDIDATES[one][0], rate, rate,
                iterations / rate + RESERVE_FOLD,
                f"{shortfall}; fold 2 as shipped would need {needed_fold:.0f} steps/s (measured {rate:.0f}): "
                f"shortened to {iterations:,} steps")


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile_json")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--tests", help="the CUDA tests' log: a graph is planned only when they passed")
    parser.add_argument("--profile", default="paper", help="the profile to size (default paper)")
    parser.add_argument("--eager", action="store_true", help="variant H alone: the relaunch after a run died")
    args = parser.parse_args(argv)
    if not math.isfinite(args.seconds):
        raise ValueError(f"SECONDS must be a number, got {args.seconds!r}")
    try:
        with open(args.profile_json) as handle:
            profile = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:  # profiling crashed before its first write
        print(f"gpu_plan: no usable profile ({error}): the fallback plan", file=sys.stderr)
        profile = {}
    tests = Path(args.tests).read_text(errors="replace") if args.tests and Path(args.tests).is_file() else None
    from paper_unet.config import load_config
    iterations = load_config(args.profile).optim.iterations
    print(choose(profile, args.seconds, graphs=args.tests is None or graph_tests_passed(tests),
                 iterations=iterations, eager=args.eager).lines())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
