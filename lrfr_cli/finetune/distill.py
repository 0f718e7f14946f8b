"""HR→LR distillation (Massoli, Amato, Falchi, "Cross-resolution learning for face recognition",
Image and Vision Computing 2020 — the thesis's seed 003; seed 002's HR-guided LR model is the
same idea).

The teacher is the ``--from`` model, frozen (``requires_grad=False``, eval mode, outside the
optimiser and the checkpoint); the student starts as a copy of it. Each sample is shown to the
student at low resolution with probability ``p_down`` (drawn per sample; a size from
``--lr-sizes``, made on the device by ``degrade_batch``), the teacher always sees the HR face::

    p(step) = p_down + (p_down_end − p_down) · min(1, step / ramp_steps)   (curriculum; off when p_down_end is unset)
    L = L_id(student(x̃), y) + λ · D(student(x̃), teacher(x))
    D = mean over elements of (s − t)²   (feature_loss=mse)   or   mean_i (1 − cos(s_i, t_i))   (cosine)

with λ = 0.1 by default and ``L_id`` the ``--loss`` head on the student's embeddings. With
``p_down = 0`` and ``λ = 0`` this is exactly the classifier task's loss on the same batch.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.tasks import Batch, StepContext, StepOutput
from ..errors import LrfrError
from .base import FinetuneTask, MethodOption, check_share, degrade_rows

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
    options: ClassVar[dict[str, MethodOption]] = {
        "p_down": MethodOption(0.1, "probability that the student sees a sample at low resolution"),
        "p_down_end": MethodOption(None, "curriculum: p_down rises linearly to this value over ramp_steps (unset = constant)"),
        "ramp_steps": MethodOption(0, "steps of the p_down curriculum (0 = the whole run)"),
        "lam": MethodOption(0.1, "λ, weight of the feature distance to the teacher"),
        "feature_loss": MethodOption("mse", "distance between student(LR) and teacher(HR) features: mse or cosine"),
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
        if opts["feature_loss"] not in FEATURE_LOSSES:
            raise LrfrError(f"--feature-loss {opts['feature_loss']!r}: choose one of {', '.join(FEATURE_LOSSES)}")

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
        s = self.model(ctx.prepare(seen))
        terms: dict[str, torch.Tensor] = {}
        loss = s.new_zeros(())
        if self.has_head():
            ident = self.head.loss(s, labels)
            terms["identity"] = ident
            loss = loss + ident
        lam = float(self.opts["lam"])
        if lam > 0:
            with torch.no_grad():
                t = self.teacher(ctx.prepare(images))
            feat = feature_distance(s, t, str(self.opts["feature_loss"]))
            terms["feature"] = feat
            loss = loss + lam * feat
        terms["p_down"] = s.new_tensor(p).float()
        return StepOutput(loss, terms)
