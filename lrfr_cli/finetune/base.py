"""What every fine-tuning method shares: the task base class, on-device LR copies, batch-hard
mining over resolution blocks and the P×K check.

A method is a :class:`FinetuneTask` (a :class:`~lrfr_cli.engine.tasks.ClassifierTask`, so the
frozen-backbone switch, the per-group learning-rate scales, the checkpoint layout ``model`` +
``head`` and the head's schedule hook are the seam's, not ours) whose ``forward`` computes the
method's loss from the raw uint8 batch. ``lrfr eval`` reads the ``model`` entry of the
checkpoint, i.e. the fine-tuned backbone, exactly as for a trained run.

**Randomness across ranks.** A method's random choices (each sample's LR size, which samples are
degraded) are drawn for the *global* batch from one CPU generator seeded by
``step_seed(seed, step, 0)``, and each rank takes its slice. So 1 process and N processes
degrade the same samples to the same sizes, and a resumed run draws what the killed one drew.

**Mining across ranks.** Batch-hard mining looks at the whole batch. Under DDP the embeddings
(and labels) of all ranks are gathered with the gradient-carrying
:func:`~lrfr_cli.engine.distributed.gather_rows` and every rank computes the *global* loss; the
gather's backward sums the gradient of every rank's copy of that loss, which DDP's mean then
divides back, so the update is the single-process one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.degrade import DegradeSpec, degrade_batch
from ..engine.distributed import gather_rows
from ..engine.seed import step_seed
from ..engine.tasks import ClassifierTask, StepContext
from ..errors import LrfrError
from ..losses.recipe import LossChoice, resolve_loss
from ..registry import Option


# --------------------------------------------------------------------------- options
def check_share(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise LrfrError(f"{name} {value!r}: must be a probability between 0 and 1")
    return float(value)


def check_pk(labels: np.ndarray, p: int, k: int) -> int:
    """Raise unless at least ``p`` identities have ``k`` images (batch-hard mining wants K
    distinct images of each of P identities); returns how many identities qualify."""
    if p < 2:
        raise LrfrError(f"--p {p}: a P×K batch needs at least 2 identities (negatives come from the others)")
    if k < 2:
        raise LrfrError(f"--k {k}: a P×K batch needs at least 2 images per identity (positives come from the same identity)")
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    ok = int((counts >= k).sum())
    if ok < p:
        raise LrfrError(
            f"--p {p} --k {k}: a batch needs {p} identities with at least {k} images each; the data has {ok} such "
            f"identities (of {len(counts)}); lower --p or --k, or add images"
        )
    return ok


# --------------------------------------------------------------------------- LR copies
def _global_draws(ctx: StepContext, rows: int, n_sizes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the global batch's draws: a uniform number (for "degrade this one?")
    and a size index per sample, both from ``step_seed(seed, step, 0)`` on the CPU."""
    g = torch.Generator(device="cpu")
    g.manual_seed(step_seed(ctx.seed, ctx.step, 0))
    total = rows * ctx.world_size
    u = torch.rand(total, generator=g)
    idx = torch.randint(n_sizes, (total,), generator=g)
    sl = slice(ctx.rank * rows, (ctx.rank + 1) * rows)
    return u[sl], idx[sl]


def degrade_rows(images: torch.Tensor, sizes: Sequence[int], ctx: StepContext, p: float = 1.0, method: str = "bicubic") -> tuple[torch.Tensor, torch.Tensor]:
    """LR versions of the rows of ``images`` (uint8, on the device): each row is degraded with
    probability ``p`` (1: all) to a size drawn uniformly from ``sizes`` by
    :func:`~lrfr_cli.data.degrade.degrade_batch` (down with ``method``, back up bicubic, uint8).
    Returns the images (undegraded rows unchanged) and the boolean mask of degraded rows."""
    sizes = tuple(int(s) for s in sizes)
    u, idx = _global_draws(ctx, images.shape[0], len(sizes))
    chosen = u < p if p < 1.0 else torch.ones_like(u, dtype=torch.bool)
    out = images.clone()
    for j, s in enumerate(sizes):
        rows = (chosen & (idx == j)).nonzero().flatten()
        if rows.numel():
            rows = rows.to(images.device)
            out[rows] = degrade_batch(images[rows], DegradeSpec(size=s, method=method))
    return out, chosen.to(images.device)


# --------------------------------------------------------------------------- mining
def pairwise_distance(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between L2-normalised rows, ``sqrt(2 − 2 cos)`` (fp32), with the
    square root's infinite slope at 0 kept out of the graph."""
    e = F.normalize(emb.float(), dim=1)
    d2 = (2.0 - 2.0 * (e @ e.t())).clamp_min(1e-12)
    return d2.sqrt()


def batch_hard_blocks(emb: torch.Tensor, labels: torch.Tensor, margin: float, exclude_own_copy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch-hard triplet losses over the four resolution blocks of ``[HR; LR]`` embeddings.

    ``emb`` is ``2n × d``: rows ``0..n-1`` HR, row ``n + i`` the LR copy of row ``i``. For an
    anchor ``a`` and a column resolution ``c`` (HR or LR), the hardest positive is the farthest
    row of resolution ``c`` with ``a``'s label, the hardest negative the nearest with another
    label, and the term is ``max(0, d(a, p) − d(a, n) + margin)`` on normalised embeddings
    (Hermans et al. 2017). An anchor is never its own positive; with ``exclude_own_copy`` its
    own HR/LR copy is not one either (the cross blocks' trivial pair). Anchors with no positive
    or no negative in a block do not count.

    Returns ``(losses, counts)``, both ``2 × 2`` indexed ``[anchor resolution, column
    resolution]`` (0 = HR, 1 = LR): the mean term of the block and how many anchors it averages.
    """
    m = emb.shape[0]
    if m % 2:
        raise ValueError(f"batch_hard_blocks needs [HR; LR] rows, got an odd count {m}")
    n = m // 2
    dist_ = pairwise_distance(emb)
    idx = torch.arange(m, device=emb.device)
    same = labels.view(-1, 1) == labels.view(1, -1)
    own = (idx.view(-1, 1) % n) == (idx.view(1, -1) % n) if exclude_own_copy else idx.view(-1, 1) == idx.view(1, -1)
    pos, neg = same & ~own, ~same
    hardest_pos = dist_.masked_fill(~pos, float("-inf")).view(m, 2, n).amax(dim=2)  # m × 2 (column resolution)
    hardest_neg = dist_.masked_fill(~neg, float("inf")).view(m, 2, n).amin(dim=2)
    valid = torch.isfinite(hardest_pos) & torch.isfinite(hardest_neg)
    term = torch.where(valid, F.relu(hardest_pos - hardest_neg + margin), torch.zeros_like(hardest_pos))
    sums = term.view(2, n, 2).sum(dim=1)
    counts = valid.view(2, n, 2).sum(dim=1)
    return sums / counts.clamp_min(1), counts


# --------------------------------------------------------------------------- the task base
class FinetuneTask(ClassifierTask):
    """Base of the methods: a student backbone (``model``), an identity/classifier ``head`` (an
    empty module when the method uses none) and the method's options.

    Subclasses set ``name``, ``summary``, ``options`` (``{key: Option}``, typed by the default unless ``kind`` says),
    ``default_lr_sizes``, ``default_loss`` (``(loss, head options)`` of the identity head, which
    :meth:`identity_loss` resolves, or ``None`` when the method builds its own classifier in
    :meth:`make_head`), and implement
    ``forward(batch, ctx) -> StepOutput``.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[dict[str, Option]] = {}
    default_lr_sizes: ClassVar[tuple[int, ...]] = (8, 12, 16, 20)
    default_loss: ClassVar[tuple[str, dict[str, Any]] | None] = ("arcface", {})
    #: Whether the method needs a frozen copy of the parent model (``teacher=`` in the constructor).
    needs_teacher: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module,
        *,
        lr_sizes: Sequence[int],
        opts: dict[str, Any] | None = None,
        teacher: nn.Module | None = None,
        freeze_backbone: bool = False,
        head_lr_scale: float = 1.0,
    ) -> None:
        super().__init__(model, head, freeze_backbone=freeze_backbone, head_lr_scale=head_lr_scale)
        self.lr_sizes = tuple(int(s) for s in lr_sizes)
        # opts come checked from resolve_options (build_method's first step); the defaults only
        # fill what a direct construction leaves out
        self.opts = {k: o.default for k, o in self.options.items()}
        self.opts.update(opts or {})

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        """Validate option values (one-line errors); called before a run is claimed."""

    @classmethod
    def uses_head(cls, opts: dict[str, Any]) -> bool:
        """Whether the identity head takes part (methods with an optional identity term say no
        when its weight is 0, so no idle classifier sits in the optimiser)."""
        return cls.default_loss is not None

    @classmethod
    def identity_loss(cls, loss: str | None, items: Sequence[str], opts: dict[str, Any]) -> LossChoice | None:
        """The identity head's loss for ``--loss``/``--loss-opt`` (None: the method's default,
        with its options unless another loss is named), or None when the method has no identity
        head with these ``opts``; one-line errors when the flags have nothing to apply to."""
        if cls.default_loss is None:
            if loss or items:
                raise LrfrError(f"--loss/--loss-opt: method {cls.name} has its own classifier (set it with --method-opt)")
            return None
        if not cls.uses_head(opts):
            if loss or items:
                raise LrfrError(f"--loss/--loss-opt: method {cls.name} uses no identity loss with these options (octuplet: give --id-weight > 0)")
            return None
        default, defaults = cls.default_loss
        choice = resolve_loss(loss or default, items)
        if choice.name != default or not defaults:
            return choice
        return replace(choice, head_kw={**defaults, **choice.head_kw})

    @classmethod
    def make_head(cls, embedding_size: int, num_classes: int, loss: LossChoice | None, opts: dict[str, Any]) -> nn.Module:
        if not cls.uses_head(opts) or loss is None:
            return nn.ModuleDict()  # nothing to train, nothing to checkpoint
        return loss.build(embedding_size, num_classes)

    def has_head(self) -> bool:
        return any(True for _ in self.head.parameters())

    def embed_pair(self, batch: dict[str, torch.Tensor], ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of ``[HR; LR copies]`` of the global batch and their labels (``2n`` rows)."""
        images, labels = batch["images"], batch["labels"]
        lr, _ = degrade_rows(images, self.lr_sizes, ctx)
        emb = self.model(ctx.prepare(torch.cat([images, lr])))
        b = images.shape[0]
        hr_e, lr_e = gather_rows(emb[:b]), gather_rows(emb[b:])
        lab = gather_rows(labels)
        return torch.cat([hr_e, lr_e]), torch.cat([lab, lab])


__all__ = [
    "FinetuneTask",
    "batch_hard_blocks",
    "check_pk",
    "check_share",
    "degrade_rows",
    "pairwise_distance",
]
