"""degrade: sizes, agreement with PIL/OpenCV, determinism of noise, the batch path, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lrfr_cli.data.degrade import DegradeSpec, degrade_array, degrade_batch, parse_sizes
from lrfr_cli.data.images import load_rgb
from lrfr_cli.errors import LrfrError


def _face(data_dir: Path, name: str = "Aaron_Eckhart", i: int = 1) -> np.ndarray:
    return load_rgb(data_dir / "lfw" / "lfw-deepfunneled" / name / f"{name}_{i:04d}.jpg")


def _tree(tmp_path: Path, data_dir: Path, n: int = 5) -> Path:
    """A small identity tree of real LFW images (copied into tmp, never into git)."""
    src = tmp_path / "src"
    names = ["Abel_Pacheco", "Akhmed_Zakayev", "Aaron_Eckhart"]
    for name in names:
        (src / name).mkdir(parents=True)
    files = [p for name in names for p in sorted((data_dir / "lfw" / "lfw-deepfunneled" / name).glob("*.jpg"))[:2]]
    assert len(files) >= n
    for p in files[:n]:
        (src / p.parent.name / p.name).write_bytes(p.read_bytes())
    return src


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


@pytest.mark.parametrize("size", [8, 12, 16, 20])
def test_bicubic_matches_pil_and_opencv(data_dir, size):
    img = _face(data_dir)
    ours_lr = degrade_array(img, DegradeSpec(size, upsample=False)).astype(int)
    pil_lr = np.asarray(Image.fromarray(img).resize((size, size), Image.BICUBIC)).astype(int)
    assert ours_lr.shape == (size, size, 3)
    # Stated tolerance: anti-aliased Keys cubic (a=-0.5) == PIL BICUBIC within 2 grey levels.
    assert np.abs(ours_lr - pil_lr).max() <= 2
    ours_up = degrade_array(img, DegradeSpec(size)).astype(int)
    cv_up = cv2.resize(pil_lr.astype(np.uint8), (250, 250), interpolation=cv2.INTER_CUBIC).astype(int)
    assert ours_up.shape == img.shape
    # Up-sampling is OpenCV's INTER_CUBIC (a=-0.75) within 2 levels (inputs differ by <= 2 already).
    assert np.abs(ours_up - cv_up).mean() < 0.5 and np.abs(ours_up - cv_up).max() <= 8


def test_methods_differ_and_antialias_matters(data_dir):
    img = _face(data_dir)
    outs = {m: degrade_array(img, DegradeSpec(8, method=m, upsample=False)).astype(int) for m in ("bicubic", "bilinear", "area", "nearest")}
    area_ref = cv2.resize(img, (8, 8), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(outs["area"] - area_ref).max() <= 1  # exact box average == OpenCV INTER_AREA
    assert np.abs(outs["nearest"] - outs["bicubic"]).mean() > 3  # aliasing is not a detail at 8 px


def test_batch_path_equals_file_path_and_float_equals_uint8(data_dir):
    imgs = [_face(data_dir, "Abel_Pacheco", i) for i in (1, 2, 3)]
    spec = DegradeSpec(12)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
    batch = degrade_batch(x, spec)
    for i, img in enumerate(imgs):
        single = degrade_array(img, spec)
        assert np.array_equal(batch[i].permute(1, 2, 0).numpy(), single)
    as_float = degrade_batch(x.float() / 255.0, spec)
    assert as_float.dtype == torch.float32
    assert torch.allclose(as_float * 255.0, batch.float(), atol=1e-3)


def test_noise_is_deterministic_per_key_and_seed(data_dir):
    img = _face(data_dir)
    spec = DegradeSpec(16, noise=8.0)
    a = degrade_array(img, spec, seed=1, key="x/1.jpg")
    b = degrade_array(img, spec, seed=1, key="x/1.jpg")
    c = degrade_array(img, spec, seed=2, key="x/1.jpg")
    d = degrade_array(img, spec, seed=1, key="x/2.jpg")
    clean = degrade_array(img, DegradeSpec(16), seed=1, key="x/1.jpg")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    assert 2.0 < np.abs(a.astype(int) - clean.astype(int)).mean() < 12.0


def test_blur_and_jpeg_steps(data_dir):
    img = _face(data_dir)
    lap = lambda a: cv2.Laplacian(cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()  # noqa: E731
    sharp = degrade_array(img, DegradeSpec(112))
    blurred = degrade_array(img, DegradeSpec(112, blur=2.0))
    assert lap(blurred) < 0.5 * lap(sharp)
    q10 = degrade_array(img, DegradeSpec(112, jpeg=10, upsample=False))
    q95 = degrade_array(img, DegradeSpec(112, jpeg=95, upsample=False))
    plain = degrade_array(img, DegradeSpec(112, upsample=False))
    assert np.abs(q10.astype(int) - plain).mean() > np.abs(q95.astype(int) - plain).mean()


def test_parse_sizes_and_spec_validation():
    assert parse_sizes("16, 8,12,8px") == [8, 12, 16]
    for bad in ("", "a", "0", "-4", "8,,x"):
        with pytest.raises(LrfrError):
            parse_sizes(bad)
    with pytest.raises(LrfrError):
        DegradeSpec(8, method="lanczos")
    with pytest.raises(LrfrError):
        degrade_batch(torch.zeros(1, 3, 10, 10, dtype=torch.uint8), DegradeSpec(16))


def test_degrade_command_tree(cli, ws, tmp_path, data_dir):
    src = _tree(tmp_path, data_dir)
    r = cli(ws, "degrade", src, "--sizes", "8,16", "--name", "t", "--json", "--workers", "1")
    assert r.exit_code == 0, r.stderr
    out = r.json()
    assert out["images"] == 5 and out["written"] == 10 and out["failed"] == 0
    for size in (8, 16):
        files = sorted((ws / "degraded" / "t" / f"{size}px").rglob("*.png"))
        assert len(files) == 5
        assert all(Image.open(f).size == (250, 250) for f in files)
        m = json.loads((ws / "degraded" / "t" / f"{size}px" / "manifest.json").read_text())
        assert m["status"] == "complete" and m["options"]["method"] == "bicubic" and m["options"]["antialias"] is True
    r = cli(ws, "degrade", src, "--sizes", "8", "--name", "small", "--no-upsample", "--workers", "1")
    assert r.exit_code == 0, r.stderr
    assert {Image.open(f).size for f in (ws / "degraded" / "small" / "8px").rglob("*.png")} == {(8, 8)}
    # the file written equals the library function on the same image
    rel = sorted((ws / "degraded" / "t" / "8px").rglob("*.png"))[0].relative_to(ws / "degraded" / "t" / "8px")
    lib = degrade_array(load_rgb(src / rel.with_suffix(".jpg")), DegradeSpec(8))
    assert np.array_equal(np.asarray(Image.open(ws / "degraded" / "t" / "8px" / rel)), lib)


def test_same_seed_same_bytes_different_seed_different_noise(cli, tmp_path, data_dir):
    src = _tree(tmp_path, data_dir, n=3)
    digests = []
    for i, seed in enumerate((5, 5, 6)):
        w = tmp_path / f"ws{i}"
        r = cli(w, "degrade", src, "--sizes", "12", "--noise", "6", "--seed", str(seed), "--name", "n", "--workers", "1")
        assert r.exit_code == 0, r.stderr
        digests.append(_digest(w / "degraded" / "n" / "12px"))
    assert digests[0] == digests[1]
    assert all(digests[0][k] != digests[2][k] for k in digests[0])


def test_parallel_equals_serial(cli, tmp_path, data_dir):
    src = tmp_path / "many"
    lfw = data_dir / "lfw" / "lfw-deepfunneled"
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[:70]
    for person in people:
        f = sorted(person.glob("*.jpg"))[0]
        (src / person.name).mkdir(parents=True)
        (src / person.name / f.name).write_bytes(f.read_bytes())
    a, b = tmp_path / "wa", tmp_path / "wb"
    assert cli(a, "degrade", src, "--sizes", "8", "--noise", "3", "--workers", "1").exit_code == 0
    assert cli(b, "degrade", src, "--sizes", "8", "--noise", "3", "--workers", "2").exit_code == 0
    da, db = _digest(a / "degraded" / "many" / "8px"), _digest(b / "degraded" / "many" / "8px")
    assert len(da) == 70 and da == db


def test_corrupt_image_is_skipped_and_reported(cli, ws, tmp_path, data_dir):
    src = _tree(tmp_path, data_dir, n=3)
    good = next(src.rglob("*.jpg"))
    (good.parent / "broken.jpg").write_bytes(good.read_bytes()[:300])
    (good.parent / "notanimage.jpg").write_text("hello")
    r = cli(ws, "degrade", src, "--sizes", "8", "--json", "--workers", "1")
    assert r.exit_code == 0, r.stderr
    out = r.json()
    assert out["failed"] == 2 and out["written"] == 3
    failed = {f["path"].split("/")[-1] for f in out["failures"]}
    assert failed == {"broken.jpg", "notanimage.jpg"}
    csv_text = (ws / "degraded" / src.name / "8px" / "failures.csv").read_text()
    assert "broken.jpg" in csv_text and "notanimage.jpg" in csv_text
    m = json.loads((ws / "degraded" / src.name / "8px" / "manifest.json").read_text())
    assert m["status"] == "complete" and m["counts"]["failed"] == 2


@pytest.mark.parametrize("method", ["bicubic", "bilinear", "nearest"])
def test_matrix_resize_equals_torch_interpolate(method):
    """The separable-matmul resize is torch's own filter (read off F.interpolate), not an approximation.

    (``area`` is not torch's: its exact box is checked against OpenCV in test_area_resize.py.)
    """
    import torch.nn.functional as F

    from lrfr_cli.data.degrade import _resize

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 250, 240, generator=g) * 255
    for hw in ((8, 8), (16, 15), (112, 107)):
        kw = {"mode": method, "align_corners": False, "antialias": True} if method in ("bicubic", "bilinear") else {"mode": "nearest-exact"}
        assert torch.allclose(_resize(x, hw, method), F.interpolate(x, size=hw, **kw), atol=5e-3)
    small = torch.rand(1, 3, 8, 8, generator=g) * 255
    up = F.interpolate(small, size=(112, 112), mode="bicubic", align_corners=False)
    assert torch.allclose(_resize(small, (112, 112), "bicubic"), up, atol=5e-3)
