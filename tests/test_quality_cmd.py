"""Per-face quality: `lrfr quality DIR` and the quality block of eval records, checked against
OpenCV's Laplacian and the norm of the network's output computed here with plain torch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.data.images import load_rgb
from lrfr_cli.models import build_backbone, preprocess
from lrfr_cli.protocols.quality import accuracy_bins


def _faces(data_dir: Path, out: Path, n: int = 6) -> Path:
    """Real 112-px faces, half of them degraded to 8 px and back (so quality spreads)."""
    src = sorted((data_dir / "celeba_subset").rglob("*.jpg"))[:n]
    for i, p in enumerate(src):
        img = load_rgb(p)
        if i % 2:
            img = degrade_array(img, DegradeSpec(size=8))
        (out / f"id{i % 2}").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out / f"id{i % 2}" / f"{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return out


def _rows(path: Path) -> dict[str, dict[str, float]]:
    with open(path) as fh:
        return {r["image"]: {k: float(v) for k, v in r.items() if k != "image"} for r in csv.DictReader(fh)}


def _make_run(ws: Path) -> Path:
    run = ws / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    cfg = {"backbone": "tiny", "embedding_size": 512, "input_size": 112}
    torch.save({"model": build_backbone("tiny").state_dict(), "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def test_laplacian_scores_equal_opencv_and_thresholds_split(cli, ws, data_dir, tmp_path) -> None:
    folder = _faces(data_dir, tmp_path / "faces")
    r = cli(ws, "quality", str(folder), "--min-laplacian", "20", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = r.json()
    rows = _rows(Path(doc["scores"]))
    assert len(rows) == 6 and "feature_norm" not in next(iter(rows.values()))
    for rel, q in rows.items():
        grey = cv2.cvtColor(load_rgb(folder / rel), cv2.COLOR_RGB2GRAY)
        lap = cv2.Laplacian(grey, cv2.CV_64F)
        assert q["laplacian_variance"] == pytest.approx(lap.var(), rel=1e-5)
        assert q["laplacian_mean_abs"] == pytest.approx(np.abs(lap).mean(), rel=1e-5)
    rejected = (Path(doc["path"]) / "rejected.txt").read_text().split()
    kept = (Path(doc["path"]) / "kept.txt").read_text().split()
    assert sorted(rejected) == sorted(k for k, q in rows.items() if q["laplacian_variance"] < 20)
    assert sorted(rejected + kept) == sorted(rows) and rejected and kept  # the 8-px faces go, the sharp stay
    again = cli(ws, "quality", str(folder), "--min-laplacian", "20", "--json")
    assert again.exit_code == 0 and again.json()["skipped"] is True and again.json()["rejected"] == len(rejected)


def test_feature_norm_equals_the_networks_output(cli, ws, data_dir, tmp_path) -> None:
    folder = _faces(data_dir, tmp_path / "faces", n=4)
    _make_run(ws)
    r = cli(ws, "quality", str(folder), "--model", "tiny", "--workers", "0", "--threads", "1", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    rows = _rows(Path(r.json()["scores"]))
    net = build_backbone("tiny")
    net.load_state_dict(torch.load(ws / "runs" / "tiny" / "checkpoints" / "last.pt", weights_only=True)["model"])
    net.eval()
    for rel, q in rows.items():
        x = torch.from_numpy(load_rgb(folder / rel)).permute(2, 0, 1)[None]
        with torch.no_grad():
            want = float(net(preprocess(x)).norm())  # one image alone: another batch composition than the command's
        assert q["feature_norm"] == pytest.approx(want, rel=1e-4)


def test_quality_errors_are_one_line(cli, ws, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    r = cli(ws, "quality", str(tmp_path / "empty"))
    assert r.exit_code != 0 and "no images found" in r.stderr
    r = cli(ws, "quality", str(tmp_path / "empty"), "--min-norm", "3")
    assert r.exit_code != 0 and "--min-norm needs --model" in r.stderr


def test_accuracy_bins_by_hand() -> None:
    q = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 6.0])
    ok = np.array([1, 0, 1, 0, 1, 1], bool)
    bins = accuracy_bins(q, ok, n_bins=3)
    assert [(b["lo"], b["hi"], b["pairs"], b["accuracy"]) for b in bins] == [(1.0, 2.0, 2, 0.0), (3.0, 4.0, 2, 1.0), (5.0, 6.0, 2, 1.0)]


def test_eval_record_quality_and_report_plot(cli, ws, data_dir, tmp_path) -> None:
    _make_run(ws)
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t4\n" + "\n".join(lines[:4] + lines[500:504] + lines[20:24] + lines[520:524]) + "\n")
    r = cli(ws, "eval", "--dataset", "lfw", "-m", "tiny", "--data", str(data_dir / "lfw"), "--pairs", str(pairs), "--align", "center-crop",
            "--sizes", "8,112", "--workers", "0", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    doc = r.json()
    per_face = Path(doc["quality"]["per_face"])
    rows = list(csv.DictReader(open(per_face)))
    assert {x["variant"] for x in rows} == {"hr", "8px_bicubic"}
    # per-face Laplacian of what the network saw: the centre-crop face, and its 8-px copy brought back
    from lrfr_cli.data.sources import LfwCenterCrop

    for row in rows[:: max(1, len(rows) // 6)]:
        face = LfwCenterCrop(data_dir / "lfw").load(row["image"])
        if row["variant"] != "hr":
            face = degrade_array(face, DegradeSpec(size=8))
        lap = cv2.Laplacian(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.CV_64F)
        assert float(row["laplacian_variance"]) == pytest.approx(lap.var(), rel=1e-5)
        assert float(row["laplacian_mean_abs"]) == pytest.approx(np.abs(lap).mean(), rel=1e-5)
    v = doc["quality"]["variants"]
    # an 8-px face is far less sharp than its HR original
    assert v["8px_bicubic"]["laplacian_variance"]["p50"] < v["hr"]["laplacian_variance"]["p50"] / 4
    for res in doc["results"].values():
        for measure in ("feature_norm", "laplacian_variance"):
            bins = res["quality_bins"][measure]
            n = sum(b["pairs"] for b in bins)
            assert n == res["pairs"]
            # equal folds: the pair-weighted bin accuracy is the protocol's accuracy
            assert sum(b["pairs"] * b["accuracy"] for b in bins) / n == pytest.approx(res["accuracy"], abs=1e-12)
    rep = cli(ws, "report", "--json")
    assert rep.exit_code == 0, rep.stdout + rep.stderr
    pngs = sorted(p.name for p in (ws / "reports" / "latest").glob("quality_*.png"))
    assert pngs == ["quality_tiny_lfw_hr-lr.png"]
