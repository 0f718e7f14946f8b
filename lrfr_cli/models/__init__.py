"""Backbones: ``--backbone NAME`` resolves in :data:`BACKBONES` (a :class:`~lrfr_cli.registry.Registry`).

Every backbone maps a 112×112 RGB batch, preprocessed by :func:`preprocess`, to a
``B × embedding_size`` un-normalised embedding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..constants import INPUT_SIZE
from ..errors import LrfrError
from ..registry import Registry
from .iresnet import IResNet, iresnet
from .mobilefacenet import MobileFaceNet
from .sphere import Sphere20
from .tiny import TinyNet

#: ``embedding_size -> module`` per name; iterating it gives the names in ``--help`` order.
BACKBONES: Registry[Callable[[int], nn.Module]] = Registry("backbone")
BACKBONES.register("ir18", lambda e: iresnet("ir18", e), "IResNet-18 (insightface's layout)")
BACKBONES.register("ir50", lambda e: iresnet("ir50", e), "IResNet-50 (insightface's layout)")
BACKBONES.register("ir100", lambda e: iresnet("ir100", e), "IResNet-100 (insightface's layout)")
BACKBONES.register("sphere20", Sphere20, "SphereFace's 20-layer residual CNN")
BACKBONES.register("mobilefacenet", MobileFaceNet, "MobileFaceNet, small enough to train on a CPU")
BACKBONES.register("tiny", TinyNet, "a small net for tests and quick demos")


def build_backbone(name: str, embedding_size: int = 512) -> nn.Module:
    """A freshly initialised backbone; an unknown name is the registry's one-line error."""
    make = BACKBONES.get(name)
    if embedding_size < 1:
        raise LrfrError(f"embedding size {embedding_size}: must be >= 1")
    return make(embedding_size)


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
