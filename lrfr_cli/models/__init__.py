"""Backbone registry: ``--backbone NAME`` resolves here and ``--help`` lists :data:`BACKBONES`.

Every backbone maps a 112×112 RGB batch, preprocessed by :func:`preprocess`, to a
``B × embedding_size`` un-normalised embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..constants import INPUT_SIZE
from ..errors import LrfrError
from .iresnet import IResNet, iresnet
from .mobilefacenet import MobileFaceNet
from .sphere import Sphere20
from .tiny import TinyNet

_REGISTRY: dict[str, Callable[[int], nn.Module]] = {
    "ir18": lambda e: iresnet("ir18", e),
    "ir50": lambda e: iresnet("ir50", e),
    "ir100": lambda e: iresnet("ir100", e),
    "sphere20": lambda e: Sphere20(e),
    "mobilefacenet": lambda e: MobileFaceNet(e),
    "tiny": lambda e: TinyNet(e),
}
BACKBONES: tuple[str, ...] = tuple(_REGISTRY)


def build_backbone(name: str, embedding_size: int = 512) -> nn.Module:
    """A freshly initialised backbone; an unknown name is a user error that lists the choices."""
    key = (name or "").strip().lower()
    if key not in _REGISTRY:
        raise LrfrError(f"unknown backbone {name!r}; choose one of: {', '.join(BACKBONES)}")
    if embedding_size < 1:
        raise LrfrError(f"embedding size {embedding_size}: must be >= 1")
    return _REGISTRY[key](embedding_size)


def preprocess(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``B×3×H×W`` → float in [-1, 1]: ``(x/255 - 0.5) / 0.5``, insightface's convention.

    Floats are taken to be in [0, 1] already (e.g. the output of ``degrade_batch``).
    """
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    else:
        x = x.float()
    return (x - 0.5) / 0.5


__all__ = ["BACKBONES", "INPUT_SIZE", "IResNet", "MobileFaceNet", "Sphere20", "TinyNet", "build_backbone", "preprocess"]
