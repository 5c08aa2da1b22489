"""Command line: ``paper-unet`` / ``python -m paper_unet``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paper_unet import __version__
from paper_unet.config import DEFAULT_PROFILE_RULE

from paper_unet.tables import PAPER_TABLE2_IOU as PAPER_UNET_IOU, PAPER_UNET
SINGLE_TILE_MAX = 1024  # predict: one tile per slice up to this edge, else streamed in the paper's 572-px tiles
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


def _read_training_pair(images_path, labels_path, config, channel: int | None, what: str, force_labels: bool):
    """Normalised float32 images and binary labels from files or folders, checked against each other."""
    from paper_unet.images import normalize, read_images, read_labels

    raw, _ = read_images(images_path, channel=channel, what=f"{what} images")
    labels, encoding = read_labels(labels_path, what=f"{what} labels", force=force_labels)
    if labels.shape != raw.shape:
        raise ValueError(f"{what} labels {labels_path} have shape {labels.shape} but the images {images_path} "
                         f"have {raw.shape}: they must match slice for slice")
    method = config.data.normalize
    print(f"{what}: {raw.shape[0]} slice(s) {raw.shape[1]}x{raw.shape[2]} {raw.dtype}, normalised by "
          f"'{method}'{_percentiles(config)}; labels: {encoding}", file=sys.stderr)
    return normalize(raw, method, config.data.percentiles), labels


def _percentiles(config) -> str:
    low, high = config.data.percentiles
    return (f" (percentiles {low:g} and {high:g} of the stack to 0 and 1, clipped)"
            if config.data.normalize == "percentile" else "")


def _warn_narrow_range(images) -> None:
    """The warning for training images that use a sliver of [0, 1] after normalisation."""
    from paper_unet.images import NARROW_RANGE, dynamic_range

    span = dynamic_range(images)
    if span < NARROW_RANGE:
        print(f"warning: after normalisation the training images span only {span:.3f} of [0, 1] (0.1st to 99.9th "
              f"percentile): the network may not train. If your data use fewer bits than their type (12-bit values "
              f"in a 16-bit file), use --normalize percentile", file=sys.stderr)


def _record_normalization(args: argparse.Namespace, config, dtype):
    """Resolve ``data.normalize`` ("auto" -> dtype or percentile) for this data and record it in the
    config, so that the checkpoint says how its training data was normalised."""
    from paper_unet.images import resolve_normalization

    method = resolve_normalization(config.data.normalize, dtype)
    if method != config.data.normalize:
        args.set = [*(args.set or []), f'data.normalize="{method}"']
        config = _load_config(args)
    return config, method


def _own_data(args: argparse.Namespace, config):
    """Your own data (--images/--labels, optional --val-images/--val-labels): the config with its normalisation
    resolved for them, and (images, labels, val_images, val_labels)."""
    if not (args.images and args.labels):
        raise ValueError("--images and --labels go together (the training images and their labels)")
    if args.fold is not None:
        raise ValueError("--fold splits the ISBI training slices; with your own data give --val-images "
                         "and --val-labels instead")
    if bool(args.val_images) != bool(args.val_labels):
        raise ValueError("--val-images and --val-labels go together")
    from paper_unet.images import read_images

    first, _ = read_images(args.images, channel=args.channel, what="training images")
    config, _ = _record_normalization(args, config, first.dtype)
    images, labels = _read_training_pair(args.images, args.labels, config, args.channel, "training",
                                         args.force_labels)
    _warn_narrow_range(images)
    val_images = val_labels = None
    if args.val_images:
        val_images, val_labels = _read_training_pair(args.val_images, args.val_labels, config, args.channel,
                                                     "validation", args.force_labels)
    return config, (images, labels, val_images, val_labels)


def _isbi_data(args: argparse.Namespace, config):
    """ISBI 2012's training slices (all, or --fold's split), normalised as the reproduction does."""
    if args.val_images or args.val_labels:
        raise ValueError("--val-images/--val-labels need --images and --labels (your own data); for ISBI "
                         "use --fold")
    from paper_unet.data import cv_folds, load_isbi2012
    from paper_unet.images import normalize

    isbi = load_isbi2012(args.data_dir)
    config, method = _record_normalization(args, config, isbi.train_images.dtype)
    images, labels = normalize(isbi.train_images, method, config.data.percentiles), isbi.train_labels
    if args.fold is None:
        return config, (images, labels, None, None)
    train_idx, val_idx = cv_folds(len(images), config.run.folds)[args.fold]
    return config, (images[train_idx], labels[train_idx], images[val_idx], labels[val_idx])


def _own_data_defaults(args: argparse.Namespace) -> None:
    """Add the own-data defaults (`config.OWN_DATA`) that the user's --set does not give, and say so."""
    from paper_unet.config import OWN_DATA

    given = {text.split("=", 1)[0].strip() for text in args.set or []}
    added = [f"{key}={value}" for key, value in OWN_DATA.items() if key not in given]
    if added:
        print(f"own data: {', '.join(added)} (the own-data defaults, on top of the profile: README \"Your own "
              f"data\"; --set KEY=VALUE overrides)", file=sys.stderr)
    args.set = [*(args.set or []), *added]


def _train(args: argparse.Namespace) -> int:
    from paper_unet.restart import train_with_restarts

    if args.normalize:
        args.set = [*(args.set or []), f'data.normalize="{args.normalize}"']
    own = bool(args.images or args.labels)
    if own:
        _own_data_defaults(args)
    config = _load_config(args)
    config, (images, labels, val_images, val_labels) = (_own_data if own else _isbi_data)(args, config)
    if args.from_previous and not args.resume:
        raise ValueError("--from-previous goes with --resume (it picks the checkpoint a resumed run starts from)")
    if args.init_from and not Path(args.init_from).is_file():
        raise FileNotFoundError(f"--init-from checkpoint {args.init_from} not found")
    result, config = train_with_restarts(config, images, labels, args.out, val_images=val_images,
                                         val_labels=val_labels, resume=args.resume, progress=not args.quiet,
                                         init_from=args.init_from, from_previous=args.from_previous,
                                         check=_final_check(images, labels, val_images, val_labels))
    print(f"trained {result.iterations} iterations in {result.seconds:.0f} s; last loss "
          f"{result.last_loss:.4f}; checkpoints in {result.out_dir}")
    return 0


def _final_check(images, labels, val_images, val_labels):
    """The check after the last iteration, for `train_with_restarts`: a network whose output is uninformative is
    dead, never "trained" (`TrainingDiverged`, so that own data restart); with validation data, the
    post-processing for `predict` is chosen on it and stored in ``last.pt``. With the collapse check off
    (``optim.collapse_patience = 0``, the smoke profile) an uninformative output is only a warning."""
    from paper_unet.segment import ConstantOutput, calibrate_checkpoint, choose_post_processing
    from paper_unet.train import TrainingDiverged

    def check(last: Path, config) -> None:
        device = _device(config.run.device)
        try:
            if val_images is None:  # the check alone, on one training slice without TTA
                from paper_unet.checkpoint import model_from_checkpoint
                from paper_unet.tiling import predict_stack

                choose_post_processing(predict_stack(model_from_checkpoint(last, device)[0], images[:1],
                                                     device=device, progress=False), labels[:1])
                return
            chosen = calibrate_checkpoint(last, val_images, val_labels, device=device)
        except ConstantOutput as error:
            if not config.optim.collapse_patience:
                print(f"warning: {error} (the collapse check is off: optim.collapse_patience = 0)", file=sys.stderr)
                return
            raise TrainingDiverged(f"{error}. The training did not work: start again with a lower optim.lr "
                                   f"(--set optim.lr={config.optim.lr * 0.1:g}, now {config.optim.lr:g}) or a "
                                   f"warm-up (--set optim.warmup=N, now {config.optim.warmup})") from error
        _say_chosen(chosen, last)

    return check


def _say_chosen(chosen: dict, last: Path) -> None:
    cells = chosen["label_kind"] == "cells"
    scores = f"; on the validation images IOU {chosen['iou']:.4f}, SEG {chosen['seg']:.4f}" if cells else ""
    size = f" and cells of at least {chosen['min_size']} px (best IOU)" if cells else ""
    print(f"labels are {'cells on a background' if cells else 'membranes between cells'}: mask threshold "
          f"P(cell) > {chosen['threshold']:g} (best {chosen['chosen_by']}){size} chosen on the validation slices"
          f"{scores}; stored in {last}")


def _device(name: str):
    from paper_unet.distributed import resolve_device

    return resolve_device(name)


def _export(args: argparse.Namespace) -> int:
    from paper_unet.images import read_images

    if args.sample:
        sample, _ = read_images(args.sample, channel=args.channel, what="sample")
    else:
        from paper_unet.data import read_stack, resolve_data_dir

        path = resolve_data_dir(args.data_dir) / "train-volume.tif"
        if not path.is_file():
            raise FileNotFoundError(f"no --sample given and no ISBI 2012 training stack at {path}: pass --sample "
                                    f"IMAGE (an image like the training images), or --data-dir DIR")
        sample = read_stack(path, "ISBI 2012 training stack")
    from paper_unet.export import INSTALL_HINT, export_bioimageio

    try:
        package = export_bioimageio(args.checkpoint, args.output, sample=sample, name=args.name, authors=args.author,
                                    weights=args.weights)
    except ImportError as error:
        raise RuntimeError(INSTALL_HINT) from error
    print(f"wrote {package}: a bioimage.io model package (spec 0.5); check it with `bioimageio test {package}`")
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from paper_unet.images import normalize, read_images, write_tiff
    from paper_unet.tiling import predict_stack
    from paper_unet.checkpoint import model_from_checkpoint

    raw, info = read_images(args.input, channel=args.channel, what="input")  # bad input: fail first
    device = _device(args.device or "auto")
    model, config = model_from_checkpoint(args.checkpoint, device)
    outputs = [Path(p) for p in (args.output, args.save_mask, args.save_cells) if p]
    if len(set(outputs)) != len(outputs) or Path(args.input) in outputs:
        raise ValueError("--output, --save-mask, --save-cells and --input must be different files")
    tta = config.run.tta if args.tta is None else args.tta
    tile = args.tile_size
    if max(raw.shape[1:]) > SINGLE_TILE_MAX:  # large: tile by tile, the output on disk (streaming.py)
        probabilities = _predict_large(args, raw, info, model, config, tile, tta, device)
    else:
        images = normalize(raw, config.data.normalize, config.data.percentiles)  # as the model was trained
        probabilities = predict_stack(model, images, tile_size=tile, tta=tta, device=device,
                                      progress=not args.quiet)
        write_tiff(args.output, probabilities.astype(np.float32), info)
    print(f"wrote {args.output}: float32 {probabilities.shape}, P(cell) (1 = cell), TTA {'on' if tta else 'off'}, "
          f"normalisation '{config.data.normalize}'{_percentiles(config)}")
    from paper_unet.collapse import uninformative

    if uninformative(probabilities):
        print(f"WARNING: P(cell) is nearly the same everywhere ({float(probabilities.min()):.4f} to "
              f"{float(probabilities.max()):.4f}, within one step of the threshold grid, so every mask is empty or "
              f"full): this checkpoint's network does not respond to its input (a dead network, or an untrained "
              f"one). Its masks and cells mean nothing; train it again (paper-unet train stops on a dead network and "
              f"says what to change)", file=sys.stderr)
    if args.save_mask or args.save_cells:
        _save_segmentation(args, probabilities, info)
    return 0


def _predict_large(args: argparse.Namespace, raw, info, model, config, tile, tta, device):
    """An image larger than one tile pass: streamed tile by tile (`streaming.predict_streamed`: the same P(cell) as
    the whole-image path, to float rounding), each slice into a memory-mapped TIFF, so memory holds the raw image
    and a few tiles, not the output. Returns the written P(cell), memory-mapped read-only."""
    import numpy as np
    import tifffile

    from paper_unet.images import normalizer, tiff_on_disk
    from paper_unet.streaming import predict_streamed

    norm = normalizer(raw, config.data.normalize, config.data.percentiles)  # its constants from the whole stack
    with tiff_on_disk(args.output, raw.shape, np.float32, info) as on_disk:
        out = on_disk.reshape(raw.shape)  # tifffile may drop a stack's axis of 1
        for z in range(raw.shape[0]):
            if raw.shape[0] > 1 and not args.quiet:
                print(f"slice {z + 1} of {raw.shape[0]}", file=sys.stderr)
            predict_streamed(model, raw[z], norm, tile_size=tile, tta=tta, device=device, out=out[z],
                             progress=not args.quiet)
    return tifffile.memmap(args.output, mode="r").reshape(raw.shape)


def _save_segmentation(args: argparse.Namespace, probabilities, info) -> None:
    """--save-mask / --save-cells: the mask at the threshold, without components below the minimum size."""
    from paper_unet.checkpoint import load_checkpoint
    from paper_unet.images import write_tiff
    from paper_unet.segment import DEFAULT_THRESHOLD, binary_mask, label_cells, remove_small

    state = load_checkpoint(args.checkpoint)
    stored, stored_size = state.get("threshold"), state.get("min_size")
    threshold = args.threshold if args.threshold is not None else (
        stored if stored is not None else DEFAULT_THRESHOLD)
    source = ("--threshold" if args.threshold is not None else
              "chosen on validation data" if stored is not None else "default")
    min_size = args.min_size if args.min_size is not None else (stored_size or 0)
    size_source = ("--min-size" if args.min_size is not None else
                   "chosen on validation data" if stored_size is not None else "default: off")
    mask = remove_small(binary_mask(probabilities, threshold), min_size)
    kept = f", components under {min_size} px dropped ({size_source})" if min_size > 1 else f", no minimum size ({size_source})"
    if args.save_mask:
        write_tiff(args.save_mask, mask, info)
        print(f"wrote {args.save_mask}: uint8 mask, 255 = cell (P(cell) > {threshold:g}, {source}){kept}")
    if args.save_cells:
        cells = label_cells(mask)
        write_tiff(args.save_cells, cells, info)
        print(f"wrote {args.save_cells}: {cells.dtype} cell labels (4-connected{kept}), {int(cells.max())} cells")


def _estimate(args: argparse.Namespace) -> int:
    from paper_unet.data import load_isbi2012
    from paper_unet.estimate import announce
    from paper_unet.runlock import hold

    config = _load_config(args)
    out = Path(args.out or f"runs/isbi2012_{config.name}")
    with hold(out):  # it writes out/estimate.json: not into a folder that a run is using
        announce(config, load_isbi2012(args.data_dir), out, cv_only=args.cv_only, parallel=args.parallel)
    return 0


def _reproduce(args: argparse.Namespace) -> int:
    from paper_unet.data import load_isbi2012, resolve_data_dir
    from paper_unet.report import write_report
    from paper_unet.reproduce import run_reproduction

    if args.only_fold is not None and args.only_final:
        raise ValueError("--only-fold and --only-final are separate processes: give one of them")
    config = _load_config(args)
    out = Path(args.out or f"runs/isbi2012_{config.name}")
    results = Path(args.results or f"results/isbi2012_{config.name}")
    isbi = load_isbi2012(args.data_dir)
    summary = run_reproduction(config, isbi, out, resume=not args.restart, progress=not args.quiet,
                               command=args.command_line, only_fold=args.only_fold,
                               only_final=args.only_final, cv_only=args.cv_only, started_at=args.started_at,
                               from_previous=args.from_previous, estimate=not args.no_estimate)
    from paper_unet.distributed import is_main_process

    if args.only_fold is not None or args.only_final or not is_main_process():
        return 0
    readme = write_report(out, results, resolve_data_dir(args.data_dir), args.lr_search)
    folds = summary["folds"]
    submission = summary["submission"] or "none (--cv-only)"
    print(f"done: {len(folds)} folds, submission {submission}; report {readme}")
    return 0


def _ablations(args: argparse.Namespace) -> int:
    from paper_unet.data import load_isbi2012
    from paper_unet.study import ablation_variants, run_variants, write_ablation_report

    results = Path(args.results)
    csv_path = results / "ablations.csv"
    command = args.command_line or "paper-unet ablations " + " ".join(sys.argv[2:])
    if args.gather:  # one job per variant (a SLURM array), gathered afterwards: nothing is trained here
        from paper_unet.study import gather

        names = gather([Path(job) for job in args.gather], results, csv_path.name)
        readme = write_ablation_report(csv_path, results, command=command)
        print(f"gathered {len(names)} variant(s) ({', '.join(names)}) from {len(args.gather)} job(s); table {readme}")
        return 0
    variants = ablation_variants(args.only)
    run_variants(args.profile, variants, load_isbi2012(args.data_dir), Path(args.out), csv_path, fold=args.fold,
                 common=args.set or [], progress=not args.quiet, command=command, slices=results / "slices",
                 curves=results / "curves",
                 adopt={"full": Path(args.full_from)} if args.full_from else None)
    readme = write_ablation_report(csv_path, results, command=command)
    print(f"done: {len(variants)} variant(s) on fold {args.fold}; table {readme}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from paper_unet.config import load_config

    values = load_config(args.profile, args.set or []).to_dict()
    if args.get is None:
        print(json.dumps(values, indent=2))
        return 0
    value = values
    for key in args.get.split("."):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"--get {args.get}: no such key; valid: {', '.join(_keys(values))}")
        value = value[key]
    print(json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else value)
    return 0


def _keys(values: dict, prefix: str = "") -> list[str]:
    return [k for key, v in values.items()
            for k in (_keys(v, f"{prefix}{key}.") if isinstance(v, dict) else [f"{prefix}{key}"])]


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
    reference = labels
    if len(np.unique(labels)) > 2:  # an instance mask: binary for the challenge metrics, ids for SEG
        from paper_unet.images import instance_to_binary

        labels = instance_to_binary(labels)
    result = metrics.evaluate(proposal, labels).as_dict()
    print(f"{'metric':<18} {'value':>12}   paper u-net (Table 1)")
    for key, name in METRIC_NAMES.items():
        paper = f"{PAPER_UNET[key]:.6g}" if key in PAPER_UNET else "-"
        better = "higher" if key.startswith("v") else "lower"
        print(f"{name:<18} {result[key]:>12.6g}   {paper:<10} ({better} is better)")
    result.update(_cell_scores(proposal, labels, reference))
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


def _cell_scores(proposal, labels, reference) -> dict:
    """evaluate's Table 2 lines: IOU and SEG at the grid's threshold with the best IOU."""
    from paper_unet.cell_metrics import scores_at_best_iou
    from paper_unet.segment import label_kind

    scores = scores_at_best_iou(proposal, reference)  # foreground: every cell id's pixels
    threshold = scores["iou_threshold"]
    paper = ", ".join(f"{k} {v:g}" for k, v in PAPER_UNET_IOU.items())
    print(f"{'IOU':<18} {scores['iou']:>12.6g}   {paper} (Table 2; higher is better)")
    print(f"{'SEG':<18} {scores['seg']:>12.6g}   -          (Cell Tracking Challenge; higher is better)")
    kind = label_kind(labels)
    print(f"(IOU and SEG at P(cell) > {threshold:g}, the grid's best IOU. The labels look like "
          f"{'cells on a background: IOU and SEG are the measures that fit' if kind == 'cells' else 'membranes between cells (EM): the challenge metrics above are the ones that fit'})")
    return scores


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
        sub.add_argument("--profile", help=f"config profile (paper, cpu, smoke: paper_unet/profiles/, linked as "
                                           f"reproduction/configs) or a TOML file; default: {DEFAULT_PROFILE_RULE}")
        sub.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                         help="override one config value, e.g. --set optim.lr=3e-4 (repeatable)")
        sub.add_argument("--data-dir", help="ISBI 2012 stacks (default: $PAPER_UNET_DATA, else the cache)")
        sub.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: the profile's")
        sub.add_argument("--quiet", action="store_true", help="no progress bars")

    def add_input_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--channel", type=int, metavar="K",
                         help="for multi-channel images (RGB, ImageJ channels): the channel to use")

    train = commands.add_parser(
        "train", help="train a U-Net on ISBI 2012 or on your own images and labels",
        description="Train with SGD (momentum 0.99, one tile per step) and the weighted loss, on the "
                    "ISBI 2012 training slices or on your own data (--images/--labels: TIFF files, "
                    "2-D or stacks, uint8/uint16/float32, or folders of PNG/TIFF slices sorted by "
                    "name). Labels: binary (0/255, 0/1, bool; 0 = membrane) or a labelled instance "
                    "mask (one integer per cell; boundaries between touching cells become membrane). "
                    "Checkpoints every run.checkpoint_every iterations; --resume continues a killed run. "
                    "With validation data the mask threshold for `predict --save-mask` is chosen on it (cells "
                    "on a background: by IOU, with a minimum cell size; EM membranes: by pixel F-score). A dead "
                    "network (constant or uninformative output) stops the run with a message, never passes as "
                    "trained; on your own data the run then restarts from its initial weights at 0.1 x the "
                    "rate, at most twice (optim.restarts=2, printed; --set optim.restarts=0 turns it off; "
                    "docs/own_data.md).")
    add_config_options(train)
    add_input_options(train)
    train.add_argument("--out", required=True, help="run directory (logs, config.json, last.pt, best.pt)")
    train.add_argument("--fold", type=int, help="ISBI: hold out this cross-validation block for validation "
                                                "(default: train on all 30 slices, no validation)")
    train.add_argument("--images", help="your training images: a TIFF/PNG file or a folder of slices")
    train.add_argument("--labels", help="their labels, the same shape (file or folder)")
    train.add_argument("--val-images", help="validation images (optional; file or folder)")
    train.add_argument("--val-labels", help="validation labels")
    train.add_argument("--normalize", choices=["auto", "dtype", "minmax", "percentile"],
                       help="intensities to [0, 1]: dtype (integer data / its type's maximum), minmax, "
                            "percentile (data.percentiles, default 1st-99th, clipped); auto (default) = dtype "
                            "for uint8, percentile for every other type (12- or 14-bit data in 16-bit files "
                            "included). Stored in the checkpoint for predict and export")
    train.add_argument("--force-labels", action="store_true",
                       help="accept labels that look like an intensity image (ids scattered in many pieces) "
                            "as an instance mask")
    train.add_argument("--init-from", metavar="CHECKPOINT",
                       help="fine-tune: start from this checkpoint's weights (same network width and depth)")
    train.add_argument("--resume", action="store_true",
                       help="continue from OUT/last.pt (after a crash, a kill or a clean stop on SIGTERM/Ctrl-C)")
    train.add_argument("--from-previous", action="store_true",
                       help="with --resume: start from OUT/last.prev.pt, the checkpoint before last.pt (for a "
                            "last.pt that does not load; the steps since then are trained again)")
    train.set_defaults(func=_train)

    predict = commands.add_parser(
        "predict", help="segment images with overlap-tile inference",
        description="Write P(cell) as a float32 TIFF stack in [0, 1], 1 = cell (the challenge's "
                    "submission format; ImageJ-compatible, with the input's pixel size), and "
                    "optionally a binary mask and labelled cells. The input is normalised the way "
                    "the checkpoint's training data was.")
    predict.add_argument("--checkpoint", required=True, help="a paper_unet checkpoint (last.pt or best.pt)")
    predict.add_argument("--input", required=True,
                         help="TIFF/PNG image or stack, or a folder of slices (e.g. test-volume.tif)")
    predict.add_argument("--output", required=True, help="output TIFF: P(cell), float32")
    predict.add_argument("--save-mask", metavar="MASK.tif",
                         help="also write the binary mask (uint8, 255 = cell) at the checkpoint's "
                              "validation-chosen threshold, else 0.5, without components below the minimum size "
                              "(--min-size)")
    predict.add_argument("--save-cells", metavar="CELLS.tif",
                         help="also write the cells: 4-connected components of the mask, uint16 (uint32 "
                              "beyond 65,535 cells), ids unique over the stack")
    predict.add_argument("--threshold", type=float, help="mask threshold P(cell) > t (overrides the stored one)")
    predict.add_argument("--min-size", type=int, metavar="N",
                         help="drop connected components of fewer than N pixels from --save-mask and --save-cells "
                              "(default: the size chosen on the validation data for cells on a background, by "
                              "IOU; off for membranes and for checkpoints trained without validation data)")
    add_input_options(predict)
    predict.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                         help="average the 8 dihedral transforms (default: the checkpoint config's)")
    predict.add_argument("--tile-size", type=int, help="input tile edge, a valid size such as 572 (default: "
                                                       "one tile per slice up to 1024 px; larger slices are "
                                                       "streamed in 572-px tiles, their P(cell) written to disk as "
                                                       "it is computed, so memory stays bounded by the tile)")
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
    reproduce.add_argument("--from-previous", action="store_true",
                           help="resume each unfinished training from its last.prev.pt, the checkpoint before "
                                "last.pt (for a last.pt that does not load)")
    reproduce.add_argument("--only-fold", type=int, metavar="K",
                           help="run cross-validation fold K alone (one process per GPU); a later "
                                "call without it gathers the folds, trains the final model, reports")
    reproduce.add_argument("--only-final", action="store_true",
                           help="train the final model and predict the test volume alone (beside the "
                                "--only-fold processes); a later call without it gathers and reports")
    reproduce.add_argument("--cv-only", action="store_true",
                           help="the cross-validation alone: no final model, no test-volume submission "
                                "(the report says so)")
    reproduce.add_argument("--no-estimate", action="store_true",
                           help="skip the estimate of the whole run's wall time that is printed first (it "
                                "measures a few training steps and one slice's prediction: seconds)")
    reproduce.add_argument("--command-line", help=argparse.SUPPRESS)
    reproduce.add_argument("--started-at", type=float, help=argparse.SUPPRESS)  # time.time() of the whole run
    reproduce.set_defaults(func=_reproduce)

    export = commands.add_parser(
        "export", help="share a trained network as a bioimage.io model (Fiji/deepImageJ, ilastik, QuPath, napari)",
        description="Write a checkpoint's network as a BioImage Model Zoo package (bioimage.io model spec 0.5, a "
                    ".zip): PyTorch state-dict weights (with the network's code, needing torch only) and TorchScript "
                    "weights, both predicting what `paper-unet predict` predicts without TTA for "
                    "images whose sides are multiples of 16 px, with the training normalisation where bioimage.io "
                    "can express it, a test input and output, a cover and a README. Needs the optional extra: "
                    'pip install "paper_unet[bioimageio]".')
    export.add_argument("--checkpoint", required=True, help="a paper_unet checkpoint (last.pt or best.pt)")
    export.add_argument("--output", required=True, help="the package to write, MODEL.zip")
    export.add_argument("--format", choices=["bioimageio"], default="bioimageio", help="the package format")
    export.add_argument("--sample", help="a raw image like the training images (TIFF/PNG, 2-D or a stack: its first "
                                         "slice), the package's test input; default: the ISBI 2012 training "
                                         "stack from --data-dir")
    export.add_argument("--data-dir", help="ISBI 2012 stacks, for the default sample (default: $PAPER_UNET_DATA, "
                                           "else the download cache)")
    add_input_options(export)
    export.add_argument("--name", help="the model's name in the package (letters, digits, spaces, _+-())")
    export.add_argument("--author", action="append", help="an author of the model (repeatable)")
    export.add_argument("--weights", choices=["both", "pytorch_state_dict", "torchscript"], default="both",
                        help="the weight formats in the package: both (default; bioimageio.core loads the state "
                             "dict, deepImageJ and QuPath TorchScript), or one of them (half the size)")
    export.set_defaults(func=_export)

    estimate = commands.add_parser(
        "estimate", help="how long `reproduce` will take on this machine (measures a few steps)",
        description="Measure a few training steps of the profile's network on the path this machine takes "
                    "(run.bf16 / run.channels_last: auto picks per CPU class and device) and one slice's "
                    "prediction, and project the wall time of the whole reproduction (what is left of it, "
                    "for a run directory that already holds some). `reproduce` prints the same first.")
    add_config_options(estimate)
    estimate.add_argument("--out", help="run directory (default runs/isbi2012_PROFILE)")
    estimate.add_argument("--cv-only", action="store_true", help="the cross-validation alone")
    estimate.add_argument("--parallel", type=int, default=1, metavar="N",
                          help="N processes will share this machine (run_isbi.sh --parallel-folds)")
    estimate.set_defaults(func=_estimate)

    ablations = commands.add_parser(
        "ablations", help="what each of the paper's ingredients buys (what run_ablations.sh runs)",
        description="Train and score the full method and one variant per ingredient (no border term, plain "
                    "cross entropy, no elastic deformation, no augmentation, no TTA, the padded + BatchNorm "
                    "network, the padded network without BatchNorm, no dropout) plus the full method with a "
                    "second seed, all with the same iterations, tile and seed on one fold. Resumable: a finished variant is only re-read, an "
                    "unfinished one continues from its checkpoints; rows are merged into RESULTS/ablations.csv.")
    add_config_options(ablations)
    ablations.add_argument("--only", nargs="+", metavar="NAME",
                           help="run these variants only (full, no_border_term, plain_cross_entropy, no_elastic, "
                                "no_augmentation, no_tta, padded_unet, padded_no_bn, no_dropout, full_seed1; and, by "
                                "name only, the padded networks' popular setup: padded_unet_popular, "
                                "padded_no_bn_popular; and the precision control full_fp32: the full method in "
                                "fp32 on any CPU)")
    ablations.add_argument("--fold", type=int, default=2, help="cross-validation fold (default 2: slices 20-29)")
    ablations.add_argument("--out", default="runs/ablations", help="run directories, one per variant")
    ablations.add_argument("--full-from", metavar="RUN_DIR",
                           help="adopt the full method's network of fold K from a finished run of the same "
                                "profile and settings (e.g. runs/isbi2012_cpu after run_isbi.sh) instead of "
                                "training it again; refused unless its checkpoint's config is the full "
                                "variant's exactly")
    ablations.add_argument("--results", default="results/ablations", help="table, CSV, crops and figure")
    ablations.add_argument("--gather", nargs="+", metavar="JOB_RESULTS",
                           help="train nothing: merge the --results folders of jobs that ran one variant each (e.g. a "
                                "SLURM array, docs/scaling_out.md) into --results and write its table")
    ablations.add_argument("--command-line", help=argparse.SUPPRESS)
    ablations.set_defaults(func=_ablations)

    config = commands.add_parser(
        "config", help="print the resolved configuration (a profile with --set overrides), or one value of it",
        description="Resolve a profile with its overrides exactly as train/reproduce would (unknown keys and wrong "
                    "types are errors) and print it as JSON, or print one value (--get SECTION.KEY; `name` is the "
                    f"profile's name). Without --profile: {DEFAULT_PROFILE_RULE}. run_isbi.sh asks it for the "
                    "values it needs, so that the user's --set applies there too.")
    config.add_argument("--profile", help=f"profile name or TOML file (default: {DEFAULT_PROFILE_RULE})")
    config.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one value (repeatable)")
    config.add_argument("--get", metavar="SECTION.KEY", help="print this value alone (e.g. run.folds, name)")
    config.set_defaults(func=_config)

    report = commands.add_parser("report", help="write results/ from a reproduction run directory")
    report.add_argument("--run", required=True, help="run directory of `paper-unet reproduce`")
    report.add_argument("--results", required=True, help="output directory")
    report.add_argument("--data-dir", help="ISBI 2012 stacks, for the prediction figure")
    report.add_argument("--lr-search", help="run directory of reproduction/tune_lr.py")
    report.set_defaults(func=_report)

    evaluate = commands.add_parser(
        "evaluate", help="score a proposal with the ISBI 2012 challenge metrics and the paper's Table 2 IOU",
        description="Score a probability map against labels with the challenge's five "
                    "metrics (warping, Rand and pixel error; V_rand and V_info after thinning), "
                    "each the best over the evaluator's threshold grid, and with the measures of the paper's "
                    "Table 2 for cells on a background: IOU (foreground Jaccard index) and the Cell Tracking "
                    "Challenge's SEG, at the grid's threshold with the best IOU.")
    evaluate.add_argument("--proposal", required=True, metavar="P.tif",
                          help="float TIFF stack in [0, 1], 1 = cell (the submission format)")
    evaluate.add_argument("--labels", required=True, metavar="L.tif",
                          help="label stack: binary (0 = membrane or background, > 0 = cell) or an instance "
                               "mask (one id per cell; SEG then matches each id)")
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
    from paper_unet.allocator import keep_freed_memory

    keep_freed_memory()  # the network's large buffers reused, not mapped afresh each pass (allocator.py)
    if hasattr(args, "profile") and args.profile is None:
        from paper_unet.config import default_profile

        args.profile = default_profile()  # the one rule of every entry point (config.DEFAULT_PROFILE_RULE)
    from paper_unet.stop import StopRequested

    try:
        return args.func(args)
    except StopRequested as stopped:  # a clean stop on SIGTERM / SIGINT: everything done is saved
        print(f"paper-unet {args.command}: {stopped}", file=sys.stderr)
        return stopped.exit_status
    except (OSError, ValueError, TypeError, RuntimeError) as error:  # OSError: files, disk, network
        print(f"paper-unet {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
