"""One atomic writer for every file a run writes and later reads back (JSON records, CSV tables, text).

A file is written to a temporary name in its own folder, flushed to disk, renamed over the target and the
folder synced: a crash, a kill or a full disk leaves either the old file or the new one, never half of one.
`read_json` is the other half: a file that still does not parse (written by an older version, or edited by
hand) is reported as torn and treated as absent, so the stage that wrote it is done again instead of trusted.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

__all__ = ["replacing", "write_text", "write_json", "read_json", "fsync_folder"]


def fsync_folder(folder: Path) -> None:
    """Sync a folder, so that a rename inside it survives a power cut (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # a platform without directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)


@contextmanager
def replacing(path: str | Path):
    """The one atomic replacement: yields a temporary name beside ``path`` to write, renames it over ``path`` when
    the block ends without an error and syncs the folder; on an error the temporary file is removed and ``path``
    is left as it was. What the block writes it flushes to disk itself where it must survive a power cut."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a temporary file, fsync, rename, folder fsync)."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: str | Path, value) -> None:
    """``value`` as indented JSON, atomically."""
    write_text(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str | Path, what: str = "record", *, torn: str | None = None):
    """The JSON in ``path``; None when it does not exist, or when it does not parse (a torn file: said on
    stderr, and then treated as absent, so that its stage is done again). With ``torn`` (what to do about it), a
    torn file is an error instead: ``ValueError("<path> is torn (not valid JSON): <torn>")``."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        if torn is not None:
            raise ValueError(f"{path} is torn (not valid JSON): {torn}") from error
        print(f"warning: {what} {path} is torn or not JSON ({error}); not trusted: the stage that wrote it runs "
              f"again", file=sys.stderr)
        return None
