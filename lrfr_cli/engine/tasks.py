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
a resumed run draws exactly what an uninterrupted one drew at that step (see
:func:`~lrfr_cli.engine.seed.step_seed`).

A task also says which modules go into a checkpoint (:meth:`Task.checkpoint_modules`), which
parameter groups the optimiser gets (:meth:`Task.param_groups`: frozen parts, per-group
learning-rate scales), what happens after each optimiser step (:meth:`Task.on_step`) and how its
state is handled when not every rank holds all of it (:meth:`Task.state_hooks`).

The fields a batch gains on the device (Cross-Resolution Batches, Laplacian quality) live with
the data, in :mod:`lrfr_cli.data.batch_fields`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..data.batch_fields import FIELD_PROVIDERS, Batch, BatchTransform
from ..errors import LrfrError
from ..losses.sharded import sharded_state
from ..models import preprocess
from .optim import param_groups as decay_groups
from .seed import step_seed


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
        """A generator on the device seeded with :func:`~lrfr_cli.engine.seed.step_seed`; made on first use (cheap
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


class StateHooks(Protocol):
    """How the loop handles a task's state across ranks: which parameters DDP must leave alone,
    the optimiser state a checkpoint holds and how it is sliced back on resume, and the gradient
    norm that ``--clip-grad`` clips. :class:`ReplicatedState` is the answer when every rank holds
    all of the state; a task whose class weights are split over the ranks answers with the
    sharded classifier's hooks (:class:`~lrfr_cli.losses.sharded.ShardedState`)."""

    #: Whether saving is a collective (every rank must take part; rank 0 still writes alone).
    collective_save: bool

    def keep_out_of_ddp(self, root: nn.Module) -> None:
        """Called before DDP wraps ``root``: mark the parameters it must not broadcast or average."""

    def gather_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """The optimiser state a checkpoint holds (a collective when ``collective_save``)."""

    def shard_optimizer_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """A checkpoint's optimiser state as this rank's optimiser loads it."""

    def clip_grad_norm(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Clip the gradients of ``params`` to the whole model's norm ``max_norm``; returns the norm."""


class ReplicatedState:
    """State hooks when every rank holds all of the task's state: DDP wraps everything, the
    optimiser's own state dict is saved and loaded, torch's clip."""

    collective_save = False

    def keep_out_of_ddp(self, root: nn.Module) -> None:
        pass

    def gather_optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def shard_optimizer_state(self, state: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return state

    def clip_grad_norm(self, params: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)


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

    def state_hooks(self) -> StateHooks:
        """How the loop handles this task's state across ranks (default: every rank holds all of it)."""
        return ReplicatedState()

    def embedding_model(self) -> nn.Module:
        """The network whose output is the face embedding (what pair validation scores)."""
        modules = self.checkpoint_modules()
        if "model" not in modules:
            raise NotImplementedError(f"{type(self).__name__} has no 'model' module; override embedding_model()")
        return modules["model"]


# --------------------------------------------------------------------------- classification
class ClassifierTask(Task):
    """Backbone + classification head: ``loss = head.loss(backbone(x), labels, **fields)``.

    ``transforms`` rewrite the raw batch first (on the device, e.g.
    :class:`~lrfr_cli.data.batch_fields.CrossResolutionBatches`). Fields the head declares in
    ``needs`` come from the batch, else from :data:`~lrfr_cli.data.batch_fields.FIELD_PROVIDERS`;
    a per-sample ``margin`` field, when present, overrides the head's ``m``. ``freeze_backbone`` keeps the backbone out of the optimiser and its BatchNorm
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

    def state_hooks(self) -> StateHooks:
        """The sharded classifier's hooks when the head (``--classifier sharded``) splits its
        class weights over the ranks, else the replicated default."""
        return sharded_state(self.checkpoint_modules().values()) or ReplicatedState()


__all__ = [
    "Batch",  # the seam's batch type, defined beside the fields it carries (data.batch_fields)
    "ClassifierTask",
    "ReplicatedState",
    "StateHooks",
    "StepContext",
    "StepOutput",
    "Task",
]
