"""Per-face quality of a folder (``lrfr quality DIR``): the model's feature norm and the Laplacian.

With a model the faces go through the eval embedding pass (:func:`lrfr_cli.embed.extract.embed`),
so scores are cached per model and folder, and a killed run resumes from the last flush; the
Laplacian comes from the same pass (it is cached beside every embedding). Without a model only
the Laplacian measures are computed, in batches, which needs no network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.quality import laplacian_quality
from ..data.sources import AlignedFolder
from ..errors import LrfrError
from ..progress import ProgressFn, null_progress
from .cache import EmbeddingCache
from .extract import Variant, embed, pending
from .loaded import LoadedModel


def folder_images(root: Path, size: int) -> AlignedFolder:
    """The folder's faces as the network sees them: as they are at ``size``, else resized."""
    tag = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:10]
    return AlignedFolder(root=root, name=f"quality-{root.name}-{tag}", size=size, how="as given (resized to the input size)")


def laplacian_scores(root: Path, rels: Sequence[str], size: int = 112, batch: int = 256,
                     progress: ProgressFn = null_progress) -> dict[str, np.ndarray]:
    """Laplacian variance and mean |Laplacian| of every face at ``size`` (no model)."""
    images = folder_images(root, size)
    var, mabs = [], []
    progress(0, total=len(rels))
    for i in range(0, len(rels), batch):
        chunk = rels[i : i + batch]
        try:
            x = torch.from_numpy(np.stack([images.load(r) for r in chunk])).permute(0, 3, 1, 2)
        except Exception as e:  # an unreadable file: one line naming it
            raise LrfrError(f"cannot read an image of {root} ({e})") from None
        var.append(laplacian_quality(x, "variance").double().numpy())
        mabs.append(laplacian_quality(x, "mean-abs").double().numpy())
        progress(len(chunk))
    return {"laplacian_variance": np.concatenate(var), "laplacian_mean_abs": np.concatenate(mabs)}


def model_scores(model: LoadedModel, cache: EmbeddingCache, images: Any, rels: list[str], *, device: torch.device,
                 precision: str, batch_size: int, workers: int, progress: ProgressFn = null_progress) -> tuple[dict[str, np.ndarray], int]:
    """Feature norm and Laplacian measures through the cached embedding pass; also the count computed now."""
    hr = Variant(None)
    todo = pending({hr: rels}, cache)
    emb, stats = embed(model, images, {hr: rels}, cache, device=device, precision=precision, batch_size=batch_size,
                       workers=workers, progress=progress)
    return emb.quality(hr, rels), stats.computed if todo else 0
