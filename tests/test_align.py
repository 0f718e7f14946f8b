"""``lrfr align`` and ``align_tree`` on the raw photos of $LRFR_DATA, plus bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrfr_cli.align.pipeline import JOURNAL, align_tree, read_landmarks
from lrfr_cli.align.warp import apply_transform, template_for
from lrfr_cli.data.images import list_images, load_rgb

RAW = "raw_photos/facenet_pytorch"


def _shrink(im: Image.Image, side: int) -> Image.Image:
    s = side / max(im.size)
    return im.resize((round(im.size[0] * s), round(im.size[1] * s)), Image.BICUBIC)


@pytest.fixture(scope="module")
def photos(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An identity-folder tree of real photos and every kind of awkward input."""
    root = tmp_path_factory.mktemp("photos")
    raw = data_dir / RAW
    for d in ("group", "paul", "odd", "big"):
        (root / d).mkdir()
    shutil.copy(raw / "multiface.jpg", root / "group/multiface.jpg")  # six faces
    shutil.copy(raw / "noise.jpg", root / "group/noise.jpg")  # no face
    _shrink(Image.open(raw / "paul_rudd.jpg"), 500).save(root / "paul/paul_rudd.jpg", quality=95)
    _shrink(Image.open(raw / "kate_siegel.jpg"), 450).convert("L").save(root / "odd/gray.jpg", quality=95)
    rgba = _shrink(Image.open(raw / "angelina_jolie.jpg"), 450).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 200))
    rgba.save(root / "odd/rgba.png")
    _shrink(Image.open(raw / "shea_whigham.jpg"), 450).convert("CMYK").save(root / "odd/cmyk.jpg", quality=95)
    # stored sideways with an EXIF orientation tag, as phones do
    side = _shrink(Image.open(raw / "paul_rudd.jpg"), 400).transpose(Image.Transpose.ROTATE_90)
    exif = side.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    side.save(root / "odd/sideways.jpg", exif=exif, quality=95)
    data = (raw / "paul_rudd.jpg").read_bytes()
    (root / "odd/corrupt.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    (root / "odd/notanimage.jpg").write_bytes(b"this is text, not a JPEG")
    Image.new("RGB", (10, 10), (120, 90, 80)).save(root / "odd/tiny.jpg")
    canvas = Image.new("RGB", (6000, 4000), (40, 60, 80))
    face = Image.open(raw / "paul_rudd.jpg").convert("RGB")
    face = face.resize((round(face.size[0] * 3000 / face.size[1]), 3000), Image.BICUBIC)
    canvas.paste(face, (3500, 700))
    canvas.save(root / "big/big.jpg", quality=85)
    return root


@pytest.fixture(scope="module")
def aligned(photos: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One CLI run over the whole tree (decode in a worker process), shared by the tests below."""
    from typer.testing import CliRunner

    from lrfr_cli.cli import app, hoist_global_options

    ws = tmp_path_factory.mktemp("ws")
    r = CliRunner().invoke(app, hoist_global_options(["-w", str(ws), "align", str(photos), "--out", "raw", "--select", "all", "--workers", "1", "--json"]))
    return ws, r


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_real_photos_end_to_end(aligned, photos: Path) -> None:  # type: ignore[no-untyped-def]
    ws, r = aligned
    assert r.exit_code == 0, r.stdout + r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    art = ws / "aligned/raw"
    faces = list_images(art)
    assert out["faces"] == len(faces) and out["images"] == 11
    # six faces in the group photo, largest first
    assert sorted(p.name for p in (art / "group").iterdir() if p.name.startswith("multiface")) == [f"multiface_{i}.jpg" for i in range(6)]
    # every written face is 112x112x3
    for p in faces:
        assert load_rgb(p).shape == (112, 112, 3)
    # grayscale, RGBA and CMYK inputs are handled (aligned), the 6000x4000 photo too
    for name in ("odd/gray_0.jpg", "odd/rgba_0.jpg", "odd/cmyk_0.jpg", "odd/sideways_0.jpg", "big/big_0.jpg", "paul/paul_rudd_0.jpg"):
        assert (art / name).exists(), name
    # failures: no face, corrupt, not an image, too small; the run went on
    fails = {row["path"]: row["reason"] for row in _csv(art / "failures.csv")}
    assert set(fails) == {"group/noise.jpg", "odd/corrupt.jpg", "odd/notanimage.jpg", "odd/tiny.jpg"}
    assert fails["group/noise.jpg"] == "no face found"
    assert "corrupt" in fails["odd/corrupt.jpg"] and "not an image" in fails["odd/notanimage.jpg"]
    assert "smaller than --min-face" in fails["odd/tiny.jpg"] and "--assume-cropped" in fails["odd/tiny.jpg"]
    assert out["failed"] == 4 and {f["path"] for f in out["failures"]} == set(fails)
    # nothing half-written: no temp files anywhere, manifest complete
    assert not [p for p in art.rglob("*") if ".tmp-" in p.name]
    assert '"status": "complete"' in (art / "manifest.json").read_text()


@pytest.mark.slow
def test_landmarks_csv_reproduces_the_alignment(aligned, photos: Path) -> None:  # type: ignore[no-untyped-def]
    ws, r = aligned
    art = ws / "aligned/raw"
    rows = read_landmarks(art / "landmarks.csv")
    assert len(rows) == len(list_images(art))
    tpl, _ = template_for(112)
    portrait_errors = []
    for row in rows:
        lm = np.array([[row[f"x{i}"], row[f"y{i}"]] for i in range(1, 6)])
        m = np.array([[row["m00"], row["m01"], row["m02"]], [row["m10"], row["m11"], row["m12"]]])
        err = np.linalg.norm(apply_transform(m, lm) - tpl, axis=1).mean()
        assert err == pytest.approx(row["fit_error_px"], abs=1e-2)
        # coordinates are in the full-resolution photo (the 6000x4000 one was detected at 800 px)
        if row["source"] == "big/big.jpg":
            assert 3500 < lm[:, 0].min() and lm[:, 0].max() < 6000 and 700 < lm[:, 1].min()
            assert row["box_x2"] - row["box_x1"] > 800
        if row["faces_in_image"] == 1:
            portrait_errors.append(err)
        # re-warping the source with the recorded matrix reproduces the written face
        if row["source"] == "paul/paul_rudd.jpg":
            import cv2

            again = cv2.warpAffine(load_rgb(photos / row["source"]), m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
            written = load_rgb(art / row["path"]).astype(float)
            assert np.abs(again.astype(float) - written).mean() < 3.0  # JPEG q92 noise only
    # single-face portraits: mapped landmarks land within 2 px of the template on average
    assert len(portrait_errors) == 6
    assert float(np.mean(portrait_errors)) < 2.0, portrait_errors


@pytest.mark.slow
def test_rerun_is_up_to_date_and_changed_options_refused(aligned, photos: Path, cli) -> None:  # type: ignore[no-untyped-def]
    ws, _ = aligned
    r = cli(ws, "align", photos, "--out", "raw", "--select", "all", "--json")
    assert r.exit_code == 0 and r.json()["up_to_date"] is True and r.json()["faces"] >= 10
    r = cli(ws, "align", photos, "--out", "raw", "--select", "largest")
    assert r.exit_code != 0 and "--force" in r.stdout + r.stderr
    assert len((r.stdout + r.stderr).strip().splitlines()) == 1


def _lfw_tree(data_dir: Path, dst: Path, n: int) -> list[str]:
    root = data_dir / "lfw/lfw-deepfunneled"
    rels = []
    for person in sorted(root.iterdir())[:n]:
        f = sorted(person.iterdir())[0]
        rel = f"{person.name}/{f.name}"
        (dst / person.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / rel)
        rels.append(rel)
    return rels


@pytest.mark.slow
def test_align_tree_resumes_and_keeps_written_faces(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "lfw"
    rels = _lfw_tree(data_dir, src, 5)
    out = tmp_path / "out"
    first = align_tree(src, out, rels[:2], batch_size=4)
    assert first.faces == 2 and not first.failures
    mtimes = {p: p.stat().st_mtime_ns for p in list_images(out)}
    # a crash leaves a cut journal line: that photo is simply redone
    with open(out / JOURNAL, "a") as fh:
        fh.write('{"source": "cut')
    second = align_tree(src, out, batch_size=4)
    assert second.already_done == 2 and second.faces == 5 and second.written == 3
    for p, t in mtimes.items():
        assert p.stat().st_mtime_ns == t
    assert len(read_landmarks(out / "landmarks.csv")) == 5
    # the same folder with other options is refused, not mixed
    with pytest.raises(Exception, match="other options"):
        align_tree(src, out, size=128)


def test_already_aligned_input_passes_through(data_dir: Path, ws: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "aligned_in"
    ids = sorted((data_dir / "celeba_subset/images").iterdir())[:2]
    for d in ids:
        (src / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:2]:
            shutil.copy(f, src / d.name / f.name)
    shutil.copy(data_dir / "raw_photos/insightface/Tom_Hanks_54745.png", src / ids[0].name / "tom.png")
    r = cli(ws, "align", src, "--out", "pre", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    assert out["passthrough"] is True and out["faces"] == 5 and out["failed"] == 0
    for f in list_images(src):
        rel = f.relative_to(src)
        assert (ws / "aligned/pre" / rel).read_bytes() == f.read_bytes()


def test_assume_cropped_tiny_faces(data_dir: Path, tmp_path: Path) -> None:
    """A 16 px crop of an aligned face's MTCNN box goes back onto the template's face box."""
    from lrfr_cli.align.aligner import TEMPLATE_FACE_BOX_112

    src = tmp_path / "tiny"
    (src / "a").mkdir(parents=True)
    faces = sorted((data_dir / "celeba_subset/images/07201").iterdir())[:3]
    x1, y1, x2, y2 = TEMPLATE_FACE_BOX_112
    originals = []
    for i, f in enumerate(faces):
        img = Image.open(f).convert("RGB")
        originals.append(np.asarray(img, dtype=float))
        img.crop((round(x1), round(y1), round(x2), round(y2))).resize((16, 22), Image.BICUBIC).save(src / f"a/{i}.png")
    res = align_tree(src, tmp_path / "out", assume_cropped=True, fmt="png")
    assert res.faces == 3 and not res.failures
    for i, orig in enumerate(originals):
        got = load_rgb(tmp_path / f"out/a/{i}.png").astype(float)
        assert got.shape == (112, 112, 3)
        inner = (slice(round(y1) + 4, 108), slice(round(x1) + 4, round(x2) - 4))
        corr = np.corrcoef(got[inner].ravel(), orig[inner].ravel())[0, 1]
        assert corr > 0.85, corr
    assert {r.status for r in res.records} == {"assumed"}


@pytest.mark.slow
def test_fallback_center_crop_and_other_sizes(data_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "x").mkdir(parents=True)
    Image.new("RGB", (10, 10), (10, 200, 30)).save(src / "x/tiny.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(src / "x/noise.png")
    lfw = sorted((data_dir / "lfw/lfw-deepfunneled/Aaron_Eckhart").iterdir())[0]
    shutil.copy(lfw, src / "x/face.jpg")
    res = align_tree(src, tmp_path / "o1", fallback="center-crop", size=(96, 112))
    assert res.faces == 3 and res.fallbacks == 2 and len(res.failures) == 2
    for p in list_images(tmp_path / "o1"):
        assert load_rgb(p).shape == (112, 96, 3)
    rows = {r["path"]: r for r in _csv(tmp_path / "o1/failures.csv")}
    assert rows["x/tiny.jpg"]["fallback"] == "x/tiny.jpg" and rows["x/noise.png"]["fallback"] == "x/noise.jpg"
    res = align_tree(src, tmp_path / "o2", size=128, margin=8)
    assert res.faces == 1 and load_rgb(tmp_path / "o2/x/face.jpg").shape == (128, 128, 3)


def test_bad_invocations_are_one_line_errors(tmp_path: Path, ws: Path, cli) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "empty"
    empty.mkdir()
    clash = tmp_path / "clash"
    clash.mkdir()
    Image.new("RGB", (50, 40)).save(clash / "a.jpg")
    Image.new("RGB", (50, 40)).save(clash / "a.png")
    cases = [
        (clash, []),
        (empty, []),
        (tmp_path / "missing", []),
        (empty, ["--select", "biggest"]),
        (empty, ["--size", "7"]),
        (empty, ["--thresholds", "0.6,0.7"]),
        (empty, ["--device", "cuda:7"]),
    ]
    for src, extra in cases:
        r = cli(ws, "align", src, "--out", "e", *extra)
        text = (r.stdout + r.stderr).strip()
        assert r.exit_code != 0, (extra, text)
        assert len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert not (ws / "aligned/e/manifest.json").exists()


@pytest.mark.slow
def test_cli_resumes_an_interrupted_run(data_dir: Path, ws: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "lfw"
    rels = _lfw_tree(data_dir, src, 3)
    r = cli(ws, "align", src, "--out", "lfw", "--workers", "0", "--json")
    assert r.exit_code == 0 and r.json()["faces"] == 3
    art = ws / "aligned/lfw"
    # simulate a crash: manifest left 'running', one face not yet written
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["status"] = "running"
    (art / "manifest.json").write_text(json.dumps(manifest))
    (art / rels[1]).unlink()
    kept = (art / rels[0]).stat().st_mtime_ns
    r = cli(ws, "align", src, "--out", "lfw", "--workers", "0", "--json")
    out = r.json()
    assert r.exit_code == 0 and out["resumed"] is True
    assert out["already_done"] == 2 and out["written"] == 1 and out["faces"] == 3
    assert (art / rels[1]).exists() and (art / rels[0]).stat().st_mtime_ns == kept
    assert json.loads((art / "manifest.json").read_text())["status"] == "complete"
