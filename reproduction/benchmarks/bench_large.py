"""Large images: peak memory and time against the image side, the whole-image path and the streamed one.

Both paths predict a uint8 EM image of side N (the ISBI slices tiled to N x N, made lazily) with the `cpu`
profile's network (width 16, the shipped model in results/isbi2012_cpu/model/) in the paper's 572-px tiles, the
way `paper-unet predict` runs them, each measurement in a fresh process, whose peak resident memory
(`ru_maxrss`) is reported with the time and bytes per pixel:

- whole: `normalize` + `tiling.predict_stack` (what predict did for every size before streaming), the output in
  memory; skipped where its memory would pass --max-whole-gb (estimated from the smaller sides measured first);
- streamed: `streaming.predict_streamed` into a memory-mapped TIFF (what predict does above 1024 px now).

The full-width `paper` network (untrained: its time does not depend on its weights) is timed streamed at
--paper-sides, with and without TTA; 1552 px is 4 x 4 output tiles of 388 px with no overlap, so its seconds per
megapixel are the rate a very large image approaches. Every process keeps freed blocks as `paper-unet` does
(`allocator.keep_freed_memory`). The seconds per megapixel go into results/measurements.json (what the README
quotes).

    python reproduction/benchmarks/bench_large.py [--sides 2048 4096 8192] [--tta-sides 2048]
                                                  [--paper-sides 1552] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import SHIPPED_MODEL, in_fresh_process, publish, record, tiled_em_image


def child(path: str, side: int, tta: bool, out_dir: str, network: str = "cpu") -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np
    import torch

    from paper_unet.allocator import keep_freed_memory
    from paper_unet.checkpoint import build_model, model_from_checkpoint
    from paper_unet.config import load_config
    from paper_unet.images import normalize, normalizer, tiff_on_disk
    from paper_unet.streaming import predict_streamed
    from paper_unet.tiling import predict_stack

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    keep_freed_memory()
    raw = tiled_em_image(side)
    if network == "cpu":
        model, config = model_from_checkpoint(SHIPPED_MODEL)
    else:
        torch.manual_seed(0)
        config = load_config("paper")
        model = build_model(config)
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
    return {"network": network, "path": path, "side": side, "tta": tta, "seconds": seconds, "peak_bytes": peak,
            "bytes_per_pixel": peak / side**2, "mean_p": checksum}


def measure(path: str, side: int, tta: bool, network: str = "cpu") -> dict:
    with tempfile.TemporaryDirectory() as work:
        return in_fresh_process(__file__, path, str(side), str(int(tta)), work, network)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--tta-sides", type=int, nargs="*", default=[2048])
    parser.add_argument("--paper-sides", type=int, nargs="*", default=[1552],
                        help="sides for the full-width `paper` network, streamed, with and without TTA")
    parser.add_argument("--max-whole-gb", type=float, default=16.0, help="skip the whole path beyond this estimate")
    parser.add_argument("--no-write", action="store_true", help="do not update results/performance.md")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, side, tta, work, network = args.child
        print(json.dumps(child(path, int(side), tta == "1", work, network)))
        return 0
    rows = _measure_all(args)
    body = _table(rows, args.max_whole_gb) + (
        "\n\nThe `cpu` profile's network (width 16; the shipped model) and the full-width `paper` network (width 64, "
        "untrained), 572-px tiles, uint8 input, on this machine's CPU. Peak memory is each measurement's own process "
        "(`ru_maxrss`): the Python interpreter, torch and the raw image included. The streamed path writes P(cell) "
        "into a memory-mapped TIFF, so its peak does not grow with the output; the whole path holds the normalised "
        "image, its views and their logits.\n")
    title = "Large images: memory and time against the image side (bench_large.py)"
    publish(title, body, write=not args.no_write)
    record(_figures(rows), title, write=not args.no_write)
    return 0


def _measure_all(args) -> list[dict]:
    """The `cpu` network's rows (whole and streamed, without and with TTA), then the `paper` network's."""
    rows = []
    for tta, sides in ((False, args.sides), (True, args.tta_sides)):
        per_pixel = None
        for side in sides:
            for path in ("whole", "streamed"):
                if path == "whole" and per_pixel and per_pixel * side**2 / 2**30 > args.max_whole_gb:
                    rows.append({"network": "cpu", "path": path, "side": side, "tta": tta, "skipped": True})
                    continue
                row = measure(path, side, tta)
                if path == "whole":
                    per_pixel = row["bytes_per_pixel"]
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    for side in args.paper_sides:
        for tta in (False, True):
            rows.append(measure("streamed", side, tta, "paper"))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _table(rows: list[dict], max_whole_gb: float) -> str:
    table = ["| network | side | TTA | path | time (s) | s per megapixel | peak memory (GB) | bytes per pixel |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| `{r['network']}` | {r['side']} | {'on' if r['tta'] else 'off'} | {r['path']} |"
        if r.get("skipped"):
            table.append(f"{head} skipped: more than {max_whole_gb:g} GB estimated | | | |")
            continue
        table.append(f"{head} {r['seconds']:.1f} | {_per_megapixel(r):.2f} | {r['peak_bytes'] / 1e9:.2f} | "
                     f"{r['bytes_per_pixel']:.1f} |")
    return "\n".join(table)


def _per_megapixel(row: dict) -> float:
    return row["seconds"] / (row["side"] ** 2 / 1e6)


def _figures(rows: list[dict]) -> dict:
    """Seconds per megapixel, streamed, at each network's largest side, without and with TTA."""
    figures = {}
    for network in ("cpu", "paper"):
        for tta in (False, True):
            done = [r for r in rows if r["network"] == network and r["tta"] == tta and r["path"] == "streamed"
                    and not r.get("skipped")]
            if done:
                largest = max(done, key=lambda r: r["side"])
                key = f"predict_s_per_megapixel_{network}" + ("_tta" if tta else "")
                figures[key] = (_per_megapixel(largest), "s per megapixel",
                                f"`paper-unet predict` streamed, the `{network}` network, TTA {'on' if tta else 'off'}, "
                                f"a {largest['side']} px image")
    return figures

if __name__ == "__main__":
    sys.exit(main())
