"""Training and inference speed: the fp32 eager baseline vs the fast path, in one run.

Training step (`paper_unet.train.train_step`: forward, weighted loss, backward, SGD momentum 0.99,
one tile per step, a real augmented ISBI tile from `TileSampler.batch` on the same device):
- the `cpu` network (width 16) at its profile tile, in every combination of bf16 autocast,
  channels_last and torch.compile (inductor; skipped with --no-compile);
- the full-width `paper` network at 572 (a few steps): fp32 eager vs bf16 + channels_last (on CUDA
  also with torch.compile, and fp32 with torch.compile in "reduce-overhead" mode: the step replayed
  as CUDA graphs, what `run.compile=true run.compile_mode="reduce-overhead"` trains with).
Achieved TFLOP/s = 3 x the model's forward FLOP count (`UNet.forward_flops`, convolutions only;
backward ~ 2 x forward) x steps/s. On CUDA also the fraction of the GPU's peak dense bf16 rate
(--peak-tflops; default 989, the dense bf16 peak of an H100 SXM and of an H200).

The row marked **auto** is the path `run.bf16 = run.channels_last = "auto"` (every profile's
default, `paper_unet/fastpath.py`) takes on this machine. Steps are timed by `estimate.time_step`,
the helper the run's own estimate uses.

Sampler supply rate: `TileSampler.batch` samples/s on the same device, vs the training step `auto` takes.
Inference: seconds per 512x512 ISBI slice with the full-width network, with and without TTA
(`tiling.predict_stack`, fp32; TTA batches the 8 views of the 700 tile into one pass).

The results go to a section of results/performance.md per device kind and CPU class (bf16's worth
depends on it). An AVX2-only CPU can be seen on an AVX-512 machine by restricting both ATen and oneDNN:
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python reproduction/benchmarks/bench_train.py
(the section title then says AVX2). On such a CPU bf16 steps take seconds each: fewer steps help,
e.g. --steps 3 --paper-steps 1 --no-compile.

    python reproduction/benchmarks/bench_train.py [--device cpu|cuda] [--steps 8] [--paper-steps 3]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import tifffile
import torch

from _common import ISBI_DIR, publish, record
from paper_unet.config import load_config
from paper_unet.estimate import time_step
from paper_unet.fastpath import resolve
from paper_unet.model import UNet
from paper_unet.sampler import TileSampler
from paper_unet.tiling import predict_stack


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_rate(width: int, tile: int, images, labels, device: torch.device, *, bf16: bool,
              channels_last: bool, compile: bool | str, steps: int, warmup: int) -> float:
    """Training steps per second (after ``warmup`` steps, which include any compilation), timed by
    the package's own helper (`estimate.time_step`, which the run's estimate and the tests use).

    ``compile``: False (eager), True (torch.compile, default mode) or a torch.compile mode."""
    config = load_config("paper", [f"model.base_channels={width}", f"data.tile={tile}", "optim.lr=1e-4"])
    return 1.0 / time_step(config, images, labels, device, bf16=bf16, channels_last=channels_last,
                           steps=steps, warmup=warmup, compile=compile)


def sampler_rate(tile: int, images, labels, device: torch.device, n: int) -> float:
    sampler = TileSampler(images, labels, tile=tile, length=n + 1, seed=0, device=device)
    sampler.batch([0])
    sync(device)
    start = time.perf_counter()
    for i in range(1, n + 1):
        x, _, _ = sampler.batch([i])
    sync(device)
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=8, help="timed steps, cpu network")
    parser.add_argument("--paper-steps", type=int, default=3, help="timed steps, full-width network")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the GPU's peak dense bf16 TFLOP/s, for the fraction of peak")
    parser.add_argument("--slices", type=int, default=2, help="slices for the inference timing")
    parser.add_argument("--no-write", action="store_true", help="do not update results/performance.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    images = tifffile.imread(ISBI_DIR / "train-volume.tif")
    labels = tifffile.imread(ISBI_DIR / "train-labels.tif")
    cpu = load_config("cpu")
    cpu_width, cpu_tile = cpu.model.base_channels, cpu.data.tile
    scale = 10 if cuda else 1  # more steps where they are cheap

    rows = []  # (network, tile, variant, steps/s, TFLOP/s)

    def measure(name, width, tile, steps, warmup, bf16, channels_last, compile):
        try:
            rate = step_rate(width, tile, images, labels, device, bf16=bf16, channels_last=channels_last,
                             compile=compile, steps=steps, warmup=warmup)
        except Exception as error:  # a compile mode that fails here must not cost the other rows
            if not compile:
                raise
            print(f"{name}, compile {compile!r}: failed: {type(error).__name__}: {error}", file=sys.stderr)
            return
        flops = 3 * UNet(base_channels=width).forward_flops(tile)
        rows.append((name, tile, (bf16, channels_last, compile), rate, rate * flops / 1e12))
        print(rows[-1], file=sys.stderr)

    compiles = [False] if args.no_compile else [False, True]
    for compile, bf16, channels_last in itertools.product(compiles, (False, True), (False, True)):
        if compile and not (bf16 and channels_last):
            continue  # compile only on top of the fastest eager combination
        measure(f"`cpu` network (width {cpu_width})", cpu_width, cpu_tile, args.steps * scale,
                3 if compile else 1, bf16, channels_last, compile)
    if cpu_tile != 572:  # the `cpu` network at the paper's tile too
        for bf16, channels_last in ((False, False), (True, True)):
            measure(f"`cpu` network (width {cpu_width}), 572 tile", cpu_width, 572, max(2, args.steps // 2) * scale,
                    1, bf16, channels_last, False)
    paper_variants = [(False, False, False), (True, True, False)]
    if cuda and not args.no_compile:  # where a full-width step is cheap enough to amortise the compilation
        paper_variants += [(True, True, True), (False, False, "reduce-overhead")]
    for bf16, channels_last, compile in paper_variants:
        measure("`paper` network (width 64)", 64, 572, args.paper_steps * scale, 3 if compile else 1, bf16,
                channels_last, compile)

    auto = resolve("auto", "auto", device)  # the path a run with the profiles' default takes here
    picked = (auto.bf16, auto.channels_last, False)

    def label(variant):
        bf16, channels_last, compile = variant
        compiled = {True: "torch.compile", "reduce-overhead": "torch.compile reduce-overhead (CUDA graphs)"}
        parts = (["bf16 autocast"] if bf16 else ["fp32"]) + (["channels_last"] if channels_last else []) + (
            [compiled[compile]] if compile else ["eager"])
        return " + ".join(parts) + (" (**auto**)" if variant == picked else "")

    table = ["| network | tile | variant | steps/s | s/step | achieved TFLOP/s | vs fp32 eager |"
             + (" % of bf16 peak |" if cuda else ""), "|---|---|---|---|---|---|---|" + ("---|" if cuda else "")]
    baseline = {}
    for name, tile, variant, rate, tflops in rows:
        baseline.setdefault(name, rate)
        table.append(f"| {name} | {tile} | {label(variant)} | {rate:.2f} | {1 / rate:.3f} | {tflops:.3f} | "
                     f"{rate / baseline[name]:.2f}x |" + (f" {100 * tflops / args.peak_tflops:.1f} % |" if cuda else ""))
    def rate_of(network, variant, tile=None):
        return next(rate for name, t, v, rate, _ in rows
                    if name.startswith(network) and v == variant and (tile is None or t == tile))

    bf16_cl_cpu = rate_of("`cpu`", (True, True, False), cpu_tile)
    fast_cpu = rate_of("`cpu`", picked, cpu_tile)  # what training runs with here
    at_572 = [rate for name, tile, v, rate, _ in rows if name.startswith("`cpu`") and tile == 572]

    supply = {tile: sampler_rate(tile, images, labels, device, 30 * scale) for tile in sorted({cpu_tile, 572})}
    fast_paper = rate_of("`paper`", picked)

    torch.manual_seed(0)
    model = UNet().to(device).eval()
    slices = tifffile.imread(ISBI_DIR / "test-volume.tif")[: args.slices]
    inference = {}
    for tta in (False, True):
        predict_stack(model, slices[:1], tta=tta, device=device, progress=False)  # warm-up
        sync(device)
        start = time.perf_counter()
        predict_stack(model, slices, tta=tta, device=device, progress=False)
        sync(device)
        inference[tta] = (time.perf_counter() - start) / len(slices)

    body = "\n".join(table) + f"""

**What `auto` takes here** (`run.bf16` / `run.channels_last` = "auto", every profile's default;
`paper_unet/fastpath.py`): {auto.describe()}.
The `cpu` network at its profile tile ({cpu_tile}) on that path: **{fast_cpu / rows[0][3]:.2f}x fp32 eager**
(target: >= 1.8x on a CPU with native bf16; elsewhere no slower than fp32, within noise).
bf16 autocast + channels_last vs fp32 eager: {bf16_cl_cpu / rows[0][3]:.2f}x""" + (
        f"; at the paper's 572 tile: {at_572[1] / at_572[0]:.2f}x" if len(at_572) == 2 else "") + f""".
CPU: {auto.cpu.describe() if auto.cpu else "(a GPU run)"}. Each row: {args.steps * scale} timed steps for the `cpu` network,
{args.paper_steps * scale} for the full width, after warm-up (compile variants: 3 warm-up steps, which
include the compilation); random init, seed 0, one real augmented ISBI tile per step; device {device}.

Sampler supply rate (`TileSampler.batch`, full augmentation, one tile per call, on {device}):
""" + "\n".join(f"- {tile}-px tiles: {rate:.1f} samples/s" for tile, rate in supply.items()) + f"""

against the training step `auto` takes: {supply[cpu_tile] / fast_cpu:.1f}x the `cpu` network's step rate at {cpu_tile},
{supply[572] / fast_paper:.1f}x the full-width step rate at 572 (target >= 3x: the sampler is never the bottleneck).

Inference, full-width network, fp32, one 700x700 tile per 512x512 ISBI test slice (mean of {len(slices)} slices):
- without TTA: {inference[False]:.2f} s per slice
- with TTA (8 dihedral views in one batch): {inference[True]:.2f} s per slice ({inference[True] / inference[False]:.1f}x)
"""
    # one section per kind of device, so that the CPU and the GPU figures stand side by side
    # and one per CPU class: bf16's worth depends on it (AVX512-BF16 vs AVX2 only)
    title = "Training step, sampler and inference speed (bench_train.py" + (
        ", CUDA GPU)" if cuda else f", {auto.cpu.cpu_class} CPU)")
    publish(title, body, write=not args.no_write)
    record(_figures(auto, cuda, rows, rate_of, cpu_tile), title.removeprefix("## "), write=not args.no_write)
    return 0


def _figures(auto, cuda: bool, rows, rate_of, cpu_tile: int) -> dict:
    """The figures the code quotes (results/measurements.json) that this run measured: keyed by the device and
    the CPU class (a CPU with native bf16, an AVX2-only one, an H100-class GPU), at the profiles' 572 tile."""
    if cpu_tile != 572:
        return {}
    fp32 = {net: rate_of(net, (False, False, False), 572) for net in ("`cpu`", "`paper`")}
    try:
        bf16 = {net: rate_of(net, (True, True, False), 572) for net in ("`cpu`", "`paper`")}
    except StopIteration:
        return {}
    what = "bf16 autocast + channels_last vs fp32 eager, steps/s, {} network at a 572 tile"
    if cuda:
        figures = {"h100_bf16_ratio_full": (bf16["`paper`"] / fp32["`paper`"], "x", what.format("full-width")),
                   "h100_bf16_ratio_width16": (bf16["`cpu`"] / fp32["`cpu`"], "x", what.format("width-16")),
                   "h100_steps_per_s_full": (fp32["`paper`"], "steps/s", "full-width training steps per second in "
                                                                           "one fp32 process, 572 tile")}
        return figures if "H100" in torch.cuda.get_device_name() else {}
    if auto.cpu is not None and auto.cpu.native_bf16:
        return {"cpu_bf16_speedup_width16": (bf16["`cpu`"] / fp32["`cpu`"], "x", what.format("width-16")),
                "cpu_bf16_speedup_full": (bf16["`paper`"] / fp32["`paper`"], "x", what.format("full-width"))}
    if auto.cpu is not None and auto.cpu.cpu_class == "AVX2":
        slow = "s/step of bf16 autocast + channels_last over fp32 eager, {} network, 572 tile"
        figures = {"avx2_bf16_slowdown_width16": (fp32["`cpu`"] / bf16["`cpu`"], "x", slow.format("width-16")),
                   "avx2_bf16_slowdown_full": (fp32["`paper`"] / bf16["`paper`"], "x", slow.format("full-width"))}
        try:
            figures["avx2_channels_last_ratio"] = (rate_of("`cpu`", (False, True, False), 572) / fp32["`cpu`"], "x",
                                                   "steps/s of fp32 + channels_last vs fp32 eager, width-16, 572 tile")
            figures["avx2_autocast_slowdown_width16"] = (fp32["`cpu`"] / rate_of("`cpu`", (True, False, False), 572),
                                                         "x", "s/step of bf16 autocast alone over fp32 eager, width-16")
        except StopIteration:
            pass
        return figures
    return {}


if __name__ == "__main__":
    sys.exit(main())
