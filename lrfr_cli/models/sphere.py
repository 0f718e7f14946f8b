"""SphereFace-20: the 20-layer residual CNN of SphereFace (Liu et al., CVPR 2017).

Used by the Deep Siamese LRFR seed. Four stages, each a stride-2 3×3 conv + PReLU followed by
1/2/4/1 residual units of two 3×3 convs (no BN, as in the paper), then an fc to the embedding.
Adapted to 112×112 input (the paper uses 112×96), so the last map is 7×7.
"""

from __future__ import annotations

import torch
from torch import nn


class _Unit(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.prelu1 = nn.PReLU(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.prelu2 = nn.PReLU(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


class Sphere20(nn.Module):
    def __init__(self, embedding_size: int = 512) -> None:
        super().__init__()
        stages = []
        cin = 3
        for cout, units in zip((64, 128, 256, 512), (1, 2, 4, 1)):
            stages.append(nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.PReLU(cout), *[_Unit(cout) for _ in range(units)]))
            cin = cout
        self.body = nn.Sequential(*stages)
        self.fc = nn.Linear(512 * 7 * 7, embedding_size)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # Residual branches start near zero so the 20-layer net without BN trains from scratch.
        for m in self.modules():
            if isinstance(m, _Unit):
                nn.init.normal_(m.conv2.weight, 0, 1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.body(x), 1))
