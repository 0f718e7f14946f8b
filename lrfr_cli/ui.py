"""Rendering for commands: summaries, JSON output, progress bars.

Library layers never print; they accept a ``progress`` callback (see
:class:`lrfr_cli.progress.ProgressFn`) that commands create here. Keeping the rendering in one
module gives every command the same look and the same ``--json`` / ``--quiet`` behaviour.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from .progress import ProgressFn, null_progress


@dataclass
class State:
    """Global options shared by every subcommand (stored in the Typer context)."""

    workspace: str = "./lrfr-workspace"
    json: bool = False
    quiet: bool = False
    debug: bool = False
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    out: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))

    @property
    def show_progress(self) -> bool:
        # Progress goes to stderr, so it never pollutes --json on stdout.
        return not self.quiet and not self.json

    def info(self, message: str) -> None:
        """A human note (skipped in --quiet/--json mode)."""
        if not self.quiet and not self.json:
            self.console.print(message)

    def warn(self, message: str) -> None:
        if not self.json:
            self.console.print(f"[yellow]warning:[/yellow] {message}")

    def summary(self, line: str, data: dict[str, Any]) -> None:
        """The command's one-line result: JSON on stdout with --json, else one rich line."""
        if self.json:
            sys.stdout.write(json.dumps(data, default=_json_default, sort_keys=True) + "\n")
            sys.stdout.flush()
        elif not self.quiet:
            self.out.print(line)

    def table(self, table: Table) -> None:
        if not self.json and not self.quiet:
            self.out.print(table)

    @contextmanager
    def progress(self, description: str, total: int | None = None, unit: str = "img") -> Iterator[ProgressFn]:
        """A rich progress bar with items/s; yields the callback for library code."""
        if not self.show_progress:
            yield null_progress
            return
        # Imported here, not at the top: only commands that show a bar pay for it at start-up.
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        ]
        with Progress(*columns, console=self.console, transient=False) as bar:
            task = bar.add_task(description, total=total, rate="", info="")

            def update(advance: int = 1, total: int | None = None, **info: Any) -> None:
                if total is not None:
                    bar.update(task, total=total)
                bar.advance(task, advance)
                speed = bar.tasks[0].speed
                fields: dict[str, str] = {"rate": f"{speed:,.1f} {unit}/s" if speed else ""}
                if info:
                    fields["info"] = " ".join(f"{k}={_fmt(v)}" for k, v in info.items())
                bar.update(task, **fields)

            yield update


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(o)
