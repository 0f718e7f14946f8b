"""The eval embedding pass: one forward shared with training validation, device-independent
noise, and cache flushes frequent enough that a killed eval keeps its work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.embed import EmbeddingCache, LoadedModel, Variant, extract
from lrfr_cli.engine import validate
from lrfr_cli.errors import LrfrError
from lrfr_cli.models import build_backbone
from lrfr_cli.workspace import Workspace


class ArrayImages:
    """An in-memory image set: ``rel`` → HxWx3 uint8."""

    name = "arrays"

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def describe(self) -> dict[str, Any]:
        return {"root": "memory", "n": len(self.table)}

    def load(self, rel: str) -> np.ndarray:
        return self.table[rel]


def _images(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (8, 8, 3)).astype(np.float64)
    out = {}
    for i in range(n):  # smooth-ish faces, so degradation is not a no-op on noise
        img = np.kron(base + rng.normal(0, 20, base.shape), np.ones((14, 14, 1)))
        out[f"id{i % 3}/img{i}.png"] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _loaded(module: nn.Module) -> LoadedModel:
    return LoadedModel(module=module.eval(), name="t", backbone="tiny", embedding_size=512, checkpoint=Path("t.pt"),
                       sha1="0" * 40, source="external")


# ----------------------------------------------------------------------------- noise
def test_eval_noise_equals_lrfr_degrade_of_the_same_file() -> None:
    imgs = _images(5)
    rels = list(imgs)
    v = Variant(DegradeSpec(16, noise=6.0), seed=3)
    x = torch.stack([torch.from_numpy(imgs[r]).permute(2, 0, 1) for r in rels])
    got = extract._apply(v, x, rels)
    for k, r in enumerate(rels):  # degrade_array is what `lrfr degrade` writes (key = relative path)
        want = degrade_array(imgs[r], v.spec, seed=3, key=r)
        np.testing.assert_array_equal(got[k].permute(1, 2, 0).numpy(), want)
    assert not torch.equal(got[0], extract._apply(Variant(v.spec, seed=4), x[:1], rels[:1])[0])  # the seed matters


def test_eval_noise_comes_from_a_cpu_generator_whatever_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA generator draws other numbers than `lrfr degrade` for the same seed; the eval must not use one.

    The batch lives on the meta device here (no accelerator needed): the generator must still be CPU's.
    """
    seen: list[torch.device] = []

    def spy(x: torch.Tensor, spec: DegradeSpec, generator: torch.Generator | None = None) -> torch.Tensor:
        seen.append(torch.device(generator.device) if generator is not None else None)
        return torch.zeros(1)  # (a meta tensor here would make torch.cat load its meta kernels: 2 s)

    monkeypatch.setattr(extract, "degrade_batch", spy)
    x = torch.empty((3, 3, 112, 112), dtype=torch.uint8, device="meta")
    extract._apply(Variant(DegradeSpec(12, noise=4.0), seed=1), x, ["a.jpg", "b.jpg", "c.jpg"])
    assert seen == [torch.device("cpu")] * 3


# ----------------------------------------------------------------------------- flush
def _cache(tmp_path: Path) -> EmbeddingCache:
    return EmbeddingCache(Workspace(tmp_path / "ws"), "model", "arrays", {"k": 1})


def _rows_on_disk(cache: EmbeddingCache) -> int:
    f = cache.dir / "hr.npz"
    if not f.is_file():
        return 0
    with np.load(f) as z:
        return int(z["keys"].shape[0])


@pytest.mark.parametrize(("env", "on_disk"), [("0", 8), ("1e9", 0)])
def test_cache_flush_interval_follows_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str, on_disk: int) -> None:
    """With LRFR_FLUSH_SECONDS=0 every batch is on disk before the next one runs (what a kill -9 keeps)."""
    monkeypatch.setenv("LRFR_FLUSH_SECONDS", env)
    imgs = _images(12)
    cache = _cache(tmp_path)
    calls = {"n": 0, "disk": -1}

    def fwd(model: LoadedModel, x: torch.Tensor, precision: str) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 3:  # third batch: what would survive a kill right now?
            calls["disk"] = _rows_on_disk(cache)
        return x.float().mean(dim=(2, 3)) + 1.0

    extract.embed(_loaded(nn.Identity()), ArrayImages(imgs), {Variant(None): list(imgs)}, cache, batch_size=4, forward_fn=fwd)
    assert calls["disk"] == on_disk
    assert _rows_on_disk(cache) == 12  # the final flush always happens


def test_flush_seconds_default_and_bad_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LRFR_FLUSH_SECONDS", raising=False)
    assert extract.flush_seconds() == 10.0
    monkeypatch.setenv("LRFR_FLUSH_SECONDS", "2.5")
    assert extract.flush_seconds() == 2.5
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv("LRFR_FLUSH_SECONDS", bad)
        with pytest.raises(LrfrError, match="LRFR_FLUSH_SECONDS"):
            extract.flush_seconds()


# ----------------------------------------------------------------------------- one forward
def _reference_tta(module: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Written out: [-1, 1] scaling, plain + mirrored view summed, then unit length (numpy)."""
    with torch.no_grad():
        a = module((x.double() / 127.5 - 1.0).float()).double().numpy()
        b = module((x.flip(3).double() / 127.5 - 1.0).float()).double().numpy()
    e = a + b
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_validation_and_eval_embed_alike(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = build_backbone("tiny", 32).eval()
    imgs = _images(6, seed=1)
    rels = list(imgs)
    x = torch.stack([torch.from_numpy(imgs[r]).permute(2, 0, 1) for r in rels])
    want = _reference_tta(module, x)
    val = validate.embed(module, x, torch.device("cpu"), batch=4).numpy()
    emb, _ = extract.embed(_loaded(module), ArrayImages(imgs), {Variant(None): rels}, _cache(tmp_path), flip=True, batch_size=4)
    ev = emb.get(Variant(None), rels)
    # fp32 network on unit-scale inputs: rounding differences stay far below 1e-5 per coordinate.
    np.testing.assert_allclose(val, want, atol=1e-5)
    np.testing.assert_allclose(ev, want, atol=1e-5)
    assert np.abs(want[0] - want[1]).max() > 1e-3  # distinct faces give distinct embeddings


def test_verify_uses_the_metrics_threshold_search() -> None:
    torch.manual_seed(1)
    module = build_backbone("tiny", 16).eval()
    imgs = torch.from_numpy(np.stack(list(_images(9, seed=2).values()))).permute(0, 3, 1, 2).contiguous()
    rng = np.random.default_rng(0)
    index = rng.integers(0, 9, (40, 2))
    same = rng.random(40) < 0.5
    res = validate.verify(module, validate.PairSet(imgs, index, same), torch.device("cpu"))
    e = _reference_tta(module, imgs)
    scores = np.einsum("ij,ij->i", e[index[:, 0]], e[index[:, 1]])
    brute = max(np.mean((scores >= t) == same) for t in np.r_[np.unique(scores), np.inf])
    assert res["val_pairs"] == 40
    assert res["val_acc"] == pytest.approx(brute)
    assert np.mean((scores >= res["val_threshold"]) == same) == pytest.approx(res["val_acc"])
    assert not hasattr(validate, "best_threshold_accuracy")  # one threshold search: metrics.best_threshold
