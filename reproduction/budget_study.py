"""Budget study of the `cpu` profile: candidate settings trained and scored on one fold.

Each candidate is a name and config overrides of the profile; it trains on the other blocks, is
predicted with the profile's TTA and scored with all five challenge metrics on its held-out block.
Rows are merged into the CSV (a candidate run again replaces its row), which `paper-unet report`
shows as the "Budget study" section of results/isbi2012_cpu/README.md; this script also puts that
section into the README as it is (with budget_study_notes.md beside the CSV, when present).

    python reproduction/budget_study.py --fold 2 \\
        --candidate "cpu_as_is" \\
        --candidate "tile572_lr1e-3 data.tile=572 optim.lr=1e-3"
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from paper_unet.config import DEFAULT_PROFILE_RULE, default_profile
from paper_unet.data import load_isbi2012
from paper_unet.study import (gather, markdown_table, parse_variant, put_section, read_rows, run_variants,
                              study_section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", help=f"profile name or TOML file (default: {DEFAULT_PROFILE_RULE})")
    parser.add_argument("--candidate", action="append", metavar="'NAME KEY=VALUE ...'",
                        help="a candidate: its name, then its overrides of the profile (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every candidate, e.g. run.seed=1 (repeatable)")
    parser.add_argument("--fold", type=int, default=2, help="cross-validation fold (default 2: slices 20-29)")
    parser.add_argument("--data-dir", help="ISBI 2012 stacks (default: the data cache)")
    parser.add_argument("--out", default="runs/budget_study", help="run directories, one per candidate")
    parser.add_argument("--csv", default="results/isbi2012_cpu/budget_study.csv", help="rows are merged here")
    parser.add_argument("--readme", default="results/isbi2012_cpu/README.md",
                        help="README whose 'Budget study' section is rewritten from the CSV ('' = none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--gather", nargs="+", metavar="JOB_FOLDER",
                        help="train nothing: merge the CSVs of jobs that ran one candidate each (the folders holding "
                             "their --csv, named as --csv is) into --csv (docs/scaling_out.md)")
    args = parser.parse_args()
    args.profile = args.profile or default_profile()
    if args.gather:
        gather([Path(job) for job in args.gather], Path(args.csv).parent, Path(args.csv).name)
    elif args.candidate:
        run_variants(args.profile, [parse_variant(text) for text in args.candidate], load_isbi2012(args.data_dir),
                     Path(args.out), Path(args.csv), fold=args.fold, common=args.set, progress=not args.quiet,
                     command=shlex.join(["python", *sys.argv]))
    else:
        parser.error("give --candidate (repeatable) or --gather")
    print(markdown_table(read_rows(Path(args.csv))))
    if args.readme:
        notes = Path(args.csv).with_name("budget_study_notes.md")
        put_section(Path(args.readme), study_section(Path(args.csv), notes.read_text() if notes.is_file() else ""))
        print(f"updated the 'Budget study' section of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
