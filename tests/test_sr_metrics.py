"""PSNR/SSIM of lrfr_cli.sr.metrics against an independent numpy/scipy implementation on real faces.

scikit-image is not installed here, so the reference is written out below: BT.601 luma by
MATLAB's ``rgb2ycbcr`` formula, PSNR from its definition, and Wang et al.'s SSIM with
``scipy.ndimage.gaussian_filter`` (σ = 1.5, truncated to an 11-tap window) whose borders are cut
off afterwards, i.e. the 'valid' statistics of the authors' ``ssim_index.m``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.data.images import load_rgb
from lrfr_cli.sr.metrics import gaussian_window, mean_finite, psnr, rgb_to_y, ssim


def _faces(data_dir: Path, n: int = 4) -> list[np.ndarray]:
    root = data_dir / "celeba_subset" / "images"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    files = sorted(root.rglob("*.jpg"))[:: 997][:n]
    return [load_rgb(p) for p in files]


def ref_y(img: np.ndarray) -> np.ndarray:
    r, g, b = (img[..., i].astype(np.float64) / 255.0 for i in range(3))
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def ref_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((ref_y(a) - ref_y(b)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def ref_ssim(a: np.ndarray, b: np.ndarray) -> float:
    x, y = ref_y(a), ref_y(b)

    def blur(z: np.ndarray) -> np.ndarray:  # radius int(3.5*1.5+0.5) = 5: 11 taps, borders cut off
        return gaussian_filter(z, sigma=1.5, truncate=3.5)[5:-5, 5:-5]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    smap = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(smap.mean())


def _t(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()


def test_psnr_and_ssim_equal_the_reference_on_real_degraded_faces(data_dir: Path) -> None:
    hr = _faces(data_dir)
    for size, method in ((8, "bicubic"), (16, "bicubic"), (12, "area")):
        lr = [degrade_array(f, DegradeSpec(size=size, method=method)) for f in hr]
        got_p = psnr(_t(lr), _t(hr)).numpy()
        got_s = ssim(_t(lr), _t(hr)).numpy()
        want_p = np.array([ref_psnr(a, b) for a, b in zip(lr, hr)])
        want_s = np.array([ref_ssim(a, b) for a, b in zip(lr, hr)])
        # both float64: differences are summation-order rounding (~1e-12 relative)
        np.testing.assert_allclose(got_p, want_p, rtol=1e-9)
        np.testing.assert_allclose(got_s, want_s, rtol=1e-9, atol=1e-12)
        assert 15 < want_p.min() and want_p.max() < 40 and 0.2 < want_s.min() and want_s.max() < 0.99  # a real, non-trivial case


def test_identical_images_and_float_input(data_dir: Path) -> None:
    hr = _t(_faces(data_dir, 2))
    assert torch.isinf(psnr(hr, hr)).all()
    np.testing.assert_allclose(ssim(hr, hr).numpy(), 1.0, rtol=0, atol=1e-12)
    noisy = (hr.float() + torch.randn(hr.shape, generator=torch.Generator().manual_seed(0)) * 5).clamp(0, 255)
    # floats are scored unrounded: the reference sees the same float pixels
    ref = [ref_psnr(a, b) for a, b in zip(noisy.permute(0, 2, 3, 1).numpy(), hr.permute(0, 2, 3, 1).numpy())]
    np.testing.assert_allclose(psnr(noisy, hr).numpy(), ref, rtol=1e-9)
    # sigma-5 noise on Y (weights sum to 219/255): PSNR near 10 log10(255^2 / (5^2 * 0.41)), clipping aside
    assert abs(float(psnr(noisy, hr).mean()) - 10 * np.log10(255**2 / (25 * ((65.481**2 + 128.553**2 + 24.966**2) / 255**2)))) < 0.5
    assert mean_finite(torch.tensor([float("inf"), 20.0, 30.0])) == 25.0


def test_window_and_luma_definitions() -> None:
    g = gaussian_window().numpy()
    t = np.arange(11) - 5
    ref = np.exp(-(t**2) / (2 * 1.5**2))
    np.testing.assert_allclose(g, ref / ref.sum(), rtol=1e-12)
    white, black = torch.full((1, 3, 1, 1), 255.0), torch.zeros((1, 3, 1, 1))
    assert float(rgb_to_y(white)) == pytest.approx(235.0) and float(rgb_to_y(black)) == 16.0
    with pytest.raises(ValueError):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError):
        psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
