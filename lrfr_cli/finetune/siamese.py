"""Deep Siamese training (Lai & Lam, "Deep Siamese network for low-resolution face recognition",
APSIPA ASC 2021 — the thesis's seed 001).

Two branches with shared weights (one backbone run on the HR faces and on their LR copies at
8/12/16 px, made on the device by ``degrade_batch``), an AM-Softmax head (CosFace: s = 30,
m = 0.35, one classifier shared by both branches) on each branch, and a cross-resolution
batch-hard triplet term over the HR·LR and LR·HR blocks of the distance matrix of normalised
embeddings (an image's own copy may be its positive: it is the Siamese pair)::

    L = AMS(e_HR, y) + AMS(e_LR, y) + w · ½ (T(HR, LR) + T(LR, HR))

``T`` as in :mod:`.octuplet`; margin 0.5 and w = 1 by default (our choice: the seed does not
pin them down).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..engine.tasks import Batch, StepContext, StepOutput
from ..errors import LrfrError
from ..registry import Option
from .base import FinetuneTask, batch_hard_blocks


def cross_triplet(emb: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """½ (T(HR, LR) + T(LR, HR)) of ``[HR; LR]`` embeddings, own copy allowed as positive."""
    blocks, _ = batch_hard_blocks(emb, labels, margin, exclude_own_copy=False)
    return 0.5 * (blocks[0, 1] + blocks[1, 0])


class SiameseTask(FinetuneTask):
    name = "siamese"
    summary = "shared-weight HR and LR branches, AM-Softmax on each + cross-resolution batch-hard triplet (Lai & Lam 2021)"
    options: ClassVar[dict[str, Option]] = {
        "margin": Option(0.5, "margin of the cross-resolution triplet term (normalised embeddings)"),
        "triplet_weight": Option(1.0, "weight w of the cross-resolution triplet term"),
    }
    default_lr_sizes = (8, 12, 16)
    default_loss = ("cosface", {"s": 30.0, "m": 0.35})

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        if opts["margin"] <= 0:
            raise LrfrError(f"--margin {opts['margin']}: the triplet margin must be > 0")
        if opts["triplet_weight"] < 0:
            raise LrfrError(f"triplet_weight {opts['triplet_weight']}: must be >= 0")

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        emb, labels = self.embed_pair(batch, ctx)
        n = emb.shape[0] // 2
        hr = self.head.loss(emb[:n], labels[:n])
        lr = self.head.loss(emb[n:], labels[n:])
        trip = cross_triplet(emb, labels, float(self.opts["margin"]))
        loss = hr + lr + float(self.opts["triplet_weight"]) * trip
        return StepOutput(loss, {"ams_hr": hr, "ams_lr": lr, "triplet": trip})
