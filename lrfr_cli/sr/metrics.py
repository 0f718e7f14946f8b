"""Image-quality metrics of super-resolution: PSNR and SSIM on the luma (Y) channel.

Why Y and not RGB: the SR literature (SRCNN, SRResNet/SRGAN, EDSR) reports PSNR/SSIM on the Y
channel of ITU-R BT.601 YCbCr, computed as MATLAB's ``rgb2ycbcr`` does it (studio swing,
16..235), so our numbers can be read next to theirs; colour errors of an SR network are small
next to its luma errors anyway. Definitions, for ``B×3×H×W`` RGB images in 0..255 (uint8 or
float; floats are *not* rounded, so a network's raw output can be scored):

- ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
- ``PSNR = 10 log10(255² / MSE(Y_a, Y_b))`` per image (identical images give ``inf``; the batch
  mean is the mean of per-image values, as papers average over a test set);
- SSIM of Wang, Bovik, Sheikh & Simoncelli (2004) with their constants: 11×11 Gaussian window
  σ = 1.5 (normalised), ``K1 = 0.01, K2 = 0.03, L = 255``, statistics over the *valid* part
  of the image only (no padding: the window never leaves the image, as in the authors'
  ``ssim_index.m``), then the mean of the SSIM map per image.

No border is cropped: our LR faces are up-sampled back to 112 px by ``degrade_batch`` before a
network sees them, so there is no scale-dependent border to exclude.

Computed in float64 on the images' device: validation scores a few hundred faces, and float32
sums of 112² squared differences would move the third decimal of PSNR.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2, SSIM_L = 0.01, 0.03, 255.0
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """``B×3×H×W`` RGB in 0..255 → ``B×1×H×W`` BT.601 luma in 16..235 (float64)."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected B x 3 x H x W RGB images, got shape {tuple(x.shape)}")
    x = x.double()
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=x.device).view(1, 3, 1, 1) / 255.0
    return 16.0 + (x * w).sum(1, keepdim=True)


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB between two RGB batches (module docstring); shape ``B``."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    mse = (rgb_to_y(a) - rgb_to_y(b)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10((255.0**2) / mse)  # mse 0 -> inf, as the definition says


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """The normalised 1-d Gaussian of the SSIM window (the 2-d window is its outer product)."""
    t = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k))
    return F.conv2d(x, g.view(1, 1, k, 1))


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004, module docstring) on the Y channel; shape ``B``."""
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    if min(a.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {tuple(a.shape[-2:])}")
    x, y = rgb_to_y(a), rgb_to_y(b)
    g = gaussian_window().to(x.device)
    c1, c2 = (SSIM_K1 * SSIM_L) ** 2, (SSIM_K2 * SSIM_L) ** 2
    mx, my = _filter_valid(x, g), _filter_valid(y, g)
    sxx = _filter_valid(x * x, g) - mx * mx
    syy = _filter_valid(y * y, g) - my * my
    sxy = _filter_valid(x * y, g) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return m.flatten(1).mean(1)


def mean_finite(v: torch.Tensor) -> float:
    """The mean of per-image values, leaving out ``inf`` (identical images) so one exact copy does
    not make a whole set's PSNR infinite; NaN when nothing is left."""
    v = v[torch.isfinite(v)]
    return float(v.mean()) if v.numel() else math.nan


__all__ = ["SSIM_SIGMA", "SSIM_WINDOW", "gaussian_window", "mean_finite", "psnr", "rgb_to_y", "ssim"]
