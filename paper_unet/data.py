"""ISBI 2012 data: download, verification, loading and cross-validation folds (paper Sec. 4).

The challenge "Segmentation of neuronal structures in EM stacks" (ISBI 2012): 30 training slices
of 512x512 ssTEM (Drosophila first instar larva ventral nerve cord, 4x4x50 nm/pixel) with binary
labels (255 = cell interior, 0 = membrane), and 30 test slices from the same stack.

Terms of use and citations are printed by `download_isbi2012` (see `TERMS`).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from paper_unet.atomic import read_json, write_json

__all__ = [
    "OFFICIAL_URL", "FILES", "PIXEL_SHA256", "TERMS", "ISBI2012",
    "read_stack", "resolve_data_dir", "load_isbi2012", "download_isbi2012", "cv_folds",
    "pixel_sha256",
]

OFFICIAL_URL = "https://downloads.imagej.net/ISBI-2012-challenge.zip"
FILES = ("train-volume.tif", "train-labels.tif", "test-volume.tif", "test-labels.tif")
REQUIRED = FILES[:3]
SHAPE = (30, 512, 512)
# SHA-256 of the pixel arrays (C order, raw bytes): the files were re-encoded by some mirrors, so
# compare pixels, not files (values from shared/data/isbi2012/README.md).
PIXEL_SHA256 = {
    "train-volume.tif": "200da3d452d726e6c9ca1ce04b869d4edb727320d23b516d01cce707dc8c4760",
    "train-labels.tif": "a7cb64000a1a7e542682927e19c91339f58f9f178e0bcce4e207371116f0ca36",
    "test-volume.tif": "1b58fa7ec1d0ff9d39a855622db3ff66a97863036339b0d04be51b2f5a99b0e9",
}
TERMS = """\
ISBI 2012 EM segmentation challenge data (ssTEM, Drosophila first instar larva VNC).
Terms of use: free for generating or testing non-commercial image segmentation software.
Publications must cite:
  - TrakEM2 and Cardona A. et al. (2010) "An Integrated Micro- and Macroarchitectural Analysis of
    the Drosophila Brain by Computer-Assisted Serial Section Electron Microscopy",
    PLoS Biol 8(10): e1000502.
  - Arganda-Carreras I. et al. (2015) "Crowdsourcing the creation of image segmentation
    algorithms for connectomics", Front. Neuroanat. 9:142."""
CHECKSUMS = "checksums.json"


def read_stack(path: str | Path, what: str = "stack") -> np.ndarray:
    """Read a TIFF image or stack as (Z, H, W), with errors that say what is wrong and what to do."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path} (check the path)")
    if not path.is_file():
        raise IsADirectoryError(f"{what} must be a TIFF file, but {path} is a directory")
    try:
        array = tifffile.imread(path)
    except Exception as error:  # tifffile raises several types for truncated or foreign files
        raise ValueError(f"{what} {path} is not a readable TIFF ({type(error).__name__}: {error}); "
                         f"the file may be truncated or corrupt: replace it") from error
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise ValueError(f"{what} {path} has shape {array.shape}; expected (Z, H, W) or (H, W)")
    return array


def pixel_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """``--data-dir`` if given, else $PAPER_UNET_DATA, else $XDG_CACHE_HOME/paper_unet/isbi2012
    (~/.cache/paper_unet/isbi2012 when XDG_CACHE_HOME is unset)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("PAPER_UNET_DATA"):
        return Path(os.environ["PAPER_UNET_DATA"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "paper_unet" / "isbi2012"


@dataclass
class ISBI2012:
    """The ISBI 2012 stacks, uint8 (30, 512, 512); labels 255 = cell, 0 = membrane."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray | None
    root: Path


_HINT = "run `paper-unet download --data-dir DIR` or point --data-dir / PAPER_UNET_DATA to the stacks"


def _check_stack(array: np.ndarray, name: str, path: Path, verify_hash: bool) -> np.ndarray:
    if array.shape != SHAPE or array.dtype != np.uint8:
        raise ValueError(f"{path} has shape {array.shape} and dtype {array.dtype}; the ISBI 2012 "
                         f"stacks are uint8 {SHAPE}: the file is not the right one ({_HINT})")
    if "labels" in name:
        values = np.unique(array)
        if not set(values.tolist()) <= {0, 255}:
            raise ValueError(f"{path} is not a binary label stack (values {values[:8].tolist()}; "
                             f"expected 0 = membrane, 255 = cell)")
    if verify_hash and name in PIXEL_SHA256 and pixel_sha256(array) != PIXEL_SHA256[name]:
        raise ValueError(f"{path}: its pixels differ from the official {name} (SHA-256 of the "
                         f"pixel array does not match); the file is modified or corrupt ({_HINT})")
    return array


def load_isbi2012(root: str | Path | None = None, *, verify: bool = True) -> ISBI2012:
    """Load the stacks from ``root`` (see `resolve_data_dir`); test labels are optional."""
    root = resolve_data_dir(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ISBI 2012 data directory {root} does not exist; {_HINT}")
    missing = [name for name in REQUIRED if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}; {_HINT}")
    stacks = {}
    for name in FILES:
        path = root / name
        if path.is_file():
            stacks[name] = _check_stack(read_stack(path, name), name, path, verify)
    return ISBI2012(stacks["train-volume.tif"], stacks["train-labels.tif"],
                    stacks["test-volume.tif"], stacks.get("test-labels.tif"), root)


def cv_folds(n_slices: int = 30, n_folds: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, validation) slice indices; each fold validates on one contiguous block.

    Decision: contiguous blocks, not random slices, because neighbouring sections of the stack
    are strongly correlated (50 nm apart) and a random split would leak.
    """
    if not 2 <= n_folds <= n_slices:
        raise ValueError(f"n_folds must be in [2, {n_slices}], got {n_folds}")
    blocks = np.array_split(np.arange(n_slices), n_folds)
    return [(np.concatenate([b for j, b in enumerate(blocks) if j != i]), blocks[i])
            for i in range(n_folds)]


# --------------------------------------------------------------------------------------------
# download

def _fetch(url: str, target: Path, retries: int, timeout: float, progress: bool) -> None:
    """Download ``url`` to ``target``, resuming a partial file with an HTTP Range request."""
    from tqdm import tqdm

    for attempt in range(1, retries + 1):
        have = target.stat().st_size if target.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:  # server ignored the range: start again
                    have = 0
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else None
                with open(target, "ab" if have else "wb") as out, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True, disable=not progress,
                        desc=target.name, file=sys.stderr) as bar:
                    while chunk := response.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
            if total is not None and target.stat().st_size < total:
                raise ConnectionError(f"connection closed after {target.stat().st_size} of {total} bytes")
            return
        except urllib.error.HTTPError as error:
            if error.code == 416 and have:  # range beyond the end: the partial file is bad
                target.unlink()
            elif error.code < 500:
                raise ConnectionError(f"download of {url} failed: HTTP {error.code} {error.reason}") from error
            last = error
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
                OSError) as error:
            last = error
        if attempt < retries:
            time.sleep(min(2.0 ** attempt, 10.0) * 0.1)
    raise ConnectionError(f"download of {url} failed after {retries} attempts ({last}); check the "
                          f"network, or download the archive by hand and pass it with --archive")


def _extract(archive: Path, dest: Path) -> list[str]:
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()
            if bad is not None:
                raise ValueError(f"{archive}: member {bad} is corrupt (CRC mismatch)")
            found = []
            for info in zf.infolist():
                name = Path(info.filename).name
                if name in FILES and not info.is_dir():
                    with zf.open(info) as src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out)
                    found.append(name)
    except zipfile.BadZipFile as error:
        raise ValueError(f"{archive} is not a valid zip archive ({error}): it is truncated or "
                         f"corrupt; delete it and download again") from error
    missing = [name for name in REQUIRED if name not in found]
    if missing:
        raise ValueError(f"{archive} does not contain {', '.join(missing)}")
    return found


def download_isbi2012(dest: str | Path | None = None, *, url: str = OFFICIAL_URL,
                      archive: str | Path | None = None, retries: int = 3, timeout: float = 60.0,
                      progress: bool = True, verify_pixels: bool = True) -> ISBI2012:
    """Fetch, verify and unpack the official ISBI 2012 archive into ``dest``; print the terms.

    Resumes a partial download, retries transient failures, and verifies every stack (shape,
    dtype, binary labels, and the SHA-256 of the pixel arrays of the three public stacks). The
    archive's SHA-256 is recorded in ``dest/checksums.json`` on the first successful download and
    checked on later ones. A bad archive is deleted so that the next call starts clean.
    """
    dest = resolve_data_dir(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        data = load_isbi2012(dest, verify=verify_pixels)
        print(f"ISBI 2012 data already present and verified in {dest}", file=sys.stderr)
        print(TERMS, file=sys.stderr)
        return data
    except (FileNotFoundError, ValueError):
        pass
    zip_path = Path(archive) if archive else dest / "ISBI-2012-challenge.zip.part"
    if archive is None:
        _fetch(url, zip_path, retries, timeout, progress)
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    record = dest / CHECKSUMS
    known = read_json(record, "download record") or {}
    if "archive_sha256" in known and known["archive_sha256"] != digest:
        if archive is None:
            zip_path.unlink()
        raise ValueError(f"archive SHA-256 {digest} differs from the one recorded at the first "
                         f"download ({known['archive_sha256']}, in {record}); the download is "
                         f"corrupt or the archive changed upstream: try again, or delete {record}")
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        try:
            _extract(zip_path, Path(tmp))
            load_isbi2012(tmp, verify=verify_pixels)  # verify before anything replaces good data
        except (ValueError, FileNotFoundError):
            if archive is None:
                zip_path.unlink(missing_ok=True)  # start clean next time
            raise
        for name in FILES:
            if (Path(tmp) / name).is_file():
                os.replace(Path(tmp) / name, dest / name)
    write_json(record, {"archive_sha256": digest, "url": url})
    if archive is None:
        zip_path.unlink()
    print(f"ISBI 2012 data verified and unpacked into {dest}", file=sys.stderr)
    print(TERMS, file=sys.stderr)
    return load_isbi2012(dest, verify=verify_pixels)
