"""Octuplet loss (Knoche, Elkadeem, Hörmann, Rigoll, "Octuplet Loss: Make Face Recognition Robust
to Image Resolution", FG 2023).

Each batch holds P identities × K HR faces and one LR copy of each (``--lr-sizes``, one size per
copy, made on the device by ``degrade_batch``). With ``D`` the Euclidean distances between the
L2-normalised embeddings of ``[HR; LR]``, the loss is the sum of four batch-hard triplet terms,
one per block of ``D`` (anchor resolution × positive/negative resolution)::

    L = T(HR, HR) + T(HR, LR) + T(LR, HR) + T(LR, LR)
    T(A, C) = mean_{a ∈ A} max(0, max_{p ∈ C, y_p = y_a, p ≠ a, a's copy} D(a, p)
                                  − min_{n ∈ C, y_n ≠ y_a} D(a, n) + margin)

with margin 0.5 (not torch's default 1.0, the seed's bug), the hardest negative (not a random
one, the seed's other bug) and an image's own LR/HR copy excluded from the positives of the cross
blocks (it is the trivial pair). ``id_weight`` > 0 adds ``id_weight ×`` the identity loss of
``--loss`` on all 2·B embeddings. The mining is a handful of tensor ops on the ``2B × 2B``
matrix (:func:`~lrfr_cli.finetune.base.batch_hard_blocks`), no loop over anchors.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..engine.tasks import Batch, StepContext, StepOutput
from ..errors import LrfrError
from ..registry import Option
from .base import FinetuneTask, batch_hard_blocks

BLOCKS = (("hh", 0, 0), ("hl", 0, 1), ("lh", 1, 0), ("ll", 1, 1))


def octuplet_loss(emb: torch.Tensor, labels: torch.Tensor, margin: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The octuplet loss of ``[HR; LR]`` embeddings (``2n × d``) and its four block terms."""
    blocks, _ = batch_hard_blocks(emb, labels, margin, exclude_own_copy=True)
    terms = {f"trip_{name}": blocks[r, c] for name, r, c in BLOCKS}
    return blocks.sum(), terms


class OctupletTask(FinetuneTask):
    name = "octuplet"
    summary = "four batch-hard triplet terms over HR/LR anchor × positive/negative blocks (Knoche et al., FG 2023)"
    options: ClassVar[dict[str, Option]] = {
        "margin": Option(0.5, "triplet margin on normalised embeddings"),
        "id_weight": Option(0.0, "weight of an added identity loss (--loss) on HR and LR embeddings; 0 = octuplet only"),
    }
    default_lr_sizes = (8, 12, 16, 20)
    default_loss = ("arcface", {})

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        if opts["margin"] <= 0:
            raise LrfrError(f"--margin {opts['margin']}: the triplet margin must be > 0")
        if opts["id_weight"] < 0:
            raise LrfrError(f"--id-weight {opts['id_weight']}: must be >= 0")

    @classmethod
    def uses_head(cls, opts: dict[str, Any]) -> bool:
        return float(opts.get("id_weight", 0.0)) > 0

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        emb, labels = self.embed_pair(batch, ctx)
        loss, terms = octuplet_loss(emb, labels, float(self.opts["margin"]))
        if self.has_head():
            ident = self.head.loss(emb, labels)
            terms["identity"] = ident
            loss = loss + float(self.opts["id_weight"]) * ident
        return StepOutput(loss, terms)
