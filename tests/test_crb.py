"""Cross-Resolution Batches: LR rows really are at their size, labels kept, exact split share.

The size check is independent of ``degrade_batch``: each LR row is compared with a PIL
(anti-aliased bicubic) down-sampling of its source, up-sampled back with OpenCV's INTER_CUBIC,
at every candidate size; the closest one must be the size the batch recorded.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lrfr_cli.data.crb import (
    CRB_MODES,
    check_crb_options,
    cross_resolution_batch,
)
from lrfr_cli.errors import LrfrError
from lrfr_cli.losses.recipe import resolve_crb

SIZES = (8, 12, 16, 20, 24)


@pytest.fixture(scope="module")
def faces(data_dir: Path) -> np.ndarray:
    """16 aligned 112x112 faces of different identities (N x H x W x 3 uint8)."""
    dirs = sorted(p for p in (data_dir / "celeba_subset" / "images").iterdir() if p.is_dir())[::15][:16]
    if len(dirs) < 16:
        pytest.skip("celeba_subset has fewer than 16 identities")
    return np.stack([np.array(Image.open(min(d.glob("*.jpg"))).convert("RGB")) for d in dirs])


def _tensor(imgs: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()


def _reference(img: np.ndarray, size: int) -> np.ndarray:
    lo = np.array(Image.fromarray(img).resize((size, size), Image.BICUBIC))
    return cv2.resize(lo, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC).astype(np.float64)


def _assert_lr_rows_at_their_size(out: torch.Tensor, src: np.ndarray, sizes: torch.Tensor) -> None:
    for row, img, s in zip(out, src, sizes.tolist()):
        got = row.permute(1, 2, 0).numpy().astype(np.float64)
        dist = {c: float(np.abs(got - _reference(img, c)).mean()) for c in SIZES}
        # degrade_batch matches PIL/OpenCV within ~2 levels per pixel; measured mean 0.1 level,
        # while the neighbouring sizes are >= 2 levels away on these faces.
        assert min(dist, key=dist.get) == s, (s, dist)
        assert dist[s] < 1.0, (s, dist)


def test_copies_doubles_the_batch_with_lr_rows_at_the_drawn_size(faces):
    x = _tensor(faces)
    labels = torch.arange(100, 116)
    out = cross_resolution_batch(x, labels, SIZES, "copies", generator=torch.Generator().manual_seed(1))
    b = len(faces)
    assert out.images.shape == (2 * b, 3, 112, 112) and out.images.dtype == torch.uint8
    assert torch.equal(out.images[:b], x)  # HR rows untouched
    assert torch.equal(out.labels, torch.cat([labels, labels]))
    assert out.is_lr.tolist() == [False] * b + [True] * b
    assert out.lr_size[:b].tolist() == [112] * b
    assert set(out.lr_size[b:].tolist()) <= set(SIZES)
    assert len(set(out.lr_size[b:].tolist())) >= 3  # really drawn per sample, not one size per batch
    _assert_lr_rows_at_their_size(out.images[b:], faces, out.lr_size[b:])


def test_split_replaces_lr_rows_in_place_keeping_labels(faces):
    x = _tensor(faces)
    labels = torch.arange(16) * 3
    out = cross_resolution_batch(x, labels, SIZES, "split", lr_prob=0.5, generator=7)
    assert out.images.shape == x.shape
    assert torch.equal(out.labels, labels)
    lr = out.is_lr.nonzero().flatten()
    assert len(lr) == 8
    assert torch.equal(out.images[~out.is_lr], x[~out.is_lr])
    assert (out.lr_size[~out.is_lr] == 112).all()
    _assert_lr_rows_at_their_size(out.images[lr], faces[lr.numpy()], out.lr_size[lr])


@pytest.mark.parametrize("b", [1, 5, 8, 13])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_split_replaces_exactly_the_requested_share(b, p):
    g = torch.Generator().manual_seed(b)
    x = torch.randint(0, 256, (b, 3, 24, 24), dtype=torch.uint8, generator=g)
    out = cross_resolution_batch(x, torch.arange(b), [6], "split", lr_prob=p, generator=b)
    k = math.floor(p * b + 0.5)  # round half up, as documented
    assert int(out.is_lr.sum()) == k
    changed = (out.images != x).flatten(1).any(1)
    assert torch.equal(changed, out.is_lr)  # exactly the LR rows differ (noise images always change)


def test_same_seed_same_batch_and_generator_equals_its_seed():
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(10)
    a = cross_resolution_batch(x, y, [4, 8, 12], "split", 0.6, generator=torch.Generator().manual_seed(42))
    b = cross_resolution_batch(x, y, [4, 8, 12], "split", 0.6, generator=42)
    c = cross_resolution_batch(x, y, [4, 8, 12], "split", 0.6, generator=43)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    # draws depend on the seed only (so a CUDA generator with that seed gives the same batch), not
    # on how far the generator was advanced before
    used = torch.Generator().manual_seed(42)
    torch.rand(100, generator=used)
    d = cross_resolution_batch(x, y, [4, 8, 12], "split", 0.6, generator=used)
    assert torch.equal(d.is_lr, a.is_lr) and torch.equal(d.lr_size, a.lr_size) and torch.equal(d.images, a.images)
    assert not (torch.equal(a.is_lr, c.is_lr) and torch.equal(a.lr_size, c.lr_size))


def test_float_input_keeps_dtype_and_matches_uint8_path():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    u = cross_resolution_batch(x, torch.arange(4), [8, 16], "copies", generator=3)
    f = cross_resolution_batch(x.float() / 255.0, torch.arange(4), [8, 16], "copies", generator=3)
    assert f.images.dtype == torch.float32
    assert torch.equal(u.lr_size, f.lr_size)
    # Both paths quantise to 8-bit levels; the float one only adds division rounding.
    np.testing.assert_allclose((f.images * 255.0).numpy(), u.images.float().numpy(), atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        ({"sizes": [0]}, "at least 1 pixel"),
        ({"sizes": [8, 112]}, "below the input height 112px"),
        ({"sizes": [200]}, "below the input height"),
        ({"sizes": []}, "one or more sizes"),
        ({"sizes": [8.5]}, "whole number"),
        ({"mode": "mixed"}, "--crb-mode"),
        ({"lr_prob": 1.5, "mode": "split"}, "--lr-prob"),
        ({"lr_prob": -0.1}, "--lr-prob"),
        ({"method": "lanczos"}, "method"),
    ],
)
def test_bad_options_are_one_line_errors(kwargs, needle):
    x = torch.zeros(2, 3, 112, 112, dtype=torch.uint8)
    args = {"sizes": [16], "mode": "copies", "lr_prob": 0.5, **kwargs}
    with pytest.raises(LrfrError) as e:
        cross_resolution_batch(x, torch.arange(2), generator=0, **args)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_options_validate_without_images_and_modes_are_listed():
    assert check_crb_options([16, 8, 16], "split", 0.5) == (8, 16)
    with pytest.raises(LrfrError) as e:
        check_crb_options([16], "both", 0.5)
    for m in CRB_MODES:
        assert m in str(e.value)


def test_resolve_crb_policies():
    assert resolve_crb(None, "required", "approach1") is True
    assert resolve_crb(True, "required", "approach1") is True
    with pytest.raises(LrfrError, match="approach1 needs cross-resolution batches"):
        resolve_crb(False, "required", "approach1")
    assert resolve_crb(None, "default", "approach2") is True
    assert resolve_crb(False, "default", "approach2") is False
    assert resolve_crb(None, "off", "arcface") is False
    assert resolve_crb(True, "off", "arcface") is True
