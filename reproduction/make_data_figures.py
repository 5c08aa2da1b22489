"""Data figures for results/figures/: an ISBI slice with its weight map, and augmented samples.

    python reproduction/make_data_figures.py [--data-dir DIR] [--out results/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from paper_unet.data import load_isbi2012
from paper_unet.plots import plot_augmented_samples, plot_weight_map
from paper_unet.sampler import TileSampler

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "isbi2012"))
    parser.add_argument("--out", default=str(REPO / "results" / "figures"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    isbi = load_isbi2012(args.data_dir)
    sampler = TileSampler(isbi.train_images, isbi.train_labels, length=4, seed=args.seed)
    out = Path(args.out)
    print(plot_weight_map(isbi.train_images[0], isbi.train_labels[0], sampler.weights[0].numpy(),
                          out / "isbi_weight_map.png"))
    print(plot_augmented_samples([sampler[i] for i in range(4)], out / "augmented_samples.png"))


if __name__ == "__main__":
    main()
