"""CosFace / large-margin cosine loss (Wang et al., CVPR 2018): target ``s·(cos θ − m)``."""

from __future__ import annotations

import torch

from .margin import MarginHead


class CosFaceHead(MarginHead):
    name = "cosface"

    def __init__(self, embedding_size: int, num_classes: int, s: float = 64.0, m: float = 0.35) -> None:
        super().__init__(embedding_size, num_classes, s=s, m=m)

    def target_logit(self, cos_t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return cos_t - m
