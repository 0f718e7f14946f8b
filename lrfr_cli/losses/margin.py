"""The one margin-head module every classification loss builds on.

A head holds one weight vector per class and turns embeddings into the logits that go into
cross-entropy. Margin heads compare *normalised* embeddings with *normalised* class weights, so
each logit is ``s·cos θ_j``; a loss differs only in how the target class's ``cos θ_y`` is made
harder, ``target_logit(cos θ_y, m)``. The margin is a per-sample tensor, so adaptive recipes
(AdaFace, quality-adaptive margins) only have to say how ``m`` is computed, not re-implement the
head: such a head lists the batch fields it reads in ``needs`` (e.g. ``("is_lr",)``) and receives
them as keyword arguments of ``margins``; the classifier task supplies them.

``forward`` is two hooks: ``margin_terms`` (per sample: ``m`` and whatever else the target
needs, e.g. AdaFace's ẑ) and ``target_from_terms`` (the target cosine from ``cos θ_y`` and those
terms). The sharded classifier calls the same two hooks on different ranks (the first where the
sample lives, the second where its class lives), so a head that overrides them, and not
``forward``, is sharded with no code of its own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MarginHead(nn.Module):
    """Normalised-weight classifier with a per-sample margin on the target logit.

    ``forward(embeddings, labels, margin=None)`` returns ``B×C`` logits:
    ``s·cos θ_j`` for ``j ≠ y`` and ``s·target(cos θ_y, m_i)`` for the target class. ``margin``
    overrides the head's default ``m`` (a float or a length-B tensor).
    """

    name = "margin"
    #: Batch fields (beyond embeddings and labels) this head reads, e.g. ``("quality",)``.
    needs: tuple[str, ...] = ()

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.0) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.s = float(s)
        self.m = float(m)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, s={self.s}, m={self.m}"

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``B×C`` cosines, computed in fp32 (bf16/fp16 would blur small angular margins)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            e = F.normalize(embeddings.float(), dim=1)
            w = F.normalize(self.weight.float(), dim=1)
            return (e @ w.t()).clamp(-1.0, 1.0)

    def margins(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None, **fields: torch.Tensor) -> torch.Tensor:
        """The per-sample margin (length B); adaptive heads override this and read ``fields``."""
        if margin is None:
            margin = self.m
        m = torch.as_tensor(margin, dtype=torch.float32, device=embeddings.device)
        return m.expand(embeddings.shape[0]) if m.dim() == 0 else m.reshape(-1)

    def target_logit(self, cos_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The target class's modified cosine (before scaling); plain cosine here."""
        return cos_t

    # -- the sharding hooks (lrfr_cli.losses.sharded): the same margin, split in two stages ------
    def margin_terms(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None, **fields: torch.Tensor) -> dict[str, torch.Tensor]:
        """The per-sample terms of the margin (``{name: length-B tensor}``), computed where the
        sample lives; statistics a head records for ``stats()`` are recorded here too."""
        return {"m": self.margins(embeddings, labels, margin, **fields)}

    def target_from_terms(self, cos_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The target cosine from ``cos θ_y`` and :meth:`margin_terms`' terms, where the class lives.

        A head that overrides ``forward`` overrides both hooks too (in the same class), or it
        cannot be sharded."""
        return self.target_logit(cos_t, m)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None = None, **fields: torch.Tensor) -> torch.Tensor:
        cos = self.cosine(embeddings)
        terms = self.margin_terms(embeddings, labels, margin, **fields)
        idx = labels.view(-1, 1).long()
        cos_t = cos.gather(1, idx).squeeze(1)
        target = self.target_from_terms(cos_t, **terms)
        logits = cos.scatter(1, idx, target.unsqueeze(1).to(cos.dtype))
        return logits * self.s

    def step(self, step: int) -> None:
        """Called once per optimiser step (for schedules inside the head, e.g. SphereFace's λ)."""

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: torch.Tensor | float | None = None, **fields: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(embeddings, labels, margin, **fields), labels)


def angle(cos_t: torch.Tensor) -> torch.Tensor:
    """θ = arccos(cos θ), clamped away from ±1 where arccos' gradient is infinite."""
    eps = 1e-7
    return torch.acos(cos_t.clamp(-1.0 + eps, 1.0 - eps))

