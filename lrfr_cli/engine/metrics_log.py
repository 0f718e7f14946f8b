"""``metrics.jsonl``: one JSON object a line, written by rank 0 only, through this one writer.

Three kinds of line: a step record every ``--log-every`` steps (the loss and the task's named
terms averaged over the steps since the last record, ``lr``, ``images_per_s``, ``time``), a
validation record (``step``, ``epoch`` and the validation's metrics) and the non-finite loss
event. A resumed run first drops the lines logged after its checkpoint: they are redone.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..workspace import atomic_write_text

#: Keys of a step record that a task's loss terms may not take.
RESERVED = frozenset({"step", "epoch", "loss", "lr", "images_per_s", "time", "event"})


class MetricsLog:
    """The writer of ``metrics.jsonl`` (``enabled`` on rank 0; elsewhere every write is a no-op,
    while the step window is still kept so every rank agrees on when a record is due)."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.names: list[str] | None = None  # the loss terms, fixed by the first step
        self.start = self._win_t = time.time()
        self._window: list[list[float]] = []
        self._images = 0

    def _append(self, record: Mapping[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def drop_after(self, step: int) -> None:
        """Keep only the lines up to ``step`` (a resume redoes the rest)."""
        if self.enabled and self.path.exists():
            kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in kept))

    def term_names(self, terms: Mapping[str, Any], owner: str) -> list[str]:
        """The loss terms' names, in the first step's order; later steps must give the same ones."""
        if self.names is None:
            clash = RESERVED.intersection(terms)
            if clash:
                raise ValueError(f"{owner}: loss term name(s) {sorted(clash)} are reserved in metrics.jsonl")
            self.names = list(terms)
        return self.names

    def start_clock(self) -> None:
        """Start the run's clock and the first window now (after set-up and resume)."""
        self.start = self._win_t = time.time()

    def add_step(self, values: Sequence[float], images: int) -> None:
        """One step's ``[loss, *terms]`` (already reduced over ranks) and its global batch size."""
        self._window.append(list(values))
        self._images += images

    def write_steps(self, step: int, epoch: int, lr: float) -> None:
        """The step record: means over the window, throughput since the last record; resets the window."""
        now = time.time()
        ips = self._images / max(now - self._win_t, 1e-9)
        if self.enabled:
            means = np.mean(np.asarray(self._window, dtype=np.float64), axis=0).tolist()
            self._append({"step": step, "epoch": epoch, "loss": means[0], **dict(zip(self.names or [], means[1:])),
                          "lr": lr, "images_per_s": round(ips, 2), "time": round(now - self.start, 3)})
        self._win_t, self._images, self._window = now, 0, []

    def write_validation(self, step: int, epoch: int, results: Mapping[str, float]) -> None:
        self._append({"step": step, "epoch": epoch, **results})

    def write_non_finite(self, step: int, epoch: int, loss: float) -> None:
        self._append({"step": step, "epoch": epoch, "loss": str(loss), "event": "non-finite loss"})


__all__ = ["RESERVED", "MetricsLog"]
