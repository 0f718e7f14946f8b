"""Ctrl-C and SIGTERM with DataLoader workers: stop at a step boundary, workers die quietly.

Two faults this module closes (issue 18.2, items 6 and 7):

* Python's default SIGINT handler raises ``KeyboardInterrupt`` wherever the main thread happens
  to be. At an epoch boundary that is often inside the previous DataLoader iterator's
  ``__del__`` (exceptions there are printed and *dropped*: the Ctrl-C was lost and training ran
  on), or inside a worker that was just forked and had not yet reached torch's worker loop (its
  traceback, then "DataLoader worker exited unexpectedly"). A terminal's Ctrl-C goes to the
  whole process group, workers included.
* When the parent dies (SIGTERM, SIGKILL), a worker lives on until torch's watchdog notices
  (up to 5 s) and may print a ``ConnectionResetError`` traceback from a half-done hand-over of a
  tensor's file descriptor.

So, during :func:`~.loop.fit`, :class:`StopRequest` replaces the SIGINT handler with one that
only records the request; the loop reads it once per step, where stopping is safe (and, under
DDP, in the step's existing all-reduce, so every rank stops at the same step). A second Ctrl-C
raises at once, for a user who cannot wait for the step. Workers (:func:`quiet_worker_init`)
ignore SIGINT and SIGTERM, which are the parent's to handle, and ask the kernel to SIGKILL them
the moment their parent dies (Linux ``PR_SET_PDEATHSIG``), before they can print anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

_PR_SET_PDEATHSIG = 1


class StopRequest:
    """Within ``with StopRequest() as stop:``, Ctrl-C sets ``stop.requested`` instead of raising.

    Only the main thread can own signal handlers; elsewhere (a test calling ``fit`` from a
    thread) this is a no-op and Ctrl-C keeps its default behaviour.
    """

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._installed = False

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:  # the second Ctrl-C: the user does not want to wait for the step
            raise KeyboardInterrupt
        self.requested = True

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a stop was requested (call where stopping is safe)."""
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
            self._installed = True
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._old)
            self._installed = False


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def quiet_worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: die with the parent, silently, and leave signals to it.

    The death signal is asked for first: a worker seen ignoring SIGINT has it (tests rely on it).
    """
    _set_pdeathsig(signal.SIGKILL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


__all__ = ["StopRequest", "quiet_worker_init"]
