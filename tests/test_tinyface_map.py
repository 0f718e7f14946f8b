"""TinyFace reports rank-1/5/10/20/50 and mAP (distractors in the gallery), as its paper does.

mAP is checked per probe against scikit-learn's ``average_precision_score`` over the whole
gallery ranking, with continuous scores and with many exact ties.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from sklearn.metrics import average_precision_score

from lrfr_cli.commands.eval import _table
from lrfr_cli.embed import Variant
from lrfr_cli.protocols import tinyface
from lrfr_cli.protocols.identification import average_precisions, identify


def _sk_map(sim: np.ndarray, p: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, float]:
    aps = np.array([average_precision_score(g == p[i], sim[i]) if (g == p[i]).any() else np.nan for i in range(p.size)])
    return aps, float(np.nanmean(aps))


def test_average_precision_equals_sklearn_continuous_scores():
    rng = np.random.default_rng(0)
    g = rng.integers(0, 12, size=80)
    p = rng.integers(0, 14, size=40)  # ids 12, 13 have no gallery match: nan, excluded
    sim = rng.normal(size=(40, 80))
    ours = average_precisions(sim, p, g)
    ref, _ = _sk_map(sim, p, g)
    assert np.array_equal(np.isnan(ours), np.isnan(ref)) and np.isnan(ours).any()
    np.testing.assert_allclose(ours[~np.isnan(ours)], ref[~np.isnan(ref)], rtol=1e-12)


def test_average_precision_equals_sklearn_with_ties():
    """Integer scores in 0..3: almost every score is tied; sklearn groups ties into one threshold."""
    rng = np.random.default_rng(1)
    g = rng.integers(0, 5, size=30)
    p = np.arange(5).repeat(4)
    sim = rng.integers(0, 4, size=(20, 30)).astype(np.float64)
    ours = average_precisions(sim, p, g)
    ref, _ = _sk_map(sim, p, g)
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    # all scores equal: precision is the fraction of true matches in the whole gallery
    flat = average_precisions(np.zeros((5, 30)), np.arange(5), g)
    np.testing.assert_allclose(flat, [np.mean(g == k) for k in range(5)])


def test_identify_map_from_integer_embeddings_with_ties_and_chunks():
    """Small-integer embeddings: every dot product is exact in float32, so ties really occur."""
    rng = np.random.default_rng(2)
    gal = rng.integers(-1, 2, size=(60, 6)).astype(np.float32)
    probes = rng.integers(-1, 2, size=(25, 6)).astype(np.float32)
    g_lab = [f"id{k}" for k in rng.integers(0, 8, size=50)] + ["__distractor__"] * 10
    p_lab = [f"id{k}" for k in rng.integers(0, 9, size=25)]  # id8 is never in the gallery
    sim = probes.astype(np.float64) @ gal.T.astype(np.float64)
    _, ref = _sk_map(sim, np.array(p_lab), np.array(g_lab))
    whole = identify(probes, p_lab, gal, g_lab, 50, (1, 5, 10, 20, 50), mean_ap=True)
    chunked = identify(probes, p_lab, gal, g_lab, 50, (1, 5, 10, 20, 50), chunk=4, mean_ap=True)
    assert whole["map"] == pytest.approx(ref, rel=1e-12)
    assert chunked == whole
    assert whole["unmatched_probes"] == p_lab.count("id8") > 0
    assert "map" not in identify(probes, p_lab, gal, g_lab)  # SCface asks for ranks only


def _touch(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(b"")


class FakeEmb:
    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def get(self, variant: Variant, rels: list[str]) -> np.ndarray:
        e = np.stack([self.table[r] for r in rels])
        return (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32)


def test_tinyface_plan_reports_rank50_and_map_with_distractors(tmp_path: Path):
    base = tmp_path / "tinyface" / "Testing_Set"
    probes = [f"Probe/{i}_{k}.jpg" for i in range(1, 11) for k in (1, 2)]
    match = [f"Gallery_Match/{i}_{k}.jpg" for i in range(1, 11) for k in range(3, 3 + 1 + i % 3)]
    dis = [f"Gallery_Distractor/d/x{k}.jpg" for k in range(70)]
    for r in probes + match + dis:
        _touch(base, r)
    plan = tinyface.plan_tinyface(tmp_path / "tinyface")
    rng = np.random.default_rng(3)
    centre = {i: rng.normal(size=16) for i in range(1, 11)}
    table = {r: rng.normal(size=16) for r in dis}
    for r in probes + match:
        table[r] = centre[int(Path(r).stem.split("_")[0])] + 1.5 * rng.normal(size=16)
    emb = FakeEmb(table)
    res = plan.score(emb)["native"]
    P, G = emb.get(Variant(None), probes).astype(np.float64), emb.get(Variant(None), match + dis).astype(np.float64)
    g_id = np.array([int(Path(r).stem.split("_")[0]) for r in match] + [-1] * len(dis))
    p_id = np.array([int(Path(r).stem.split("_")[0]) for r in probes])
    sim = P @ G.T
    # brute force: position of the first true match in each probe's sorted gallery
    ranks = np.array([int(np.argmax(g_id[np.argsort(-sim[k])] == p_id[k])) + 1 for k in range(len(probes))])
    assert res["gallery"] == len(match) + 70 >= 50 and res["distractors"] == 70
    for k in (1, 5, 10, 20, 50):
        assert res[f"rank{k}"] == pytest.approx(np.mean(ranks <= k))
    assert len(res["cmc"]) == 50
    _, ref = _sk_map(sim, p_id, g_id)
    # float32 embeddings vs float64 here: AP moves only if two scores swap within ~1e-6
    assert res["map"] == pytest.approx(ref, abs=1e-9)
    assert 0.0 < res["map"] < 1.0 and res["rank50"] > res["rank1"]
    assert "rank-1/5/10/20/50 and mAP" in plan.protocol


def _render(dataset: str, results: dict) -> str:
    doc = {"model": {"name": "m"}, "protocol": "p", "results": results}
    con = Console(record=True, width=200)
    con.print(_table(dataset, doc))
    return con.export_text()


def test_eval_table_shows_rank50_and_map_only_where_reported():
    tf = {"native": {"probes": 3, "gallery": 60, "rank1": 0.5, "rank5": 0.6, "rank10": 0.7, "rank20": 0.8, "rank50": 0.9, "map": 0.4321}}
    text = _render("tinyface", tf)
    assert "rank-50 %" in text and "mAP %" in text and "90.00" in text and "43.21" in text
    sc = {"d1": {"probes": 3, "gallery": 5, "rank1": 0.5, "rank5": 1.0}}
    text = _render("scface", sc)
    assert "rank-1 %" in text and "rank-50" not in text and "mAP" not in text
