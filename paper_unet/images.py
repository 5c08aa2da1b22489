"""Your own microscopy: reading image stacks and labels, intensity normalisation, writing results.

The network sees float intensities in [0, 1] (docs/deviations.md: the paper feeds
its EM slices without a published normalisation; ISBI's uint8 slices are divided by 255).
Researchers' data comes as uint8, uint16 or float32 TIFF (2-D, 3-D, multi-page, ImageJ
hyperstacks) or as a folder of PNG / TIFF slices, so:

- `read_images` reads a file or a folder (slices sorted by name) as (Z, H, W) plus the metadata
  needed to write results that Fiji and napari open at the right scale (`ImageInfo`). Several
  channels (RGB, or an ImageJ channel axis) are refused unless ``channel`` picks one.
- `normalize` maps intensities to [0, 1]: ``dtype`` divides integer data by its type's maximum
  (uint8 / 255, uint16 / 65535; float data must already lie in [0, 1]), ``minmax`` stretches the
  stack's minimum and maximum to 0 and 1, ``percentile`` stretches its 1st and 99th percentiles
  (``data.percentiles``) to 0 and 1 and clips. ``auto`` (the default) is ``dtype`` for uint8 (and
  bool) data and ``percentile`` for every other type. Why: uint8 images have been scaled to their
  8 bits by whoever wrote them (ISBI's EM slices span 0-255; the reproduction's input stays
  exactly uint8 / 255), but 16-bit files usually hold a 12- or 14-bit detector's values (0-4095 or
  0-16383), which ``dtype`` would squeeze into the bottom 6 % or 25 % of [0, 1], where the network
  does not train at the defaults (docs/own_data.md, results/own_data/). Percentiles, as cellpose
  and stardist use by default, give the same input whatever the bit depth, offset or gain.
  The resolved method and its percentiles are part of the run's config (``data.normalize``,
  ``data.percentiles``), saved in every checkpoint, so a model predicts (and its bioimage.io
  package normalises) the way it was trained. `dynamic_range` measures how much of [0, 1] a
  normalised stack uses, for the warning when it is tiny.
- `read_labels` accepts binary labels in the usual encodings (0/255, 0/1, bool, 0/any one value)
  and labelled instance masks (one integer per cell, 0 = background), which become cells and
  membranes: a cell pixel becomes membrane where a 4-neighbour belongs to another cell, so
  touching cells are separated by a 2-px membrane (one pixel from each), and background stays
  membrane.
- `write_tiff` writes an ImageJ-compatible TIFF with the input's axes and pixel size.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from paper_unet.atomic import replacing

__all__ = ["ImageInfo", "read_images", "read_labels", "normalize", "normalizer", "Normalizer", "resolve_normalization",
           "dynamic_range",
           "check_instance_mask", "instance_to_binary", "write_tiff", "tiff_on_disk", "NORMALIZATIONS", "IMAGE_SUFFIXES",
           "NARROW_RANGE"]

NORMALIZATIONS = ("auto", "dtype", "minmax", "percentile")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
PERCENTILES = (1.0, 99.0)  # the default of data.percentiles
# a normalised training stack whose 0.1-99.9 percentile span is below this gets a warning (ISBI's slices as 12-bit
# values in a 16-bit file, divided by 65535, span 0.05)
NARROW_RANGE = 0.1


@dataclass
class ImageInfo:
    """Where a stack came from and what an output written beside it should carry."""

    source: str
    dtype: str
    resolution: tuple[float, float] | None = None  # pixels per unit (x, y), as TIFF stores it
    unit: str | None = None  # e.g. "micron", "nm"
    spacing: float | None = None  # z step in ``unit``
    files: list[str] = field(default_factory=list)  # the slices of a folder, in order


def _pick_channel(array: np.ndarray, axes: str, channel: int | None, path: Path) -> tuple[np.ndarray, str]:
    """Reduce a channel (C) or colour-sample (S) axis to one channel, or explain how to."""
    for name in ("C", "S"):
        if name not in axes:
            continue
        position = axes.index(name)
        count = array.shape[position]
        if count == 1:
            array, axes = np.take(array, 0, axis=position), axes.replace(name, "")
            continue
        kind = "an RGB image" if name == "S" and count in (3, 4) else f"{count} channels"
        if channel is None:
            raise ValueError(f"{path} has {kind} ({axes} {array.shape}); the network reads one channel: "
                             f"pick it with --channel K (0 to {count - 1})")
        if not 0 <= channel < count:
            raise ValueError(f"--channel {channel} does not exist in {path}: it has {count} (0 to {count - 1})")
        array, axes = np.take(array, channel, axis=position), axes.replace(name, "")
    return array, axes


def _read_tiff(path: Path, channel: int | None, what: str) -> tuple[np.ndarray, ImageInfo]:
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
            page = tif.pages[0]
            imagej = tif.imagej_metadata or {}
            resolution = None
            if "XResolution" in page.tags and "YResolution" in page.tags:
                x, y = page.tags["XResolution"].value, page.tags["YResolution"].value
                x, y = x[0] / x[1], y[0] / y[1]
                resolution = (x, y) if (x, y) != (1.0, 1.0) else None
    except Exception as error:  # tifffile raises several types for truncated or foreign files
        raise ValueError(f"{what} {path} is not a readable TIFF ({type(error).__name__}: {error}); "
                         f"the file may be truncated or corrupt: replace it") from error
    array, axes = _pick_channel(array, axes, channel, path)
    for name in "TQI":  # time / unknown / sequence axes of length 1
        if name in axes and array.shape[axes.index(name)] == 1:
            array, axes = np.take(array, 0, axis=axes.index(name)), axes.replace(name, "")
    info = ImageInfo(str(path), str(array.dtype), resolution, imagej.get("unit"), imagej.get("spacing"))
    return array, info


def _read_png(path: Path, channel: int | None, what: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{what} {path} is not a readable PNG ({type(error).__name__}: {error}); "
                         f"the file may be truncated or corrupt: replace it") from error
    if array.ndim == 3:
        array, _ = _pick_channel(array, "YXS", channel, path)
    return array


def read_images(path: str | Path, *, channel: int | None = None, what: str = "images"
                ) -> tuple[np.ndarray, ImageInfo]:
    """A TIFF or PNG file, or a folder of such slices (sorted by name), as (Z, H, W) and its info."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (check the path)")
    if path.is_dir():
        files = sorted(p for p in path.iterdir()  # hidden files (macOS "._x.png") are not slices
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{what} folder {path} holds no .tif, .tiff or .png slices")
        slices, info = [], None
        for file in files:
            array, file_info = read_images(file, channel=channel, what=what)
            if array.shape[0] != 1:
                raise ValueError(f"{what} folder {path}: {file.name} is a stack of {array.shape[0]} slices; "
                                 f"a folder must hold single 2-D slices (or pass the stack file itself)")
            if slices and array.shape[1:] != slices[0].shape:
                raise ValueError(f"{what} folder {path}: {file.name} is {array.shape[1]}x{array.shape[2]} but "
                                 f"{files[0].name} is {slices[0].shape[0]}x{slices[0].shape[1]}; all slices "
                                 f"must have one size")
            if slices and array.dtype != slices[0].dtype:
                raise ValueError(f"{what} folder {path}: {file.name} is {array.dtype} but {files[0].name} is "
                                 f"{slices[0].dtype}; all slices must have one type")
            slices.append(array[0])
            info = info or file_info
        info = ImageInfo(str(path), info.dtype, info.resolution, info.unit, None, [f.name for f in files])
        return np.stack(slices), info
    if path.suffix.lower() == ".png":
        array, info = _read_png(path, channel, what), ImageInfo(str(path), "")
    elif path.suffix.lower() in (".tif", ".tiff"):
        array, info = _read_tiff(path, channel, what)
    else:
        raise ValueError(f"{what} {path}: unsupported file type '{path.suffix}' (use TIFF or PNG, or a folder of them)")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise ValueError(f"{what} {path} has shape {array.shape}; expected a 2-D image or a (Z, H, W) stack "
                         f"(several channels: pick one with --channel K)")
    if array.dtype.kind not in "uifb":
        raise ValueError(f"{what} {path} has pixel type {array.dtype}; expected integer, float or bool values")
    info.dtype = str(array.dtype)
    return array, info


def resolve_normalization(method: str, dtype: np.dtype | str) -> str:
    """The method that ``auto`` stands for with this dtype (``dtype`` for uint8 and bool, else ``percentile``)."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {method!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if method != "auto":
        return method
    return "dtype" if np.dtype(dtype) in (np.dtype(np.uint8), np.dtype(bool)) else "percentile"


def normalize(stack: np.ndarray, method: str = "auto", percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Intensities in [0, 1] as float32 (Z, H, W), by ``method`` (see the module docstring)."""
    return normalizer(stack, method, percentiles)(stack)


@dataclass(frozen=True)
class Normalizer:
    """A normalisation with its constants fixed on the whole stack (`normalizer`), applied to any part of it:
    elementwise, so a tile normalised alone equals the same tile of the normalised stack, bit for bit (what
    streamed prediction of a large image relies on, `streaming`)."""

    method: str  # dtype | minmax | percentile (resolved)
    lo: float = 0.0
    hi: float = 1.0
    scale: float | None = None  # dtype on integers: their type's maximum; None: float data as they are

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if raw.dtype == np.uint8 and self.method == "dtype":
            return raw.astype(np.float32) / np.float32(255.0)  # bit-identical to the ISBI path
        data = raw.astype(np.float32)
        if self.method == "dtype":
            return data / np.float32(self.scale) if self.scale is not None else data
        return np.clip((data - np.float32(self.lo)) / np.float32(self.hi - self.lo), 0.0, 1.0).astype(np.float32)


def normalizer(stack: np.ndarray, method: str = "auto", percentiles: tuple[float, float] = PERCENTILES) -> Normalizer:
    """The normalisation of ``stack`` by ``method`` with its constants (type maximum, min and max, or the
    percentiles of the whole stack), checked: non-finite values, signed integers or float data outside [0, 1]
    under dtype, and constant images are errors that say what to do."""
    method = resolve_normalization(method, stack.dtype)
    if stack.dtype == np.uint8 and method == "dtype":
        return Normalizer("dtype", scale=255.0)
    if stack.dtype.kind == "f" and not (np.isfinite(stack).all() and (stack.dtype.itemsize <= 4 or float(
            np.abs(stack).max()) <= float(np.finfo(np.float32).max))):  # as float32, what the network sees
        raise ValueError("the images contain NaN or infinite values; clean them before training or predicting")
    if method == "dtype":
        return _by_dtype(stack)
    if method == "minmax":  # the extremes as float32 values: the same constants as on the float32 data
        lo, hi = float(np.float32(stack.min())), float(np.float32(stack.max()))
    else:
        low, high = percentiles
        if not 0 <= low < high <= 100:
            raise ValueError(f"data.percentiles must be two values 0 <= low < high <= 100, got {list(percentiles)}")
        lo, hi = (float(v) for v in np.percentile(stack.astype(np.float32), (low, high)))
    if hi <= lo:
        raise ValueError(f"the images are constant (all {lo:.4g}) under --normalize {method}: nothing to segment")
    return Normalizer(method, lo=lo, hi=hi)


def _by_dtype(stack: np.ndarray) -> Normalizer:
    """``dtype``: integers divided by their type's maximum; bool as 0/1; float data as it is (in [0, 1])."""
    if stack.dtype.kind == "b":
        return Normalizer("dtype")
    if stack.dtype.kind in "ui":
        info = np.iinfo(stack.dtype)
        if info.min < 0:
            raise ValueError(f"signed {stack.dtype} images have no [0, max] range; use --normalize minmax "
                             f"or --normalize percentile")
        return Normalizer("dtype", scale=float(info.max))
    lo, hi = float(np.float32(stack.min())), float(np.float32(stack.max()))
    if lo < 0 or hi > 1:
        raise ValueError(f"float images with values in [{lo:.4g}, {hi:.4g}] cannot be normalised by their "
                         f"type; use --normalize percentile (or minmax)")
    return Normalizer("dtype")


def dynamic_range(normalized: np.ndarray) -> float:
    """The span of a normalised stack between its 0.1st and 99.9th percentiles (at most 1)."""
    sample = np.asarray(normalized).ravel()[:: max(1, np.asarray(normalized).size // 4_000_000)]
    lo, hi = np.percentile(sample, (0.1, 99.9))
    return float(hi - lo)


def instance_to_binary(instances: np.ndarray) -> np.ndarray:
    """Labelled instance mask (Z, H, W) -> binary uint8 (1 = cell, 0 = membrane).

    A cell pixel becomes membrane when a 4-neighbour belongs to another cell (so touching cells are
    split by a 2-px line, one pixel of each); background (0) is membrane.
    """
    instances = np.asarray(instances)
    cell = instances > 0
    border = np.zeros_like(cell)
    for axis in (-2, -1):
        a = np.swapaxes(instances, axis, -1)
        differs = (a[..., 1:] != a[..., :-1]) & (a[..., 1:] > 0) & (a[..., :-1] > 0)
        b = np.swapaxes(border, axis, -1)
        b[..., 1:] |= differs
        b[..., :-1] |= differs
    return (cell & ~border).astype(np.uint8)


def check_instance_mask(labels: np.ndarray, *, what: str = "labels", checked: int = 64) -> None:
    """Refuse an intensity image given as an instance mask: in a mask each id is one cell, one piece
    (a few ids may come in two, cut by the frame or a neighbour); a grey value is scattered over the
    whole image in many pieces. ``ValueError`` when more than half of the ``checked`` largest ids of
    the first slice that holds several lie in more than two 4-connected pieces."""
    from scipy import ndimage

    for z in range(labels.shape[0]):
        ids, counts = np.unique(labels[z], return_counts=True)
        keep = ids != 0
        ids, counts = ids[keep], counts[keep]
        if len(ids) >= 3:
            break
    else:
        return
    image = labels[z]
    boxes = ndimage.find_objects(image) if image.dtype.kind == "u" and int(ids.max()) <= 4 * image.size else None
    scattered, worst = 0, (0, 0)
    chosen = ids[np.argsort(counts)[::-1][:checked]]
    for value in chosen:
        box = boxes[int(value) - 1] if boxes is not None else (slice(None), slice(None))
        _, pieces = ndimage.label(image[box] == value)
        scattered += pieces > 2
        worst = max(worst, (pieces, int(value)))
    if 2 * scattered > len(chosen):
        raise ValueError(
            f"{what} look like an intensity image, not an instance mask: {scattered} of the {len(chosen)} "
            f"largest ids of slice {z} lie in more than 2 separate pieces (id {worst[1]}: {worst[0]} pieces), "
            f"while a mask's id is one cell. Pass the labels (0 = background, one id per cell, or binary "
            f"0/255), not the images; if this really is a mask, add --force-labels")


def read_labels(path: str | Path, *, what: str = "labels", force: bool = False) -> tuple[np.ndarray, str]:
    """Binary labels (Z, H, W) uint8, 1 = cell, 0 = membrane, and the encoding found.

    Encodings: bool; two values 0 and v (0/1, 0/255, ...; v = cell); a labelled instance mask
    (integers, several cell ids) -> `instance_to_binary`, after `check_instance_mask` (skipped with
    ``force``). Anything else is refused.
    """
    labels, _ = read_images(path, what=what)
    if labels.dtype == bool:
        return labels.astype(np.uint8), "bool"
    values = np.unique(labels)
    if len(values) <= 2 and (values[0] == 0 or len(values) == 1) and (values >= 0).all():
        return (labels > 0).astype(np.uint8), f"binary 0/{values[-1]:g}"
    if labels.dtype.kind in "ui" and (values >= 0).all():
        if not force:
            check_instance_mask(labels, what=f"{what} {path}")
        return instance_to_binary(labels), f"instance mask ({len(values) - (values[0] == 0)} cell ids)"
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    raise ValueError(f"{what} {path} are neither binary (0 = membrane and one cell value, e.g. 0/255 or 0/1) "
                     f"nor an integer instance mask (0 = background, one id per cell): found values {{{shown}}}")


def _tiff_kwargs(dtype, info: ImageInfo | None) -> dict:
    """tifffile's keywords for an ImageJ hyperstack of ``dtype`` with the axes and pixel size of ``info``."""
    kwargs: dict = {"photometric": "minisblack"}
    if np.dtype(dtype) in (np.uint8, np.uint16, np.float32):
        metadata: dict = {"axes": "ZYX"}
        if info is not None and info.unit:
            metadata["unit"] = info.unit
        if info is not None and info.spacing:
            metadata["spacing"] = info.spacing
        kwargs.update(imagej=True, metadata=metadata)
    if info is not None and info.resolution:
        kwargs["resolution"] = info.resolution
    return kwargs


@contextmanager
def tiff_on_disk(path: str | Path, shape: tuple[int, ...], dtype, info: ImageInfo | None = None):
    """A TIFF written through a memory map (`tifffile.memmap`): yields the (Z, H, W) array to fill, which lives
    on disk, not in memory; renamed into place when the block ends without an error (as `write_tiff`)."""
    with replacing(path) as tmp:
        array = tifffile.memmap(tmp, shape=shape, dtype=dtype, **_tiff_kwargs(dtype, info))
        yield array
        array.flush()
        del array


def write_tiff(path: str | Path, stack: np.ndarray, info: ImageInfo | None = None) -> Path:
    """Write (Z, H, W) as an ImageJ hyperstack TIFF (uint8, uint16 or float32) with the axes and pixel
    size of ``info``; other types (uint32 cell labels) as a plain TIFF. Written to a temporary file
    and renamed, so a failure leaves nothing half-written."""
    path = Path(path)
    stack = np.asarray(stack)
    with replacing(path) as tmp:
        tifffile.imwrite(tmp, stack, **_tiff_kwargs(stack.dtype, info))
    return path
