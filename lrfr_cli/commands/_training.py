"""The end of every training command: run the recipe's :class:`TrainingRun`, print one line.

``lrfr train`` (both tasks) and ``lrfr finetune`` share it, so a run is summed up the same way
whichever command made it: "up to date", or what it trained, from which loss to which, how fast,
its best validation figure and where it is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..engine import resolve_device, resolve_precision
from ..engine.runner import RunOutcome, TrainingRun, run_training
from ..recipes.common import RunSummary
from ..ui import State
from ..workspace import Workspace

Recipe = Callable[[Path, torch.device, str], tuple[TrainingRun, RunSummary]]


def train_with(st: State, ws: Workspace, device: str, precision: str, recipe: Recipe) -> None:
    """Resolve the device, build the run (``recipe(ws_root, device, precision)``), train, sum up."""
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    spec, summary = recipe(ws.root, dev, prec)
    out = run_training(ws, spec, dev, progress=st.progress if st.show_progress else None)
    if out.is_main:
        st.summary(*summary_line(out, summary))


def summary_line(out: RunOutcome, s: RunSummary) -> tuple[str, dict]:
    """The one-line summary (rich markup) and the ``--json`` document of a finished run."""
    c = out.counts
    doc = {"command": s.command, "run": out.name, **s.record, "path": str(out.path), "up_to_date": out.up_to_date, **c}
    what = f"{s.what}, " if s.what else ""
    if out.up_to_date:
        return (f"[green]up to date[/green] runs/{out.name}: {what}{c.get('steps')} steps, final loss {c.get('final_loss')} "
                f"(--force to {s.redo})", doc)
    res = out.result
    assert res is not None
    done = f"{s.what_done}, " if s.what_done else ""
    fl = f"{res.first_loss:.{s.loss_digits}f}" if res.first_loss is not None else "-"
    ll = f"{res.loss:.{s.loss_digits}f}" if res.loss is not None else "-"
    resumed = f" (resumed from step {res.resumed_from})" if res.resumed_from is not None else ""
    speed = f", {res.images_per_s:,.0f} img/s" if s.speed else ""
    return (f"[green]{s.verb}[/green] {s.kind}runs/{out.name}: {done}{res.step} steps{resumed}, loss {fl} → {ll}"
            f"{speed}{s.validation(out)} → {out.path}", doc)
