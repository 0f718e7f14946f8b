"""Fine-tuning methods: ``lrfr finetune --method NAME`` resolves here.

Layout: one module per method, holding its loss (plain functions of embeddings, which the tests
check against brute-force loops) and its :class:`~.base.FinetuneTask`. They live here rather
than in ``losses/`` because a method is not a margin head: ``losses/`` heads map embeddings to
logits for ``--loss``, while a method owns the whole step (LR copies, a frozen teacher, mining
over the batch, its own classifier) — i.e. it is a task of the training seam. Adding a method
is one module plus one line in :data:`METHODS`; the loop, the runner and the command are shared.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import LrfrError
from ..losses.recipe import LossChoice
from .base import FinetuneTask, MethodOption
from .crb import CrbTask
from .derivenet import DeriveNetTask
from .distill import DistillTask
from .octuplet import OctupletTask
from .siamese import SiameseTask

METHODS: dict[str, type[FinetuneTask]] = {
    "octuplet": OctupletTask,
    "distill": DistillTask,
    "siamese": SiameseTask,
    "derivenet": DeriveNetTask,
    "crb": CrbTask,
}


def method_class(name: str) -> type[FinetuneTask]:
    key = (name or "").strip().lower()
    if key not in METHODS:
        raise LrfrError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[key]


def resolve_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's options: its defaults overlaid by ``given`` (unknown keys are an error that
    lists the method's options), validated."""
    cls = method_class(name)
    unknown = sorted(set(given) - set(cls.options))
    if unknown:
        have = ", ".join(f"{k}={o.default}" for k, o in cls.options.items())
        raise LrfrError(f"method {cls.name} has no option {', '.join(unknown)} (its options: {have})")
    opts = {k: o.default for k, o in cls.options.items()}
    opts.update(given)
    cls.check_options(opts)
    return opts


def build_method(
    name: str,
    model: nn.Module,
    *,
    embedding_size: int,
    num_classes: int,
    lr_sizes: tuple[int, ...],
    opts: dict[str, Any],
    loss: LossChoice | None,
    teacher: nn.Module | None = None,
    freeze_backbone: bool = False,
    head_lr_scale: float = 1.0,
) -> FinetuneTask:
    """The method's task around the student ``model`` (``teacher``: a frozen copy of the parent;
    ``loss``: the identity head's, from :meth:`FinetuneTask.identity_loss`)."""
    cls = method_class(name)
    opts = resolve_options(name, opts)
    head = cls.make_head(embedding_size, num_classes, loss, opts)
    kw: dict[str, Any] = {"lr_sizes": lr_sizes, "opts": opts, "freeze_backbone": freeze_backbone, "head_lr_scale": head_lr_scale}
    if cls.needs_teacher:
        if teacher is None:
            raise ValueError(f"method {cls.name} needs the teacher (a frozen copy of the --from model)")
        kw["teacher"] = teacher
    return cls(model, head, **kw)


def describe_methods() -> list[str]:
    """One line per method for ``--help``: name, options with defaults, what it is."""
    lines = []
    for name, cls in METHODS.items():
        opts = ", ".join(f"{k}={o.default}" for k, o in cls.options.items())
        sizes = ",".join(map(str, cls.default_lr_sizes))
        loss = f"; identity loss {cls.default_loss[0]}" if cls.default_loss else ""
        lines.append(f"{name} ({opts}; lr sizes {sizes}{loss}): {cls.summary}")
    return lines


__all__ = ["METHODS", "FinetuneTask", "MethodOption", "build_method", "describe_methods", "method_class", "resolve_options"]
