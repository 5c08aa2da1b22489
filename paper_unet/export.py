"""A trained network as a BioImage Model Zoo package (bioimage.io model spec 0.5), for Fiji
(deepImageJ), ilastik, QuPath, napari and bioimageio.core: the field's way to share a model, as the
paper's authors did with their Fiji plugin.

The package holds the network twice, wrapped so that it predicts what ``paper-unet predict`` predicts
without TTA (`tiling.predict`: overlap-tile with mirrored context), to float rounding (held
to 1e-4 by the tests), for any image whose sides are multiples of the pooling period (16 px at depth 5):
as a PyTorch state dict with its architecture (`architecture_source`: one Python file that needs only
torch, holding the project's own `UNet` and `PredictionModule` code, copied verbatim; what bioimageio.core
loads first), and as TorchScript traced from the same module (`torch.jit.trace`; for consumers that run
TorchScript, such as deepImageJ and QuPath). The wrapping:

- the unpadded network shrinks its input by 2 x 92 px (depth 5). Written literally as an output
  offset, bioimage.io consumers could not tile it (bioimageio.core 0.11's tiled prediction failed and
  deepImageJ reads offsets by an older rule). So the exported module mirror-pads inside (reflect: 92
  px before, 92 + r after, r making the padded side a valid input size; r = 4 at depth 5), applies
  the softmax, and crops back: output size = input size. It returns P(cell), one channel;
- its ``halo`` is the 92-px context rounded up to the 16-px period (96), so that a consumer's tiles
  stay on the network's pooling grid and each kept output pixel has its whole context; the input's
  ``pad: reflect`` gives the image borders the same mirrored context as ``predict``;
- input sizes ``min + n x 16``, with ``min`` the first multiple of 16 above 2 x halo (208).

The checkpoint's intensity normalisation goes into the package where bioimage.io can express it
exactly: ``dtype`` normalisation as ``scale_linear`` (1/255 for uint8, 1/65535 for uint16; the sample
image's type decides, so pass a sample like the training images); ``percentile`` (the checkpoint's
``data.percentiles``) and ``minmax`` (percentiles 0 and 100) as ``scale_range`` over the image's y and x
followed by ``clip`` to [0, 1]. Those two are statistics of the image: the package computes them per
image, ``paper-unet predict`` per stack (the same for one image). ``scale_range`` adds ``EPS`` to the
range of raw values it divides by (negligible beside a range of tens or thousands of grey values). The
input tensor's data type is float32; consumers cast integer images to it first.

The package also holds a real test input (the sample, cropped to the 16-px grid) with the test
output of the project's own predict on it, a cover (input beside P(cell)), a README (method,
training data, scores when the run folder has them, a Validation section, citations) and no URL
in rdf.yaml (bioimage.io's validation would try to reach each).

Needs the optional extra: ``pip install "paper_unet[bioimageio]"`` (bioimageio.core 0.11.0).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

from paper_unet import __version__
from paper_unet.model import UNet

__all__ = ["PredictionModule", "prediction_module", "architecture_source", "export_bioimageio", "package_geometry",
           "INSTALL_HINT", "ARCHITECTURE_FILE"]

INSTALL_HINT = ('the bioimage.io export needs the optional extra: pip install "paper_unet[bioimageio]" '
                "(bioimageio.core 0.11.0 and the spec it needs)")
PAPER_DOI = "10.1007/978-3-319-24574-4_28"  # Ronneberger, Fischer & Brox, MICCAI 2015
ISBI_DOI = "10.3389/fnana.2015.00142"  # Arganda-Carreras et al. 2015, the ISBI 2012 challenge
DATA_DOI = "10.1371/journal.pbio.1000502"  # Cardona et al. 2010, the ssTEM stack


class PredictionModule(torch.nn.Module):
    """The unpadded network with its mirrored context inside: (N, C, H, W) in [0, 1], H and W
    multiples of the pooling period -> (N, 1, H, W) P(cell), as `tiling.predict` computes it."""

    def __init__(self, network: torch.nn.Module, before: int, after: int) -> None:
        super().__init__()
        self.network, self.before, self.after = network, before, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (self.before, self.after, self.before, self.after), mode="reflect")
        probabilities = torch.softmax(self.network(padded), dim=1)[:, 1:2]
        extra = self.after - self.before  # the output is that much larger than the input
        return probabilities[..., : probabilities.shape[-2] - extra, : probabilities.shape[-1] - extra]


def prediction_module(in_channels: int = 1, num_classes: int = 2, base_channels: int = 64, depth: int = 5,
                      variant: str = "paper", before: int = 92, after: int = 96) -> PredictionModule:
    """The package's network, untrained, in eval mode: `UNet` (no dropout: inference only) inside
    `PredictionModule`. The callable of the package's ``pytorch_state_dict`` weights; its arguments are the
    ``kwargs`` in the package's rdf.yaml, and the state dict loads into it strictly."""
    return PredictionModule(UNet(in_channels, num_classes, base_channels, depth, 0.0, variant), before, after).eval()


ARCHITECTURE_FILE = "paper_unet_architecture.py"
EPS = 1e-6  # scale_range's epsilon (bioimage.io's default)
WEIGHT_FORMATS = ("both", "pytorch_state_dict", "torchscript")

_ARCHITECTURE_HEADER = '''"""The network of a paper_unet bioimage.io package: the U-Net of Ronneberger, Fischer & Brox (MICCAI 2015)
with its mirrored context inside, P(cell) out; `prediction_module(**kwargs)` builds it (the kwargs: rdf.yaml).

Written by paper_unet {version} (`paper_unet.export.architecture_source`): the project's own code, copied
verbatim from paper_unet/tiling.py (the size checks), paper_unet/model.py (`UNet`) and paper_unet/export.py
(`PredictionModule`, `prediction_module`), so that it needs torch only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = {variants!r}
'''


def architecture_source() -> str:
    """The package's architecture file (`ARCHITECTURE_FILE`): one self-contained Python module, torch its
    only import, defining `prediction_module` with the source of the functions and classes it needs."""
    from paper_unet import model, tiling

    parts = [tiling._trace, tiling._check_depth, tiling._smallest_valid, tiling._nearest_valid,
             tiling.check_input_size, tiling.output_size, model.center_crop, model._TwoConvs, model.UNet,
             PredictionModule, prediction_module]
    header = _ARCHITECTURE_HEADER.format(version=__version__, variants=model.VARIANTS)
    return header + "".join("\n\n" + inspect.getsource(part) for part in parts)


def package_geometry(depth: int) -> dict:
    """Padding and sizes of the package for a network of ``depth``: period, context, the extra
    padding r after, halo, and the smallest input side."""
    from paper_unet.tiling import context, is_valid_input_size

    period = 2 ** (depth - 1)
    margin = context(depth)
    extra = next(r for r in range(period) if is_valid_input_size(period * 64 + 2 * margin + r, depth))
    halo = math.ceil(margin / period) * period
    return {"period": period, "context": margin, "extra": extra, "halo": halo,
            "min_size": (2 * halo // period + 1) * period}


def _preprocessing(spec, method: str, sample: np.ndarray, percentiles: list[float]) -> tuple[list, bool, str]:
    """The package's preprocessing steps for the checkpoint's normalisation, whether the test input is the raw
    sample (else the normalised one), and what the README says about intensities."""
    if method == "dtype" and sample.dtype.kind in "ui":
        top = np.iinfo(sample.dtype).max
        return [spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=1.0 / top))], True, (
            f"{sample.dtype} images, divided by {top} inside the package (the checkpoint's `dtype` normalisation); "
            f"give them as they are")
    if method == "dtype":
        return [], False, "float images already in [0, 1] (the checkpoint's `dtype` normalisation of float data)"
    low, high = (0.0, 100.0) if method == "minmax" else percentiles
    scale = spec.ScaleRangeDescr(kwargs=spec.ScaleRangeKwargs(
        axes=[spec.AxisId("y"), spec.AxisId("x")], min_percentile=low, max_percentile=high, eps=EPS))
    clip = spec.ClipDescr(kwargs=spec.ClipKwargs(min=0.0, max=1.0))
    what = ("its minimum to 0 and its maximum to 1" if method == "minmax" else
            f"its percentile {low:g} to 0 and its percentile {high:g} to 1, clipped")
    return [scale, clip], True, (
        f"images of any type and range, normalised inside the package as the checkpoint's `{method}` normalisation "
        f"does: each image {what} (`scale_range` then `clip`). `paper-unet predict` computes these percentiles "
        f"per stack, the package per image: the same for one image, close for a stack of similar slices")


def _sample_slice(sample: np.ndarray, period: int, min_size: int) -> np.ndarray:
    """The first slice of ``sample``, cropped to the largest multiple of the period per side (at most 512)."""
    image = sample[0] if sample.ndim == 3 else sample
    if image.ndim != 2:
        raise ValueError(f"the sample must be one 2-D image or a stack (Z, H, W), got shape {sample.shape}")
    sides = [min(512, side // period * period) for side in image.shape]
    if min(sides) < min_size:
        raise ValueError(f"the sample image {image.shape} is too small: the package needs at least "
                         f"{min_size} x {min_size} px")
    return image[: sides[0], : sides[1]]


def _cover(image: np.ndarray, probability: np.ndarray, path: Path) -> None:
    """The input beside P(cell), one PNG."""
    from PIL import Image

    lo, hi = float(image.min()), float(image.max())
    left = ((image - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8)
    right = (np.clip(probability, 0, 1) * 255).astype(np.uint8)
    gap = np.full((image.shape[0], 8), 255, np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], axis=1)).save(path)


_WEIGHTS_TEXT = {
    "pytorch_state_dict": f"a PyTorch state dict (`state_dict.pt`) with its architecture (`{ARCHITECTURE_FILE}`: the "
                          "project's own network code, needing torch only; `prediction_module(**kwargs)` builds the "
                          "network)",
    "torchscript": "TorchScript traced from the network (`weights.pt`)",
}


def _readme(config, state: dict, intensities: str, geometry: dict, scores: dict | None, name: str,
            weights: str = "both") -> str:
    m, d = config.model, config.data
    lines = [
        f"# {name}",
        "",
        "The U-Net of Ronneberger, Fischer & Brox (MICCAI 2015): unpadded 3x3 convolutions, centre-cropped skip "
        f"connections, trained with the paper's weighted cross entropy (w0 = {d.w0:g}, sigma = {d.sigma:g} px), "
        "elastic deformation and SGD with momentum 0.99 on one large tile per step. Trained and exported with "
        f"paper_unet {__version__} (a PyTorch reproduction of the paper).",
        "",
        "## The network",
        f"- width {m.base_channels} (channels of the first level; the paper: 64), depth {m.depth}, "
        f"dropout {m.dropout:g}, variant `{m.variant}`",
        f"- trained for {state.get('iteration', '?')} iterations on {d.tile} x {d.tile} tiles, profile "
        f"`{config.name}`, seed {config.run.seed}",
        "- output: P(cell), one channel (1 = cell interior, 0 = membrane), as in the ISBI 2012 submission format",
        "- weights: " + (f"{_WEIGHTS_TEXT['pytorch_state_dict']}, and {_WEIGHTS_TEXT['torchscript']}"
                         if weights == "both" else _WEIGHTS_TEXT[weights]),
        "",
        "## Input",
        f"- one channel, {intensities}",
        f"- sides: multiples of {geometry['period']} px, at least {geometry['min_size']} px (bigger images are "
        f"tiled by the consumer with a halo of {geometry['halo']} px)",
        "- the image is mirrored at its borders (reflect), as the paper's overlap-tile strategy does",
        "",
        "## Training data",
        "The ISBI 2012 EM segmentation challenge's training stack (30 ssTEM slices of the Drosophila first "
        "instar larva ventral nerve cord, 512 x 512 px, Cardona et al. 2010), unless the checkpoint was trained "
        "on other data with `paper-unet train`.",
        "",
        "## Validation",
        "Score a prediction against labels with the ISBI 2012 challenge's metrics: `paper_unet.metrics` "
        "(warping, Rand and pixel error; V_rand and V_info) reproduces the challenge's evaluator. The package's "
        "own test (its test input and the output of `paper-unet predict` on it, without test-time "
        "augmentation) is checked by `bioimageio.core`'s `test_model`.",
    ]
    if scores:
        lines += ["", "Scores of this network on its held-out slices, as its training run recorded them "
                  "(`metrics.json`):", ""]
        lines += [f"- {key}: {value:.6f}" for key, value in scores.items()
                  if isinstance(value, float) and key in ("warping_error", "rand_error", "pixel_error",
                                                           "vrand_thinned", "vinfo_thinned")]
    lines += [
        "",
        "## Differences from `paper-unet predict`",
        "No test-time augmentation (`predict --tta` averages the 8 dihedral views). Otherwise the same "
        "probabilities, to float rounding, on images whose sides are multiples of "
        f"{geometry['period']} px.",
        "",
        "## Citation",
        f"- O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical Image "
        f"Segmentation. MICCAI 2015. doi:{PAPER_DOI}",
        f"- I. Arganda-Carreras et al. Crowdsourcing the creation of image segmentation algorithms for "
        f"connectomics. Front. Neuroanat. 2015. doi:{ISBI_DOI}",
        f"- A. Cardona et al. An integrated micro- and macroarchitectural analysis of the Drosophila brain by "
        f"computer-assisted serial section electron microscopy. PLoS Biol. 2010. doi:{DATA_DOI}",
    ]
    return "\n".join(lines) + "\n"


def _weights(spec, weights: str, work: Path, version, kwargs: dict):
    """The package's weight entries: the state dict with its architecture file, TorchScript, or both (TorchScript
    then names the state dict as its parent)."""
    entries = {}
    if weights in ("both", "pytorch_state_dict"):
        entries["pytorch_state_dict"] = spec.PytorchStateDictWeightsDescr(
            source=work / "state_dict.pt", pytorch_version=version,
            architecture=spec.ArchitectureFromFileDescr(source=work / ARCHITECTURE_FILE,
                                                        callable=spec.Identifier("prediction_module"), kwargs=kwargs))
    if weights in ("both", "torchscript"):
        entries["torchscript"] = spec.TorchscriptWeightsDescr(
            source=work / "weights.pt", pytorch_version=version,
            **({"parent": "pytorch_state_dict"} if weights == "both" else {}))
    return spec.WeightsDescr(**entries)


def export_bioimageio(checkpoint: str | Path, output: str | Path, *, sample: np.ndarray,
                      name: str | None = None, authors: list[str] | None = None, weights: str = "both") -> Path:
    """Write ``checkpoint``'s network as a bioimage.io model package (a .zip) to ``output``.

    ``sample``: a raw image (or stack: its first slice) like the training images; it becomes the
    package's test input and decides how integer intensities are scaled. ``weights``: ``both`` (default),
    ``pytorch_state_dict`` or ``torchscript`` (half the size: one copy of the network). Returns the package path.
    """
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {weights!r}")
    try:
        from bioimageio.spec import save_bioimageio_package
        from bioimageio.spec.model import v0_5 as spec
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    from paper_unet.checkpoint import load_checkpoint, model_from_state
    from paper_unet.images import normalize, resolve_normalization
    from paper_unet.tiling import predict

    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix != ".zip":
        raise ValueError(f"the package is a .zip file: give --output {output.with_suffix('.zip')}")
    if not output.parent.is_dir():
        raise FileNotFoundError(f"the folder of {output} does not exist: create it first")
    if not os.access(output.parent, os.W_OK) or (output.exists() and not os.access(output, os.W_OK)):
        raise PermissionError(f"cannot write {output}: the folder or file is not writable; choose another --output")
    state = load_checkpoint(checkpoint)
    model, config = model_from_state(state, checkpoint)
    if getattr(model, "same_padding", False):
        raise ValueError(f"{checkpoint} holds the padded ablation network, not the paper's U-Net: only the "
                         f"unpadded U-Net is exported")
    geometry = package_geometry(model.depth)
    raw = _sample_slice(np.asarray(sample), geometry["period"], geometry["min_size"])
    method = resolve_normalization(config.data.normalize, raw.dtype)  # "auto": as train resolved it
    preprocessing, raw_input, intensities = _preprocessing(spec, method, raw, config.data.percentiles)
    image = normalize(raw[None], method, config.data.percentiles)[0]  # what predict gives the network
    expected = predict(model, image)[1].astype(np.float32)  # P(cell), no TTA: what the package must give
    kwargs = {"in_channels": model.in_channels, "num_classes": model.num_classes,
              "base_channels": model.base_channels, "depth": model.depth, "variant": model.variant,
              "before": geometry["context"], "after": geometry["context"] + geometry["extra"]}
    module = prediction_module(**kwargs)
    module.network.load_state_dict(model.state_dict())
    name = name or f"paper_unet U-Net {config.name} width {config.model.base_channels}"
    scores_path = checkpoint.parent / "metrics.json"
    scores = json.loads(scores_path.read_text()) if scores_path.is_file() else None

    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        test_input = raw.astype(np.float32) if raw_input else image  # before preprocessing
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the size checks in forward: sizes vary
            warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript: what deepImageJ and QuPath load
            traced = torch.jit.trace(module, torch.from_numpy(image[None, None]), check_trace=False)
        traced.save(str(work / "weights.pt"))
        torch.save(module.state_dict(), work / "state_dict.pt")  # tensors only: loads with weights_only=True
        (work / ARCHITECTURE_FILE).write_text(architecture_source())
        np.save(work / "test_input.npy", test_input[None, None])
        np.save(work / "test_output.npy", expected[None, None])
        tifffile.imwrite(work / "sample_input.tif", test_input)  # what viewers show (bioimage.io's sample tensors)
        tifffile.imwrite(work / "sample_output.tif", expected)
        _cover(raw.astype(np.float32), expected, work / "cover.png")
        (work / "README.md").write_text(_readme(config, state, intensities, geometry, scores, name, weights))
        space = spec.ParameterizedSize(min=geometry["min_size"], step=geometry["period"])
        version = spec.Version(torch.__version__.split("+")[0])
        descr = spec.ModelDescr(
            name=name,
            description="U-Net (Ronneberger et al. 2015) for membrane segmentation in EM: P(cell) per pixel, "
                        "trained and exported with paper_unet",
            authors=[spec.Author(name=author) for author in (authors or ["paper_unet user"])],
            cite=[spec.CiteEntry(text="Ronneberger, Fischer & Brox. U-Net. MICCAI 2015", doi=spec.Doi(PAPER_DOI)),
                  spec.CiteEntry(text="Arganda-Carreras et al. The ISBI 2012 challenge. Front. Neuroanat. 2015",
                                 doi=spec.Doi(ISBI_DOI)),
                  spec.CiteEntry(text="Cardona et al. The ssTEM data. PLoS Biol. 2010", doi=spec.Doi(DATA_DOI))],
            license=spec.LicenseId("MIT"),
            documentation=spec.FileDescr(source=work / "README.md"),
            covers=[spec.FileDescr(source=work / "cover.png")],
            tags=["unet", "segmentation", "electron-microscopy", "membranes", "2d", "pytorch", "isbi2012"],
            inputs=[spec.InputTensorDescr(
                id=spec.TensorId("raw"),
                axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("raw")]),
                      spec.SpaceInputAxis(id=spec.AxisId("y"), size=space),
                      spec.SpaceInputAxis(id=spec.AxisId("x"), size=space)],
                test_tensor=spec.FileDescr(source=work / "test_input.npy"),
                sample_tensor=spec.FileDescr(source=work / "sample_input.tif"),
                data=spec.IntervalOrRatioDataDescr(type="float32"),
                preprocessing=preprocessing,
                pad=spec.ReflectPadding(mode="reflect"))],
            outputs=[spec.OutputTensorDescr(
                id=spec.TensorId("probability"),
                axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("cell")]),
                      spec.SpaceOutputAxisWithHalo(id=spec.AxisId("y"), halo=geometry["halo"],
                                                   size=spec.SizeReference(tensor_id=spec.TensorId("raw"),
                                                                           axis_id=spec.AxisId("y"))),
                      spec.SpaceOutputAxisWithHalo(id=spec.AxisId("x"), halo=geometry["halo"],
                                                   size=spec.SizeReference(tensor_id=spec.TensorId("raw"),
                                                                           axis_id=spec.AxisId("x")))],
                test_tensor=spec.FileDescr(source=work / "test_output.npy"),
                sample_tensor=spec.FileDescr(source=work / "sample_output.tif"),
                data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)))],
            weights=_weights(spec, weights, work, version, kwargs),
        )
        save_bioimageio_package(descr, output_path=output)
    return output
