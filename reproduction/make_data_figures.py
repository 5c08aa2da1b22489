"""Data figures for results/figures/: an ISBI slice with its weight map, and augmented samples.

    python reproduction/make_data_figures.py [--data-dir DIR] [--out results/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import time

from paper_unet.data import load_isbi2012
from paper_unet.plots import plot_augmented_samples, plot_weight_map
from paper_unet.provenance import provenance
from paper_unet.sampler import TileSampler

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data" / "isbi2012"))
    parser.add_argument("--out", default=str(REPO / "results" / "figures"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    isbi = load_isbi2012(args.data_dir)
    sampler = TileSampler(isbi.train_images, isbi.train_labels, length=4, seed=args.seed)
    out = Path(args.out)
    print(plot_weight_map(isbi.train_images[0], isbi.train_labels[0], sampler.weights[0].numpy(),
                          out / "isbi_weight_map.png"))
    print(plot_augmented_samples([sampler[i] for i in range(4)], out / "augmented_samples.png"))
    p = provenance("python reproduction/make_data_figures.py")
    hardware = p["gpu"] or f"{p['cpu']} ({p['cpu_cores']} cores), no GPU"
    (out / "README.md").write_text(
        "# Data figures\n\n| | |\n|---|---|\n"
        f"| command | `{p['command']}` |\n| commit | `{p['commit']}` |\n| hardware | {hardware} |\n"
        f"| software | torch {p['torch']}, Python {p['python']} |\n| date (UTC) | {p['date_utc']} |\n"
        f"| wall time | {time.perf_counter() - start:.1f} s |\n| seed | {args.seed} |\n\n"
        "- `isbi_weight_map.png`: training slice 0 (top-left 256x256), its labels and its Eq. 2 weight map "
        "(w0 = 10, sigma = 5, class weights over the 30 training slices).\n"
        "- `augmented_samples.png`: the first four samples of `TileSampler(seed)` (572 input tile with the "
        "388 output area outlined, labels, weights).\n")


if __name__ == "__main__":
    main()
