"""Quick pair verification during training (to pick ``best.pt``), and the one embedding forward.

The accuracy is at the best threshold over all pairs, i.e. optimistic; ``lrfr eval`` runs the
real, fold-separated protocols. Both go through :func:`forward` (preprocessing, channel order,
precision) and :func:`fuse` (flip test-time augmentation, L2 normalisation), and the threshold
comes from :func:`lrfr_cli.protocols.metrics.best_threshold`: what validation picks ``best.pt``
on is computed exactly as eval computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import preprocess
from ..protocols.metrics import best_threshold
from .device import autocast


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


@dataclass
class PairSet:
    """Pre-decoded pair images (uint8, 3×112×112), so validation costs only forward passes."""

    images: torch.Tensor
    index: np.ndarray  # P×2 rows into images
    same: np.ndarray

    @classmethod
    def load(cls, pairs: Sequence[tuple[Path, Path, bool]]) -> PairSet:
        from ..data.datasets import load_face

        paths = sorted({p for a, b, _ in pairs for p in (a, b)})
        pos = {p: i for i, p in enumerate(paths)}
        imgs = np.stack([load_face(p) for p in paths]).transpose(0, 3, 1, 2)
        index = np.asarray([[pos[a], pos[b]] for a, b, _ in pairs], dtype=np.int64)
        same = np.asarray([s for _, _, s in pairs], dtype=bool)
        return cls(torch.from_numpy(np.ascontiguousarray(imgs)), index, same)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, device: torch.device, precision: str = "fp32", batch: int = 128,
          flip: bool = True) -> torch.Tensor:
    """L2-normalised embeddings of uint8 images (with ``flip``: summed with their mirror image)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device)
            e = forward(model, x, precision)
            out.append(fuse(e, forward(model, x.flip(3), precision) if flip else None).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def verify(model: nn.Module, pairs: PairSet, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    """Accuracy of ``cosine >= threshold`` at the threshold that is best on these very pairs."""
    e = embed(model, pairs.images, device, precision)
    scores = (e[pairs.index[:, 0]] * e[pairs.index[:, 1]]).sum(1).numpy()
    thr, acc = best_threshold(scores, pairs.same)
    return {"val_acc": acc, "val_threshold": thr, "val_pairs": len(scores)}
