"""Improved ResNet (IResNet) backbones in the layout of insightface ``arcface_torch``.

Module and parameter names follow that layout (``conv1``, ``bn1``, ``prelu``, ``layer1..4``,
``bn2``, ``fc``, ``features``) so that public ``arcface_torch`` checkpoints load with
``load_state_dict`` unchanged: the names are an interface, not an accident.
"""

from __future__ import annotations

import torch
from torch import nn

_DEPTHS: dict[str, tuple[int, int, int, int]] = {
    "ir18": (2, 2, 2, 2),
    "ir34": (3, 4, 6, 3),
    "ir50": (3, 4, 14, 3),
    "ir100": (3, 13, 30, 3),
}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-activation-style residual unit: BN → conv → BN → PReLU → conv(stride) → BN (+ shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = _conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = _conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return y + shortcut


class IResNet(nn.Module):
    """112×112 RGB → ``embedding_size`` (un-normalised), four stride-2 stages down to 7×7."""

    def __init__(self, layers: tuple[int, int, int, int], embedding_size: int = 512, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv1 = _conv3x3(3, 64)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        stages = []
        for width, depth in zip((64, 128, 256, 512), layers):
            stages.append(self._stage(cin, width, depth))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        # arcface_torch freezes the scale of the final BN at 1 (the head normalises anyway).
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # Zero-init the last BN of each residual branch: every block starts as the identity,
        # which keeps deep variants (ir100) trainable from scratch without warm-up tricks.
        for m in self.modules():
            if isinstance(m, IBasicBlock):
                nn.init.constant_(m.bn3.weight, 0)

    @staticmethod
    def _stage(cin: int, cout: int, depth: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size=1, stride=2, bias=False),
            nn.BatchNorm2d(cout, eps=1e-5),
        )
        blocks = [IBasicBlock(cin, cout, 2, downsample)]
        blocks += [IBasicBlock(cout, cout) for _ in range(depth - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)
        x = torch.flatten(x, 1)
        x = self.dropout(x)
        # The fc/BN1d tail runs in fp32 even under autocast, as arcface_torch does: the embedding
        # norm matters to AdaFace-style heads and fp16 would saturate it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self.features(self.fc(x.float()))
        return x


def iresnet(name: str, embedding_size: int = 512) -> IResNet:
    return IResNet(_DEPTHS[name], embedding_size)
