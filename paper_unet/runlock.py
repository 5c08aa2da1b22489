"""One run per folder: an OS file lock on every folder that a training or a reproduction writes.

A second `paper-unet train`, `reproduce` or `run_isbi.sh` on a folder that a running process holds
stops at once, naming the folder and the holder's PID, instead of training the same networks into
the same checkpoints. The lock is ``fcntl.flock`` on ``FOLDER/.lock``: the operating system drops it
when the holding process ends in any way (a crash, SIGKILL, a power cut), so a killed run never
leaves a stale lock behind. ``.lock`` keeps the last holder's PID, for the message only.

Within one process the lock is re-entrant (a reproduction holds the run folder, its training holds
the fold folder, a nested call on the same folder is free). ``--parallel-folds`` works because each
process holds only its own fold's folder; under torchrun only rank 0 takes locks.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

__all__ = ["RunFolderBusy", "hold", "LOCK_NAME"]

LOCK_NAME = ".lock"
_held: dict[Path, list] = {}  # folder -> [open file, nesting depth], this process's locks


class RunFolderBusy(RuntimeError):
    """Another process is working in this run folder."""


@contextmanager
def hold(folder: str | Path, enabled: bool = True, shared: bool = False) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block (created if missing); raise `RunFolderBusy` at
    once if another process holds it. ``enabled=False`` does nothing (ranks other than 0).

    ``shared``: several processes may hold it together, none while one holds it exclusively: the
    ``--parallel-folds`` processes share the run folder (each holds its own fold's folder), and a
    whole reproduction on the same run folder is refused while they run, and the other way round."""
    if not enabled:
        yield
        return
    folder = Path(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        try:
            yield
        finally:
            _held[folder][1] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunFolderBusy(f"{folder} is in use by another run (PID {holder}): wait for it to end, stop it "
                            f"(kill -TERM {holder} checkpoints and stops it cleanly), or give another --out")
    handle.seek(0)  # the holder's PID, for the message (of shared holders: the last one's)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held[folder] = [handle, 1]
    try:
        yield
    finally:
        _held.pop(folder)
        handle.close()  # closing the file releases the lock
