"""ISBI 2012 data: reading and checking the stacks (paper Sec. 4; SPEC section 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

__all__ = ["read_stack"]


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
