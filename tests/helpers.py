"""Helpers for tests that run ``lrfr`` as a real process and kill it (``kill -9``) mid-run.

A test of crash safety starts the command as a subprocess, waits for the moment it wants (a
training step logged, files written, workers started), SIGKILLs it, re-runs the command and
compares. :class:`Killable` and :func:`kill_when` do the first three steps; :func:`kill_at_step`
is the training case. The process-tree functions read Linux ``/proc``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

LRFR = str(Path(sys.executable).parent / "lrfr")

T = TypeVar("T")


def lrfr_argv(ws: Path, *args: str) -> list[str]:
    """The command line of a quiet ``lrfr`` in workspace ``ws``."""
    return [LRFR, "-w", str(ws), "--quiet", *args]


class Killable:
    """A command run as a subprocess, to be SIGKILLed at a moment the test picks (a scheduler's
    pre-emption, a crash). Its output goes to a temporary file, not a pipe that could fill up and
    stall it before that moment. Leaving the ``with`` block kills it if it still runs."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(list(argv), stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_for(self, ready: Callable[[], T], timeout: float, poll: float = 0.02) -> T | None:
        """Poll ``ready()`` while the process runs: its first truthy value, or None when the
        process ended or ``timeout`` seconds passed first."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            seen = ready()
            if seen:
                return seen
            time.sleep(poll)
        return None

    def kill(self) -> int:
        """SIGKILL the process (only it: its children live on as orphans), reap it, return its
        exit status (``-signal.SIGKILL`` unless it had ended already)."""
        self.proc.kill()
        return self.proc.wait(timeout=60)

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> Killable:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


@dataclass
class Killed:
    """A process :func:`kill_when` killed: ``seen`` is what ``ready()`` returned at the kill
    (None: the process ended, or time ran out, before it was ready)."""

    pid: int
    seen: Any
    returncode: int
    output: str


def kill_when(argv: Sequence[str], ready: Callable[[], Any], *, timeout: float, poll: float = 0.02,
              env: dict[str, str] | None = None) -> Killed:
    """Run ``argv`` until ``ready()`` is truthy, then SIGKILL it."""
    with Killable(argv, env) as victim:
        seen = victim.wait_for(ready, timeout, poll)
        returncode = victim.kill()
        return Killed(victim.pid, seen, returncode, victim.output())


def last_step(metrics: Path) -> int | None:
    """The last step a run's ``metrics.jsonl`` has logged, or None."""
    if not metrics.exists():
        return None
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.strip()]
    return steps[-1] if steps else None


def kill_at_step(ws: Path, args: Sequence[str], step: int, *, run: str = "r", timeout: float = 240) -> int:
    """Run ``lrfr ARGS`` (a train or finetune of run ``run``) in ``ws`` as a subprocess and SIGKILL
    it once ``runs/RUN/metrics.jsonl`` has logged step ``step`` or later. Asserts the kill landed
    mid-run; returns the last step logged then."""
    metrics = ws / "runs" / run / "metrics.jsonl"

    def reached() -> int | None:
        s = last_step(metrics)
        return s if s is not None and s >= step else None

    killed = kill_when(lrfr_argv(ws, *args), reached, timeout=timeout)
    assert killed.seen is not None and killed.returncode == -signal.SIGKILL, killed.output[-2000:]
    return killed.seen


# --------------------------------------------------------------------------- process trees
def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces


def descendants(root: int) -> list[int]:
    """Every live process below ``root``."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            pp = _ppid(int(d.name))
            if pp is not None:
                parents[int(d.name)] = pp
    out: list[int] = []
    frontier = [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        frontier += kids
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def signal_all(pids: Sequence[int], sig: int) -> None:
    """Send ``sig`` to each of ``pids`` that still exists."""
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass
