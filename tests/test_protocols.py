"""Protocol plans: parsing real layouts, and scores that equal hand/brute-force/sklearn numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from lrfr_cli.data.sources import LfwCenterCrop
from lrfr_cli.embed import Variant
from lrfr_cli.errors import LrfrError
from lrfr_cli.protocols import lfw, scface, survface, tinyface


class FakeEmb:
    """Embeddings looked up by path only (the variant is recorded, not used)."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table
        self.asked: list[tuple[str, str]] = []

    def get(self, variant: Variant, rels: list[str]) -> np.ndarray:
        self.asked += [(variant.name, r) for r in rels]
        e = np.stack([self.table[r] for r in rels]).astype(np.float64)
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)

    def quality(self, variant: Variant, rels: list[str]) -> dict[str, np.ndarray]:
        n = np.linalg.norm(np.stack([self.table[r] for r in rels]), axis=1)
        return {"feature_norm": n, "laplacian_variance": n, "laplacian_mean_abs": n}


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"")


# ----------------------------------------------------------------------------- LFW
HAND = [  # (fold, same, score)
    (0, True, 0.9), (0, True, 0.8), (0, False, 0.05), (0, False, 0.1),
    (1, True, 0.7), (1, True, 0.3), (1, False, 0.4), (1, False, 0.0),
]


def _hand_lfw(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    root = tmp_path / "lfw"
    lines = ["2\t2"]
    table: dict[str, np.ndarray] = {}
    for k, (_fold, same, s) in enumerate(HAND):
        a, b = f"P{k}a", f"P{k}b"
        if same:
            lines.append(f"{a}\t1\t2")
            r1, r2 = f"lfw-deepfunneled/{a}/{a}_0001.jpg", f"lfw-deepfunneled/{a}/{a}_0002.jpg"
        else:
            lines.append(f"{a} 1   {b} 3")  # spaces instead of tabs are accepted too
            r1, r2 = f"lfw-deepfunneled/{a}/{a}_0001.jpg", f"lfw-deepfunneled/{b}/{b}_0003.jpg"
        _touch(root, r1)
        _touch(root, r2)
        table[r1] = np.array([1.0, 0.0])
        table[r2] = np.array([s, np.sqrt(1 - s * s)])
    pairs = root / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    return root, pairs, table


def test_lfw_hand_made_pairs_give_known_numbers(tmp_path: Path) -> None:
    root, pairs, table = _hand_lfw(tmp_path)
    plan = lfw.plan_lfw(LfwCenterCrop(root), root, pairs, setting="hr-lr", sizes=[8, 112], input_size=112, method="bicubic")
    emb = FakeEmb(table)
    res = plan.score(emb)
    for size in ("8", "112"):
        r = res[size]
        # fold 0 tested with the threshold learnt on fold 1 (0.15): 4/4; fold 1 with 0.45: 3/4
        assert r["fold_accuracies"] == pytest.approx([1.0, 0.75])
        assert r["thresholds"] == pytest.approx([0.15, 0.45])
        assert r["accuracy"] == pytest.approx(0.875)
        assert r["accuracy_std"] == pytest.approx(0.125)
        assert r["auc"] == pytest.approx(15 / 16)
        assert r["tar_at_far"]["0.001"] == pytest.approx(0.75)
    # hr-lr: first images HR, second images degraded (8 px) or HR (112 = input size)
    assert {v for v, r in emb.asked if r.endswith("_0001.jpg") and "/P0a/" in r} == {"hr"}
    assert ("8px_bicubic", "lfw-deepfunneled/P0a/P0a_0002.jpg") in emb.asked


def test_lfw_requests_per_setting(tmp_path: Path) -> None:
    root, pairs, _ = _hand_lfw(tmp_path)
    kw = dict(input_size=112, method="area")
    p = lfw.plan_lfw(LfwCenterCrop(root), root, pairs, setting="lr-lr", sizes=[12], **kw)
    (v,) = p.requests
    assert v.name == "12px_area-exact" and len(p.requests[v]) == 16
    p = lfw.plan_lfw(LfwCenterCrop(root), root, pairs, setting="hr-hr", sizes=[8, 12], **kw)
    assert [v.name for v in p.requests] == ["hr"]
    p = lfw.plan_lfw(LfwCenterCrop(root), root, pairs, setting="hr-lr", sizes=[8, 12], **kw)
    assert sorted(v.name for v in p.requests) == ["12px_area-exact", "8px_area-exact", "hr"]
    assert len(p.requests[Variant(None)]) == 8  # first images only


def test_read_pairs_formats_and_folds(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("2\t1\nA\t1\t2\nA\t1\tB\t1\nC 3 4\nC\t1\tD\t2\n")
    pairs, n = lfw.read_pairs(f)
    assert n == 2 and [p.fold for p in pairs] == [0, 0, 1, 1]
    assert [p.same for p in pairs] == [True, False, True, False]
    assert pairs[1].rel2 == "lfw-deepfunneled/B/B_0001.jpg"
    f.write_text("2\nA\t1\t2\nA\t1\t3\nA\t1\tB\t1\nC\t1\tD\t2\n")  # View 1 header: one fold
    pairs, n = lfw.read_pairs(f, prefix="")
    assert n == 1 and pairs[0].rel1 == "A/A_0001.jpg"


def test_view1_threshold_from_dev_train(tmp_path: Path) -> None:
    root, _, table = _hand_lfw(tmp_path)
    lines = (root / "pairs.txt").read_text().splitlines()[1:]
    (root / "pairsDevTest.txt").write_text("4\n" + "\n".join(lines[:2] + lines[4:6] + lines[2:4] + lines[6:]) + "\n")
    (root / "pairsDevTrain.txt").write_text("2\n" + "\n".join(lines[4:6] + lines[6:]) + "\n")  # fold-1 pairs
    plan = lfw.plan_lfw(LfwCenterCrop(root), root, root / "pairsDevTest.txt", setting="hr-hr", sizes=[112], input_size=112, method="bicubic")
    assert plan.info["threshold_pairs"].endswith("pairsDevTrain.txt")
    r = plan.score(FakeEmb(table))["112"]
    # threshold 0.15 from the train file; all 8 test pairs: 0.9 .8 .7 .3 accepted, .4 accepted (wrong) -> 7/8
    assert r["thresholds"] == pytest.approx([0.15])
    assert r["accuracy"] == pytest.approx(7 / 8)


def test_malformed_pairs_line_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_text("1\t1\nA\t1\t2\nA\tx\tB\n")
    with pytest.raises(LrfrError, match=r"bad\.txt:3: expected"):
        lfw.read_pairs(f)
    f.write_text("1\t1\nA\t1\t2\nA\t1\tB\t2\tC\n")
    with pytest.raises(LrfrError, match=r"bad\.txt:3"):
        lfw.read_pairs(f)
    f.write_text("2\t1\nA\t1\t2\nA\t1\tB\t2\n")
    with pytest.raises(LrfrError, match="header promises 2 fold"):
        lfw.read_pairs(f)


def test_pair_naming_missing_image(tmp_path: Path) -> None:
    root, pairs, _ = _hand_lfw(tmp_path)
    (root / "lfw-deepfunneled/P5a/P5a_0002.jpg").unlink()
    with pytest.raises(LrfrError, match=r"pairs\.txt:7: image lfw-deepfunneled/P5a/P5a_0002\.jpg not found"):
        lfw.plan_lfw(LfwCenterCrop(root), root, pairs, setting="hr-lr", sizes=[8], input_size=112, method="bicubic")


# ----------------------------------------------------------------------------- SCface
def _scface_tree(tmp_path: Path, ids: list[str], distances=(1, 2, 3)) -> tuple[Path, Path]:
    root, lm = tmp_path / "scface", tmp_path / "lm"
    lm.mkdir(parents=True)
    pts = ",".join(["40", "50", "70", "50", "55", "65", "42", "80", "68", "80"])
    rows = []
    for i in ids:
        _touch(root, f"mugshot_frontal_original_all/{i}_frontal.jpg")
        rows.append(f"mugshot_frontal_original_all/{i}_frontal.jpg,{pts}")
    (lm / "scface_mugshot.csv").write_text("\n".join(rows) + "\n")
    for d in distances:
        rows = []
        for i in ids:
            for c in range(1, 6):
                _touch(root, f"surveillance_cameras_all/{i}_cam{c}_{d}.jpg")
                rows.append(f"surveillance_cameras_all/{i}_cam{c}_{d}.jpg,{pts}")
        (lm / f"scface_distance{d}.csv").write_text("\n".join(rows) + "\n")
    return root, lm


def test_scface_rank1_and_cmc_equal_brute_force(tmp_path: Path) -> None:
    ids = [f"{i:03d}" for i in range(1, 13)]
    root, lm = _scface_tree(tmp_path, ids)
    plan = scface.plan_scface(root, lm, [2, 3])
    rng = np.random.default_rng(0)
    centre = {i: rng.normal(size=16) for i in ids}
    table = {}
    for r in plan.requests[Variant(None)]:
        sid = Path(r).stem.split("_")[0]
        noise = 0.2 if "frontal" in r else 1.3
        table[r] = centre[sid] + noise * rng.normal(size=16)
    emb = FakeEmb(table)
    res = plan.score(emb)
    assert set(res) == {"d2", "d3"}
    gal = [f"mugshot_frontal_original_all/{i}_frontal.jpg" for i in ids]
    G = emb.get(Variant(None), gal)
    for d in (2, 3):
        probes = [f"surveillance_cameras_all/{i}_cam{c}_{d}.jpg" for i in ids for c in range(1, 6)]
        P = emb.get(Variant(None), probes)
        truth = np.array([ids.index(Path(p).stem.split("_")[0]) for p in probes])
        order = np.argsort(-(P @ G.T), axis=1)
        ranks = np.array([int(np.nonzero(order[k] == truth[k])[0][0]) + 1 for k in range(len(probes))])
        cmc = [float(np.mean(ranks <= k)) for k in range(1, 13)]
        assert res[f"d{d}"]["cmc"] == pytest.approx(cmc)
        assert res[f"d{d}"]["rank1"] == pytest.approx(cmc[0])
        assert len(res[f"d{d}"]["cmc"]) == 12  # capped at the gallery size
        assert res[f"d{d}"]["probes"] == 60
        cam1 = [k for k, p in enumerate(probes) if "_cam1_" in p]
        assert res[f"d{d}"]["rank1_per_camera"]["cam1"] == pytest.approx(np.mean(ranks[cam1] == 1))
    assert 0.0 < res["d2"]["rank1"] < 1.0  # the noise level makes the check meaningful


def test_scface_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(LrfrError, match="--distance 4"):
        scface.parse_distances("4")
    assert scface.parse_distances("all") == [1, 2, 3]
    with pytest.raises(LrfrError, match="expected layout"):
        scface.plan_scface(tmp_path / "nothing", tmp_path, [1])
    root, lm = _scface_tree(tmp_path, ["001", "002"], distances=(1,))
    (root / "surveillance_cameras_all/002_cam3_1.jpg").unlink()
    with pytest.raises(LrfrError, match=r"1 image\(s\) listed in scface_distance1.csv are missing.*002_cam3_1"):
        scface.plan_scface(root, lm, [1])
    for f in (root / "mugshot_frontal_original_all").iterdir():
        f.unlink()
    with pytest.raises(LrfrError, match="gallery is empty"):
        scface.plan_scface(root, lm, [1])
    (lm / "scface_mugshot.csv").write_text("a.jpg,1,2,3\n")
    with pytest.raises(LrfrError, match=r"scface_mugshot.csv:1"):
        scface.read_landmarks(lm / "scface_mugshot.csv")


# ----------------------------------------------------------------------------- SurvFace
def _cell(pairs: list[tuple[str, str]]) -> np.ndarray:
    c = np.empty((len(pairs), 2), dtype=object)
    for i, (a, b) in enumerate(pairs):
        c[i, 0], c[i, 1] = a, b
    return c


def test_survface_mat_pairs_equal_sklearn(tmp_path: Path) -> None:
    from scipy.io import savemat

    base = tmp_path / "QMUL-SurvFace" / "Face_Verification_Test_Set"
    rng = np.random.default_rng(1)
    names = [f"{k}_cam{k % 3}.jpg" for k in range(60)]
    for n in names:
        _touch(base / "verification_images", n)
    pos = [(names[i], names[i + 1]) for i in range(0, 40, 2)]
    neg = [(names[i], names[59 - i]) for i in range(0, 30)]
    savemat(base / "positive_pairs_names.mat", {"positive_pairs_names": _cell(pos)})
    savemat(base / "negative_pairs_names.mat", {"negative_pairs_names": _cell(neg)})
    plan = survface.plan_survface(tmp_path / "QMUL-SurvFace")
    table = {n: rng.normal(size=8) for n in names}
    for a, b in pos:
        table[b] = table[a] + 0.8 * rng.normal(size=8)
    emb = FakeEmb(table)
    res = plan.score(emb)["native"]
    E = lambda ns: emb.get(Variant(None), ns)  # noqa: E731
    s = np.r_[np.sum(E([a for a, _ in pos]) * E([b for _, b in pos]), 1), np.sum(E([a for a, _ in neg]) * E([b for _, b in neg]), 1)]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    assert res["auc"] == pytest.approx(roc_auc_score(y, s))
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    for far in (0.3, 0.1, 0.01, 0.001):
        assert res["tar_at_far"][f"{far:g}"] == pytest.approx(tpr[fpr <= far].max())
    assert res["positive"] == 20 and res["negative"] == 30


def test_survface_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(LrfrError, match="positive_pairs_names.mat"):
        survface.plan_survface(tmp_path)


# ----------------------------------------------------------------------------- TinyFace
def test_tinyface_ranks_equal_brute_force_with_distractors(tmp_path: Path) -> None:
    base = tmp_path / "tinyface" / "Testing_Set"
    probes = [f"Probe/{i}_{k}.jpg" for i in range(1, 9) for k in (1, 2)]
    match = [f"Gallery_Match/{i}_{k}.jpg" for i in range(1, 9) for k in (3, 4)]
    dis = [f"Gallery_Distractor/sub/x{k}.jpg" for k in range(30)]
    for r in probes + match + dis:
        _touch(base, r)
    plan = tinyface.plan_tinyface(tmp_path / "tinyface")
    rng = np.random.default_rng(2)
    centre = {i: rng.normal(size=8) for i in range(1, 9)}
    table = {r: rng.normal(size=8) for r in dis}
    for r in probes + match:
        table[r] = centre[int(Path(r).stem.split("_")[0])] + 1.0 * rng.normal(size=8)
    emb = FakeEmb(table)
    res = plan.score(emb)["native"]
    P, G = emb.get(Variant(None), probes), emb.get(Variant(None), match + dis)
    g_id = [int(Path(r).stem.split("_")[0]) for r in match] + [-1] * len(dis)
    ranks = []
    for k, p in enumerate(probes):
        order = np.argsort(-(P[k] @ G.T))
        ranks.append(next(j for j, g in enumerate(order) if g_id[g] == int(Path(p).stem.split("_")[0])) + 1)
    ranks = np.array(ranks)
    for k in (1, 5, 20):
        assert res[f"rank{k}"] == pytest.approx(np.mean(ranks <= k))
    assert res["distractors"] == 30 and res["gallery"] == 46


def test_tinyface_empty_gallery(tmp_path: Path) -> None:
    base = tmp_path / "Testing_Set"
    _touch(base, "Probe/1_1.jpg")
    (base / "Gallery_Match").mkdir()
    with pytest.raises(LrfrError, match="gallery is empty"):
        tinyface.plan_tinyface(tmp_path)


def test_landmark_warp_of_a_huge_photo_matches_the_small_one(data_dir: Path) -> None:
    """A mugshot-sized photo (8x LFW) through warp_antialiased ≈ the 250 px original through
    warp_face; a direct bilinear warp of the huge photo aliases and lands further away."""
    import cv2

    from lrfr_cli.align.warp import warp_face
    from lrfr_cli.data.images import load_rgb
    from lrfr_cli.data.sources import LFW_DEEPFUNNELED_LANDMARKS, warp_antialiased

    img = load_rgb(data_dir / "lfw" / "lfw-deepfunneled" / "Aaron_Peirsol" / "Aaron_Peirsol_0001.jpg")
    big = cv2.resize(img, (2000, 2000), interpolation=cv2.INTER_CUBIC)
    ref = warp_face(img, LFW_DEEPFUNNELED_LANDMARKS, 112)[0].astype(float)
    good = warp_antialiased(big, LFW_DEEPFUNNELED_LANDMARKS * 8, 112).astype(float)
    naive = warp_face(big, LFW_DEEPFUNNELED_LANDMARKS * 8, 112)[0].astype(float)
    assert good.shape == (112, 112, 3)
    err_good, err_naive = np.abs(good - ref).mean(), np.abs(naive - ref).mean()
    assert err_good < 3.0 and err_good < err_naive
    # no pre-shrink when the warp does not shrink much: identical to warp_face
    np.testing.assert_array_equal(warp_antialiased(img, LFW_DEEPFUNNELED_LANDMARKS, 112), ref.astype(np.uint8))


def test_real_scface_landmark_lists_parse(data_dir: Path) -> None:
    """The Deep Siamese protocol files in $LRFR_DATA: 130 mugshots, 130 x 5 probes per distance.

    (`wc -l` says 649: the last line has no newline; every subject has all five cameras.)"""
    import re

    lm = data_dir / "protocols" / "scface"
    gal = scface.read_landmarks(lm / "scface_mugshot.csv")
    assert len(gal) == 130 and all(re.fullmatch(r"mugshot_frontal_original_all/\d{3}_frontal\.jpg", r) for r, _, _ in gal)
    for d in (1, 2, 3):
        rows = scface.read_landmarks(lm / f"scface_distance{d}.csv")
        names = [Path(r).stem for r, _, _ in rows]
        assert len(rows) == len(set(names)) == 650
        assert all(scface._PROBE_RE.match(n) and int(scface._PROBE_RE.match(n).group(3)) == d for n in names)
        assert {int(scface._PROBE_RE.match(n).group(2)) for n in names} == {1, 2, 3, 4, 5}
        pts = np.stack([p for _, p, _ in rows])
        assert np.all(pts[:, 0, 0] < pts[:, 1, 0])  # left eye left of the right eye
