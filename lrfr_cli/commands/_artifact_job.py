"""The steps around a command's work on workspace artifacts (align, degrade, sr, make-list, export, quality).

Each such command claims its artifact under the workspace's lock and manifest
(:meth:`Artifact.run`), says "up to date" and stops when the artifact is complete from the same
inputs and options, says so when it resumes a killed run, records its counts in the manifest,
reports the inputs it could not use (``failures.csv``, the manifest, one warning naming the
first) and ends with one summary line whose JSON names the command and whether it did anything.
:class:`ArtifactJob` does these steps one way, so a command states only what differs: the
artifact, its options and inputs, the work, and the words. (``quality`` claims through it but
keeps its own summary, whose JSON predates the shared keys.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..workspace import Artifact, Run, atomic_write_text
from ._common import state

FAILURES_CSV = "failures.csv"
#: Failures a manifest keeps (a folder of 500k unreadable files must not make it megabytes);
#: failures.csv and the JSON summary list them all.
MANIFEST_FAILURES = 1000

Failures = Sequence[tuple[str, str]]  # (input path relative to the source, reason), sorted


class ArtifactJob:
    """One invocation of an artifact-writing command: its name, ``--force``, the keys every JSON
    summary of it carries (``doc``: name, path ...) and its start time."""

    def __init__(self, command: str, *, force: bool, **doc: Any) -> None:
        self.st = state()
        self.command = command
        self.force = force
        self.doc = doc
        self.t0 = time.time()

    @contextlib.contextmanager
    def claim(
        self,
        art: Artifact,
        options: dict[str, Any],
        inputs: dict[str, Any],
        *,
        up_to_date: Callable[[dict[str, Any]], str] | None = None,
        resuming: str | None = None,
    ) -> Iterator[Run]:
        """Hold ``art`` for the work (see :meth:`Artifact.run`); leaving the block marks it complete.

        When an identical complete artifact exists the yielded run is ``skipped`` (the caller
        returns) and, given ``up_to_date`` (what is there, from the recorded counts), the "up to
        date" summary has been printed. ``resuming`` is said when a killed run is resumed."""
        with art.run(self.command, options, inputs, force=self.force) as run:
            if run.skipped and up_to_date is not None:
                self.up_to_date(up_to_date(run.counts), run.counts)
            elif run.resumed and resuming:
                self.st.info(resuming)
            yield run

    @contextlib.contextmanager
    def claim_each(self, claims: Iterable[tuple[Artifact, dict[str, Any]]], inputs: dict[str, Any]) -> Iterator[list[Run]]:
        """Hold several artifacts made from the same inputs (degrade: one per size, each with its
        options) until the block ends; a refused one releases those already held."""
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(art.run(self.command, options, inputs, force=self.force)) for art, options in claims]

    def up_to_date(self, what: str, data: dict[str, Any]) -> None:
        """The summary of a job with nothing to do: ``what`` is already there."""
        self.st.summary(f"[green]up to date[/green] {what} (--force to redo)", {"command": self.command, **self.doc, "up_to_date": True, **data})

    def clock(self, items: int) -> tuple[float, float]:
        """Seconds since the job began, and ``items`` per second over them."""
        seconds = time.time() - self.t0
        return seconds, items / seconds if seconds > 0 else 0.0

    def warn_failures(self, failures: Failures, what: str) -> None:
        """One warning for the inputs that failed: how many (``what`` they are) and the first."""
        if failures:
            rel, why = failures[0]
            self.st.warn(f"{len(failures)} {what}, e.g. {rel}: {why}")

    def done(self, line: str, data: dict[str, Any]) -> None:
        """The summary of a job that did its work."""
        self.st.summary(line, {"command": self.command, **self.doc, "up_to_date": False, **data})


def failure_rows(failures: Failures, limit: int | None = None) -> list[dict[str, str]]:
    """Failures as JSON objects (the JSON summaries; align's manifest, up to ``limit``)."""
    return [{"path": rel, "reason": why} for rel, why in failures[:limit]]


def failure_lines(failures: Failures) -> list[str]:
    """Failures as ``"rel: reason"`` lines, as degrade's and sr's manifests keep them."""
    return [f"{rel}: {why}" for rel, why in failures[:MANIFEST_FAILURES]]


def write_failures_csv(folder: Path, failures: Failures) -> None:
    """``folder/failures.csv``: a ``path,reason`` header and one row per failure (none: the header)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "reason"])
    w.writerows(failures)
    atomic_write_text(folder / FAILURES_CSV, buf.getvalue())
