"""What bounds the full-width training step: each speed lever measured, one variant at a time.

The step of `paper_unet.step` (forward, weighted loss, backward, SGD momentum 0.99, one tile per
step, real augmented ISBI tiles), as variants:

    A  fp32 eager, as shipped (the network step on tiles drawn beforehand)
    B  A + cudnn.benchmark (run.cudnn_benchmark)
    C  B + bf16 autocast + channels_last
    D  C + fused SGD (run.fused_sgd)
    E  B captured as one whole-step CUDA graph, the augmentation inside (run.cuda_graph; fused SGD)
    F  D captured the same way
    G  four networks in one process: their steps serially (G0), on four CUDA streams (G1), and as four
       graphs replayed on four streams (G2); per network step
    H  A with the real sampler inside the loop (what `train` runs as shipped)
    I  H + cudnn.benchmark + fused SGD: the eager fp32 step with its levers

H, I and E are the three ways to train the `paper` profile as shipped (fp32; the same method):
reproduction/gpu_plan.py picks the fastest of them for a GPU slot's run.

The baseline is A (and H for the variants with the sampler inside: E, F, G2, I). For each variant:
wall ms/step (warm-up, then --steps timed steps, synchronised), GPU-busy ms/step from torch.profiler
(the union of the kernel, copy and memset intervals), kernels per step, host ms/step (Python's time to
issue one step), GPU time by kernel category (convolution forward / input-grad / weight-grad, layout
transposes, elementwise, pool and concatenation, loss, optimizer, sampler, copies), the convolutions'
TFLOP/s against the dtype's peak (--peak-tf32, --peak-bf16: an H100 SXM's and an H200's dense rates),
peak memory. One JSON (--out; rewritten after every variant) and a markdown table, written to
results/performance.md unless --no-write.

On a CPU (--device cpu --quick: width 4, tile 188, a few steps) every variant runs, without what only
CUDA has: B is A, the graph variants run their static-buffer step eagerly, G1 and G2 are skipped,
there is no GPU-busy time and the categories are CPU operator self times. That checks the script (a
test runs it); the figures that matter come from a GPU (reproduction/gpu_session.sh).

    python reproduction/benchmarks/profile_step.py [--device cuda] [--steps 50] [--out profile_step.json]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from contextlib import nullcontext

import tifffile
import torch

from _common import ISBI_DIR, machine, publish
from paper_unet.atomic import write_json
from paper_unet.config import load_config
from paper_unet.fastpath import FastPath
from paper_unet.model import UNet
from paper_unet.context import RunContext
from paper_unet.step import Levers, TrainingStep, cudnn_benchmark, train_step

VARIANTS = {  # name: (levers, bf16 + channels_last, sampler inside, description)
    "A": (Levers(), False, False, "fp32 eager, as shipped"),
    "B": (Levers(cudnn_benchmark=True), False, False, "A + cudnn.benchmark"),
    "C": (Levers(cudnn_benchmark=True), True, False, "B + bf16 autocast + channels_last"),
    "D": (Levers(cudnn_benchmark=True, fused_sgd=True), True, False, "C + fused SGD"),
    "E": (Levers(cudnn_benchmark=True, fused_sgd=True, cuda_graph=True), False, True,
          "B as one whole-step CUDA graph (sampler inside)"),
    "F": (Levers(cudnn_benchmark=True, fused_sgd=True, cuda_graph=True), True, True,
          "D as one whole-step CUDA graph (sampler inside)"),
    "H": (Levers(), False, True, "A + the real sampler inside the loop (train as shipped)"),
    "I": (Levers(cudnn_benchmark=True, fused_sgd=True), False, True,
          "H + cudnn.benchmark + fused SGD (eager, fp32)"),
}
NETWORKS = 4  # variant G

# GPU kernel name -> category (first match); CPU operator names are matched the same way
CATEGORIES = [
    ("copy/memset", r"memcpy|memset"),
    ("optimizer", r"sgd|multi_tensor_apply"),
    ("sampler", r"grid_sampler|upsample_bicubic|bicubic"),
    ("conv weight-grad", r"wgrad|convolution_backward_weight"),
    ("conv input-grad", r"dgrad|convolution_backward"),
    ("conv forward", r"fprop|conv|winograd|implicit_gemm|gemm|mkldnn_convolution"),
    ("layout transpose", r"nchwtonhwc|nhwctonchw|transpose|permute|nchw|nhwc"),
    ("pool/cat", r"pool|cat"),
    ("loss", r"nll_loss|log_softmax|softmax|cross_entropy"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce|threshold|relu|dropout|fill|add|mul|copy"),
]


def category(name: str) -> str:
    lowered = name.lower()
    return next((label for label, pattern in CATEGORIES if re.search(pattern, lowered)), "other")


def union_ms(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals in microseconds, in ms."""
    total, end = 0.0, -float("inf")
    for a, b in sorted(intervals):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e3


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Networks:
    """``count`` networks with their optimisers and a step function each (the variant's levers)."""

    def __init__(self, variant: str, count: int, width: int, tile: int, images, labels, device, steps: int):
        levers, fast, inside, _ = VARIANTS[variant]
        self.device, self.fast = device, fast
        self.graph = levers.cuda_graph
        self.steps = []
        path = FastPath(fast, fast, fast, fast, "the variant's setting", device.type)
        for k in range(count):  # network k: the paper profile at this width and tile, seed k (`context`)
            config = load_config("paper", ["optim.lr=1e-4", f"model.base_channels={width}", f"data.tile={tile}",
                                           f"run.seed={k}"])
            ctx = RunContext.build(config, device, fast=path, levers=levers)
            model = ctx.model()
            optimizer = ctx.optimizer(model)
            sampler = ctx.sampler(images, labels, steps)
            if inside:
                unit = TrainingStep(model, optimizer, sampler, graph=levers.cuda_graph, fast=path)
                self.steps.append(lambda i, unit=unit: unit(i, 1e-4))
            else:
                x, y, w = sampler.batch([0])  # the network step alone, on one tile drawn beforehand
                self.steps.append(lambda i, m=model, o=optimizer, x=x, y=y, w=w:
                                  train_step(m, o, x, y, w, bf16=fast, channels_last=fast))


def measure(networks: Networks, streams: bool, steps: int, warmup: int, profile_steps: int,
            flops_per_step: float, peaks: dict) -> dict:
    """Time and profile ``networks`` (all of them per step: serially, or each on its own CUDA stream)."""
    device = networks.device
    cuda = device.type == "cuda"
    lanes = [torch.cuda.Stream(device) for _ in networks.steps] if streams else [None] * len(networks.steps)

    def one(i: int) -> None:
        for step, lane in zip(networks.steps, lanes):
            with torch.cuda.stream(lane) if lane is not None else nullcontext():
                step(i)

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup):
        one(i)
    sync(device)
    if lanes[0] is not None:
        for lane in lanes:
            lane.wait_stream(torch.cuda.current_stream(device))
    host = 0.0
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        issued = time.perf_counter()
        one(i)
        host += time.perf_counter() - issued
    sync(device)
    wall = (time.perf_counter() - start) / steps
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for i in range(warmup + steps, warmup + steps + profile_steps):
            one(i)
        sync(device)
    per = NETWORKS if len(networks.steps) > 1 else 1
    n = profile_steps * per  # network steps profiled
    by_category: dict[str, float] = {}
    if cuda:
        events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        intervals = [(e.time_range.start, e.time_range.end) for e in events]
        for e in events:
            label = category(e.name)
            by_category[label] = by_category.get(label, 0.0) + (e.time_range.end - e.time_range.start) / 1e3 / n
        busy = union_ms(intervals) / n
        kernels = sum(1 for e in events if not re.search("memcpy|memset", e.name.lower())) / n
    else:  # operator self times, top-level and nested, on the host
        for e in prof.key_averages():
            if e.key.startswith("aten::") and e.self_cpu_time_total > 0:
                label = category(e.key)
                by_category[label] = by_category.get(label, 0.0) + e.self_cpu_time_total / 1e3 / n
        busy, kernels = None, None
    conv_ms = sum(v for k, v in by_category.items() if k.startswith("conv"))
    dtype = "bf16" if networks.fast else "tf32"
    tflops = flops_per_step / (conv_ms / 1e3) / 1e12 if conv_ms else None
    return {
        "wall_ms": 1e3 * wall / per, "host_ms": 1e3 * host / steps / per,
        "gpu_busy_ms": busy, "kernels": kernels,
        "categories_ms": {k: round(v, 4) for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])},
        "conv_ms": conv_ms, "conv_tflops": tflops,
        "conv_fraction_of_peak": tflops / peaks[dtype] if tflops and peaks.get(dtype) else None,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        "steps_per_s": per / wall,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant (default 50; --quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 10; --quick 1)")
    parser.add_argument("--profile-steps", type=int, default=None, help="profiled steps (default 10; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="a small network (width 4, tile 188): checks the script")
    parser.add_argument("--variants", default="ABCDEFGHI", help="which variants to run (letters), in this order")
    parser.add_argument("--peak-tf32", type=float, default=494.7, help="dense TF32 TFLOP/s of the GPU (H100 SXM/H200)")
    parser.add_argument("--peak-bf16", type=float, default=989.4, help="dense bf16 TFLOP/s of the GPU (H100 SXM/H200)")
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--no-write", action="store_true", help="do not update results/performance.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    width, tile = (4, 188) if args.quick else (64, 572)
    steps = args.steps or (3 if args.quick else 50)
    warmup = args.warmup or (1 if args.quick else 10)
    profile_steps = args.profile_steps or (2 if args.quick else 10)
    images = tifffile.imread(ISBI_DIR / "train-volume.tif")
    labels = tifffile.imread(ISBI_DIR / "train-labels.tif")
    flops = 3 * UNet(base_channels=width).forward_flops(tile)  # forward + input-grad + weight-grad
    peaks = {"tf32": args.peak_tf32, "bf16": args.peak_bf16} if cuda else {}
    length = warmup + steps + profile_steps
    results = {}
    plan = []  # in the order asked: a slot asks for the variants its plan needs first (HIE), then the rest
    for v in dict.fromkeys(args.variants):
        if v == "G":
            plan += [("G0", "B", NETWORKS, False)] + ([("G1", "B", NETWORKS, True), ("G2", "E", NETWORKS, True)]
                                                      if cuda else [])
        elif v in VARIANTS:
            plan.append((v, v, 1, False))
        else:
            parser.error(f"unknown variant {v!r}: choose from {''.join(VARIANTS)}G")
    for name, variant, count, streams in plan:
        levers = VARIANTS[variant][0]
        label = VARIANTS[variant][3] if count == 1 else (
            f"{NETWORKS} networks of {variant}, " + ("on four streams" if streams else "serially"))
        networks = None
        try:
            with cudnn_benchmark(levers.cudnn_benchmark):
                networks = Networks(variant, count, width, tile, images, labels, device, length)
                results[name] = {"variant": label, **measure(networks, streams, steps, warmup, profile_steps,
                                                             flops, peaks)}
        except Exception as error:  # one lever that fails here must not cost the others' figures
            results[name] = {"variant": label, "error": f"{type(error).__name__}: {error}"}
        print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
        del networks
        if cuda:
            torch.cuda.empty_cache()
        report = {"device": str(device), "machine": machine(), "width": width, "tile": tile, "steps": steps,
                  "warmup": warmup, "profile_steps": profile_steps, "forward_gflop": flops / 3 / 1e9,
                  "variants": results}
        if args.out:  # after every variant: a run cut off by a time limit keeps what it measured
            write_json(args.out, report)  # atomic: a signal during the write leaves the previous whole file
    body = table(report)
    title = f"Training step profile, lever by lever (profile_step.py, {'CUDA GPU' if cuda else 'CPU'}" + (
        ", quick)" if args.quick else ")")
    publish(title, body, write=not args.no_write)
    return 0


def table(report: dict) -> str:
    fmt = lambda v, d=2: "—" if v is None else f"{v:.{d}f}"  # noqa: E731
    rows = ["| variant | | ms/step | steps/s | vs A | GPU-busy ms | kernels | host ms | conv TFLOP/s | "
            "% of peak | peak GiB | top categories (ms/step) |", "|---" * 12 + "|"]
    base = report["variants"].get("A", {}).get("wall_ms")
    for name, r in report["variants"].items():
        if "error" in r:
            rows.append(f"| {name} | {r['variant']} | failed: {r['error'][:120]} |" + " |" * 9)
            continue
        top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["categories_ms"].items())[:4])
        rows.append(f"| {name} | {r['variant']} | {r['wall_ms']:.2f} | {r['steps_per_s']:.1f} | "
                    f"{fmt(base / r['wall_ms'] if base else None)}x | {fmt(r['gpu_busy_ms'])} | "
                    f"{fmt(r['kernels'], 0)} | {r['host_ms']:.2f} | {fmt(r['conv_tflops'], 3)} | "
                    f"{fmt(100 * r['conv_fraction_of_peak'] if r['conv_fraction_of_peak'] else None, 1)} | "
                    f"{fmt(r['peak_memory_gib'])} | {top} |")
    return "\n".join(rows) + (f"\n\nNetwork width {report['width']}, tile {report['tile']} "
                              f"({report['forward_gflop']:.4g} GFLOP forward, convolutions); {report['steps']} timed "
                              f"steps after {report['warmup']} warm-up steps, {report['profile_steps']} profiled; "
                              f"G: per network step (four networks per iteration). {report['machine']}.")


if __name__ == "__main__":
    sys.exit(main())
