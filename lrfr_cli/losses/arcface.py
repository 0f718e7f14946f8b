"""ArcFace / additive angular margin (Deng et al., CVPR 2019): target ``s·cos(θ + m)``.

``cos(θ + m)`` stops decreasing once ``θ + m > π`` (it turns back up), which would reward a
target pushed *further* away. Past ``θ > π − m`` we therefore use insightface's fallback (its
``easy_margin=False`` branch), the CosFace-like ``cos θ − m·sin m``. It is *not* a continuation
of the curve: at ``θ = π − m`` the target drops from ``cos π = −1`` to ``−cos m − m·sin m``, a
step of ``s·(cos m + m·sin m − 1)``, about 7.5 logits at s=64, m=0.5. The target stays
non-increasing in θ (the step points down), so the gradient never favours a wrong direction;
the step only makes the very rare target beyond ``π − m`` (an embedding nearly opposite its
class centre) a little harder, exactly as in insightface, whose numbers we want to reproduce.
"""

from __future__ import annotations

import math

import torch

from .margin import MarginHead, angle


class ArcFaceHead(MarginHead):
    name = "arcface"

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.5) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)

    def target_logit(self, cos_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        theta = angle(cos_t)
        arc = torch.cos(theta + m)
        fallback = cos_t - m * torch.sin(m)
        return torch.where(theta + m <= math.pi, arc, fallback)
