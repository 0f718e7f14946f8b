"""Optimisers and learning-rate schedules, as options rather than code per recipe."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import LrfrError
from ..registry import Registry

#: ``(param groups, lr, momentum) -> optimiser``; ``momentum`` is AdamW's beta1.
OPTIMIZERS: Registry[Callable[[list[dict[str, Any]], float, float], torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda groups, lr, momentum: torch.optim.SGD(groups, lr=lr, momentum=momentum), "SGD with momentum")
OPTIMIZERS.register("adamw", lambda groups, lr, momentum: torch.optim.AdamW(groups, lr=lr, betas=(momentum, 0.999)),
                    "AdamW, betas (momentum, 0.999)")


def param_groups(modules: Iterable[nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights only: decaying BN/PReLU/biases just shrinks them for nothing."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for mod in modules:
        for p in mod.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(name: str, groups: list[dict[str, Any]], lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """The optimiser over a task's parameter groups (see ``Task.param_groups``).

    Groups carry their own ``weight_decay`` and may carry ``lr_scale``, which the loop applies
    to the schedule's learning rate every step (torch keeps unknown group keys, so the scale is
    saved in and restored from the optimiser's state_dict with the group).
    """
    make = OPTIMIZERS.get(name)
    if lr <= 0:
        raise LrfrError(f"--lr {lr}: must be > 0")
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise LrfrError("nothing to train: every parameter of the task is frozen")
    return make(groups, lr, momentum)


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the step: linear warm-up, then the decay.

    Being a pure function of ``step`` makes resume exact with nothing to restore but the step.
    ``step``: ×``gamma`` at each fraction of the post-warm-up steps in ``milestones``;
    ``poly``: ``(1 − t)^power``; ``cosine``: half a cosine down to ``min_lr``.
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr: float = 0.0
    milestones: tuple[float, ...] = (0.6, 0.85)
    gamma: float = 0.1
    power: float = 2.0

    def __post_init__(self) -> None:
        SCHEDULES.get(self.kind)  # an unknown kind fails here, when the run is planned

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        t = min(1.0, (step - self.warmup_steps) / span)
        return SCHEDULES.get(self.kind)(self, t)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "base_lr": self.base_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps}


#: ``(schedule, t) -> learning rate`` after the warm-up, ``t`` the share of the remaining steps done.
SCHEDULES: Registry[Callable[[LRSchedule, float], float]] = Registry("schedule")
SCHEDULES.register("cosine", lambda s, t: s.min_lr + 0.5 * (s.base_lr - s.min_lr) * (1.0 + math.cos(math.pi * t)),
                   "half a cosine from the base rate down to min_lr")
SCHEDULES.register("step", lambda s, t: s.base_lr * s.gamma ** sum(t >= m for m in s.milestones),
                   "x gamma at each milestone (0.1 at 60% and 85%)")
SCHEDULES.register("poly", lambda s, t: s.min_lr + (s.base_lr - s.min_lr) * (1.0 - t) ** s.power, "(1 - t)^power down to min_lr")
SCHEDULES.register("constant", lambda s, t: s.base_lr, "the base rate throughout")
