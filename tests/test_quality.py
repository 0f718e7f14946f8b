"""Batched Laplacian quality against OpenCV on real faces, and its ordering sharp > blurred > 8 px."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lrfr_cli.data.quality import (
    QUALITY_MODES,
    check_quality_mode,
    grey,
    laplacian,
    laplacian_quality,
)
from lrfr_cli.errors import LrfrError


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> np.ndarray:
    """12 aligned 112x112 faces of different identities (N x H x W x 3 uint8, RGB)."""
    dirs = sorted(p for p in (data_dir / "celeba_subset" / "images").iterdir() if p.is_dir())[::20][:12]
    if len(dirs) < 12:
        pytest.skip("celeba_subset has fewer than 12 identities")
    return np.stack([np.array(Image.open(min(d.glob("*.jpg"))).convert("RGB")) for d in dirs])


def _t(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(imgs)).permute(0, 3, 1, 2).contiguous()


def _cv2_lap(img: np.ndarray) -> np.ndarray:
    return cv2.Laplacian(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.CV_64F)


def test_uint8_grey_and_laplacian_equal_opencv_exactly(faces):
    x = _t(faces)
    g = grey(x)[:, 0].numpy()
    lap = laplacian(x)[:, 0].numpy()
    for i, img in enumerate(faces):
        np.testing.assert_array_equal(g[i], cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32))
        # Integer grey levels: every Laplacian value is an integer in [-1020, 1020], exact in fp32.
        np.testing.assert_array_equal(lap[i], _cv2_lap(img))


def test_uint8_grey_equals_opencv_on_a_million_random_colours():
    """Ties such as 136.5 are where fixed-point formulas differ (OpenCV's 14- and 15-bit ones disagree
    on 0.26 % of all colours); a million random colours hold ~2,600 of them."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(1000, 1000, 3), dtype=np.uint8)
    g = grey(_t(img[None]))[0, 0].numpy()
    np.testing.assert_array_equal(g, cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float32))


def test_quality_equals_opencv_variance_and_mean_abs(faces):
    x = _t(faces)
    var = laplacian_quality(x, "variance").numpy()
    mab = laplacian_quality(x, "mean-abs").numpy()
    ref_var = np.array([_cv2_lap(img).var() for img in faces])
    ref_mab = np.array([np.abs(_cv2_lap(img)).mean() for img in faces])
    # The responses are exact (previous test); only the fp32 reduction over 112² = 12544 values
    # differs from float64: pairwise summation errs by ~log2(N)·2^-24 ≈ 1e-6 relative, and the
    # variance's subtraction of the mean can amplify that by mean²/var (< 1 here): rtol 1e-5.
    np.testing.assert_allclose(var, ref_var, rtol=1e-5)
    np.testing.assert_allclose(mab, ref_mab, rtol=1e-5)


def test_float_input_equals_opencv_on_float_grey(faces):
    x = _t(faces).float() / 255.0
    q = laplacian_quality(x, "variance").numpy()
    ref = []
    for img in faces:
        f = (img.astype(np.float32) / np.float32(255.0)) * np.float32(255.0)
        ref.append(cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float64), cv2.CV_64F).var())
    # fp32 grey of values <= 255 errs by ~255·3·2^-24 ≈ 5e-5 levels; the Laplacian (weights sum
    # |8|) by <= 4e-4; against responses with std ~ 10..60 that moves the variance by < 1e-4 rel.
    np.testing.assert_allclose(q, np.array(ref), rtol=1e-4)
    # A float batch and its uint8 original differ only by OpenCV's rounding of grey to integers,
    # i.e. by a Laplacian difference D; the triangle inequality for std bounds the change by std(D).
    qu = laplacian_quality(_t(faces), "variance").numpy()
    for i, img in enumerate(faces):
        fg = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2GRAY).astype(np.float64)
        d = cv2.Laplacian(fg, cv2.CV_64F) - _cv2_lap(img)
        assert abs(np.sqrt(q[i]) - np.sqrt(qu[i])) <= d.std() + 1e-3


def test_sharp_face_beats_its_blurred_and_8px_copies(faces):
    blurred = np.stack([cv2.GaussianBlur(img, (0, 0), 1.5) for img in faces])
    tiny = np.stack(
        [cv2.resize(cv2.resize(img, (8, 8), interpolation=cv2.INTER_AREA), (112, 112), interpolation=cv2.INTER_CUBIC) for img in faces]
    )
    for mode in QUALITY_MODES:
        q = laplacian_quality(_t(faces), mode)
        qb = laplacian_quality(_t(blurred), mode)
        qt = laplacian_quality(_t(tiny), mode)
        assert torch.all(q > qb), mode
        assert torch.all(q > qt), mode
        assert torch.all(qb > qt), mode  # sigma 1.5 keeps more detail than 8 px


def test_batched_equals_one_by_one_and_shape_dtype(faces):
    x = _t(faces)
    q = laplacian_quality(x)
    one = torch.cat([laplacian_quality(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(q.numpy(), one.numpy(), rtol=1e-6)
    assert q.shape == (len(faces),) and q.dtype == torch.float32 and not q.requires_grad


def test_flat_image_has_zero_quality():
    x = torch.full((2, 3, 16, 16), 77, dtype=torch.uint8)
    assert laplacian_quality(x).tolist() == [0.0, 0.0]
    assert laplacian_quality(x, "mean-abs").tolist() == [0.0, 0.0]


def test_bad_input_is_a_one_line_error():
    with pytest.raises(LrfrError) as e:
        laplacian_quality(torch.zeros(1, 3, 8, 8), "tenengrad")
    assert "variance" in str(e.value) and "mean-abs" in str(e.value) and "\n" not in str(e.value)
    assert check_quality_mode("Mean_Abs") == "mean-abs"
    with pytest.raises(LrfrError, match="N x 3 x H x W"):
        laplacian_quality(torch.zeros(3, 8, 8))
    with pytest.raises(LrfrError, match="uint8 or floating-point"):
        laplacian_quality(torch.zeros(1, 3, 8, 8, dtype=torch.int64))
