"""The trained model that ships in results/: a checkpoint small enough for git, its hashes, its check.

`slim_checkpoint` keeps what `paper-unet predict` and `export` need from a training checkpoint (the
fp32 network weights, the resolved config, the fast path it trained on, iteration, training seconds,
versions) and drops what only a resumed training needs (the optimiser's momentum, the RNG states, the
loss monitors): a third of the size, and it loads with ``torch.load(weights_only=True)`` like every
checkpoint. `write_hashes` writes ``SHA256SUMS`` (the format ``sha256sum -c SHA256SUMS`` checks) and
`check_hashes` compares the files with it. `expected_crop` is the fixed input of the shipped model's
test: a crop of the ISBI training stack, whose prediction is stored beside the model.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

__all__ = ["slim_checkpoint", "write_hashes", "check_hashes", "expected_crop", "build", "SHIPPED", "HASHES", "CROP",
           "MODEL", "PACKAGE", "EXPECTED"]

SHIPPED = Path(__file__).resolve().parents[1] / "results" / "isbi2012_cpu" / "model"  # in a clone, not a wheel
HASHES = "SHA256SUMS"
CROP = (0, slice(0, 160), slice(0, 160))  # slice 0 of train-volume.tif, its top-left 160 x 160 px
_KEEP = ("model", "config", "fast_path", "iteration", "seconds", "version", "torch", "init_from")


def slim_checkpoint(source: str | Path, target: str | Path, provenance: dict | None = None) -> Path:
    """``source``'s network, config and provenance without the optimiser and RNG state, saved atomically."""
    from paper_unet.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(source)
    slim = {key: state[key] for key in _KEEP if key in state}
    slim["model"] = {name: tensor.float().contiguous() for name, tensor in slim["model"].items()}
    if provenance:
        slim["provenance"] = provenance
    save_checkpoint(target, slim)
    return Path(target)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_hashes(folder: str | Path, names: list[str]) -> Path:
    """``folder/SHA256SUMS`` for ``names`` (files in ``folder``), one "HASH  NAME" line each."""
    folder = Path(folder)
    path = folder / HASHES
    path.write_text("".join(f"{_sha256(folder / name)}  {name}\n" for name in names))
    return path


def check_hashes(folder: str | Path) -> dict[str, bool]:
    """Each file named in ``folder/SHA256SUMS``: whether its SHA-256 matches."""
    folder = Path(folder)
    result = {}
    for line in (folder / HASHES).read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        result[name] = (folder / name).is_file() and _sha256(folder / name) == digest
    return result


def expected_crop(train_images: np.ndarray) -> np.ndarray:
    """The shipped model's test input: `CROP` of the ISBI training stack, as uint8 (Z=1, H, W)."""
    return np.asarray(train_images[CROP])[None]


def build(run: str | Path, folder: str | Path, data_dir: str | Path | None, provenance: dict) -> list[str]:
    """The shipped-model folder from a finished final-model run (``run``: its ``final/last.pt``): the slim
    checkpoint, its bioimage.io package (TorchScript weights only, to stay small), the expected prediction of the
    test crop, the README and SHA256SUMS. Returns the file names hashed."""
    from paper_unet.checkpoint import model_from_checkpoint
    from paper_unet.data import load_isbi2012
    from paper_unet.export import export_bioimageio
    from paper_unet.images import normalize
    from paper_unet.tiling import predict_stack

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = slim_checkpoint(Path(run) / "final" / "last.pt", folder / MODEL, provenance)
    isbi = load_isbi2012(data_dir)
    export_bioimageio(checkpoint, folder / PACKAGE, sample=isbi.train_images, weights="torchscript",
                      name="paper_unet U-Net ISBI 2012 cpu profile", authors=["paper_unet"])
    model, config = model_from_checkpoint(checkpoint)
    crop = expected_crop(isbi.train_images)
    np.save(folder / EXPECTED, predict_stack(model, normalize(crop, config.data.normalize), tta=False,
                                             progress=False).astype(np.float32))
    return [MODEL, PACKAGE, EXPECTED]


MODEL = "unet_isbi2012_cpu.pt"
PACKAGE = "unet_isbi2012_cpu.bioimageio.zip"
EXPECTED = "expected_crop_probabilities.npy"
