"""Alignment geometry and the batched MTCNN cascade, checked against independent computations."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.nn import functional as F

from lrfr_cli.align.aligner import TEMPLATE_FACE_BOX_112, Aligner, assumed_crop_matrix, centre_crop_matrix
from lrfr_cli.align.decode import detection_image
from lrfr_cli.align.mtcnn import MtcnnDetector, crop_resize_area
from lrfr_cli.align.options import AlignConfig, parse_size
from lrfr_cli.align.warp import ARCFACE_TEMPLATE, apply_transform, fit_error, template_for, template_with_margin, umeyama, warp_face
from lrfr_cli.data.images import load_rgb
from lrfr_cli.data.tree import output_rel
from lrfr_cli.errors import LrfrError


def _lstsq_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 4-parameter similarity [a -b tx; b a ty] by plain linear least squares."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    a, b, tx, ty = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)[0]
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", range(5))
def test_umeyama_equals_lstsq_and_opencv(seed: int) -> None:
    rng = np.random.default_rng(seed)
    angle, scale = rng.uniform(-np.pi, np.pi), rng.uniform(0.05, 3.0)
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    # landmarks of a face in a photo: template moved by a similarity, plus detector noise
    src = (ARCFACE_TEMPLATE @ rot.T + rng.uniform(0, 800, 2)) + rng.normal(0, 2.0, (5, 2))
    m = umeyama(src, ARCFACE_TEMPLATE)
    assert np.abs(m - _lstsq_similarity(src, ARCFACE_TEMPLATE)).max() < 1e-4
    m_cv, inliers = cv2.estimateAffinePartial2D(
        src.astype(np.float32), ARCFACE_TEMPLATE.astype(np.float32), method=cv2.RANSAC, ransacReprojThreshold=1e4, refineIters=100
    )  # a threshold larger than any residual: every point is an inlier, i.e. plain least squares
    assert inliers.all()
    assert np.abs(m - m_cv).max() < 1e-4 * max(1.0, np.abs(m).max())
    # a similarity: equal diagonal, opposite off-diagonal
    assert m[0, 0] == pytest.approx(m[1, 1]) and m[0, 1] == pytest.approx(-m[1, 0])


def test_exact_similarity_is_recovered_and_fit_error_zero() -> None:
    m_true = np.array([[0.8, -0.3, 12.0], [0.3, 0.8, -7.0]])
    src = apply_transform(np.linalg.inv(np.vstack([m_true, [0, 0, 1]]))[:2], ARCFACE_TEMPLATE)
    m = umeyama(src, ARCFACE_TEMPLATE)
    assert np.abs(m - m_true).max() < 1e-9
    assert fit_error(m, src, ARCFACE_TEMPLATE) < 1e-9


def test_templates_for_other_sizes() -> None:
    tpl, wh = template_for((96, 112))
    assert wh == (96, 112) and np.allclose(tpl, ARCFACE_TEMPLATE - [8, 0])
    tpl, wh = template_for(128)
    assert wh == (128, 128) and np.allclose(tpl, ARCFACE_TEMPLATE * 128 / 112)
    tpl, _ = template_with_margin(112, 8)
    # shrunk about the centre by 112/128: the eye distance scales by that ratio
    ratio = np.linalg.norm(tpl[1] - tpl[0]) / np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0])
    assert ratio == pytest.approx(112 / 128)
    assert parse_size("96x112") == (96, 112) and parse_size("128") == 128
    with pytest.raises(LrfrError):
        parse_size("abc")
    with pytest.raises(LrfrError):
        template_with_margin(112, 60)


def test_face_selection_rules() -> None:
    from lrfr_cli.align.aligner import select_faces as _select
    from lrfr_cli.align.mtcnn import Detections

    boxes = np.array([[0, 0, 50, 50], [400, 280, 480, 360], [100, 100, 300, 300.0]])  # areas 2500, 6400, 40000
    det = Detections(boxes, np.array([0.99, 0.98, 0.97]), np.zeros((3, 5, 2)))
    assert _select(det, "largest", (1000, 600)) == [2]
    assert _select(det, "center", (1000, 600)) == [1]  # box centre (440, 320) is nearest (500, 300)
    assert _select(det, "all", (1000, 600)) == [2, 1, 0]  # largest first
    assert _select(Detections.empty(), "largest", (10, 10)) == []


def test_output_names() -> None:
    assert output_rel("a/b.png", "jpg") == "a/b.jpg"
    assert output_rel("a/b.jpeg", "jpg", 2) == "a/b_2.jpg"


def test_warp_face_hits_template_for_each_size() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    lm = ARCFACE_TEMPLATE * 1.7 + [90, 40]
    for size in (112, (96, 112), 128):
        face, m = warp_face(img, lm, size)
        tpl, (w, h) = template_for(size)
        assert face.shape == (h, w, 3)
        assert np.abs(apply_transform(m, lm) - tpl).max() < 1e-9


def test_detection_image_scaling_maps_back() -> None:
    full = np.zeros((4000, 6000, 3), np.uint8)
    det, sx, sy = detection_image(full, 800)
    assert det.shape[:2] == (533, 800)
    assert sx == pytest.approx(6000 / 800) and sy == pytest.approx(4000 / 533)
    small = np.zeros((250, 250, 3), np.uint8)
    det, sx, sy = detection_image(small, 800)
    assert det is small and sx == sy == 1.0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(orientation: int, tmp_path: Path) -> None:
    from PIL import Image, ImageOps

    from lrfr_cli.align.decode import exif_orientation, upright

    a = np.random.default_rng(orientation).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "o.png", exif=exif)
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    got = upright(load_rgb(tmp_path / "o.png"), exif_orientation(tmp_path / "o.png"))
    assert exif_orientation(tmp_path / "o.png") == orientation
    assert np.array_equal(got, want)


def test_centre_and_assumed_crop_matrices() -> None:
    m = centre_crop_matrix(200, 100, (112, 112))  # landscape: height fills, centred horizontally
    assert apply_transform(m, [[100, 50]])[0] == pytest.approx([56, 56])
    assert m[0, 0] == pytest.approx(1.12)
    cfg = AlignConfig()
    x1, y1, x2, y2 = TEMPLATE_FACE_BOX_112
    m = assumed_crop_matrix(20, 28, cfg)
    corners = apply_transform(m, [[0, 0], [20, 28]])
    centre = corners.mean(0)
    assert centre == pytest.approx([(x1 + x2) / 2, (y1 + y2) / 2])
    # uniform scale = geometric mean of the axis ratios
    assert m[0, 0] == pytest.approx(np.sqrt((x2 - x1) / 20 * (y2 - y1) / 28)) and m[0, 1] == 0


def test_crop_resize_area_matches_interpolate() -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (3, 3, 90, 70), generator=g).float()
    boxes = []
    for _ in range(40):
        i = int(torch.randint(0, 3, (1,), generator=g))
        y0, x0 = int(torch.randint(0, 80, (1,), generator=g)), int(torch.randint(0, 60, (1,), generator=g))
        y1 = y0 + int(torch.randint(1, 90 - y0 + 1, (1,), generator=g))
        x1 = x0 + int(torch.randint(1, 70 - x0 + 1, (1,), generator=g))
        boxes.append((i, y0, y1, x0, x1))
    t = torch.tensor(boxes)
    for size in (24, 48):
        got = crop_resize_area(imgs, t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4], size)
        want = torch.cat([F.interpolate(imgs[i : i + 1, :, y0:y1, x0:x1], size=(size, size), mode="area") for i, y0, y1, x0, x1 in boxes])
        assert torch.allclose(got, want, atol=1e-3), (got - want).abs().max()


def _lfw_sample(data_dir: Path, n: int) -> np.ndarray:
    root = data_dir / "lfw" / "lfw-deepfunneled"
    people = sorted(p for p in root.iterdir() if p.is_dir())[:: max(1, 5749 // n)][:n]
    return np.stack([load_rgb(sorted(p.iterdir())[0]) for p in people])


@pytest.mark.slow
def test_batched_cascade_matches_facenet_pytorch(data_dir: Path) -> None:
    """Same boxes, probabilities and landmarks as facenet-pytorch's own MTCNN.detect."""
    from facenet_pytorch import MTCNN

    ref = MTCNN(min_face_size=30, keep_all=True, select_largest=False, device="cpu")
    ours = MtcnnDetector("cpu", min_face=30)
    imgs = _lfw_sample(data_dir, 4)
    multi = detection_image(load_rgb(data_dir / "raw_photos/facenet_pytorch/multiface.jpg"), 450)[0]
    refs = [ref.detect(batch, landmarks=True) for batch in (imgs, multi[None])]
    # ours: one call with mixed sizes (pyramid per size, refinement stages on all boxes at once)
    mixed = ours.detect([imgs[0], multi, *imgs[1:]])
    per_batch = [[mixed[0], *mixed[2:]], [mixed[1]]]
    for (boxes, probs, points), dets in zip(refs, per_batch):
        assert len(dets) == len(boxes)
        for b, p, lm, d in zip(boxes, probs, points, dets):
            if b is None:
                assert len(d) == 0
                continue
            order = np.argsort(-np.asarray(p, dtype=float))
            assert len(d) == len(b)
            assert np.abs(d.boxes - b[order]).max() < 1e-2
            assert np.abs(d.probs - np.asarray(p, dtype=float)[order]).max() < 1e-4
            assert np.abs(d.landmarks - lm[order]).max() < 1e-2
    assert len(mixed[1]) == 6
    # the same-size array path, and other batches, give the same answer to the bit (issue 18)
    for got in (ours.detect(imgs), [ours.detect(im)[0] for im in imgs], ours.detect([imgs[2], imgs[0]])):
        want = per_batch[0] if len(got) == 4 else [per_batch[0][2], per_batch[0][0]]
        for a, b in zip(got, want):
            assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.probs, b.probs) and np.array_equal(a.landmarks, b.landmarks)


@pytest.mark.slow
def test_rotated_scaled_copy_aligns_back(data_dir: Path) -> None:
    """A face put into a bigger canvas with a known rotation+scale aligns back onto itself."""
    face = load_rgb(data_dir / "celeba_subset/images/07201" / sorted(p.name for p in (data_dir / "celeba_subset/images/07201").iterdir())[0])
    aligner = Aligner(AlignConfig(min_face=40, min_prob=0.9))
    base = aligner.align_images([face])[0]
    assert base.faces, base.reason
    lm0 = np.array(base.faces[0][1].landmarks)
    angle, scale = np.deg2rad(25.0), 1.8
    a = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    m_syn = np.hstack([a, [[150.0], [60.0]]])
    canvas = cv2.warpAffine(face, m_syn, (400, 400), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    res = aligner.align_images([canvas])[0]
    assert res.faces, res.reason
    out, rec = res.faces[0]
    # detected landmarks, mapped back to the original face's coordinates, agree within a few px
    back = apply_transform(np.linalg.inv(np.vstack([m_syn, [0, 0, 1]]))[:2], np.array(rec.landmarks))
    err = np.linalg.norm(back - lm0, axis=1)
    assert err.mean() < 3.0, err
    print(f'rotated copy: landmark error {err.mean():.2f} px')
    # and the re-aligned face is the same image as aligning the original
    inner = (slice(24, 100), slice(24, 88))  # the face itself; borders differ by construction
    ref = base.faces[0][0][inner].astype(float)
    corr = np.corrcoef(out[inner].astype(float).ravel(), ref.ravel())[0, 1]
    assert corr > 0.9, corr
    assert np.abs(out[inner].astype(float) - ref).mean() < 20


def test_integral_image_opencv_path_equals_cumsum() -> None:
    """The CPU fast path (cv2.integral) and the device path (two cumsums) give the same exact table."""
    from lrfr_cli.align.mtcnn import integral_image, resize_from_integral

    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    fast = integral_image(imgs)
    slow = integral_image(torch.from_numpy(imgs))
    loops = np.zeros((2, 38, 54, 3), np.int64)
    for y in range(37):
        for x in range(53):
            loops[:, y + 1, x + 1] = imgs[:, : y + 1, : x + 1].reshape(2, -1, 3).sum(1)
    assert fast.dtype == torch.int32 and np.array_equal(fast.numpy(), loops) and np.array_equal(slow.numpy(), loops)
    # the pyramid's whole-image resize is PyTorch's area interpolation
    want = F.interpolate(torch.from_numpy(imgs).permute(0, 3, 1, 2).float(), size=(16, 23), mode="area")
    assert torch.allclose(resize_from_integral(fast, 16, 23), want, atol=1e-4)


@pytest.mark.slow
def test_score_ties_are_broken_as_facenet_pytorch_does(data_dir: Path) -> None:
    """Two overlapping candidates of this photo both score exactly 1.0 (float32) at the last stage;
    the box kept must be facenet-pytorch's (a stable best-first sort kept the other, 6.8 px away)."""
    from facenet_pytorch import MTCNN

    img = load_rgb(data_dir / "lfw/lfw-deepfunneled/Osrat_Iosef/Osrat_Iosef_0001.jpg")
    boxes, probs, points = MTCNN(min_face_size=30, keep_all=True, device="cpu").detect(img, landmarks=True)
    det = MtcnnDetector("cpu", min_face=30).detect(img[None])[0]
    assert len(det) == len(boxes) == 1
    assert np.abs(det.boxes - np.asarray(boxes, dtype=float)).max() < 1e-3
    assert np.abs(det.landmarks - np.asarray(points, dtype=float)).max() < 1e-3
