"""A clean stop on SIGTERM and SIGINT: finish the step, checkpoint, say how to resume, exit non-zero.

A cluster's preemption or time limit, ``docker stop``, a closed terminal (SIGTERM) and Ctrl-C (SIGINT)
no longer throw away the steps since the last checkpoint. Inside `graceful_stop` the first such
signal only records a request: training finishes the step it is in, writes a checkpoint of the
iteration reached and raises `StopRequested`; a reproduction stops the same way between its stages.
The command line turns that into a message and the exit status 128 + the signal's number (143 for
SIGTERM, 130 for SIGINT), as a shell reports a process killed by that signal. A second signal ends the
process at once, the way the signal would have without us.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["StopRequested", "StopFlag", "graceful_stop", "SIGNALS"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(RuntimeError):
    """A signal asked the run to stop; what was done is saved (see the message)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopFlag:
    """The first SIGTERM/SIGINT received while installed (``signum``), else None."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # the second signal: end now, as the signal itself would
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.signum = signum

    def check(self, what: str) -> None:
        """Raise `StopRequested` if a signal came; ``what``: what is saved and how to go on."""
        if self.signum is not None:
            raise StopRequested(f"stopped by {self.name}: {what}", self.signum)


_active: list[StopFlag] = []


@contextmanager
def graceful_stop() -> Iterator[StopFlag]:
    """Record SIGTERM/SIGINT in a `StopFlag` for the ``with`` block instead of dying.

    Nested blocks share the outermost flag (a reproduction and the trainings it runs). Outside the
    main thread signals cannot be caught: the flag is then never set and signals act as usual."""
    if _active:
        yield _active[-1]
        return
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, flag._handle)
    _active.append(flag)
    try:
        yield flag
    finally:
        _active.pop()
        for s, handler in previous.items():
            signal.signal(s, handler)
