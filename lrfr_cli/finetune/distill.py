"""HR→LR distillation (Massoli, Amato, Falchi, "Cross-resolution learning for face recognition",
Image and Vision Computing 2020 — the thesis's seed 003; seed 002's HR-guided LR model is the
same idea).

The teacher is the ``--from`` model, frozen (``requires_grad=False``, eval mode, outside the
optimiser and the checkpoint); the student starts as a copy of it. Each sample is shown to the
student at low resolution with probability ``p_down`` (drawn per sample; a size from
``--lr-sizes``, made on the device by ``degrade_batch``), the teacher always sees the HR face::

    p(step) = p_down + (p_down_end − p_down) · min(1, step / ramp_steps)   (curriculum; off when p_down_end is unset)
    L = w_id · L_id(student(x̃), y) + λ · [D(student(x̃), teacher(x)) + w_hr · D(student(x), teacher(x))]
    D = mean over elements of (s − t)²   (feature_loss=mse)   or   mean_i (1 − cos(s_i, t_i))   (cosine)

with λ = 0.1, w_id = 1 and w_hr = 0 by default and ``L_id`` the ``--loss`` head on the student's
embeddings. With ``p_down = 0`` and ``λ = 0`` this is exactly the classifier task's loss on the
same batch.

**Pure feature distillation** (``id_weight=0``: no classifier at all, ``hr_weight > 0``): the
student learns to put every LR copy where the teacher puts the HR face, while the HR term keeps
its own HR embedding there too, so an HR gallery embedded by the student stays where the
teacher's was. This is the recipe that moves a pretrained recogniser most on a small
fine-tuning set: a fresh 299-class head on 6k faces pulls the embedding towards those few
identities, the teacher's embedding space was learnt from millions of faces.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.tasks import Batch, StepContext, StepOutput
from ..errors import LrfrError
from ..registry import Option
from .base import FinetuneTask, check_share, degrade_rows

FEATURE_LOSSES = ("mse", "cosine")


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """The distillation distance between the student's and the teacher's features (module doc)."""
    s, t = student.float(), teacher.float()
    if kind == "mse":
        return (s - t).pow(2).mean()
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(s, t, dim=1)).mean()
    raise LrfrError(f"--feature-loss {kind!r}: choose one of {', '.join(FEATURE_LOSSES)}")


class DistillTask(FinetuneTask):
    name = "distill"
    summary = "frozen HR teacher (the --from model), student on LR copies: identity loss + λ·feature distance (Massoli et al. 2020)"
    options: ClassVar[dict[str, Option]] = {
        "p_down": Option(0.1, "probability that the student sees a sample at low resolution"),
        "p_down_end": Option(None, "curriculum: p_down rises linearly to this value over ramp_steps (unset = constant)"),
        "ramp_steps": Option(0, "steps of the p_down curriculum (0 = the whole run)"),
        "lam": Option(0.1, "λ, weight of the feature distance to the teacher"),
        "feature_loss": Option("mse", "distance between student(LR) and teacher(HR) features: mse or cosine"),
        "hr_weight": Option(0.0, "weight of the same distance for the student's HR view of every face (0 = off)"),
        "id_weight": Option(1.0, "weight of the identity loss (0 = pure feature distillation, no classifier)"),
    }
    default_lr_sizes = (8, 12, 16, 20)
    default_loss = ("arcface", {})
    needs_teacher = True

    def __init__(self, model: nn.Module, head: nn.Module, *, teacher: nn.Module | None = None, **kw: Any) -> None:
        if teacher is None:
            raise ValueError("distill needs the teacher (the --from model)")
        super().__init__(model, head, teacher=None, **kw)
        self.teacher = teacher
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        check_share("--p-down", opts["p_down"])
        if opts["p_down_end"] is not None:
            check_share("--p-down-end", opts["p_down_end"])
        if int(opts["ramp_steps"]) < 0:
            raise LrfrError(f"ramp_steps {opts['ramp_steps']}: must be >= 0")
        if opts["lam"] < 0:
            raise LrfrError(f"--lambda {opts['lam']}: must be >= 0")
        for key in ("hr_weight", "id_weight"):
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)) or float(v) < 0:
                raise LrfrError(f"{key} {v!r}: must be a finite number >= 0")
        if float(opts["id_weight"]) == 0 and float(opts["lam"]) == 0:
            raise LrfrError("distill: id_weight 0 and --lambda 0 leave nothing to learn")
        if opts["feature_loss"] not in FEATURE_LOSSES:
            raise LrfrError(f"--feature-loss {opts['feature_loss']!r}: choose one of {', '.join(FEATURE_LOSSES)}")

    @classmethod
    def uses_head(cls, opts: dict[str, Any]) -> bool:
        return float(opts.get("id_weight", 1.0)) > 0

    def train(self, mode: bool = True) -> DistillTask:
        super().train(mode)
        self.teacher.eval()  # the teacher's BatchNorm statistics never move
        return self

    def p_down(self, step: int) -> float:
        p0, p1 = float(self.opts["p_down"]), self.opts["p_down_end"]
        ramp = int(self.opts["ramp_steps"])
        if p1 is None or ramp <= 0:
            return p0
        return p0 + (float(p1) - p0) * min(1.0, step / ramp)

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        images, labels = batch["images"], batch["labels"]
        p = self.p_down(ctx.step)
        seen = degrade_rows(images, self.lr_sizes, ctx, p=p)[0] if p > 0 else images
        w_hr, w_id = float(self.opts["hr_weight"]), float(self.opts["id_weight"])
        b = images.shape[0]
        # One forward over [seen; HR] when the HR view is used: one batch, one set of kernels.
        out = self.model(ctx.prepare(torch.cat([seen, images]) if w_hr > 0 else seen))
        s = out[:b]
        terms: dict[str, torch.Tensor] = {}
        loss = s.new_zeros(())
        if self.has_head():
            ident = self.head.loss(s, labels)
            terms["identity"] = ident
            loss = loss + w_id * ident
        lam = float(self.opts["lam"])
        if lam > 0:
            with torch.no_grad():
                t = self.teacher(ctx.prepare(images))
            kind = str(self.opts["feature_loss"])
            feat = feature_distance(s, t, kind)
            terms["feature"] = feat
            loss = loss + lam * feat
            if w_hr > 0:
                feat_hr = feature_distance(out[b:], t, kind)
                terms["feature_hr"] = feat_hr
                loss = loss + lam * w_hr * feat_hr
        terms["p_down"] = s.new_tensor(p).float()
        return StepOutput(loss, terms)
