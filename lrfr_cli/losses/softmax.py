"""Plain softmax: an un-normalised linear classifier ``W x + b`` (the baseline with no margin)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """Logits ``W x + b``; accepts (and ignores) a margin and batch fields so it is interchangeable
    with margin heads. It has no options: ``--margin``/``--scale`` with it are an error, not a no-op."""

    name = "softmax"
    needs: tuple[str, ...] = ()

    def __init__(self, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_size))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, margin: object = None, **fields: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=embeddings.device.type, enabled=False):  # logits in fp32
            return F.linear(embeddings.float(), self.weight.float(), self.bias.float())

    def step(self, step: int) -> None:
        pass

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: object = None, **fields: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(embeddings, labels), labels)
