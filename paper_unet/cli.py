"""Command line: ``paper-unet`` / ``python -m paper_unet``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paper_unet import __version__

# Paper Table 1, row 1 (u-net, ISBI 2012 leaderboard of 6 March 2015).
PAPER_UNET = {"warping_error": 0.000353, "rand_error": 0.0382, "pixel_error": 0.0611}
METRIC_NAMES = {"warping_error": "warping error", "rand_error": "Rand error",
                "pixel_error": "pixel error", "vrand_thinned": "V_rand (thinned)",
                "vinfo_thinned": "V_info (thinned)"}


def _download(args: argparse.Namespace) -> int:
    from paper_unet.data import OFFICIAL_URL, download_isbi2012, resolve_data_dir

    isbi = download_isbi2012(args.data_dir, url=args.url or OFFICIAL_URL, archive=args.archive,
                             progress=not args.quiet)
    labels = "with" if isbi.test_labels is not None else "without"
    print(f"{resolve_data_dir(args.data_dir)}: train {isbi.train_images.shape}, test "
          f"{isbi.test_images.shape}, {labels} test labels")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from paper_unet import metrics
    from paper_unet.data import read_stack

    proposal = read_stack(args.proposal, "proposal")
    labels = read_stack(args.labels, "labels")
    if args.membrane:
        proposal = 1.0 - proposal.astype(np.float32)
    result = metrics.evaluate(proposal, labels).as_dict()
    print(f"{'metric':<18} {'value':>12}   paper u-net (Table 1)")
    for key, name in METRIC_NAMES.items():
        paper = f"{PAPER_UNET[key]:.6g}" if key in PAPER_UNET else "-"
        better = "higher" if key.startswith("v") else "lower"
        print(f"{name:<18} {result[key]:>12.6g}   {paper:<10} ({better} is better)")
    if args.per_threshold:
        print("\nper threshold (P > t):")
        print(f"{'t':>6} {'pixel F':>10} {'Rand F':>10} {'warping':>10} {'V_rand':>10} {'V_info':>10}")
        for i, t in enumerate(metrics.THRESHOLDS):
            warping = result["warping_error_per_threshold"]
            row = [result["pixel_fscore_per_threshold"][i], result["rand_fscore_per_threshold"][i],
                   warping[i] if i < len(warping) else float("nan"),  # T10 has no t = 1.0
                   result["vrand_thinned_per_threshold"][i], result["vinfo_thinned_per_threshold"][i]]
            print(f"{t:>6.1f} " + " ".join(f"{v:>10.6f}" for v in row))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paper-unet",
        description="Faithful reproduction of U-Net (Ronneberger et al., MICCAI 2015) on ISBI 2012.",
    )
    parser.add_argument("--version", action="version", version=f"paper_unet {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    download = commands.add_parser(
        "download", help="fetch and verify the ISBI 2012 data",
        description="Download the official ISBI 2012 archive, resume or retry on failure, verify "
                    "every stack (shape, dtype, binary labels, SHA-256 of the pixels) and unpack it. "
                    "Prints the data's terms of use and the citations it requires.")
    download.add_argument("--data-dir", help="destination (default: $PAPER_UNET_DATA, else "
                                             "~/.cache/paper_unet/isbi2012)")
    download.add_argument("--url", help="archive URL (default: the official imagej.net address)")
    download.add_argument("--archive", help="use an already downloaded ISBI-2012-challenge.zip")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=_download)

    evaluate = commands.add_parser(
        "evaluate", help="score a proposal with the ISBI 2012 challenge metrics",
        description="Score a probability map against binary labels with the challenge's five "
                    "metrics (warping, Rand and pixel error; V_rand and V_info after thinning), "
                    "each the best over the evaluator's threshold grid.")
    evaluate.add_argument("--proposal", required=True, metavar="P.tif",
                          help="float TIFF stack in [0, 1], 1 = cell (the submission format)")
    evaluate.add_argument("--labels", required=True, metavar="L.tif",
                          help="binary label stack, 0 = membrane, > 0 = cell")
    evaluate.add_argument("--membrane", action="store_true",
                          help="the proposal holds P(membrane): use 1 - P")
    evaluate.add_argument("--per-threshold", action="store_true",
                          help="also print the value at every threshold")
    evaluate.add_argument("--json", metavar="OUT.json", help="write all values to a JSON file")
    evaluate.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (FileNotFoundError, IsADirectoryError, ValueError, TypeError, RuntimeError,
            ConnectionError) as error:
        print(f"paper-unet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
