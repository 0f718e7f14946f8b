"""Fine-tuning methods: ``lrfr finetune --method NAME`` resolves here.

Layout: one module per method, holding its loss (plain functions of embeddings, which the tests
check against brute-force loops) and its :class:`~.base.FinetuneTask`. They live here rather
than in ``losses/`` because a method is not a margin head: ``losses/`` heads map embeddings to
logits for ``--loss``, while a method owns the whole step (LR copies, a frozen teacher, mining
over the batch, its own classifier) — i.e. it is a task of the training seam. Adding a method
is one module plus one ``METHODS.register`` line; the loop, the runner and the command are shared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from ..losses.recipe import LossChoice
from ..registry import Entry, Option, Registry
from .base import FinetuneTask
from .crb import CrbTask
from .derivenet import DeriveNetTask
from .distill import DistillTask
from .octuplet import OctupletTask
from .siamese import SiameseTask

#: The methods by name; each class carries its ``summary`` and its typed ``options``.
METHODS: Registry[type[FinetuneTask]] = Registry("method", opt_flag="--method-opt", options_of=lambda cls: cls.options)
METHODS.register("octuplet", OctupletTask)
METHODS.register("distill", DistillTask)
METHODS.register("siamese", SiameseTask)
METHODS.register("derivenet", DeriveNetTask)
METHODS.register("crb", CrbTask)


def method_class(name: str) -> type[FinetuneTask]:
    """The method's task class; an unknown name is the registry's one-line error."""
    return METHODS.get(name)


def parse_method_opts(name: str, items: Sequence[str], flags: Mapping[str, tuple[str, Any]] | None = None) -> dict[str, Any]:
    """``--method-opt KEY=VALUE`` items typed by the method's options (``Registry.parse_options``),
    after the options that have flags of their own (``{"--margin": ("margin", 0.3)}``, None =
    not given); an item overrides a flag that sets the same key."""
    given = METHODS.flag_options(name, flags or {})
    given.update(METHODS.parse_options(name, items))
    return given


def resolve_options(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """The method's options: its defaults overlaid by ``given`` (unknown keys are an error that
    lists the method's options), validated."""
    opts = METHODS.check_options(name, given)
    method_class(name).check_options(opts)
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
    """One line per method for ``--help``: name, options with defaults, LR sizes, identity loss, what it is."""

    def extra(entry: Entry[type[FinetuneTask]]) -> str:
        cls = entry.obj
        loss = f"; identity loss {cls.default_loss[0]}" if cls.default_loss else ""
        return f"lr sizes {','.join(map(str, cls.default_lr_sizes))}{loss}"

    return METHODS.describe(extra)


__all__ = ["METHODS", "FinetuneTask", "Option", "build_method", "describe_methods", "method_class", "parse_method_opts", "resolve_options"]
