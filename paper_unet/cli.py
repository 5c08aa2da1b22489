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


def _load_config(args: argparse.Namespace):
    from paper_unet.config import load_config

    overrides = list(args.set or [])
    if getattr(args, "device", None):
        overrides.append(f'run.device="{args.device}"')
    config = load_config(args.profile, overrides)
    fold = getattr(args, "fold", None)
    fold = getattr(args, "only_fold", None) if fold is None else fold
    if fold is not None and not 0 <= fold < config.run.folds:
        raise ValueError(f"fold {fold} does not exist: the profile has {config.run.folds} folds "
                         f"(0 to {config.run.folds - 1})")
    return config


def _train(args: argparse.Namespace) -> int:
    from paper_unet.data import cv_folds, load_isbi2012
    from paper_unet.train import train

    config = _load_config(args)
    isbi = load_isbi2012(args.data_dir)
    images, labels, val_images, val_labels = isbi.train_images, isbi.train_labels, None, None
    if args.fold is not None:
        train_idx, val_idx = cv_folds(len(images), config.run.folds)[args.fold]
        images, labels = isbi.train_images[train_idx], isbi.train_labels[train_idx]
        val_images, val_labels = isbi.train_images[val_idx], isbi.train_labels[val_idx]
    result = train(config, images, labels, args.out, val_images=val_images, val_labels=val_labels,
                   resume=args.resume, progress=not args.quiet)
    print(f"trained {result.iterations} iterations in {result.seconds:.0f} s; last loss "
          f"{result.last_loss:.4f}; checkpoints in {result.out_dir}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import tifffile

    from paper_unet.data import read_stack
    from paper_unet.tiling import predict_stack
    from paper_unet.train import model_from_checkpoint, resolve_device

    device = resolve_device(args.device or "auto")
    model, config = model_from_checkpoint(args.checkpoint, device)
    images = read_stack(args.input, "input")
    tta = config.run.tta if args.tta is None else args.tta
    probabilities = predict_stack(model, images, tile_size=args.tile_size, tta=tta, device=device,
                                  progress=not args.quiet)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(args.output, probabilities, photometric="minisblack")
    print(f"wrote {args.output}: float32 {probabilities.shape}, P(cell) (1 = cell), TTA {'on' if tta else 'off'}")
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from paper_unet.data import load_isbi2012, resolve_data_dir
    from paper_unet.report import write_report
    from paper_unet.reproduce import run_reproduction

    config = _load_config(args)
    out = Path(args.out or f"runs/isbi2012_{config.name}")
    results = Path(args.results or f"results/isbi2012_{config.name}")
    isbi = load_isbi2012(args.data_dir)
    summary = run_reproduction(config, isbi, out, resume=not args.restart, progress=not args.quiet,
                               command=args.command_line, only_fold=args.only_fold)
    from paper_unet.train import is_main_process

    if args.only_fold is not None or not is_main_process():
        return 0
    readme = write_report(out, results, resolve_data_dir(args.data_dir), args.lr_search)
    folds = summary["folds"]
    print(f"done: {len(folds)} folds, submission {summary['submission']}; report {readme}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from paper_unet.data import resolve_data_dir
    from paper_unet.report import write_report

    readme = write_report(args.run, args.results, resolve_data_dir(args.data_dir), args.lr_search)
    print(f"wrote {readme}")
    return 0


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
                                             "$XDG_CACHE_HOME/paper_unet/isbi2012, or "
                                             "~/.cache/paper_unet/isbi2012 when XDG_CACHE_HOME is unset)")
    download.add_argument("--url", help="archive URL (default: the official imagej.net address)")
    download.add_argument("--archive", help="use an already downloaded ISBI-2012-challenge.zip")
    download.add_argument("--quiet", action="store_true", help="no progress bar")
    download.set_defaults(func=_download)

    def add_config_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--profile", default="paper",
                         help="config profile in reproduction/configs (paper, cpu, smoke) or a TOML file")
        sub.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                         help="override one config value, e.g. --set optim.lr=3e-4 (repeatable)")
        sub.add_argument("--data-dir", help="ISBI 2012 stacks (default: $PAPER_UNET_DATA, else the cache)")
        sub.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the profile's")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")

    train = commands.add_parser(
        "train", help="train a U-Net on the ISBI 2012 training slices",
        description="Train with SGD (momentum 0.99, one tile per step) and the weighted loss. "
                    "Checkpoints every run.checkpoint_every iterations; --resume continues a killed run.")
    add_config_options(train)
    train.add_argument("--out", required=True, help="run directory (logs, config.json, last.pt, best.pt)")
    train.add_argument("--fold", type=int, help="hold out this cross-validation block for validation "
                                                "(default: train on all 30 slices, no validation)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    train.set_defaults(func=_train)

    predict = commands.add_parser(
        "predict", help="predict a stack with overlap-tile inference (submission format)",
        description="Write P(cell) as a float32 TIFF stack in [0, 1], 1 = cell: the challenge's "
                    "submission format.")
    predict.add_argument("--checkpoint", required=True, help="a paper_unet checkpoint (last.pt or best.pt)")
    predict.add_argument("--input", required=True, help="image stack, e.g. test-volume.tif")
    predict.add_argument("--output", required=True, help="output TIFF")
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="average the 8 dihedral transforms (default: the checkpoint config's)")
    predict.add_argument("--tile-size", type=int, help="input tile edge, a valid size such as 572 "
                                                       "(default: one tile per slice)")
    predict.add_argument("--device", choices=["auto", "cpu", "cuda"])
    predict.add_argument("--quiet", action="store_true")
    predict.set_defaults(func=_predict)

    reproduce = commands.add_parser(
        "reproduce", help="the whole ISBI 2012 experiment (what run_isbi.sh runs)",
        description="3-fold cross-validation, final model on all 30 slices, test-volume submission, "
                    "scores with the challenge metrics, and results/. Resumes an interrupted run.")
    add_config_options(reproduce)
    reproduce.add_argument("--out", help="run directory (default runs/isbi2012_PROFILE)")
    reproduce.add_argument("--results", help="results directory (default results/isbi2012_PROFILE)")
    reproduce.add_argument("--lr-search", help="run directory of reproduction/tune_lr.py to report")
    reproduce.add_argument("--restart", action="store_true", help="ignore finished stages and checkpoints")
    reproduce.add_argument("--only-fold", type=int, metavar="K",
                           help="run cross-validation fold K alone (one process per GPU); a later "
                                "call without it gathers the folds, trains the final model, reports")
    reproduce.add_argument("--command-line", help=argparse.SUPPRESS)
    reproduce.set_defaults(func=_reproduce)

    report = commands.add_parser("report", help="write results/ from a reproduction run directory")
    report.add_argument("--run", required=True, help="run directory of `paper-unet reproduce`")
    report.add_argument("--results", required=True, help="output directory")
    report.add_argument("--data-dir", help="ISBI 2012 stacks, for the prediction figure")
    report.add_argument("--lr-search", help="run directory of reproduction/tune_lr.py")
    report.set_defaults(func=_report)

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
