"""A ~0.5 M-parameter CNN for tests, CPU demos and smoke runs, not for accuracy.

It still takes the standard 112×112 input (so every tool downstream treats it like any other
backbone) but averages it down to 56×56 first: two CPU cores can train it on a few thousand faces
in minutes, which is what a test fixture or a laptop demo needs.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout)]


class TinyNet(nn.Module):
    def __init__(self, embedding_size: int = 512, width: int = 32) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.AvgPool2d(2),  # 112 -> 56
            *_block(3, w, 2),  # 28
            *_block(w, 2 * w, 2),  # 14
            *_block(2 * w, 2 * w, 1),
            *_block(2 * w, 4 * w, 2),  # 7
            *_block(4 * w, 4 * w, 1),
        )
        self.fc = nn.Linear(4 * w * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(torch.flatten(self.body(x), 1)))
