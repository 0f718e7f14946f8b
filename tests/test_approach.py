"""Approach1/Approach2 heads: per-sample ArcFace margins against numpy, Approach2's margin against a
``cv2.Laplacian(...).var()`` reference on real faces, bounds/monotonicity, and option errors."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lrfr_cli.data.crb import cross_resolution_batch
from lrfr_cli.errors import LrfrError
from lrfr_cli.losses.approach import (
    QUALITY_REFERENCES,
    Approach1Head,
    Approach2Head,
    quality_margin,
)


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only waits for the busy shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _arc_hand(emb: np.ndarray, w: np.ndarray, labels: np.ndarray, margins: np.ndarray, s: float = 64.0) -> np.ndarray:
    """ArcFace logits with a per-sample margin (monotone fallback past π − m), float64 loops."""
    out = np.zeros((len(emb), len(w)))
    for i, z in enumerate(emb.astype(np.float64)):
        for j, k in enumerate(w.astype(np.float64)):
            c = float(z @ k / (np.linalg.norm(z) * np.linalg.norm(k)))
            if j == labels[i]:
                t, m = math.acos(c), float(margins[i])
                c = math.cos(t + m) if t + m <= math.pi else c - m * math.sin(m)
            out[i, j] = s * c
    return out


def _with_weight(head, w: np.ndarray):
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    return head


@pytest.fixture
def problem():
    rng = np.random.default_rng(5)
    emb = (rng.normal(size=(8, 6)) * 4).astype(np.float32)
    w = rng.normal(size=(5, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    return emb, w, labels


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> np.ndarray:
    dirs = sorted(p for p in (data_dir / "celeba_subset" / "images").iterdir() if p.is_dir())[::25][:8]
    if len(dirs) < 8:
        pytest.skip("celeba_subset has fewer than 8 identities")
    return np.stack([np.array(Image.open(min(d.glob("*.jpg"))).convert("RGB")) for d in dirs])


# ------------------------------------------------------------------------------------ approach1
def test_approach1_margin_by_resolution_flag(problem):
    emb, w, labels = problem
    head = _with_weight(Approach1Head(6, 5), w)
    assert (head.m_hr, head.m_lr, head.s) == (0.35, 0.5, 64.0)
    is_lr = np.array([0, 1, 0, 1, 1, 0, 0, 1], dtype=bool)
    out = head(torch.from_numpy(emb), torch.from_numpy(labels), is_lr=torch.from_numpy(is_lr)).detach().numpy()
    np.testing.assert_allclose(out, _arc_hand(emb, w, labels, np.where(is_lr, 0.5, 0.35)), rtol=1e-5, atol=1e-3)
    head2 = _with_weight(Approach1Head(6, 5, m_hr=0.1, m_lr=0.6, s=30.0), w)
    out2 = head2(torch.from_numpy(emb), torch.from_numpy(labels), is_lr=torch.from_numpy(is_lr)).detach().numpy()
    np.testing.assert_allclose(out2, _arc_hand(emb, w, labels, np.where(is_lr, 0.6, 0.1), s=30.0), rtol=1e-5, atol=1e-3)
    assert float(head.stats()["margin_mean"]) == pytest.approx(np.where(is_lr, 0.5, 0.35).mean())


def test_approach1_on_a_crb_batch_gives_lr_copies_the_larger_margin():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    b = cross_resolution_batch(x, torch.tensor([0, 1, 2, 3]), [8], "copies", generator=0)
    head = Approach1Head(6, 5)
    assert head.sample_margins(b.is_lr).tolist() == pytest.approx([0.35] * 4 + [0.5] * 4)


def test_approach1_needs_is_lr():
    head = Approach1Head(4, 3)
    assert Approach1Head.needs == ("is_lr",) and Approach1Head.crb == "required"
    with pytest.raises(ValueError, match="is_lr"):
        head.loss(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="2 is_lr flags for 3"):
        head.loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), is_lr=torch.tensor([True, False]))


# ------------------------------------------------------------------------------------ approach2
def test_approach2_margin_is_bounded_and_monotonic_over_a_sweep():
    q = torch.logspace(-6, 8, 2001, dtype=torch.float64)
    for m_min, m_max in [(0.35, 0.5), (0.0, 0.7), (0.4, 0.4)]:
        for q_lo, q_hi in [QUALITY_REFERENCES["variance"], QUALITY_REFERENCES["mean-abs"], (1e-3, 1e5)]:
            m = quality_margin(q, m_min, m_max, q_lo, q_hi)
            assert torch.all(m >= m_min - 1e-7) and torch.all(m <= m_max + 1e-7)
            assert torch.all(torch.diff(m) <= 1e-7)  # non-increasing in quality
            assert float(m[0]) == pytest.approx(m_max) and float(m[-1]) == pytest.approx(m_min)
    m = quality_margin(torch.tensor([0.0, float("inf")]), 0.35, 0.5, 2.5, 800.0)
    assert m.tolist() == pytest.approx([0.5, 0.35])  # flat image and a limit: still bounded


def _numpy_margin(q: np.ndarray, m_min: float, m_max: float, q_lo: float, q_hi: float) -> np.ndarray:
    t = np.clip((np.log(q) - np.log(q_lo)) / (np.log(q_hi) - np.log(q_lo)), 0.0, 1.0)
    return m_max - (m_max - m_min) * t


def test_approach2_margin_equals_the_opencv_laplacian_reference(faces):
    """Sharp faces, blurred and 8/16-px copies: margin from cv2.Laplacian(...).var() by the formula."""
    blurred = np.stack([cv2.GaussianBlur(img, (0, 0), 1.0) for img in faces])
    small = [
        np.stack([cv2.resize(cv2.resize(img, (s, s), interpolation=cv2.INTER_AREA), (112, 112), interpolation=cv2.INTER_CUBIC) for img in faces])
        for s in (8, 16)
    ]
    imgs = np.concatenate([faces, blurred, *small])
    head = Approach2Head(6, 5)
    got = head.sample_margins(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()).numpy()
    q = np.array([cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for im in imgs])
    want = _numpy_margin(q, 0.35, 0.5, 2.5, 800.0)
    # quality agrees with OpenCV to ~1e-6 relative (test_quality); d margin/d ln q = 0.15 / ln 320,
    # so the margin agrees to ~1e-7 absolute; fp32 arithmetic on ~0.5 adds ~6e-8.
    np.testing.assert_allclose(got, want, atol=1e-6)
    n = len(faces)
    assert np.all(got >= 0.35) and np.all(got <= 0.5)
    sharp, blur, px8, px16 = got[:n], got[n : 2 * n], got[2 * n : 3 * n], got[3 * n :]
    assert np.all(sharp < blur) and np.all(blur < px16) and np.all(px16 < px8)
    # mean-abs: the seed's measure with its own references
    head_ma = Approach2Head(6, 5, quality="mean-abs", m_min=0.3, m_max=0.6)
    got_ma = head_ma.sample_margins(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()).numpy()
    q_ma = np.array([np.abs(cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F)).mean() for im in imgs])
    np.testing.assert_allclose(got_ma, _numpy_margin(q_ma, 0.3, 0.6, 1.2, 16.0), atol=1e-6)


def test_approach2_logits_are_arcface_with_the_quality_margin(problem):
    emb, w, labels = problem
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8, generator=g)
    images[::2] = images[::2].float().mean(dim=(2, 3), keepdim=True).to(torch.uint8)  # flat: quality 0
    head = _with_weight(Approach2Head(6, 5, q_lo=10.0, q_hi=5000.0), w)
    out = head(torch.from_numpy(emb), torch.from_numpy(labels), images=images).detach().numpy()
    q = []
    for im in images.permute(0, 2, 3, 1).numpy():
        q.append(cv2.Laplacian(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())
    with np.errstate(divide="ignore"):
        m = _numpy_margin(np.array(q), 0.35, 0.5, 10.0, 5000.0)
    assert np.all(m[::2] == 0.5)
    np.testing.assert_allclose(out, _arc_hand(emb, w, labels, m), rtol=1e-5, atol=1e-3)
    assert set(head.stats()) == {"quality_mean", "margin_mean"}


def test_approach2_needs_images():
    head = Approach2Head(4, 3)
    assert Approach2Head.needs == ("images",) and Approach2Head.crb == "default"
    with pytest.raises(ValueError, match="images"):
        head.loss(torch.randn(2, 4), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------ both
@pytest.mark.parametrize(
    "cls, kwargs, needle",
    [
        (Approach2Head, {"m_min": 0.5, "m_max": 0.35}, "m_min must not exceed m_max"),
        (Approach2Head, {"quality": "sobel"}, "unknown quality mode"),
        (Approach2Head, {"q_lo": 100.0, "q_hi": 10.0}, "0 < q_lo < q_hi"),
        (Approach2Head, {"q_lo": 0.0}, "0 < q_lo < q_hi"),
        (Approach2Head, {"m_max": 2.0}, "m_max=2.0"),
        (Approach2Head, {"m": 0.5}, "--margin does not apply to approach2"),
        (Approach1Head, {"m_lr": -0.1}, "m_lr=-0.1"),
        (Approach1Head, {"m": 0.5}, "--margin does not apply to approach1"),
    ],
)
def test_bad_options_are_one_line_errors(cls, kwargs, needle):
    with pytest.raises(LrfrError) as e:
        cls(4, 3, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cls", [Approach1Head, Approach2Head])
def test_declared_options_match_the_constructor(cls):
    params = inspect.signature(cls.__init__).parameters
    for name, (typ, default, text) in cls.options.items():
        assert params[name].default == default, name
        assert default is None or isinstance(default, typ), name
        assert text and "\n" not in text
    assert cls.summary and cls.name in ("approach1", "approach2")


@pytest.mark.parametrize("name", ["approach1", "approach2"])
def test_loss_decreases_on_a_tiny_problem(name, one_thread):
    torch.manual_seed(0)
    x = torch.randn(48, 16)
    y = torch.arange(48) % 4
    x = x + 3.0 * torch.nn.functional.one_hot(y, 16).float()
    images = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8)
    crb = cross_resolution_batch(images, y, [4, 8], "split", lr_prob=0.5, generator=0)
    model = torch.nn.Linear(16, 8)
    head = Approach1Head(8, 4) if name == "approach1" else Approach2Head(8, 4)
    extra = {"is_lr": crb.is_lr} if name == "approach1" else {"images": crb.images}
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.05)
    losses = []
    for _ in range(40):
        loss = head.loss(model(x), y, **extra)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
