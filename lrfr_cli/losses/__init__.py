"""Loss-head registry: ``--loss NAME`` resolves here; a new loss is one file plus one line.

Every head is called as ``head(embeddings, labels, margin=None) -> logits`` (B×C) and has
``loss(embeddings, labels, margin=None)`` (cross-entropy on those logits) and ``step(step)``
(per-optimiser-step schedule hook).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..errors import LrfrError
from .arcface import ArcFaceHead
from .cosface import CosFaceHead
from .margin import MarginHead
from .softmax import SoftmaxHead
from .sphereface import SphereFaceHead, psi

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "softmax": SoftmaxHead,
    "cosface": CosFaceHead,
    "arcface": ArcFaceHead,
    "sphereface": SphereFaceHead,
}


def register_head(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a head (used by the low-resolution recipes' modules)."""
    _REGISTRY[name] = factory


def heads() -> tuple[str, ...]:
    return tuple(_REGISTRY)


HEADS: tuple[str, ...] = heads()


def build_head(name: str, embedding_size: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A head for ``num_classes``; ``kwargs`` (s, m, ...) override the loss's defaults when not None."""
    key = (name or "").strip().lower()
    if key not in _REGISTRY:
        raise LrfrError(f"unknown loss {name!r}; choose one of: {', '.join(heads())}")
    if num_classes < 2:
        raise LrfrError(f"training a {key} head needs at least 2 identities, got {num_classes}")
    return _REGISTRY[key](embedding_size, num_classes, **{k: v for k, v in kwargs.items() if v is not None})


__all__ = ["ArcFaceHead", "CosFaceHead", "HEADS", "MarginHead", "SoftmaxHead", "SphereFaceHead", "build_head", "heads", "psi", "register_head"]
