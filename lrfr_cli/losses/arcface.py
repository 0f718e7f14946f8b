"""ArcFace / additive angular margin (Deng et al., CVPR 2019): target ``s·cos(θ + m)``.

``cos(θ + m)`` stops decreasing once ``θ + m > π`` (it turns back up), which would reward a
target pushed *further* away. Past ``θ > π − m`` we therefore use the paper's fallback, the
CosFace-like ``cos θ − m·sin m`` (insightface's ``easy_margin=False`` branch): it continues the
curve monotonically and is the linear extension of ``cos(θ + m)`` at the threshold in terms of
``cos θ``.
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
