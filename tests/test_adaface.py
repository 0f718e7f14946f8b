"""AdaFace: logits against a numpy hand computation of the paper's formula, its EMA, eval freeze, DDP."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrfr_cli.errors import LrfrError
from lrfr_cli.losses.adaface import AdaFaceHead, batch_norm_stats

EPS = 1e-3


def _head(w: np.ndarray, **kw) -> AdaFaceHead:
    head = AdaFaceHead(w.shape[1], w.shape[0], **kw)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
    return head


def _hand(emb: np.ndarray, w: np.ndarray, labels: np.ndarray, mu: float, sigma: float, m=0.4, h=0.333, s=64.0) -> np.ndarray:
    """AdaFace logits written out from the paper, loop by loop (float64)."""
    out = np.zeros((len(emb), len(w)))
    for i, z in enumerate(emb.astype(np.float64)):
        norm = min(max(np.linalg.norm(z), 0.001), 100.0)
        zhat = min(max(h * (norm - mu) / (sigma + EPS), -1.0), 1.0)
        for j, k in enumerate(w.astype(np.float64)):
            c = float(z @ k / (np.linalg.norm(z) * np.linalg.norm(k)))
            if j == labels[i]:
                theta = math.acos(c)
                t = min(max(theta - m * zhat, EPS), math.pi - EPS)
                out[i, j] = s * (math.cos(t) - (m + m * zhat))
            else:
                out[i, j] = s * c
    return out


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only waits for the busy shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def batch():
    rng = np.random.default_rng(11)
    directions = rng.normal(size=(8, 6))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = np.array([2.0, 8.0, 14.0, 19.0, 20.0, 23.0, 30.0, 60.0])
    emb = (directions * norms[:, None]).astype(np.float32)
    w = rng.normal(size=(5, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    return emb, w, labels


def test_eval_logits_equal_hand_computation_for_given_ema_state(batch):
    emb, w, labels = batch
    head = _head(w).eval()
    assert (head.s, head.m, head.h, head.t_alpha) == (64.0, 0.4, 0.333, 0.01)
    head.norm_mean.fill_(20.0)
    head.norm_std.fill_(6.0)
    out = head(torch.from_numpy(emb), torch.from_numpy(labels)).detach().numpy()
    # fp32 cosines (rel. error ~1e-7) times s=64, plus acos' slope near the extremes: atol 1e-3.
    np.testing.assert_allclose(out, _hand(emb, w, labels, 20.0, 6.0), rtol=1e-5, atol=1e-3)


def test_train_mode_updates_the_ema_before_normalising(batch):
    emb, w, labels = batch
    head = _head(w, t_alpha=0.25).train()
    head.norm_mean.fill_(18.0)
    head.norm_std.fill_(9.0)
    out = head(torch.from_numpy(emb), torch.from_numpy(labels)).detach().numpy()
    norms = np.clip(np.linalg.norm(emb.astype(np.float64), axis=1), 0.001, 100.0)
    mu = 0.25 * norms.mean() + 0.75 * 18.0
    sigma = 0.25 * norms.std(ddof=1) + 0.75 * 9.0
    assert float(head.norm_mean) == pytest.approx(mu, rel=1e-6)
    assert float(head.norm_std) == pytest.approx(sigma, rel=1e-6)
    np.testing.assert_allclose(out, _hand(emb, w, labels, mu, sigma), rtol=1e-5, atol=1e-3)


def test_high_and_low_norms_get_the_documented_split():
    """ẑ = +1: cos(θ − m) − 2m; ẑ = 0: CosFace cos θ − m; ẑ = −1: ArcFace cos(θ + m)."""
    theta = 1.0
    w = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    head = _head(w, s=1.0).eval()
    head.norm_mean.fill_(20.0)
    head.norm_std.fill_(3.0)
    d = np.array([math.cos(theta), math.sin(theta)])
    # norm 60: h·(60−20)/3 = 4.4 → clipped to +1; norm 1: → −1; norm 20: 0.
    emb = np.stack([60 * d, 1 * d, 20 * d]).astype(np.float32)
    out = head(torch.from_numpy(emb), torch.zeros(3, dtype=torch.long)).detach().numpy()[:, 0]
    m = 0.4
    np.testing.assert_allclose(out, [math.cos(theta - m) - 2 * m, math.cos(theta + m), math.cos(theta) - m], atol=1e-5)
    # at this angle the high-norm (good-quality) sample gets the hardest target
    assert out[0] < out[2] < out[1]


def test_ema_follows_its_recurrence_with_clipped_norms():
    head = AdaFaceHead(4, 3, t_alpha=0.1).train()
    rng = np.random.default_rng(0)
    mu, sigma = 20.0, 100.0  # the authors' starting values
    for step in range(5):
        norms = rng.uniform(1, 40, size=16)
        norms[0] = 150.0 if step % 2 else 1e-5  # outside [0.001, 100]: clipped before the stats
        e = rng.normal(size=(16, 4))
        e = e / np.linalg.norm(e, axis=1, keepdims=True) * norms[:, None]
        head(torch.tensor(e, dtype=torch.float32), torch.zeros(16, dtype=torch.long))
        c = np.clip(norms, 0.001, 100.0)
        mu = 0.1 * c.mean() + 0.9 * mu
        sigma = 0.1 * c.std(ddof=1) + 0.9 * sigma
        assert float(head.norm_mean) == pytest.approx(mu, rel=1e-5)
        assert float(head.norm_std) == pytest.approx(sigma, rel=1e-5)


def test_eval_mode_freezes_the_statistics_and_checkpoints_keep_them(batch):
    emb, w, labels = batch
    head = _head(w).train()
    x, y = torch.from_numpy(emb), torch.from_numpy(labels)
    for _ in range(3):
        head(x, y)
    head.eval()
    frozen = (head.norm_mean.clone(), head.norm_std.clone())
    a = head(x, y)
    b = head(x * 3.0, y)  # other norms: would move the EMA in training mode
    assert torch.equal(head.norm_mean, frozen[0]) and torch.equal(head.norm_std, frozen[1])
    assert torch.equal(head(x, y), a) and not torch.equal(a, b)
    state = head.state_dict()
    assert {"norm_mean", "norm_std", "weight"} <= set(state)
    fresh = AdaFaceHead(6, 5).eval()
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x, y), a)


def test_feature_norm_gets_no_gradient_through_the_margin(batch):
    """‖z‖ is detached: the logits depend on z's norm only through the (constant) margin, so the
    gradient has no radial component (it would if ẑ carried a gradient)."""
    emb, w, labels = batch
    head = _head(w).train()
    x = torch.from_numpy(emb).requires_grad_(True)
    head.loss(x, torch.from_numpy(labels)).backward()
    radial = (x.grad * torch.nn.functional.normalize(x.detach(), dim=1)).sum(1)
    assert x.grad.abs().max() > 1e-4
    # fp32 dot products of a tangent vector with a unit vector: error ~ 2^-24·sqrt(d)·max|grad|.
    np.testing.assert_allclose(radial.numpy(), 0.0, atol=1e-6 * float(x.grad.abs().max()))


def test_logits_stay_fp32_under_bf16_autocast(batch):
    emb, w, labels = batch
    head = _head(w).eval()
    x = torch.from_numpy(emb)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(x.bfloat16(), torch.from_numpy(labels))
    assert out.dtype == torch.float32
    ref = head(x.bfloat16().float(), torch.from_numpy(labels))
    np.testing.assert_allclose(out.detach().numpy(), ref.detach().numpy(), rtol=1e-6, atol=1e-5)


def test_loss_decreases_on_a_tiny_problem(one_thread):
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    y = torch.arange(64) % 4
    x = x + 3.0 * torch.nn.functional.one_hot(y, 16).float()  # separable classes
    model = torch.nn.Linear(16, 8)
    head = AdaFaceHead(8, 4, t_alpha=0.1).train()
    opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.05)
    losses = []
    for _ in range(40):
        loss = head.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_bad_options_are_one_line_errors():
    for kw, needle in [({"t_alpha": 0.0}, "t_alpha"), ({"t_alpha": 1.5}, "t_alpha"), ({"h": 0.0}, "h="), ({"m": -0.1}, "m=")]:
        with pytest.raises(LrfrError) as e:
            AdaFaceHead(4, 3, **kw)
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_match_the_constructor():
    import inspect

    params = inspect.signature(AdaFaceHead.__init__).parameters
    for name, (typ, default, text) in AdaFaceHead.options.items():
        assert params[name].default == default and isinstance(default, typ) and text
    assert AdaFaceHead.needs == () and AdaFaceHead.summary


# ----------------------------------------------------------------------------------- DDP (gloo)
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, chunks: list, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        head = AdaFaceHead(3, 2, t_alpha=0.5).train()
        head.update_stats(torch.tensor(chunks[rank], dtype=torch.float32))
        out[rank] = (float(head.norm_mean), float(head.norm_std))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_statistics_equal_one_big_batch():
    """Two gloo ranks with different norms (and sizes) end with the EMA of the concatenated batch."""
    chunks = [[20.1, 20.4, 19.8, 20.0, 20.3], [19.9, 21.0, 20.2]]
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_ddp_worker, args=(2, _free_port(), chunks, out), nprocs=2, join=True)
        res = dict(out)
    allv = np.array(chunks[0] + chunks[1])
    mu = 0.5 * allv.mean() + 0.5 * 20.0
    sigma = 0.5 * allv.std(ddof=1) + 0.5 * 100.0
    for rank in (0, 1):
        assert res[rank][0] == pytest.approx(mu, rel=1e-6)
        assert res[rank][1] == pytest.approx(sigma, rel=1e-6)
    # and without a process group the same function is plain mean/std of the local batch
    m, s = batch_norm_stats(torch.tensor(chunks[0]))
    assert float(m) == pytest.approx(np.mean(chunks[0]), rel=1e-6)
    assert float(s) == pytest.approx(np.std(chunks[0], ddof=1), rel=1e-5)
