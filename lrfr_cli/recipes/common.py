"""What ``lrfr train`` and ``lrfr finetune`` share: their common options, one ``LoopConfig``
builder and the pieces of the one-line run summary.

The commands only declare options (``commands/_options.py``) and print; a recipe turns the
options into a :class:`~lrfr_cli.engine.runner.TrainingRun`. Keeping the shared part here is
what keeps the two commands from drifting (they once built ``LoopConfig`` in two styles and
wrote three copies of the summary).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ..engine.loop import LoopConfig
from ..engine.optim import OPTIMIZERS, SCHEDULES
from ..engine.runner import RunOutcome

A = TypeVar("A", bound="RunArgs")


@dataclass
class RunArgs:
    """The options every training command takes (declared once in ``commands/_options.py``)."""

    data: str
    data_root: Path | None
    allow_outside_root: bool
    run_name: str | None
    epochs: int | None
    max_steps: int | None
    lr: float | None
    optimizer: str
    momentum: float
    weight_decay: float
    schedule: str
    warmup_steps: int
    device: str
    precision: str
    channels_last: bool
    clip_grad: float | None
    checkpoint_every: int
    seed: int
    workers: int
    flip: bool
    cache: bool
    val_pairs: Path | None
    val_root: Path | None
    threads: int
    log_every: int
    resume: bool
    force: bool

    @classmethod
    def from_params(cls: type[A], params: Mapping[str, Any]) -> A:
        """The command's parameters (``locals()`` at its first line) as this dataclass."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    def check_loop_choices(self) -> None:
        """Optimiser and schedule names, canonical, or the registry's one error that lists them."""
        self.optimizer, self.schedule = OPTIMIZERS.key(self.optimizer), SCHEDULES.key(self.schedule)


def loop_config(a: RunArgs, *, precision: str, global_batch: int, default_epochs: int, default_lr: Mapping[str, float],
                sampler: str = "epoch", images_per_identity: int = 4, compile: bool = False, lr: float | None = None) -> LoopConfig:
    """The loop's configuration from the shared options: ``default_epochs`` when neither
    ``--epochs`` nor ``--max-steps`` is given, ``default_lr[optimizer]`` without ``--lr``."""
    epochs = default_epochs if a.epochs is None and a.max_steps is None else a.epochs
    return LoopConfig(
        global_batch=global_batch, epochs=epochs, max_steps=a.max_steps,
        lr=lr if lr is not None else (a.lr if a.lr is not None else default_lr[a.optimizer]),
        optimizer=a.optimizer, momentum=a.momentum, weight_decay=a.weight_decay, schedule=a.schedule,
        warmup_steps=a.warmup_steps, precision=precision, channels_last=a.channels_last, compile=compile,
        clip_grad=a.clip_grad, checkpoint_every=a.checkpoint_every, seed=a.seed, flip=a.flip, sampler=sampler,
        images_per_identity=images_per_identity, log_every=a.log_every, workers=a.workers,
    )


@dataclass
class RunSummary:
    """What a recipe says about its run in the one-line summary; ``commands/_training.py``
    renders it (the wording is shared, these are the parts that differ)."""

    command: str
    verb: str = "trained"                      # "fine-tuned"
    kind: str = ""                             # "SR " before runs/NAME
    what: str = ""                             # "distill from PARENT" (up to date)
    what_done: str = ""                        # "distill from PARENT (sha1)" (after a run)
    redo: str = "retrain"                      # "(--force to ...)"
    loss_digits: int = 3
    speed: bool = True                         # images/s in the line
    record: dict[str, Any] = field(default_factory=dict)   # extra --json keys
    validation: Callable[[RunOutcome], str] = lambda out: ""


def best_metric(metric: str, label: str | None = None) -> Callable[[RunOutcome], str]:
    """``", best METRIC 0.9876"`` when the run kept a best checkpoint by ``metric``."""

    def text(out: RunOutcome) -> str:
        value = out.counts.get(f"best_{metric}")
        return f", best {label or metric} {value:.4f}" if value is not None else ""

    return text


__all__ = ["RunArgs", "RunSummary", "best_metric", "loop_config"]
