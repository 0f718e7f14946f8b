"""Face super-resolution networks (``lrfr train --task sr --arch NAME``) and a small discriminator.

Both generators take the LR face *already up-sampled back to 112 px* by
:func:`lrfr_cli.data.degrade.degrade_batch` (bicubic) and return a 112-px face. That is SRCNN's
own set-up, and for SRResNet it is a deliberate departure from the paper (which starts from the
small image and up-samples ×4 with pixel shuffles): our probe sizes (8, 12, 16, 20 px) are not
integer fractions of 112, the eval pipeline already produces exactly this input, and one network
then serves every probe size. Each network learns a *residual* over its input (output = input +
f(input)), as VDSR does: the bicubic face is already a good answer, and the residual form trains
in minutes on a CPU where the plain SRCNN mapping needs ~10⁸ steps.

Images enter and leave in [0, 1] (float); the caller clamps and rounds when it stores them.

- ``srcnn``: Dong et al. 2014, 9-1-5 convolutions with 64 and 32 channels (replicate padding, so
  the borders are not darkened), ≈ 20 k weights.
- ``srresnet``: Ledig et al. 2017's generator on a 28×28 grid: a lossless pixel-unshuffle ×4 of
  the 112-px input (3 → 48 channels), a 9×9 stem, ``blocks`` residual blocks (conv-BN-PReLU-conv-BN),
  a long skip, two pixel-shuffle ×2 up-sampling stages and a 9×9 output conv. The 28-px grid keeps
  the cost near 0.5 GFLOP per face with 8 blocks (the paper's 16 blocks at 112 px would be ~15).
- ``Discriminator``: SRGAN's VGG-style critic shrunk for 112-px faces (strided conv pairs
  32→256 channels, LeakyReLU 0.2, no BatchNorm so it behaves the same under DDP and tiny batches),
  one logit per image.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import LrfrError
from ..registry import Registry


class SRCNN(nn.Module):
    """Dong et al.'s three-layer network, residual over its bicubic input (module docstring)."""

    def __init__(self, channels: tuple[int, int] = (64, 32), kernels: tuple[int, int, int] = (9, 1, 5)) -> None:
        super().__init__()
        c1, c2 = channels
        k1, k2, k3 = kernels
        self.body = nn.Sequential(
            nn.Conv2d(3, c1, k1, padding=k1 // 2, padding_mode="replicate"),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, k2, padding=k2 // 2, padding_mode="replicate"),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, 3, k3, padding=k3 // 2, padding_mode="replicate"),
        )
        # Start as the identity (bicubic): the residual's last layer begins at zero.
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.PReLU(c), nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRResNet(nn.Module):
    """SRGAN's generator on a 28-px grid of the up-sampled face (module docstring)."""

    def __init__(self, blocks: int = 8, channels: int = 64, grid: int = 4) -> None:
        super().__init__()
        if grid not in (2, 4):
            raise ValueError("grid must be 2 or 4 (one or two pixel-shuffle x2 stages)")
        c = channels
        self.down = nn.PixelUnshuffle(grid)
        self.stem = nn.Sequential(nn.Conv2d(3 * grid * grid, c, 9, padding=4), nn.PReLU(c))
        self.blocks = nn.Sequential(*[_ResBlock(c) for _ in range(blocks)])
        self.mid = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))
        ups: list[nn.Module] = []
        for _ in range({2: 1, 4: 2}[grid]):
            ups += [nn.Conv2d(c, 4 * c, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(c)]
        self.up = nn.Sequential(*ups)
        self.out = nn.Conv2d(c, 3, 9, padding=4)
        nn.init.zeros_(self.out.weight)  # starts as the identity (bicubic), like SRCNN here
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        g = self.down.downscale_factor
        if h % g or w % g:
            raise LrfrError(f"srresnet needs an input size divisible by {g}, got {h}x{w}")
        f = self.stem(self.down(x))
        f = f + self.mid(self.blocks(f))
        return x + self.out(self.up(f))


class Discriminator(nn.Module):
    """A small VGG-style critic: one real/fake logit per face (module docstring)."""

    def __init__(self, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.LeakyReLU(0.2, inplace=True),
                       nn.Conv2d(c, c, 3, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2.0 - 1.0)).flatten()


#: The SR generators by name (``--arch``); each is made with its defaults.
SR_ARCHS: Registry[Callable[[], nn.Module]] = Registry("--arch")
SR_ARCHS.register("srcnn", SRCNN, "Dong et al. 2014, three convolutions residual over the bicubic face")
SR_ARCHS.register("srresnet", SRResNet, "Ledig et al. 2017's generator on a 28x28 grid (the SRGAN recipe's)")


def build_sr(name: str) -> nn.Module:
    """A freshly initialised SR network; an unknown name is the registry's one-line error."""
    return SR_ARCHS.get(name)()


__all__ = ["SRCNN", "SR_ARCHS", "Discriminator", "SRResNet", "build_sr"]
