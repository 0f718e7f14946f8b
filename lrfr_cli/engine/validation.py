"""Validation inside the training loop: when it runs, what it logs, and ``best.pt``.

:class:`Validation` is what a recipe hands the loop (a function of the task returning metrics,
the metric that picks the best checkpoint, how often); :class:`Validator` is the loop's side of it.
What the metrics are (pair verification, PSNR) is the recipe's: :mod:`.validate`, ``sr.infer``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import LrfrError
from .checkpointer import BEST, Checkpointer, RunState
from .distributed import barrier, broadcast_object
from .metrics_log import MetricsLog
from .tasks import Task


@dataclass
class Validation:
    """Validation after every epoch (or every ``every`` steps, and at the end): ``run(task)``
    returns metrics including ``metric``, which picks ``best.pt`` (higher is better unless
    ``higher_is_better=False``). Runs on rank 0 only."""

    run: Callable[[Task], dict[str, float]]
    metric: str = "val_acc"
    higher_is_better: bool = True
    every: int = 0  # steps between validations; 0 = at each epoch's end

    def better(self, value: float, best: dict[str, Any] | None) -> bool:
        if best is None or self.metric not in best:
            return True
        return value > best[self.metric] if self.higher_is_better else value < best[self.metric]


class Validator:
    """Runs a :class:`Validation` for the loop: on rank 0, at most once per step; logs the result
    (``log`` and ``metrics.jsonl``), updates ``state.best`` and saves ``best.pt`` when it
    improved (with every rank when saving is a collective). A no-op without a validation."""

    def __init__(
        self,
        validation: Validation | None,
        task: Task,
        state: RunState,
        checkpointer: Checkpointer,
        metrics: MetricsLog,
        say: Callable[[str], None],
        *,
        main: bool,
        per_epoch: int,
    ) -> None:
        self.validation, self.task, self.state, self.checkpointer, self.metrics = validation, task, state, checkpointer, metrics
        self.say, self.main, self.per_epoch = say, main, per_epoch
        self._step = -1  # the step last validated (never twice at one step)

    @property
    def every(self) -> int:
        """Steps between validations (0: at each epoch's end, or no validation)."""
        return self.validation.every if self.validation is not None else 0

    def due_at_epoch_end(self) -> bool:
        return self.validation is not None and not self.validation.every

    def due_at_step(self, step: int, total: int) -> bool:
        return bool(self.every) and step % self.every == 0 and step < total

    def __call__(self, epoch: int, batch_in_epoch: int | None = None) -> dict[str, float] | None:
        """Validate at the current step; ``batch_in_epoch`` ``None`` means at the end of ``epoch``.
        Returns the metrics on rank 0 (``None`` elsewhere, or when this step was validated)."""
        v, state = self.validation, self.state
        if v is None or self._step == state.step:
            return None
        self._step = state.step
        bie = self.per_epoch if batch_in_epoch is None else batch_in_epoch
        collective = self.checkpointer.hooks.collective_save
        res = None
        improved = False
        if self.main:
            res = v.run(self.task)
            if v.metric not in res:
                raise LrfrError(f"validation returned no {v.metric!r} (got {', '.join(res) or 'nothing'})")
            self.say(f"validation after epoch {epoch}: " + ", ".join(f"{k}={val:.4g}" for k, val in res.items()))
            self.metrics.write_validation(state.step, epoch, res)
            if v.better(res[v.metric], state.best):
                state.best = {"metric": v.metric, v.metric: res[v.metric], "step": state.step, "epoch": epoch}
                improved = True
                if not collective:
                    self.checkpointer.save(BEST, state, epoch, bie)
        if collective and broadcast_object(improved):
            self.checkpointer.save(BEST, state, epoch, bie)  # a collective: every rank joins
        barrier()
        return res


__all__ = ["Validation", "Validator"]
