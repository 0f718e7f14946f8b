"""A margin loss on Cross-Resolution Batches, started from a pretrained model: ``lrfr train``'s
low-resolution recipe (ArcFace, AdaFace, Approach1/2 with CRB) as a fine-tuning method, so it
can run on any ``--from`` model, an imported ONNX recogniser included.

The batch goes through the same :class:`~lrfr_cli.data.batch_fields.CrossResolutionBatches`
transform as in ``lrfr train`` (``copies``: every face also as an LR copy with its label;
``split``: a share ``lr_prob`` of the faces replaced by LR versions), then the ``--loss`` head
scores the embeddings. The classifier is new (the parent's identities are not the fine-tuning
set's), so its first gradients are noise for the backbone: for ``head_warmup`` steps the
backbone's output is detached, only the head learns, and the backbone's weights do not move at
all (their gradients stay ``None``, so neither the optimiser's update nor its weight decay
touches them). That is ``--freeze-backbone`` followed by unfreezing, in one resumable run.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..data.batch_fields import CrossResolutionBatches
from ..data.crb import check_crb_options
from ..engine.tasks import Batch, StepContext, StepOutput
from ..errors import LrfrError
from ..registry import Option
from .base import FinetuneTask


class CrbTask(FinetuneTask):
    name = "crb"
    summary = ("margin loss (--loss) on Cross-Resolution Batches from the parent model, the classifier "
               "warmed up on a still backbone first (lrfr train's LR recipe on a pretrained network)")
    options: ClassVar[dict[str, Option]] = {
        "mode": Option("copies", "CRB mode: copies (every face also at LR) or split (a share lr_prob replaced)"),
        "lr_prob": Option(0.5, "split mode: share of each batch replaced by LR versions"),
        "head_warmup": Option(0, "steps during which only the new classifier learns (the backbone is still)"),
    }
    default_lr_sizes = (8, 12, 16, 20)
    default_loss = ("arcface", {})

    def __init__(self, model: nn.Module, head: nn.Module, **kw: Any) -> None:
        super().__init__(model, head, **kw)
        self.transforms = [CrossResolutionBatches(self.lr_sizes, mode=str(self.opts["mode"]), lr_prob=float(self.opts["lr_prob"]))]

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        check_crb_options((8,), str(opts["mode"]), opts["lr_prob"])
        w = opts["head_warmup"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            raise LrfrError(f"head_warmup {w!r}: must be a whole number of steps >= 0")

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        for t in self.transforms:
            batch = t(batch, ctx)
        warm = ctx.step < int(self.opts["head_warmup"])
        if warm:
            with torch.no_grad():
                emb = self.model(ctx.prepare(batch["images"]))
        else:
            emb = self.model(ctx.prepare(batch["images"]))
        fields = self.head_fields(batch, ctx)
        loss = self.head.loss(emb, batch["labels"], batch.get("margin"), **fields)
        terms = dict(self.head.stats()) if hasattr(self.head, "stats") else {}
        terms["head_warmup"] = loss.new_tensor(float(warm))
        return StepOutput(loss, terms)
