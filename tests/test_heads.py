"""Margin heads: every logit against a hand computation from the loss's formula (numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lrfr_cli.errors import LrfrError
from lrfr_cli.losses import HEADS, build_head, psi


def _setup(head, emb: np.ndarray, w: np.ndarray):
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    return torch.from_numpy(emb)


def _cos(emb: np.ndarray, w: np.ndarray) -> np.ndarray:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    k = w / np.linalg.norm(w, axis=1, keepdims=True)
    return e @ k.T


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 5)).astype(np.float32) * 7.0  # un-normalised on purpose
    w = rng.normal(size=(4, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 1, 2])
    return emb, w, labels


def _check_non_target(logits: np.ndarray, cos: np.ndarray, labels: np.ndarray, s: float) -> None:
    mask = np.ones_like(cos, dtype=bool)
    mask[np.arange(len(labels)), labels] = False
    np.testing.assert_allclose(logits[mask], s * cos[mask], rtol=1e-5, atol=1e-4)


def test_cosface_target_is_s_times_cos_minus_m(batch):
    emb, w, labels = batch
    head = build_head("cosface", 5, 4)
    assert (head.s, head.m) == (64.0, 0.35)
    out = head(_setup(head, emb, w), torch.from_numpy(labels)).detach().numpy()
    cos = _cos(emb, w)
    idx = np.arange(6)
    np.testing.assert_allclose(out[idx, labels], 64.0 * (cos[idx, labels] - 0.35), rtol=1e-5, atol=1e-4)
    _check_non_target(out, cos, labels, 64.0)


def test_arcface_target_is_cos_theta_plus_m(batch):
    emb, w, labels = batch
    head = build_head("arcface", 5, 4)
    assert (head.s, head.m) == (64.0, 0.5)
    out = head(_setup(head, emb, w), torch.from_numpy(labels)).detach().numpy()
    cos = _cos(emb, w)
    idx = np.arange(6)
    theta = np.arccos(cos[idx, labels])
    expect = np.where(theta + 0.5 <= math.pi, np.cos(theta + 0.5), cos[idx, labels] - 0.5 * math.sin(0.5))
    np.testing.assert_allclose(out[idx, labels], 64.0 * expect, rtol=1e-4, atol=1e-3)
    _check_non_target(out, cos, labels, 64.0)


def test_arcface_beyond_pi_minus_m_uses_the_monotone_fallback():
    """θ > π − m: cos(θ+m) would turn back up; the head uses cos θ − m·sin m instead."""
    head = build_head("arcface", 2, 2, s=1.0)
    m = 0.5
    thetas = np.array([0.1, 1.0, math.pi - m - 0.05, math.pi - m + 0.05, 3.0, 3.1])
    emb = np.stack([np.cos(thetas), np.sin(thetas)], 1).astype(np.float32)
    w = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    out = head(_setup(head, emb, w), torch.zeros(len(thetas), dtype=torch.long)).detach().numpy()[:, 0]
    expect = [math.cos(t + m) if t + m <= math.pi else math.cos(t) - m * math.sin(m) for t in thetas]
    np.testing.assert_allclose(out, expect, atol=1e-4)
    # Past the threshold the plain formula would increase; ours keeps decreasing.
    assert math.cos(3.1 + m) > math.cos(3.0 + m)
    assert np.all(np.diff(out) < 0)


def test_sphereface_psi_by_hand_and_never_easier_than_softmax():
    m = 4
    for theta, k in [(0.3, 0), (1.0, 1), (2.0, 2), (3.0, 3)]:
        assert math.floor(m * theta / math.pi) == k
        hand = (-1) ** k * math.cos(m * theta) - 2 * k
        assert float(psi(torch.tensor(theta, dtype=torch.float64), m)) == pytest.approx(hand, abs=1e-9)
    theta = torch.linspace(1e-3, math.pi - 1e-3, 2001, dtype=torch.float64)
    p = psi(theta, m)
    assert torch.all(p <= torch.cos(theta) + 1e-12)
    assert torch.all(torch.diff(p) < 0)  # monotonically decreasing: a larger angle is always worse
    # The thesis seed's cos(0.35·θ) is EASIER than softmax for every θ in (0, π): the regression.
    assert torch.all(torch.cos(0.35 * theta) > torch.cos(theta))


def test_sphereface_target_logit_with_annealing(batch):
    emb, w, labels = batch
    head = build_head("sphereface", 5, 4)
    x = _setup(head, emb, w)
    cos = _cos(emb, w)
    idx = np.arange(6)
    ct = cos[idx, labels]
    theta = np.arccos(ct)
    k = np.floor(4 * theta / math.pi)
    psi_hand = (-1.0) ** k * np.cos(4 * theta) - 2 * k
    for step in (0, 10, 100000):
        head.step(step)
        lam = max(5.0, 1000.0 / (1 + 0.12 * step))
        out = head(x, torch.from_numpy(labels)).detach().numpy()
        np.testing.assert_allclose(out[idx, labels], 64.0 * (lam * ct + psi_hand) / (1 + lam), rtol=1e-4, atol=1e-3)
        assert np.all(out[idx, labels] <= 64.0 * ct + 1e-4)  # never easier than softmax
        _check_non_target(out, cos, labels, 64.0)
    assert float(head.lam) == 5.0
    assert "lam" in head.state_dict()  # annealing state survives a checkpoint


def test_per_sample_margin_tensor(batch):
    emb, w, labels = batch
    head = build_head("cosface", 5, 4)
    x = _setup(head, emb, w)
    margins = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    out = head(x, torch.from_numpy(labels), margin=margins).detach().numpy()
    cos = _cos(emb, w)
    idx = np.arange(6)
    np.testing.assert_allclose(out[idx, labels], 64.0 * (cos[idx, labels] - margins.numpy()), rtol=1e-5, atol=1e-4)


def test_softmax_is_linear_with_bias_and_loss_is_cross_entropy(batch):
    emb, w, labels = batch
    head = build_head("softmax", 5, 4)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
        head.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
    out = head(torch.from_numpy(emb)).detach().numpy()
    np.testing.assert_allclose(out, emb @ w.T + np.array([0.1, -0.2, 0.3, 0.0]), rtol=1e-5, atol=1e-4)
    z = out - out.max(1, keepdims=True)
    ce = -(z[np.arange(6), labels] - np.log(np.exp(z).sum(1))).mean()
    assert head.loss(torch.from_numpy(emb), torch.from_numpy(labels)).item() == pytest.approx(ce, rel=1e-5)


def test_margin_losses_are_harder_than_no_margin(batch):
    emb, w, labels = batch
    x, y = torch.from_numpy(emb), torch.from_numpy(labels)
    plain = build_head("cosface", 5, 4, m=0.0)
    _setup(plain, emb, w)
    for name in ("cosface", "arcface", "sphereface"):
        h = build_head(name, 5, 4)
        _setup(h, emb, w)
        assert h.loss(x, y).item() > plain.loss(x, y).item()


def test_unknown_loss_lists_choices():
    with pytest.raises(LrfrError) as e:
        build_head("tripletface", 5, 4)
    for name in HEADS:
        assert name in str(e.value)


def test_logits_stay_fp32_under_bf16_autocast(batch):
    """A 0.35 margin on cosines rounded to bf16 (8 bits of mantissa) would be noise."""
    emb, w, labels = batch
    g = torch.Generator().manual_seed(0)
    # the per-sample inputs of the adaptive heads (an HR/LR flag, the raw images for quality)
    fields = {"approach1": {"is_lr": torch.arange(6) % 2 == 0},
              "approach2": {"images": torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)}}
    for name in HEADS:
        head = build_head(name, 5, 4).eval()  # eval: AdaFace's norm statistics stay put between the calls
        x = _setup(head, emb, w)
        kw = fields.get(name, {})
        ref = head(x, torch.from_numpy(labels), **kw)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head(x.bfloat16(), torch.from_numpy(labels), **kw)
        assert out.dtype == torch.float32, name
        torch.testing.assert_close(out, head(x.bfloat16().float(), torch.from_numpy(labels), **kw), msg=name)
        assert ref.dtype == torch.float32
