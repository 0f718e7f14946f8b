"""IJB-B/C 1:1 template verification on a stand-in built from LFW faces in the release layout.

The real crops are licensed; the stand-in has the same files (loose_crop/, meta/*_name_5pts_score.txt,
*_face_tid_mid.txt, *_template_pair_label.txt). Pooling and TAR@FAR are checked against a
brute-force computation (Python loops over templates and media, every threshold tried) on the
embeddings the eval cached; alignment against a warp made with OpenCV from a least-squares fit.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrfr_cli.data.images import load_rgb
from lrfr_cli.data.sources import LFW_DEEPFUNNELED_LANDMARKS
from lrfr_cli.embed import extract
from lrfr_cli.protocols import ijb

from fake_runs import tiny_run

ARCFACE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]])


def pixel_embedding(x: torch.Tensor) -> torch.Tensor:
    """A stand-in network: 48 pixel means, norm varying with the image (so norm-weighting matters)."""
    return F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1) - 0.3


@pytest.fixture
def fake_net(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extract, "forward", lambda model, x, precision: pixel_embedding(x))


def build_standin(lfw: Path, out: Path, prefix: str = "ijbc", n_people: int = 8, seed: int = 0) -> Path:
    """LFW people with >= 4 images → crops 1.jpg..N.jpg, 2 templates per person, 1-3 media per template."""
    rng = np.random.default_rng(seed)
    names = [ln.split() for ln in (lfw / "lfw-names.txt").read_text().splitlines() if ln.strip()]
    people = [n for n, c in names if int(c) >= 4][:n_people]
    root = out / prefix.upper()
    (root / "loose_crop").mkdir(parents=True)
    (root / "meta").mkdir()
    lm_lines, tm_lines, owner = [], [], {}
    k, tid, mid = 0, 100, 5000
    for person in people:
        for half in range(2):
            tid += 1
            owner[tid] = person
            for j in range(2):
                if j == 0 or rng.random() < 0.6:
                    mid += 1  # a new media, or a second frame of the same one
                k += 1
                src = lfw / "lfw-deepfunneled" / person / f"{person}_{1 + 2 * half + j:04d}.jpg"
                shutil.copy(src, root / "loose_crop" / f"{k}.jpg")
                pts = LFW_DEEPFUNNELED_LANDMARKS + rng.normal(0, 2.0, (5, 2))
                score = rng.uniform(0.3, 1.0)
                lm_lines.append(f"{k}.jpg " + " ".join(f"{v:.3f}" for v in pts.ravel()) + f" {score:.6f}")
                tm_lines.append(f"{k}.jpg {tid} {mid}")
    tids = sorted(owner)
    pairs = [f"{a} {b} {int(owner[a] == owner[b])}" for i, a in enumerate(tids) for b in tids[i + 1 :]]
    order = rng.permutation(len(tm_lines))  # the tid/mid file need not follow the landmark file's order
    (root / "meta" / f"{prefix}_name_5pts_score.txt").write_text("\n".join(lm_lines) + "\n")
    (root / "meta" / f"{prefix}_face_tid_mid.txt").write_text("\n".join(tm_lines[i] for i in order) + "\n")
    (root / "meta" / f"{prefix}_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    return root


def brute_templates(feats: dict[str, np.ndarray], meta_dir: Path, prefix: str) -> dict[int, np.ndarray]:
    score = {ln.split()[0]: float(ln.split()[-1]) for ln in (meta_dir / f"{prefix}_name_5pts_score.txt").read_text().splitlines()}
    groups: dict[int, dict[int, list[np.ndarray]]] = {}
    for ln in (meta_dir / f"{prefix}_face_tid_mid.txt").read_text().splitlines():
        n, t, m = ln.split()
        if f"loose_crop/{n}" not in feats:  # a template embedded for the other side of the pairs only
            continue
        groups.setdefault(int(t), {}).setdefault(int(m), []).append(feats[f"loose_crop/{n}"] * score[n])
    out = {}
    for t, media in groups.items():
        v = sum(np.mean(np.stack(rows), axis=0) for rows in media.values())
        out[t] = v / np.linalg.norm(v)
    return out


def brute_tar(scores: np.ndarray, same: np.ndarray, far: float) -> float:
    best = 0.0
    for t in np.r_[np.unique(scores), np.inf]:
        if np.mean(scores[~same] >= t) <= far + 1e-12:
            best = max(best, float(np.mean(scores[same] >= t)))
    return best


def _raw(cache_dir: Path, variant: str, flip: bool) -> dict[str, np.ndarray]:
    with np.load(cache_dir / f"{variant}.npz") as z:
        d = {str(k): e.astype(np.float64) for k, e in zip(z["keys"], z["emb"])}
    if flip:
        with np.load(cache_dir / f"{variant}.flip.npz") as z:
            for k, e in zip(z["keys"], z["emb"]):
                d[str(k)] = d[str(k)] + e.astype(np.float64)
    return d


def test_ijb_standin_matches_brute_force(cli, ws, data_dir, tmp_path, fake_net) -> None:
    root = build_standin(data_dir / "lfw", tmp_path)
    tiny_run(ws)
    r = cli(ws, "eval", "--dataset", "ijbc", "--model", "tiny", "--data", str(tmp_path), "--sizes", "12,112",
            "--workers", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = r.json()
    assert doc["model"]["flip"] is True  # IJB's default, as insightface scores it
    cache_dir = Path(doc["embeddings"]["cache"])
    lines = (root / "meta" / "ijbc_template_pair_label.txt").read_text().splitlines()
    t1, t2, same = (np.array([int(ln.split()[i]) for ln in lines]) for i in range(3))
    same = same == 1
    hr = brute_templates(_raw(cache_dir, "hr", True), root / "meta", "ijbc")
    for size, variant in (("112", "hr"), ("12", "12px_bicubic")):
        lr = brute_templates(_raw(cache_dir, variant, True), root / "meta", "ijbc")
        sc = np.array([float(hr[a] @ lr[b]) for a, b in zip(t1, t2)])  # hr-lr: first template HR
        res = doc["results"][size]
        assert res["pairs"] == len(lines) and res["genuine"] == int(same.sum())
        for far in ijb.FARS:
            assert res["tar_at_far"][f"{far:g}"] == pytest.approx(brute_tar(sc, same, far), abs=1e-12)
        assert res["mean_genuine"] == pytest.approx(sc[same].mean(), abs=1e-9)
        assert res["mean_impostor"] == pytest.approx(sc[~same].mean(), abs=1e-9)
    # the headline and the report's metric names
    assert "TAR@FAR=1e-4" in r.stdout or doc["results"]["12"]["tar_at_far"]["0.0001"] >= 0
    rep = cli(ws, "report", "--list-metrics", "--no-save")
    assert rep.exit_code == 0, rep.stdout + rep.stderr
    assert "ijbc/hr-lr@12:tar@far=0.0001" in rep.stdout.split()


def test_template_pooling_vectorised_equals_loops() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    templates = rng.integers(0, 400, n)
    medias = rng.integers(0, 30, n) + 1000 * templates  # media ids are unique per template, as in IJB
    medias[rng.random(n) < 0.3] = rng.integers(0, 5)  # and some ids shared across templates: still per-template groups
    feats = rng.normal(size=(n, 16))
    w = rng.uniform(0.1, 1.0, n)
    ids, tf = ijb.template_features(feats, w, templates, medias)
    assert ids.tolist() == sorted(set(templates.tolist()))
    for t, row in zip(ids, tf):
        sel = templates == t
        acc = np.zeros(16)
        for m in set(medias[sel].tolist()):
            ms = sel & (medias == m)
            acc += (feats[ms] * w[ms, None]).mean(axis=0)
        assert np.allclose(row, acc / np.linalg.norm(acc), atol=1e-12)


@pytest.mark.parametrize("dense", [True, False])
def test_pair_scores_both_paths_equal_a_loop(dense: bool) -> None:
    rng = np.random.default_rng(5)
    ids1, ids2 = np.sort(rng.choice(1000, 70, replace=False)), np.sort(rng.choice(1000, 90, replace=False))
    f1, f2 = rng.normal(size=(70, 8)), rng.normal(size=(90, 8))
    t1, t2 = rng.choice(ids1, 500), rng.choice(ids2, 500)
    got = ijb.pair_scores(ids1, f1, ids2, f2, t1, t2, dense=dense)
    want = [f1[list(ids1).index(a)] @ f2[list(ids2).index(b)] for a, b in zip(t1, t2)]
    assert np.allclose(got, want, atol=1e-12)


def test_ijb_crops_align_like_an_opencv_warp(data_dir, tmp_path) -> None:
    root = build_standin(data_dir / "lfw", tmp_path, n_people=1)
    meta = ijb.read_meta(root / "meta", "ijbc")
    crops = ijb.IjbCrops(root=root, index={"loose_crop/1.jpg": 0}, landmarks=meta.landmarks, name="x")
    got = crops.load("loose_crop/1.jpg")
    # least-squares similarity x' = a x - b y + tx, y' = b x + a y + ty, solved directly
    src = meta.landmarks[0]
    rows = []
    for (x, y), (u, v) in zip(src, ARCFACE):
        rows += [([x, -y, 1, 0], u), ([y, x, 0, 1], v)]
    a, b, tx, ty = np.linalg.lstsq(np.array([r for r, _ in rows]), np.array([v for _, v in rows]), rcond=None)[0]
    m = np.array([[a, -b, tx], [b, a, ty]])
    want = cv2.warpAffine(load_rgb(root / "loose_crop" / "1.jpg"), m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_ijb_bad_layouts_are_one_line_errors(cli, ws, data_dir, tmp_path) -> None:
    root = build_standin(data_dir / "lfw", tmp_path, n_people=2)
    tiny_run(ws)
    args = ["eval", "--dataset", "ijbc", "--model", "tiny", "--data", str(tmp_path), "--sizes", "112", "--workers", "0"]
    f = root / "meta" / "ijbc_template_pair_label.txt"
    good = f.read_text()
    f.write_text(good + "101 999 1\n")
    r = cli(ws, *args)
    assert r.exit_code != 0 and "template 999 has no crops" in r.stderr and "Traceback" not in r.stderr
    f.write_text(good)
    (root / "loose_crop" / "3.jpg").unlink()
    r = cli(ws, *args)
    assert r.exit_code != 0 and "3.jpg" in r.stderr and "missing" in r.stderr
    r = cli(ws, "eval", "--dataset", "ijbb", "--model", "tiny", "--data", str(tmp_path))
    assert r.exit_code != 0 and "IJBB not found" in r.stderr
