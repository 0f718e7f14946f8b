"""Loss-head registry: ``--loss NAME`` resolves here; a new loss is one file plus one line.

Every head is called as ``head(embeddings, labels, margin=None, **fields) -> logits`` (B×C) and
has ``loss(...)`` (cross-entropy on those logits) and ``step(step)`` (per-optimiser-step schedule
hook). What a head needs beyond embeddings and labels it declares, so that nothing else has to
know about it:

* its **options** are its constructor's keyword arguments with defaults (``s``, ``m``, ...),
  optionally described by a class attribute ``options = {"m_hr": (float, 0.35, "help"), ...}``:
  ``lrfr train --loss-opt KEY=VALUE`` is checked and converted against them, and ``--help``
  shows them with their defaults;
* its **batch fields** are the class attribute ``needs`` (e.g. ``("is_lr",)`` or
  ``("quality",)``): :class:`~lrfr_cli.engine.tasks.ClassifierTask` hands it those fields of the
  batch (made by a batch transform or a field provider) as keyword arguments.

The registry line (or the head's ``summary`` attribute) carries the one-line description that
``lrfr train --help`` prints.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import LrfrError
from .adaface import AdaFaceHead
from .approach import Approach1Head, Approach2Head
from .arcface import ArcFaceHead
from .cosface import CosFaceHead
from .margin import MarginHead
from .softmax import SoftmaxHead
from .sphereface import SphereFaceHead, psi


@dataclass(frozen=True)
class LossEntry:
    """A registered loss: how to build it and the one line that says what it is for."""

    factory: Callable[..., nn.Module]
    summary: str


_REGISTRY: dict[str, LossEntry] = {}


def register_head(name: str, factory: Callable[..., nn.Module], summary: str | None = None) -> None:
    """Add a loss: ``register_head("adaface", AdaFaceHead, "margin adapted by feature norm")``
    (``summary`` defaults to the head's ``summary`` class attribute)."""
    summary = summary or getattr(factory, "summary", None)
    if not summary or "\n" in summary:
        raise ValueError(f"loss {name!r}: the summary is one non-empty line (it is printed by --help)")
    _REGISTRY[name.lower()] = LossEntry(factory, summary)


register_head("softmax", SoftmaxHead, "plain linear classifier, no margin: the baseline")
register_head("cosface", CosFaceHead, "additive cosine margin cos θ − m (Wang et al. 2018)")
register_head("arcface", ArcFaceHead, "additive angular margin cos(θ + m) (Deng et al. 2019): the strong default")
register_head("sphereface", SphereFaceHead, "multiplicative angular margin cos(mθ), annealed from softmax (Liu et al. 2017)")
register_head("adaface", AdaFaceHead, "margin adapted by the batch-normalised feature norm, EMA of norm stats (Kim et al. 2022)")
register_head("approach1", Approach1Head, "ArcFace with a per-sample margin by input resolution, HR vs LR (thesis seed; CRB on)")
register_head("approach2", Approach2Head, "ArcFace with a bounded margin from the input's Laplacian quality (thesis seed; CRB on)")


def heads() -> tuple[str, ...]:
    return tuple(_REGISTRY)


HEADS: tuple[str, ...] = heads()


def _entry(name: str) -> tuple[str, LossEntry]:
    key = (name or "").strip().lower()
    if key not in _REGISTRY:
        raise LrfrError(f"unknown loss {name!r}; choose one of: {', '.join(heads())}")
    return key, _REGISTRY[key]


def head_factory(name: str) -> Callable[..., nn.Module]:
    """The registered class/factory of ``name`` (to read its declared attributes, e.g. ``crb``)."""
    return _entry(name)[1].factory


def head_options(name: str) -> dict[str, Any]:
    """The loss's options and their defaults: the head constructor's keyword arguments with
    defaults, overlaid by the head's declared ``options`` (``{key: (type, default, help)}``)."""
    _, entry = _entry(name)
    sig = inspect.signature(entry.factory)
    opts = {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name not in ("embedding_size", "num_classes")
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is not inspect.Parameter.empty
    }
    for key, (_type, default, _help) in _declared(entry).items():
        opts[key] = default
    return opts


def _declared(entry: LossEntry) -> dict[str, tuple[type, Any, str]]:
    declared = getattr(entry.factory, "options", None)
    return dict(declared) if isinstance(declared, dict) else {}


def _convert(loss: str, key: str, text: str, default: Any, kind: type | None = None) -> Any:
    try:
        if kind is bool or isinstance(default, bool):
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is not None:
            value = kind(text)
        elif isinstance(default, int):
            value = int(text)
        elif isinstance(default, float) or default is None:
            value = float(text)
        else:
            value = type(default)(text)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(text)  # nan/inf parse as floats but no loss option means them
        return value
    except ValueError:
        want = (kind or (type(default) if default is not None else float)).__name__
        raise LrfrError(f"--loss-opt {key}={text}: {loss}'s {key} takes a {want} value (default {default})") from None


def parse_loss_opts(name: str, items: Sequence[str]) -> dict[str, Any]:
    """``["m=0.4", "h=0.333"]`` → ``{"m": 0.4, "h": 0.333}``, typed by the options' defaults."""
    key, entry = _entry(name)
    opts = head_options(key)
    declared = _declared(entry)
    out: dict[str, Any] = {}
    for item in items:
        k, sep, v = item.partition("=")
        k = k.strip().replace("-", "_")
        if not sep or not k:
            raise LrfrError(f"--loss-opt {item!r}: expected KEY=VALUE")
        if k not in opts:
            have = ", ".join(f"{o}={d}" for o, d in opts.items()) or "none"
            raise LrfrError(f"--loss-opt {item}: loss {key} has no option {k!r} (its options: {have})")
        out[k] = _convert(key, k, v, opts[k], declared[k][0] if k in declared else None)
    return out


def build_head(name: str, embedding_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A head for ``num_classes``; ``kwargs`` (s, m, ...) override the loss's defaults when not None."""
    key, entry = _entry(name)
    if num_classes < 2:
        raise LrfrError(f"training a {key} head needs at least 2 identities, got {num_classes}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    opts = head_options(key)
    unknown = sorted(set(given) - set(opts))
    if unknown:
        have = ", ".join(opts) or "none"
        raise LrfrError(f"loss {key} has no option {', '.join(unknown)} (its options: {have})")
    return entry.factory(embedding_size, num_classes, **given)


def describe_losses() -> list[str]:
    """One line per loss for ``--help``: name, options with defaults, what it is for."""
    lines = []
    for name, entry in _REGISTRY.items():
        opts = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in head_options(name).items() if v is not None)
        lines.append(f"{name}{f' ({opts})' if opts else ''}: {entry.summary}")
    return lines


__all__ = [
    "HEADS",
    "AdaFaceHead",
    "Approach1Head",
    "Approach2Head",
    "ArcFaceHead",
    "CosFaceHead",
    "LossEntry",
    "MarginHead",
    "SoftmaxHead",
    "SphereFaceHead",
    "build_head",
    "describe_losses",
    "head_factory",
    "head_options",
    "heads",
    "parse_loss_opts",
    "psi",
    "register_head",
]
