"""Loss-head registry: ``--loss NAME`` resolves here; a new loss is one file plus one line.

Every head is called as ``head(embeddings, labels, margin=None, **fields) -> logits`` (B×C) and
has ``loss(...)`` (cross-entropy on those logits) and ``step(step)`` (per-optimiser-step schedule
hook). What a head needs beyond embeddings and labels it declares, so that nothing else has to
know about it:

* its **options** are its constructor's keyword arguments with defaults (``s``, ``m``, ...),
  optionally described by a class attribute ``options = {"m_hr": (float, 0.35, "help"), ...}``
  and put in one spelling by an optional classmethod ``canonical_options(dict) -> dict``:
  ``lrfr train --loss-opt KEY=VALUE`` is checked and converted against them, and ``--help``
  shows them with their defaults;
* its **batch fields** are the class attribute ``needs`` (e.g. ``("is_lr",)`` or
  ``("images",)``): :class:`~lrfr_cli.engine.tasks.ClassifierTask` hands it those fields of the
  batch (made by a batch transform or a field provider) as keyword arguments;
* its **CRB policy** is the class attribute ``crb`` (``off``, ``default`` or ``required``);
* its **sharding hooks** (``margin_terms``/``target_from_terms``, inherited from
  :class:`MarginHead`) let :mod:`.sharded` split its classes over ranks.

The registry line (or the head's ``summary`` attribute) carries the one-line description that
``lrfr train --help`` prints. :func:`~lrfr_cli.losses.recipe.resolve_loss` turns the command
line into a :class:`~lrfr_cli.losses.recipe.LossChoice`, the one thing a command asks.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from ..errors import LrfrError
from ..registry import Option, Registry
from .adaface import AdaFaceHead
from .approach import Approach1Head, Approach2Head
from .arcface import ArcFaceHead
from .cosface import CosFaceHead
from .margin import MarginHead
from .softmax import SoftmaxHead
from .sphereface import SphereFaceHead, psi


def head_options_of(factory: Any) -> dict[str, Option]:
    """A head's options: its constructor's keyword arguments with defaults, overlaid by the
    head's declared ``options`` (``{key: (type, default, help)}``)."""
    sig = inspect.signature(factory)
    opts = {
        p.name: Option(p.default)
        for p in sig.parameters.values()
        if p.name not in ("embedding_size", "num_classes")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not inspect.Parameter.empty
    }
    declared = getattr(factory, "options", None)
    for key, (kind, default, help_) in (declared.items() if isinstance(declared, dict) else ()):
        opts[key] = Option(default, help_, kind)
    return opts


LOSSES: Registry[type[nn.Module]] = Registry("loss", opt_flag="--loss-opt", options_of=head_options_of)
LOSSES.register("softmax", SoftmaxHead, "plain linear classifier, no margin: the baseline")
LOSSES.register("cosface", CosFaceHead, "additive cosine margin cos θ − m (Wang et al. 2018)")
LOSSES.register("arcface", ArcFaceHead, "additive angular margin cos(θ + m) (Deng et al. 2019): the strong default")
LOSSES.register("sphereface", SphereFaceHead, "multiplicative angular margin cos(mθ), annealed from softmax (Liu et al. 2017)")
LOSSES.register("adaface", AdaFaceHead, "margin adapted by the batch-normalised feature norm, EMA of norm stats (Kim et al. 2022)")
LOSSES.register("approach1", Approach1Head, "ArcFace with a per-sample margin by input resolution, HR vs LR (thesis seed; CRB on)")
LOSSES.register("approach2", Approach2Head, "ArcFace with a bounded margin from the input's Laplacian quality (thesis seed; CRB on)")


def heads() -> tuple[str, ...]:
    return LOSSES.names()


HEADS: tuple[str, ...] = heads()


def build_head(name: str, embedding_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A head for ``num_classes``; ``kwargs`` (s, m, ...) override the loss's defaults when not None."""
    entry = LOSSES.entry(name)
    if num_classes < 2:
        raise LrfrError(f"training a {entry.name} head needs at least 2 identities, got {num_classes}")
    LOSSES.check_options(name, kwargs)
    return entry.obj(embedding_size, num_classes, **{k: v for k, v in kwargs.items() if v is not None})


def describe_losses() -> list[str]:
    """One line per loss for ``--help``: name, options with defaults, what it is for."""
    return LOSSES.describe()


__all__ = [
    "HEADS",
    "LOSSES",
    "AdaFaceHead",
    "Approach1Head",
    "Approach2Head",
    "ArcFaceHead",
    "CosFaceHead",
    "MarginHead",
    "SoftmaxHead",
    "SphereFaceHead",
    "build_head",
    "describe_losses",
    "head_options_of",
    "heads",
    "psi",
]
