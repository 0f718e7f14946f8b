"""Pair verification during training (to pick ``best.pt``).

``--val-pairs`` accuracy is at the best threshold over all pairs, i.e. optimistic; ``--val-bin``
packs are scored as peers score them during training (insightface's 10 contiguous folds, flip
fusion), so a run's log compares with published curves. ``--val-sizes`` adds the same sets with
the second face of every pair down-sampled (hr-lr, bicubic as ``lrfr eval``'s default), on the
device. ``lrfr eval`` runs the full protocols. Both go through
:func:`lrfr_cli.models.forward.forward` (preprocessing, channel order, precision) and
:func:`~lrfr_cli.models.forward.fuse` (flip test-time augmentation, L2 normalisation), and the
threshold comes from :func:`lrfr_cli.metrics.best_threshold`: what validation picks ``best.pt`` on
is computed exactly as eval computes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..metrics import best_threshold, kfold_accuracy
from ..models.forward import forward, fuse

if TYPE_CHECKING:
    from ..data.binfile import BinPack


@dataclass
class PairSet:
    """Pre-decoded pair images (uint8, 3×112×112), so validation costs only forward passes."""

    images: torch.Tensor
    index: np.ndarray  # P×2 rows into images
    same: np.ndarray
    name: str = "pairs"
    folds: np.ndarray | None = None  # per-pair fold (k-fold accuracy); None: best threshold on all pairs

    @classmethod
    def load(cls, pairs: Sequence[tuple[Path, Path, bool]], name: str = "pairs") -> PairSet:
        from ..data.datasets import load_face

        paths = sorted({p for a, b, _ in pairs for p in (a, b)})
        pos = {p: i for i, p in enumerate(paths)}
        imgs = np.stack([load_face(p) for p in paths]).transpose(0, 3, 1, 2)
        index = np.asarray([[pos[a], pos[b]] for a, b, _ in pairs], dtype=np.int64)
        same = np.asarray([s for _, _, s in pairs], dtype=bool)
        return cls(torch.from_numpy(np.ascontiguousarray(imgs)), index, same, name)

    @classmethod
    def from_bin(cls, pack: BinPack, channels: str = "rgb", size: int = 112) -> PairSet:
        """A ``.bin`` pack's faces decoded once (uint8: 2N × 3 × 112 × 112, 37.6 KB a face), with
        insightface's folds."""
        from ..data.sources import fit_face

        imgs = np.stack([fit_face(pack.decode(i, channels), size) for i in range(len(pack.bins))]).transpose(0, 3, 1, 2)
        index = np.arange(len(pack.bins), dtype=np.int64).reshape(-1, 2)
        return cls(torch.from_numpy(np.ascontiguousarray(imgs)), index, pack.issame.copy(), pack.name, pack.folds())


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, device: torch.device, precision: str = "fp32", batch: int = 128,
          flip: bool = True, size: int | None = None) -> torch.Tensor:
    """L2-normalised embeddings of uint8 images (with ``flip``: summed with their mirror image;
    with ``size``: each image first down-sampled to ``size`` px and back, bicubic, on the device)."""
    from ..data.degrade import DegradeSpec, degrade_batch

    spec = DegradeSpec(size) if size is not None and size < images.shape[-2] else None
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device)
            if spec is not None:
                x = degrade_batch(x, spec)
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


def metric_names(set_names: Sequence[str], sizes: Sequence[int]) -> list[str]:
    """What :func:`verify_sets` reports, i.e. what ``--val-metric`` may name: ``val_acc`` (the mean
    over every set and size, as AdaFace keeps its best checkpoint), ``val_acc/SET`` (HR) and
    ``val_acc/SET@SIZE``."""
    return ["val_acc", *(f"val_acc/{n}{'' if s is None else f'@{s}'}" for n in set_names for s in [None, *sizes])]


def verify_sets(model: nn.Module, sets: Sequence[PairSet], device: torch.device, precision: str = "fp32",
                sizes: Sequence[int] = ()) -> dict[str, float]:
    """Accuracy of every set at HR and at each probe size (hr-lr), and their mean as ``val_acc``.

    A set with folds is scored by k-fold accuracy (``val_std/...`` beside it); one without (plain
    ``--val-pairs``) at its best threshold. A single such set without sizes reports what
    :func:`verify` always has (``val_acc``, ``val_threshold``, ``val_pairs``).
    """
    if len(sets) == 1 and not sizes and sets[0].folds is None:
        return verify(model, sets[0], device, precision)
    out: dict[str, float] = {}
    accs: list[float] = []
    for ps in sets:
        hr = embed(model, ps.images, device, precision)
        probes = np.unique(ps.index[:, 1])
        pos = np.full(len(ps.images), -1, dtype=np.int64)
        pos[probes] = np.arange(len(probes))
        for size in [None, *sizes]:
            if size is None:
                second = hr[ps.index[:, 1]]
            else:  # only the probe side of each pair is degraded: embed just those faces
                lr = embed(model, ps.images[torch.from_numpy(probes)], device, precision, size=size)
                second = lr[pos[ps.index[:, 1]]]
            scores = (hr[ps.index[:, 0]] * second).sum(1).double().numpy()
            key = f"val_acc/{ps.name}" + ("" if size is None else f"@{size}")
            if ps.folds is None:
                out[key] = best_threshold(scores, ps.same)[1]
            else:
                kf = kfold_accuracy(scores, ps.same, ps.folds)
                out[key] = kf.accuracy
                out[key.replace("val_acc/", "val_std/", 1)] = kf.std
            accs.append(out[key])
    return {"val_acc": float(np.mean(accs)), **out}
