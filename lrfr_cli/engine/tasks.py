"""Tasks: what one training step computes. The loop (:mod:`.loop`) owns everything else.

A task is an ``nn.Module`` (so DDP can wrap it) with one method the loop calls per step::

    out = task(batch, ctx)          # under autocast, inside DDP when distributed
    out.loss                        # the scalar that is back-propagated
    out.terms                       # {"name": scalar} logged to metrics.jsonl beside "loss"

``batch`` is the **raw** batch on the device: ``images`` (uint8 B×3×H×W, as the dataset stored
them, already flipped by the sampler), ``labels`` (int64) and any extra field the dataset yields.
Nothing is pre-processed before the task sees it, because some recipes need the uint8 pixels
(``degrade_batch`` makes low-resolution copies, Laplacian quality is measured on them);
:meth:`StepContext.prepare` is the standard conversion into the network's input.

``ctx`` says where the step is (step, epoch, rank) and carries :attr:`StepContext.generator`, the
only source of on-device randomness a task may use. It is seeded from ``(seed, step, rank)``, so
a resumed run draws exactly what an uninterrupted one drew at that step (see :func:`step_seed`).

A task also says which modules go into a checkpoint (:meth:`Task.checkpoint_modules`), which
parameter groups the optimiser gets (:meth:`Task.param_groups`: frozen parts, per-group
learning-rate scales) and what happens after each optimiser step (:meth:`Task.on_step`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..data.crb import check_crb_options, cross_resolution_batch
from ..data.quality import laplacian_quality
from ..errors import LrfrError
from ..models import preprocess
from .optim import param_groups as decay_groups

#: A batch: ``images`` (uint8 B×3×H×W), ``labels`` (int64 B) and optional extra per-sample fields.
Batch = dict[str, torch.Tensor]


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of step ``step`` on ``rank``: the first 8 bytes of SHA-256 of ``"seed:step:rank"``,
    little-endian, masked to 63 bits (``manual_seed``'s range).

    A cryptographic hash rather than Python's ``hash``: that one is salted per process for
    strings (and collides trivially for tuples of small ints), so it would differ between the
    killed run and its resumption. SHA-256 gives every (seed, step, rank) an unrelated stream.
    """
    digest = hashlib.sha256(f"lrfr-step:{int(seed)}:{int(step)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class StepContext:
    """Where a step is and how it may draw random numbers; built by the loop for every step.

    ``step`` is the number of optimiser steps already taken (0 for the first step), the same
    count that checkpoints and ``metrics.jsonl`` use after the step.
    """

    step: int
    epoch: int
    seed: int
    device: torch.device
    rank: int = 0
    world_size: int = 1
    precision: str = "fp32"
    channels_last: bool = False
    _generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def generator(self) -> torch.Generator:
        """A generator on the device seeded with :func:`step_seed`; made on first use (cheap
        when a task draws nothing)."""
        if self._generator is None:
            g = torch.Generator(device=self.device)
            g.manual_seed(step_seed(self.seed, self.step, self.rank))
            self._generator = g
        return self._generator

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) images → the network's input: ``preprocess`` + memory format."""
        x = preprocess(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


@dataclass
class StepOutput:
    """The loss to back-propagate and named terms to log (scalars; detached by the loop)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Task(nn.Module):
    """Base class of training tasks: override :meth:`forward` and :meth:`checkpoint_modules`."""

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The modules saved under these names in checkpoints (and restored on resume)."""
        raise NotImplementedError

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser groups. Default: every trainable parameter, weight decay on weights only.

        A group may carry ``lr_scale``: its learning rate is the schedule's times that factor.
        Parameters with ``requires_grad=False`` are left out (frozen).
        """
        return decay_groups([self], weight_decay)

    def on_step(self, step: int) -> None:
        """Called after each optimiser step with the new step count (schedules inside heads)."""

    def embedding_model(self) -> nn.Module:
        """The network whose output is the face embedding (what pair validation scores)."""
        modules = self.checkpoint_modules()
        if "model" not in modules:
            raise NotImplementedError(f"{type(self).__name__} has no 'model' module; override embedding_model()")
        return modules["model"]


# --------------------------------------------------------------------------- batch fields
class BatchTransform(Protocol):
    """Rewrites the raw batch on the device before the network sees it (e.g. Cross-Resolution
    Batches add LR copies and ``is_lr``). ``provides`` names the fields it adds."""

    provides: tuple[str, ...]

    def __call__(self, batch: Batch, ctx: StepContext) -> Batch: ...


FieldProvider = Callable[[Batch, StepContext], torch.Tensor]


#: Fields a task can compute from the batch when a head needs them and the batch lacks them
#: (a new field is one line here).
FIELD_PROVIDERS: dict[str, FieldProvider] = {
    "quality": lambda batch, ctx: laplacian_quality(batch["images"]),
}


class CrossResolutionBatches:
    """Cross-Resolution Batches as a batch transform: LR versions of the batch's faces made on the
    device by :func:`~lrfr_cli.data.crb.cross_resolution_batch` (``degrade_batch`` inside), same
    labels; adds ``is_lr`` and ``lr_size``. Its random choices (rows, sizes) come from the step's
    seed (:func:`step_seed`), so a resumed run rebuilds the same batches."""

    provides: tuple[str, ...] = ("is_lr", "lr_size")

    def __init__(self, sizes: Sequence[int], mode: str = "copies", lr_prob: float = 0.5, method: str = "bicubic") -> None:
        self.sizes = check_crb_options(sizes, mode, lr_prob, method=method)
        self.mode, self.lr_prob, self.method = mode, float(lr_prob), method

    def __call__(self, batch: Batch, ctx: StepContext) -> Batch:
        seed = step_seed(ctx.seed, ctx.step, ctx.rank)
        out = cross_resolution_batch(batch["images"], batch["labels"], self.sizes, self.mode, self.lr_prob, generator=seed, method=self.method)
        rest = {k: v for k, v in batch.items() if k not in ("images", "labels")}
        if rest and self.mode == "copies":  # per-sample extras follow their rows into the LR half
            rest = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) and v.shape[:1] == batch["labels"].shape[:1] else v for k, v in rest.items()}
        return {**rest, "images": out.images, "labels": out.labels, "is_lr": out.is_lr, "lr_size": out.lr_size}

    def __repr__(self) -> str:
        return f"CrossResolutionBatches(sizes={self.sizes}, mode={self.mode!r}, lr_prob={self.lr_prob}, method={self.method!r})"


# --------------------------------------------------------------------------- classification
class ClassifierTask(Task):
    """Backbone + classification head: ``loss = head.loss(backbone(x), labels, **fields)``.

    ``transforms`` rewrite the raw batch first (on the device, e.g. :class:`CrossResolutionBatches`).
    Fields the head declares in ``needs`` come from the batch, else from
    :data:`FIELD_PROVIDERS`; a per-sample ``margin`` field, when present, overrides the head's
    ``m``. ``freeze_backbone`` keeps the backbone out of the optimiser and its BatchNorm
    statistics fixed; ``backbone_lr_scale``/``head_lr_scale`` scale the schedule's learning rate.
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        *,
        transforms: Sequence[BatchTransform] = (),
        freeze_backbone: bool = False,
        backbone_lr_scale: float = 1.0,
        head_lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.transforms = list(transforms)
        self.freeze_backbone = freeze_backbone
        self.backbone_lr_scale = backbone_lr_scale
        self.head_lr_scale = head_lr_scale
        if freeze_backbone:
            self.model.requires_grad_(False)
        self.needs: tuple[str, ...] = tuple(getattr(head, "needs", ()))

    def train(self, mode: bool = True) -> ClassifierTask:
        super().train(mode)
        if self.freeze_backbone:
            self.model.eval()  # a frozen backbone keeps its BatchNorm statistics too
        return self

    def head_fields(self, batch: Batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.needs:
            if name not in batch:
                if name not in FIELD_PROVIDERS:
                    raise LrfrError(
                        f"loss {getattr(self.head, 'name', type(self.head).__name__)} needs the batch field {name!r}, "
                        "which neither the data nor a batch transform provides"
                        + (" (is_lr comes from Cross-Resolution Batches)" if name == "is_lr" else "")
                    )
                batch[name] = FIELD_PROVIDERS[name](batch, ctx)
            out[name] = batch[name]
        return out

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        for t in self.transforms:
            batch = t(batch, ctx)
        emb = self.model(ctx.prepare(batch["images"]))
        fields = self.head_fields(batch, ctx)
        if getattr(self.head, "sample_rate", 1.0) < 1.0:  # a sharded head samples classes from the step's stream
            fields["generator"] = ctx.generator
        loss = self.head.loss(emb, batch["labels"], batch.get("margin"), **fields)
        # A head's own named values (e.g. AdaFace's norm statistics, a mean margin) are logged
        # beside the loss; they must have the same names at every step.
        terms = dict(self.head.stats()) if hasattr(self.head, "stats") else {}
        return StepOutput(loss, terms)

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "head": self.head}

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        groups = []
        parts = [(self.head, self.head_lr_scale)]
        if not self.freeze_backbone:
            parts.insert(0, (self.model, self.backbone_lr_scale))
        for module, scale in parts:
            for g in decay_groups([module], weight_decay):
                if g["params"]:
                    groups.append({**g, "lr_scale": float(scale)})
        return groups

    def on_step(self, step: int) -> None:
        if hasattr(self.head, "step"):
            self.head.step(step)


__all__ = [
    "FIELD_PROVIDERS",
    "Batch",
    "BatchTransform",
    "ClassifierTask",
    "CrossResolutionBatches",
    "StepContext",
    "StepOutput",
    "Task",
    "step_seed",
]
