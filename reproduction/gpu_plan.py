"""What a short GPU slot can run of the `paper` profile as shipped, from the step rates just measured.

Input: profile_step.py's JSON (measured on this GPU a minute before) and the seconds left for the run.
The candidates train the profile as shipped (fp32, the same method; profile_step.py variants H, I, E):

    H  eager, no lever (as shipped)            --set: nothing
    I  eager + cudnn.benchmark + fused SGD     --set run.cudnn_benchmark=true run.fused_sgd=true
    E  the whole step as a CUDA graph          --set run.cudnn_benchmark=true run.cuda_graph=true

The choice, in this order:
1. the whole reproduction (3 folds + the final model, 4 x 50,000 steps, run_isbi.sh --parallel-folds:
   four processes on the one GPU) when the aggregate rate reaches 200,000 steps in the time left less
   RESERVE_WHOLE s (start-up, cuDNN's search or the capture, validations, predictions with TTA, scores,
   the report). Four processes share a GPU by time-slicing: eager steps gained 1.37x over one process on
   an H100 (2026-11-25), counted here as PARALLEL_EAGER; graph replays leave the GPU little idle time
   to fill, counted as 1.0 (not measured);
2. else fold 2 alone to the end, as shipped (50,000 steps, the x0.1 decay at 40,000), when one process
   makes 50,000 steps in the time left less RESERVE_FOLD s;
3. else fold 2 shortened to what fits (rounded down to 1,000 steps; the decay at 80 % of them), and the
   rate the shipped run would need.

    python reproduction/gpu_plan.py PROFILE_JSON SECONDS   # prints the plan as KEY=VALUE lines
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

ITERATIONS = 50_000  # the `paper` profile's
NETWORKS = 4  # 3 folds + the final model
RESERVE_WHOLE = 240.0  # s
RESERVE_FOLD = 120.0  # s
PARALLEL_EAGER = 1.2  # four eager processes on one GPU vs one (1.37x measured on an H100, less a margin)
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


def choose(profile: dict, seconds: float) -> Plan:
    measured = rates(profile)
    if not measured:
        raise ValueError("profile_step.py measured none of the variants H, I, E: nothing to size the run from")

    def gain(name: str) -> float:
        return 1.0 if CANDIDATES[name][1] else PARALLEL_EAGER

    whole = max(measured, key=lambda name: measured[name] * gain(name))
    aggregate = measured[whole] * gain(whole)
    needed_whole = NETWORKS * ITERATIONS / max(seconds - RESERVE_WHOLE, 1.0)
    if aggregate >= needed_whole:
        return Plan("full", ITERATIONS, whole, CANDIDATES[whole][0], measured[whole], aggregate,
                    NETWORKS * ITERATIONS / aggregate + RESERVE_WHOLE,
                    f"the whole reproduction fits: {aggregate:.0f} aggregate steps/s >= {needed_whole:.0f} needed")
    one = max(measured, key=measured.get)
    rate = measured[one]
    needed_fold = ITERATIONS / max(seconds - RESERVE_FOLD, 1.0)
    shortfall = f"the whole run would need {needed_whole:.0f} aggregate steps/s (measured {aggregate:.0f})"
    if rate >= needed_fold:
        return Plan("fold2", ITERATIONS, one, CANDIDATES[one][0], rate, rate, ITERATIONS / rate + RESERVE_FOLD,
                    f"{shortfall}; fold 2 alone as shipped fits: {rate:.0f} steps/s >= {needed_fold:.0f} needed")
    iterations = int(rate * (seconds - RESERVE_FOLD) // 1000) * 1000
    if iterations < 1000:
        raise ValueError(f"too little time ({seconds:.0f} s) for 1,000 steps at {rate:.1f} steps/s")
    return Plan("fold2-shortened", iterations, one, CANDIDATES[one][0], rate, rate,
                iterations / rate + RESERVE_FOLD,
                f"{shortfall}; fold 2 as shipped would need {needed_fold:.0f} steps/s (measured {rate:.0f}): "
                f"shortened to {iterations:,} steps")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as handle:
        profile = json.load(handle)
    seconds = float(argv[1])
    if not math.isfinite(seconds):
        raise ValueError(f"SECONDS must be a number, got {argv[1]!r}")
    print(choose(profile, seconds).lines())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
