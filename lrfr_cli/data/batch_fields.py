"""Fields a training batch gains on the device: batch transforms (Cross-Resolution Batches) and
the providers of fields a loss needs that the data does not carry (Laplacian quality).

They live with the data, not in the loop: a transform or a provider is a function of the raw
batch and of where the step is (``seed``, ``step``, ``rank``: the training seam's
:class:`~lrfr_cli.engine.tasks.StepContext` has them), so a resumed run rebuilds the same batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch

from ..engine.seed import step_seed
from .crb import check_crb_options, cross_resolution_batch
from .quality import laplacian_quality

#: A batch: ``images`` (uint8 B×3×H×W), ``labels`` (int64 B) and optional extra per-sample fields.
Batch = dict[str, torch.Tensor]


class StepInfo(Protocol):
    """Where a step is: what a transform seeds its random choices from."""

    seed: int
    step: int
    rank: int


class BatchTransform(Protocol):
    """Rewrites the raw batch on the device before the network sees it (e.g. Cross-Resolution
    Batches add LR copies and ``is_lr``). ``provides`` names the fields it adds."""

    provides: tuple[str, ...]

    def __call__(self, batch: Batch, ctx: StepInfo) -> Batch: ...


FieldProvider = Callable[[Batch, StepInfo], torch.Tensor]


#: Fields a task can compute from the batch when a head needs them and the batch lacks them
#: (a new field is one line here).
FIELD_PROVIDERS: dict[str, FieldProvider] = {
    "quality": lambda batch, ctx: laplacian_quality(batch["images"]),
}


class CrossResolutionBatches:
    """Cross-Resolution Batches as a batch transform: LR versions of the batch's faces made on the
    device by :func:`~lrfr_cli.data.crb.cross_resolution_batch` (``degrade_batch`` inside), same
    labels; adds ``is_lr`` and ``lr_size``. Its random choices (rows, sizes) come from the step's
    seed (:func:`~lrfr_cli.engine.seed.step_seed`), so a resumed run rebuilds the same batches."""

    provides: tuple[str, ...] = ("is_lr", "lr_size")

    def __init__(self, sizes: Sequence[int], mode: str = "copies", lr_prob: float = 0.5, method: str = "bicubic") -> None:
        self.sizes = check_crb_options(sizes, mode, lr_prob, method=method)
        self.mode, self.lr_prob, self.method = mode, float(lr_prob), method

    def __call__(self, batch: Batch, ctx: StepInfo) -> Batch:
        seed = step_seed(ctx.seed, ctx.step, ctx.rank)
        out = cross_resolution_batch(batch["images"], batch["labels"], self.sizes, self.mode, self.lr_prob, generator=seed, method=self.method)
        rest = {k: v for k, v in batch.items() if k not in ("images", "labels")}
        if rest and self.mode == "copies":  # per-sample extras follow their rows into the LR half
            rest = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.shape[:1] == batch["labels"].shape[:1] else v for k, v in rest.items()}
        return {**rest, "images": out.images, "labels": out.labels, "is_lr": out.is_lr, "lr_size": out.lr_size}

    def __repr__(self) -> str:
        return f"CrossResolutionBatches(sizes={self.sizes}, mode={self.mode!r}, lr_prob={self.lr_prob}, method={self.method!r})"


__all__ = ["FIELD_PROVIDERS", "Batch", "BatchTransform", "CrossResolutionBatches", "FieldProvider", "StepInfo"]
