"""DeriveNet (Singh, Nagpal, Singh, Vatsa, "DeriveNet for (Very) Low Resolution Image
Classification", IEEE TPAMI 44(10), 2022): a Derived-Margin softmax whose inter-class margins come
from class centres in an HR reconstruction space, learnt with the Reconstruction-Centre (ReCent)
loss.

Our formulation (from the paper's description and the thesis seed's code; the constants s, m and
the centre momentum α are ours, λ = 1e-3 is the paper's). Per step, with the batch's HR faces
``x`` and one LR copy ``x̃`` each (``--lr-sizes``), ``ê = f(·)/‖f(·)‖`` the backbone's normalised
embeddings, ``g`` a linear reconstruction map (initialised to the identity) and ``c_j`` unit
class centres (a ``C × d`` buffer on the device)::

    centres   c_j ← normalise((1 − α) c_j + α · mean_{i: y_i = j} ê(x_i))   (first sight: the mean)
    ReCent    L_rc = mean_i ‖g(ê(x̃_i)) − ê(x_i)‖² + ‖g(ê(x̃_i)) − c_{y_i}‖²     (centres, targets detached)
    margins   M_{yj} = m · max(0, cos(c_y, c_j)) for j ≠ y,  M_{yy} = 0
    D-softmax L_dm = mean over HR and LR rows of CE(s · (cos θ_ij + M_{y_i j})_j, y_i),  cos θ_ij = ⟨ê_i, Ŵ_j⟩
    L = L_dm + λ · L_rc

So classes whose HR centres lie close get a larger margin against each other. Unlike the seed,
the backbone is trained (it is in the optimiser), the classifier ``W`` has one row per *class*
(not per image), the margins are one ``B × C`` matrix product (no Python loop over B·C) and the
centres live on the device.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.tasks import Batch, StepContext, StepOutput
from ..errors import LrfrError
from ..losses.recipe import LossChoice
from ..registry import Option
from .base import FinetuneTask


class DeriveNetHead(nn.Module):
    """Classifier (``num_classes × d``), reconstruction map ``g`` and the class-centre buffers."""

    def __init__(self, embedding_size: int, num_classes: int, s: float = 30.0, m: float = 0.35, alpha: float = 0.5) -> None:
        super().__init__()
        if num_classes < 2:
            raise LrfrError(f"derivenet needs at least 2 identities, got {num_classes}")
        self.s, self.m, self.alpha = float(s), float(m), float(alpha)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.recon = nn.Linear(embedding_size, embedding_size)
        with torch.no_grad():
            self.recon.weight.copy_(torch.eye(embedding_size))
            self.recon.bias.zero_()
        self.register_buffer("centres", torch.zeros(num_classes, embedding_size))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @torch.no_grad()
    def update_centres(self, hr: torch.Tensor, labels: torch.Tensor) -> None:
        """EMA of each present class's mean normalised HR embedding (module doc)."""
        c = self.num_classes
        sums = torch.zeros_like(self.centres).index_add_(0, labels, hr.to(self.centres.dtype))
        counts = torch.bincount(labels, minlength=c)
        present = counts > 0
        mean = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
        blended = torch.where(self.seen.unsqueeze(1), (1.0 - self.alpha) * self.centres + self.alpha * mean, mean)
        self.centres.copy_(torch.where(present.unsqueeze(1), F.normalize(blended, dim=1), self.centres))
        self.seen |= present

    def margins(self, labels: torch.Tensor) -> torch.Tensor:
        """``M[y_i, :]`` for every row: ``m · max(0, cos(c_{y_i}, c_j))``, 0 at the target."""
        sim = self.centres[labels] @ self.centres.t()
        mar = self.m * sim.clamp_min(0.0)
        return mar.scatter(1, labels.view(-1, 1), 0.0)

    def logits(self, emb_n: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = emb_n @ F.normalize(self.weight.float(), dim=1).t()
        return self.s * (cos + self.margins(labels))


def derivenet_loss(head: DeriveNetHead, emb: torch.Tensor, labels: torch.Tensor, lam: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L_dm + λ·L_rc of ``[HR; LR]`` embeddings (``2n × d``); updates the centres first."""
    n = emb.shape[0] // 2
    e = F.normalize(emb.float(), dim=1)
    hr = e[:n].detach()
    head.update_centres(hr, labels[:n])
    rec = head.recon(e[n:])
    recent = ((rec - hr).pow(2).sum(1) + (rec - head.centres[labels[n:]]).pow(2).sum(1)).mean()
    dm = F.cross_entropy(head.logits(e, labels), labels)
    return dm + lam * recent, {"dmargin": dm, "recent": recent}


class DeriveNetTask(FinetuneTask):
    name = "derivenet"
    summary = "Derived-Margin softmax with margins from HR class centres + ReCent loss (Singh et al., TPAMI 2022)"
    options: ClassVar[dict[str, Option]] = {
        "lam": Option(1e-3, "λ, weight of the ReCent (reconstruction-centre) loss"),
        "s": Option(30.0, "logit scale of the Derived-Margin softmax"),
        "m": Option(0.35, "largest derived margin (at centre cosine 1)"),
        "alpha": Option(0.5, "momentum of the class-centre update"),
    }
    default_lr_sizes = (8, 12, 16, 20)
    default_loss = None

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> None:
        if opts["lam"] < 0:
            raise LrfrError(f"--lambda {opts['lam']}: must be >= 0")
        if opts["s"] <= 0:
            raise LrfrError(f"s {opts['s']}: the logit scale must be > 0")
        if not 0 < opts["alpha"] <= 1:
            raise LrfrError(f"alpha {opts['alpha']}: the centre momentum must be in (0, 1]")

    @classmethod
    def make_head(cls, embedding_size: int, num_classes: int, loss: LossChoice | None, opts: dict[str, Any]) -> nn.Module:
        return DeriveNetHead(embedding_size, num_classes, s=opts["s"], m=opts["m"], alpha=opts["alpha"])

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        emb, labels = self.embed_pair(batch, ctx)
        loss, terms = derivenet_loss(self.head, emb, labels, float(self.opts["lam"]))  # type: ignore[arg-type]
        return StepOutput(loss, terms)
