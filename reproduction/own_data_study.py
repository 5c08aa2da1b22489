"""The own-data studies (paper_unet/own_data_study.py): the README's own-data command on data with known answers.

Sparse cells (synthetic, 14 + 5 frames of 520 x 696 px), the `cpu` profile, before and after the own-data
defaults, scored by IOU and SEG:
    python reproduction/own_data_study.py cells --iterations 2000 \\
        --arm "before --set optim.warmup=0 --no-restart" --arm "after" --results results/own_data/sparse_cells.csv
Bit depth (ISBI slices 0-19 / 20-29 as uint8, 12-bit in uint16, ...), held-out Rand and pixel error:
    python reproduction/own_data_study.py bit-depth --data-dir ../shared/data/isbi2012 --iterations 800 \\
        --arm "uint8" --arm "12bit" --arm "12bit_dtype --normalize dtype" --results results/own_data/bit_depth.csv
An arm is "NAME [paper-unet train options] [--code DIR]" (--code: run the paper_unet of that checkout, e.g. a
worktree of the commit before a change); in bit-depth, NAME's start picks the data variant.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from paper_unet.config import DEFAULT_PROFILE_RULE, default_profile
from paper_unet.own_data_study import BIT_DEPTHS, Arm, bit_depth_data, run_arm, sparse_cells_data, write_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["cells", "bit-depth"])
    parser.add_argument("--arm", action="append", required=True, help='"NAME [train options]" (repeatable)')
    parser.add_argument("--profile", help=f"profile name or TOML file (default: {DEFAULT_PROFILE_RULE})")
    parser.add_argument("--iterations", type=int, required=True, help="training steps per arm")
    parser.add_argument("--validate-every", type=int, help="default: iterations / 2")
    parser.add_argument("--data-dir", help="ISBI 2012 stacks (bit-depth)")
    parser.add_argument("--preset", default="dim", help="cells: the synthetic set (paper_unet/synthetic.py PRESETS)")
    parser.add_argument("--out", help="run folder (default runs/own_data_STUDY)")
    parser.add_argument("--results", required=True, help="the CSV to write (rows appended as arms finish)")
    args = parser.parse_args()
    args.profile = args.profile or default_profile()
    runs = Path(args.out or f"runs/own_data_{args.study}")
    runs.mkdir(parents=True, exist_ok=True)
    base = ["--profile", args.profile, "--set", f"optim.iterations={args.iterations}",
            "--set", f"run.validate_every={args.validate_every or max(1, args.iterations // 2)}"]
    rows = []
    for text in args.arm:
        name, *options = shlex.split(text)
        code = None
        if "--code" in options:  # --code DIR: that checkout's paper_unet (an older commit: the "before" arm)
            at = options.index("--code")
            code, options = options[at + 1], options[:at] + options[at + 2:]
        if args.study == "cells":
            data = sparse_cells_data(runs / "data", preset=args.preset)
        else:
            variant = next(v for v in sorted(BIT_DEPTHS, key=len, reverse=True) if name.startswith(v))
            data = bit_depth_data(runs / "data", args.data_dir, variant)
        rows.append(run_arm(Arm(name, str(data), options, code), runs, cells=args.study == "cells", base=base))
        print({k: v for k, v in rows[-1].items() if k not in ("command", "messages")}, flush=True)
        write_rows(rows, args.results)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
