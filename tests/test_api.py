"""The public API of docs/spec.md section 7 keeps its names and signatures."""

from __future__ import annotations

import inspect

import paper_unet
from paper_unet import data, metrics, tiling, weights


def params(fn) -> list[tuple[str, object]]:
    return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]


def test_spec_section_7_signatures():
    e = inspect.Parameter.empty
    assert params(paper_unet.UNet) == [("in_channels", 1), ("num_classes", 2), ("base_channels", 64),
                                       ("depth", 5), ("dropout", 0.5), ("variant", "paper")]
    assert params(paper_unet.PaddedUNet)[:2] == [("in_channels", 1), ("num_classes", 2)]
    assert params(tiling.output_size) == [("input_size", e), ("depth", 5)]
    assert params(tiling.valid_input_size) == [("min_output", e), ("depth", 5)]
    assert params(tiling.predict) == [("model", e), ("image", e), ("tile_size", None), ("tta", False),
                                      ("batch_size", 4), ("device", None)]
    assert params(weights.weight_map) == [("label", e), ("w0", 10.0), ("sigma", 5.0), ("class_weights", None)]
    for name in ("pixel_error", "rand_error", "warping_error", "vrand_thinned", "vinfo_thinned"):
        assert params(getattr(metrics, name)) == [("proposal", e), ("ground_truth", e)]
    assert params(data.load_isbi2012)[0] == ("root", None)
    assert {"train_images", "train_labels", "test_images", "test_labels"} <= set(data.ISBI2012.__dataclass_fields__)


def test_command_line_has_the_spec_commands():
    from paper_unet.cli import build_parser
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"download", "train", "predict", "evaluate", "report"} <= set(commands)
