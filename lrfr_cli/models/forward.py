"""The one embedding forward: what training validation, ``lrfr eval``, the quality pass and the
export's parity check all run a network through.

It sits beside :func:`lrfr_cli.models.preprocess`, below the engine and the eval code, so that
every caller gets the same preprocessing, channel order and precision, and the same flip fusion
and L2 normalisation: what validation picks ``best.pt`` on is computed exactly as eval computes it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.device import autocast
from . import preprocess


def forward(module: nn.Module, x: torch.Tensor, precision: str = "fp32", channel_order: str = "rgb") -> torch.Tensor:
    """uint8 RGB ``B×3×H×W`` → raw (un-normalised) float32 embeddings of one view.

    Raw, because the eval cache keeps the plain and mirrored views apart and :func:`fuse` adds
    them before normalising. ``channel_order="bgr"`` serves networks trained on BGR input.
    """
    if channel_order == "bgr":
        x = x.flip(1)
    with torch.inference_mode(), autocast(x.device, precision):
        out = module(preprocess(x))
    if isinstance(out, (tuple, list)):  # networks that also return a norm or logits
        out = out[0]
    return out.float()


def fuse(e: torch.Tensor, e_flip: torch.Tensor | None = None) -> torch.Tensor:
    """Flip TTA + L2: the sum of a face's and its mirror image's raw embeddings, at unit length.

    Summing *raw* embeddings (not normalised ones) is the insightface/facenet convention, so a
    confident view weighs more than an uncertain one.
    """
    e = e.float() if e_flip is None else e.float() + e_flip.float()
    return F.normalize(e, dim=1)


__all__ = ["forward", "fuse"]
