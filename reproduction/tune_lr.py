"""Learning-rate search on one cross-validation fold (the paper does not publish its schedule).

A complete short schedule per rate (the search of the `cpu` profile):
    python reproduction/tune_lr.py --profile cpu --rates 1e-2 3e-3 1e-3 3e-4 --iterations 600 --out runs/lr_cpu
The first steps of the profile's own schedule, validated on the way (the `paper` profile's check):
    python reproduction/tune_lr.py --profile paper --fold 2 --rates 1e-4 3e-4 1e-3 --iterations 600 \\
        --keep-schedule --validate-every 300 --set run.bf16=true --set run.channels_last=true \\
        --out runs/lr_paper --results results/paper_lr_check
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from paper_unet.config import DEFAULT_PROFILE_RULE, default_profile, load_config
from paper_unet.data import load_isbi2012
from paper_unet.report import write_lr_check
from paper_unet.reproduce import tune_learning_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help=f"profile name or TOML file (default: {DEFAULT_PROFILE_RULE})")
    parser.add_argument("--data-dir", help="ISBI 2012 stacks (default: the data cache)")
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 3e-4])
    parser.add_argument("--iterations", type=int, default=600, help="training steps per rate")
    parser.add_argument("--fold", type=int, default=0, help="cross-validation fold (validate on its block)")
    parser.add_argument("--keep-schedule", action="store_true",
                        help="keep the profile's iterations and decay; stop each run after --iterations")
    parser.add_argument("--validate-every", type=int, help="validate every N steps (default: at the end)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. run.bf16=true (repeatable)")
    parser.add_argument("--out", default="runs/lr_search")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--results", help="also write a report there (README table, loss-curve CSV, figure)")
    parser.add_argument("--report-only", action="store_true", help="only write --results from an existing --out")
    parser.add_argument("--title", default="Learning-rate check", help="the report's title")
    args = parser.parse_args()
    args.profile = args.profile or default_profile()
    if args.report_only:
        if not args.results:
            parser.error("--report-only needs --results")
        print(write_lr_check(args.out, args.results, args.title))
        return
    tune_learning_rate(load_config(args.profile, args.set), load_isbi2012(args.data_dir), Path(args.out),
                       args.rates, args.iterations, args.fold, progress=not args.quiet,
                       keep_schedule=args.keep_schedule, validate_every=args.validate_every,
                       command=shlex.join(["python", *sys.argv]))
    if args.results:
        print(write_lr_check(args.out, args.results, args.title))


if __name__ == "__main__":
    main()
