"""Quick pair verification during training (to pick ``best.pt``), not the evaluation protocol.

The accuracy is at the best threshold over all pairs, i.e. optimistic; ``lrfr eval`` runs the
real, fold-separated protocols.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models import preprocess
from .device import autocast


def best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Max over thresholds of accuracy of ``score > t``; O(n log n) by sorting."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], same[order].astype(np.int64)
    n, n_pos = len(y), int(y.sum())
    # Predict "same" for the top k; correct = TP(k) + TN(k).
    tp = np.concatenate([[0], np.cumsum(y)])
    k = np.arange(n + 1)
    correct = tp + (n - n_pos) - (k - tp)
    # Only cut between distinct scores.
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[:-1] != s[1:]
    best = int(np.argmax(np.where(valid, correct, -1)))
    thr = float(s[best - 1] + s[best]) / 2 if 0 < best < n else (float(s[0]) + 1.0 if best == 0 else float(s[-1]) - 1.0)
    return float(correct[best] / n), thr


@dataclass
class PairSet:
    """Pre-decoded pair images (uint8, 3×112×112), so validation costs only forward passes."""

    images: torch.Tensor
    index: np.ndarray  # P×2 rows into images
    same: np.ndarray

    @classmethod
    def load(cls, pairs: Sequence[tuple[Path, Path, bool]]) -> "PairSet":
        from ..data.datasets import load_face

        paths = sorted({p for a, b, _ in pairs for p in (a, b)})
        pos = {p: i for i, p in enumerate(paths)}
        imgs = np.stack([load_face(p) for p in paths]).transpose(0, 3, 1, 2)
        index = np.asarray([[pos[a], pos[b]] for a, b, _ in pairs], dtype=np.int64)
        same = np.asarray([s for _, _, s in pairs], dtype=bool)
        return cls(torch.from_numpy(np.ascontiguousarray(imgs)), index, same)


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, device: torch.device, precision: str = "fp32", batch: int = 128) -> torch.Tensor:
    """L2-normalised embeddings of uint8 images, summed with their mirror image (standard TTA)."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch):
            x = preprocess(images[i : i + batch].to(device))
            with autocast(device, precision):
                e = model(x).float() + model(torch.flip(x, dims=[3])).float()
            out.append(F.normalize(e, dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def verify(model: nn.Module, pairs: PairSet, device: torch.device, precision: str = "fp32") -> dict[str, float]:
    e = embed(model, pairs.images, device, precision)
    scores = (e[pairs.index[:, 0]] * e[pairs.index[:, 1]]).sum(1).numpy()
    acc, thr = best_threshold_accuracy(scores, pairs.same)
    return {"val_acc": acc, "val_threshold": thr, "val_pairs": int(len(scores))}
