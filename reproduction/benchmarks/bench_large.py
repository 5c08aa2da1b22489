"""Large images: peak memory and time against the image side, the whole-image path and the streamed one.

Both paths predict a uint8 EM image of side N (the ISBI slices tiled to N x N, made lazily) with the `cpu`
profile's network (width 16, the shipped model in results/isbi2012_cpu/model/) in the paper's 572-px tiles, the
way `paper-unet predict` runs them, each measurement in a fresh process, whose peak resident memory
(`ru_maxrss`) is reported with the time and bytes per pixel:

- whole: `normalize` + `tiling.predict_stack` (what predict did for every size before streaming), the output in
  memory; skipped where its memory would pass --max-whole-gb (estimated from the smaller sides measured first);
- streamed: `streaming.predict_streamed` into a memory-mapped TIFF (what predict does above 1024 px now).

    python reproduction/benchmarks/bench_large.py [--sides 2048 4096 8192] [--tta-sides 2048] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ISBI_DIR, REPO, publish

MODEL = REPO / "results" / "isbi2012_cpu" / "model" / "unet_isbi2012_cpu.pt"


def child(path: str, side: int, tta: bool, out_dir: str) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np
    import tifffile
    import torch

    from paper_unet.checkpoint import model_from_checkpoint
    from paper_unet.images import normalize, normalizer, tiff_on_disk
    from paper_unet.streaming import predict_streamed
    from paper_unet.tiling import predict_stack

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    slices = tifffile.imread(ISBI_DIR / "test-volume.tif")[:4]
    reps = -(-side // 512)
    raw = np.tile(np.concatenate([np.concatenate(list(slices[:2]), 1), np.concatenate(list(slices[2:]), 1)], 0),
                  (reps, reps))[:side, :side]
    model, config = model_from_checkpoint(MODEL)
    start = time.perf_counter()
    if path == "whole":
        probabilities = predict_stack(model, normalize(raw[None], config.data.normalize), tile_size=572, tta=tta,
                                      progress=False)
        checksum = float(probabilities.mean())
    else:
        with tiff_on_disk(Path(out_dir) / "p.tif", (1, side, side), np.float32) as out:
            predict_streamed(model, raw, normalizer(raw, config.data.normalize), tile_size=572, tta=tta,
                             out=out.reshape(side, side), progress=False)
            checksum = float(np.asarray(out).mean())
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kB
    return {"path": path, "side": side, "tta": tta, "seconds": seconds, "peak_bytes": peak,
            "bytes_per_pixel": peak / side**2, "mean_p": checksum}


def measure(path: str, side: int, tta: bool) -> dict:
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run([sys.executable, __file__, "--child", path, str(side), str(int(tta)), work],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--tta-sides", type=int, nargs="*", default=[2048])
    parser.add_argument("--max-whole-gb", type=float, default=16.0, help="skip the whole path beyond this estimate")
    parser.add_argument("--no-write", action="store_true", help="do not update results/performance.md")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, side, tta, work = args.child
        print(json.dumps(child(path, int(side), tta == "1", work)))
        return 0
    rows = []
    for tta, sides in ((False, args.sides), (True, args.tta_sides)):
        per_pixel = None
        for side in sides:
            for path in ("whole", "streamed"):
                if path == "whole" and per_pixel and per_pixel * side**2 / 2**30 > args.max_whole_gb:
                    rows.append({"path": path, "side": side, "tta": tta, "skipped": True})
                    continue
                row = measure(path, side, tta)
                if path == "whole":
                    per_pixel = row["bytes_per_pixel"]
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    table = ["| side | TTA | path | time (s) | s per megapixel | peak memory (GB) | bytes per pixel |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("skipped"):
            table.append(f"| {r['side']} | {'on' if r['tta'] else 'off'} | {r['path']} | skipped: more than "
                         f"{args.max_whole_gb:g} GB estimated | | | |")
            continue
        table.append(f"| {r['side']} | {'on' if r['tta'] else 'off'} | {r['path']} | {r['seconds']:.1f} | "
                     f"{r['seconds'] / (r['side']**2 / 1e6):.2f} | {r['peak_bytes'] / 1e9:.2f} | "
                     f"{r['bytes_per_pixel']:.1f} |")
    body = "\n".join(table) + (
        "\n\nThe `cpu` profile's network (width 16; the shipped model), 572-px tiles, uint8 input, on this machine's "
        "CPU. Peak memory is each measurement's own process (`ru_maxrss`): the Python interpreter, torch and the "
        "raw image included. The streamed path writes P(cell) into a memory-mapped TIFF, so its peak does not "
        "grow with the output; the whole path holds the normalised image, its views and their logits.\n")
    publish("Large images: memory and time against the image side (bench_large.py)", body, write=not args.no_write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
