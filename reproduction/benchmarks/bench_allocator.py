"""The C allocator setting (`paper_unet/allocator.py`): glibc's defaults vs freed blocks kept, in one run.

Every measurement runs twice, each time in a fresh process: once with ``PAPER_UNET_MALLOC=system`` (glibc's
thresholds as they are: the network's large buffers mapped afresh and zeroed by the kernel each pass) and once
with `allocator.keep_freed_memory` (what every ``paper-unet`` command does). Reported per measurement: wall time,
the process's system time, its minor page faults and peak resident memory (the price of keeping freed blocks),
and the ratio of the wall times.

- predict: `streaming.predict_streamed` of an EM image (the ISBI test slices tiled) in the paper's 572-px tiles,
  8 tiles per pass, no TTA, what ``paper-unet predict`` runs above 1024 px: the `cpu` profile's network (the
  shipped model) and the full-width `paper` network (untrained: its time does not depend on its weights);
- train: `estimate.time_step` (the step the runs take, at the fast path `auto` picks here) of the `cpu` profile
  and of the `paper` network at 572.

    python reproduction/benchmarks/bench_allocator.py [--side 2048] [--paper-side 1552] [--steps 4] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

from _common import ISBI_DIR, SHIPPED_MODEL, in_fresh_process, publish, record, tiled_em_image
CASES = ("predict_cpu", "predict_paper", "train_cpu", "train_paper")


def _run_case(case: str, side: int, paper_side: int, steps: int) -> float:
    """Seconds of the measured work of ``case`` (the network built and the data read beforehand)."""
    import torch

    from paper_unet.checkpoint import build_model, model_from_checkpoint
    from paper_unet.config import load_config
    from paper_unet.images import normalizer
    from paper_unet.streaming import predict_streamed

    if case.startswith("predict"):
        if case == "predict_cpu":
            model, config = model_from_checkpoint(SHIPPED_MODEL)
            raw = tiled_em_image(side)
        else:
            torch.manual_seed(0)
            config = load_config("paper")
            model, raw = build_model(config), tiled_em_image(paper_side)
        start = time.perf_counter()
        predict_streamed(model, raw, normalizer(raw, config.data.normalize), tile_size=572, progress=False)
        return time.perf_counter() - start
    import tifffile

    from paper_unet.estimate import time_step
    from paper_unet.fastpath import resolve

    config = load_config("cpu" if case == "train_cpu" else "paper", ["data.tile=572"])
    images = tifffile.imread(ISBI_DIR / "train-volume.tif")[:4].astype("float32") / 255
    labels = (tifffile.imread(ISBI_DIR / "train-labels.tif")[:4] > 127).astype("uint8")
    path = resolve(config.run.bf16, config.run.channels_last, "cpu")
    return steps * time_step(config, images, labels, "cpu", bf16=path.bf16, channels_last=path.channels_last,
                             steps=steps, warmup=1)


def child(case: str, setting: str, side: int, paper_side: int, steps: int) -> dict:
    """One measurement in this fresh process; ``setting``: "system" or "kept"."""
    import torch

    from paper_unet.allocator import keep_freed_memory

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    applied = keep_freed_memory()  # a no-op under PAPER_UNET_MALLOC=system, which `measure` sets for "system"
    before = resource.getrusage(resource.RUSAGE_SELF)
    seconds = _run_case(case, side, paper_side, steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"case": case, "setting": setting, "applied": applied, "seconds": seconds,
            "system_s": after.ru_stime - before.ru_stime, "minor_faults": after.ru_minflt - before.ru_minflt,
            "peak_bytes": after.ru_maxrss * 1024}


def measure(case: str, setting: str, args) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None), env.pop("MALLOC_TRIM_THRESHOLD_", None)
    env["PAPER_UNET_MALLOC"] = "system" if setting == "system" else ""
    return in_fresh_process(__file__, case, setting, str(args.side), str(args.paper_side), str(args.steps), env=env)


WHAT = {"predict_cpu": "predict, `cpu` network, {side} px image", "predict_paper": "predict, `paper` network, "
        "{paper_side} px image", "train_cpu": "train, `cpu` profile, {steps} steps", "train_paper": "train, "
        "`paper` network at 572, {steps} steps"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=2048, help="image side for the `cpu` network's prediction")
    parser.add_argument("--paper-side", type=int, default=1552, help="image side for the `paper` network's")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--no-write", action="store_true", help="do not update results/performance.md")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        case, setting, side, paper_side, steps = args.child
        print(json.dumps(child(case, setting, int(side), int(paper_side), int(steps))))
        return 0
    table = ["| work | glibc defaults (s) | freed blocks kept (s) | speed-up | system time (s) | minor page faults "
             "| peak memory (GB) |", "|---|---|---|---|---|---|---|"]
    figures = {}
    for case in args.cases:
        system, kept = measure(case, "system", args), measure(case, "kept", args)
        print(json.dumps([system, kept]), file=sys.stderr, flush=True)
        if not kept["applied"]:
            raise SystemExit("keep_freed_memory() did not apply here (not glibc?): nothing to compare")
        ratio = system["seconds"] / kept["seconds"]
        figures[f"allocator_speedup_{case}"] = (ratio, "x", f"wall-time ratio, glibc defaults / freed blocks kept: "
                                                            f"{WHAT[case].format(**vars(args))}")
        table.append(f"| {WHAT[case].format(**vars(args))} | {system['seconds']:.1f} | {kept['seconds']:.1f} | "
                     f"**{ratio:.2f}x** | {system['system_s']:.1f} -> {kept['system_s']:.1f} | "
                     f"{system['minor_faults']:,} -> {kept['minor_faults']:,} | "
                     f"{system['peak_bytes'] / 1e9:.2f} -> {kept['peak_bytes'] / 1e9:.2f} |")
    body = "\n".join(table) + (
        "\n\nEach cell pair is two fresh processes on this machine's CPU: `PAPER_UNET_MALLOC=system` (glibc's "
        "thresholds) and `paper_unet.allocator.keep_freed_memory()` (every `paper-unet` command). Prediction is "
        "`streaming.predict_streamed` in 572-px tiles, 8 per pass, no TTA; training is `estimate.time_step` at the "
        "fast path `auto` picks. The results are the same numbers either way; only the buffers' source differs.\n")
    publish("The C allocator: freed blocks kept vs glibc's defaults (bench_allocator.py)", body,
            write=not args.no_write)
    record(figures, "The C allocator: freed blocks kept vs glibc's defaults (bench_allocator.py)",
           write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
