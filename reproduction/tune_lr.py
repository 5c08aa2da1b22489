"""Learning-rate search on one cross-validation fold (the paper does not publish its schedule).

    python reproduction/tune_lr.py --profile cpu --rates 1e-2 3e-3 1e-3 3e-4 --iterations 600 --out runs/lr_cpu
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paper_unet.config import load_config
from paper_unet.data import load_isbi2012
from paper_unet.reproduce import tune_learning_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--data-dir")
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-2, 3e-3, 1e-3, 3e-4])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--out", default="runs/lr_search")
    args = parser.parse_args()
    tune_learning_rate(load_config(args.profile), load_isbi2012(args.data_dir), Path(args.out),
                       args.rates, args.iterations, args.fold, progress=False)


if __name__ == "__main__":
    main()
