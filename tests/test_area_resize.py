"""``--method area`` is the exact fractional-overlap box (OpenCV ``INTER_AREA``) at every ratio.

Before: the matrix was read off torch's ``mode="area"`` (adaptive average pooling), the exact box
only for integer ratios; on real 112-px faces its 12/20/24-px outputs missed ``INTER_AREA`` by
up to ~20 grey levels.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrfr_cli.data.degrade import (
    DegradeSpec,
    _area_matrix,
    _resize,
    degrade_array,
    degrade_batch,
)
from lrfr_cli.data.images import load_rgb


def _celeba_faces(data_dir: Path, n: int = 12) -> list[np.ndarray]:
    root = data_dir / "celeba_subset" / "images"
    if not root.is_dir():
        pytest.skip(f"{root} is absent (set LRFR_DATA to the shared data)")
    # one image from each of the first n identities: different faces, lighting, backgrounds
    files = [min(d.glob("*")) for d in sorted(p for p in root.iterdir() if p.is_dir())[:n]]
    imgs = [load_rgb(f) for f in files]
    assert all(im.shape == (112, 112, 3) for im in imgs)
    return imgs


def _box_matrix_by_hand(n_in: int, n_out: int) -> np.ndarray:
    """Output i covers [i*s, (i+1)*s), s = n_in/n_out; weight of input j = |overlap| / s (exact rationals)."""
    s = Fraction(n_in, n_out)
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = i * s, (i + 1) * s
        for j in range(n_in):
            ov = min(hi, Fraction(j + 1)) - max(lo, Fraction(j))
            if ov > 0:
                m[i, j] = float(ov / s)
    return m


@pytest.mark.parametrize(("n_in", "n_out"), [(112, 12), (112, 20), (112, 24), (112, 16), (250, 107), (12, 112), (7, 10)])
def test_area_matrix_is_the_fractional_overlap_box(n_in, n_out):
    m = _area_matrix(n_in, n_out).double().numpy()
    assert m.shape == (n_out, n_in)
    # float32 storage of exact rationals: error <= half an ulp of weights <= 1
    np.testing.assert_allclose(m, _box_matrix_by_hand(n_in, n_out), rtol=0, atol=1e-7)
    np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-6)  # a flat image stays flat


@pytest.mark.parametrize("size", [8, 12, 14, 16, 20, 24])
def test_area_equals_opencv_inter_area_on_real_faces(data_dir, size):
    """112 -> integer (8/14/16) and fractional (12/20/24) ratios: INTER_AREA within 1 grey level."""
    for img in _celeba_faces(data_dir):
        ours = degrade_array(img, DegradeSpec(size, method="area", upsample=False)).astype(int)
        ref = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(int)
        assert ours.shape == ref.shape == (size, size, 3)
        # Both compute the same weighted mean; they may only round a value near .5 differently.
        assert np.abs(ours - ref).max() <= 1
        assert np.mean(ours != ref) < 0.02


def test_area_then_upsample_matches_opencv_pipeline(data_dir):
    """The whole default pipeline with area: INTER_AREA down, then bicubic (INTER_CUBIC) back up."""
    img = _celeba_faces(data_dir, 3)[1]
    ours = degrade_array(img, DegradeSpec(20, method="area")).astype(int)
    lr = cv2.resize(img, (20, 20), interpolation=cv2.INTER_AREA)
    ref = cv2.resize(lr, (112, 112), interpolation=cv2.INTER_CUBIC).astype(int)
    assert ours.shape == (112, 112, 3)
    # LR inputs differ by <= 1 level on a few pixels; the cubic kernel's gain (< 1.3) spreads that.
    assert np.abs(ours - ref).max() <= 2 and np.abs(ours - ref).mean() < 0.05


def test_area_non_square_and_float_input_agree_with_opencv():
    """Height and width use their own matrices (250x240 -> 16x15 and 112x107): checked in float."""
    g = np.random.default_rng(0)
    x = (g.random((250, 240, 3)) * 255).astype(np.float32)
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    for hw in ((16, 15), (112, 107), (24, 23)):
        ours = _resize(t, hw, "area")[0].permute(1, 2, 0).numpy()
        ref = cv2.resize(x, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        # float32 sums of <= 16x16 terms of magnitude <= 255: rounding error well below 1e-2
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-2)


def test_area_up_sampling_is_the_same_box_as_opencv(data_dir):
    """Enlarging with ``area`` (only reachable through ``_resize``; degrade always goes down) mixes
    at most two neighbours by overlap, exactly as INTER_AREA does when both axes grow."""
    img = _celeba_faces(data_dir, 2)[0]
    small = cv2.resize(img, (12, 12), interpolation=cv2.INTER_AREA)
    t = torch.from_numpy(small).permute(2, 0, 1)[None].float()
    for hw in ((112, 112), (30, 17), (25, 40)):
        ours = torch.round(_resize(t, hw, "area"))[0].permute(1, 2, 0).numpy().astype(int)
        ref = cv2.resize(small, (hw[1], hw[0]), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(ours - ref).max() <= 1


def test_area_batch_on_float_input_equals_uint8_path(data_dir):
    imgs = _celeba_faces(data_dir, 3)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    spec = DegradeSpec(12, method="area", upsample=False)
    u8 = degrade_batch(x, spec)
    f = degrade_batch(x.float() / 255.0, spec)
    assert u8.shape == (3, 3, 12, 12)
    assert torch.allclose(f * 255.0, u8.float(), atol=1e-3)
    for i, img in enumerate(imgs):
        ref = cv2.resize(img, (12, 12), interpolation=cv2.INTER_AREA).astype(int)
        assert np.abs(u8[i].permute(1, 2, 0).numpy().astype(int) - ref).max() <= 1


def test_area_outputs_made_before_the_exact_box_are_redone(cli, ws, tmp_path, data_dir):
    """An area artifact whose manifest predates the exact box (no ``box`` option) is not reused."""
    import json

    from PIL import Image

    from lrfr_cli.workspace import make_key

    src = tmp_path / "faces" / "p"
    src.mkdir(parents=True)
    for k, img in enumerate(_celeba_faces(data_dir, 2)):
        Image.fromarray(img).save(src / f"{k}.png")
    args = ("degrade", tmp_path / "faces", "--sizes", "20", "--down-method", "area", "--no-upsample", "--workers", "1", "--json")
    assert cli(ws, *args).json().get("up_to_date") is not True
    out = ws / "degraded" / "faces" / "20px"
    assert cli(ws, *args).json()["up_to_date"] is True  # same options: skipped
    mf = out / "manifest.json"
    m = json.loads(mf.read_text())
    assert m["options"]["box"] == "exact-overlap"
    # what an artifact written by the old (adaptive-pooling) code recorded: no "box", its own key
    del m["options"]["box"]
    m["key"] = make_key(m["command"], m["options"], m["inputs"])
    mf.write_text(json.dumps(m))
    r = cli(ws, *args)
    assert r.exit_code != 0 and "--force" in r.stderr  # never silently reused
    assert cli(ws, *args, "--force").json().get("up_to_date") is not True
    got = np.asarray(Image.open(out / "p" / "0.png")).astype(int)
    ref = cv2.resize(_celeba_faces(data_dir, 1)[0], (20, 20), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(got - ref).max() <= 1
    assert "box" not in DegradeSpec(20, "bicubic").to_dict()  # other methods' artifacts stay valid
