"""`lrfr report` and the eval record: numbers, formats, gates, figures, bad input.

Eval JSONs are hand-made here (scores drawn from a seeded generator, ROC and AUC from
scikit-learn), so every expected number is computed independently of lrfr; one test goes
through a real `lrfr eval` (stand-in network) to pin the eval → report seam.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from lrfr_cli import metrics as M
from lrfr_cli.report.plots import SIZE_PX
from lrfr_cli.results import SCHEMA, EvalRecord, ResultsError

SIZES = (8, 16, 112)
RUNS = {"arc": ("arcface", 0.0), "ada": ("adaface", 0.4)}  # run: (loss, extra score separation)


def _pairs(rng: np.random.Generator, sep: float, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    y = np.r_[np.ones(n // 2), np.zeros(n // 2)].astype(bool)
    return rng.normal(size=n) + y * sep, y


def _lfw_results(rng: np.random.Generator, extra: float) -> dict:
    out = {}
    for i, s in enumerate(SIZES):
        sc, y = _pairs(rng, 0.5 + i + extra)
        f, t, _ = roc_curve(y, sc, drop_intermediate=False)
        out[str(s)] = {"size": s, "accuracy": float(np.mean((sc > 0.8) == y)), "accuracy_std": 0.01,
                       "auc": float(roc_auc_score(y, sc)), "tar_at_far": {"0.01": float(t[f <= 0.01].max()), "0.001": float(t[f <= 0.001].max())},
                       "roc": M.compact_roc(f, t)}
    return out


def _model(run: str) -> dict:
    return {"name": run, "source": "run", "backbone": "ir18", "checkpoint": f"/x/runs/{run}/checkpoints/last.pt",
            "checkpoint_sha1": "ab" * 20, "flip": False, "precision": "fp32", "channel_order": "rgb"}


def make_workspace(ws: Path, training: bool = True) -> dict[str, dict[str, Path]]:
    """Two runs × (LFW View 1 hr-lr at 3 sizes, SCface d1-d3, SurvFace), configs and metrics.jsonl."""
    rng = np.random.default_rng(0)
    files: dict[str, dict[str, Path]] = {}
    for run, (loss, extra) in RUNS.items():
        rd = ws / "runs" / run
        rd.mkdir(parents=True)
        # as `lrfr finetune` records its parent
        parent = {"parent": {"name": "arc", "source": "run", "checkpoint": str(ws / "runs/arc/checkpoints/last.pt"), "checkpoint_sha1": "0" * 40}} if run == "ada" else {}
        (rd / "config.json").write_text(json.dumps({"backbone": "ir18", "loss": loss, "data": str(ws / "lists" / "celeba"), **parent}))
        if training:
            lines = []
            for st in range(1, 41):
                lines.append(json.dumps({"step": st, "epoch": st // 10, "loss": 8 / st, "ce": 7 / st, "lr": 0.1 * (1 - st / 41), "images_per_s": 100.0}))
                if st % 10 == 0:
                    lines.append(json.dumps({"step": st, "epoch": st // 10, "val_acc": 0.6 + st / 200, "val_threshold": 0.3, "val_pairs": 100}))
            (rd / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 41, "loss": 0.1')  # crash-truncated last line
        m = _model(run)
        ev = ws / "evals" / run
        files[run] = {
            "lfw": EvalRecord.build(dataset="lfw", protocol="LFW pairsDevTest", model=m, results=_lfw_results(rng, extra),
                                    protocol_info={"pairs_file": "/d/lfw/pairsDevTest.txt", "setting": "hr-lr", "folds": 1},
                                    created="2025-01-01T00:00:00+00:00").save(ev / "lfw-pairsDevTest.json"),
            "scface": EvalRecord.build(dataset="scface", protocol="SCface", protocol_info={"distances": [1, 2, 3]}, model=m, results={
                f"d{d}": {"rank1": 0.1 * d + extra / 4, "rank5": 0.2 * d, "cmc": [min(1.0, 0.1 * d + 0.03 * k) for k in range(20)], "metres": {1: 4.2, 2: 2.6, 3: 1.0}[d]}
                for d in (1, 2, 3)}).save(ev / "scface.json"),
        }
        sc, y = _pairs(rng, 1.0 + extra, 3000)
        f, t, _ = roc_curve(y, sc, drop_intermediate=False)
        files[run]["survface"] = EvalRecord.build(dataset="survface", protocol="SurvFace", protocol_info={}, model=m, results={
            "native": {"auc": float(roc_auc_score(y, sc)), "tar_at_far": {k: float(t[f <= float(k)].max()) for k in ("0.3", "0.1", "0.01", "0.001")},
                       "roc": M.compact_roc(f, t)}}).save(ev / "survface.json")
    return files


@pytest.fixture
def filled(ws: Path) -> tuple[Path, dict[str, dict[str, Path]]]:
    return ws, make_workspace(ws)


# --------------------------------------------------------------------------- the record
def test_compact_roc_is_a_subset_of_the_sklearn_curve_with_exact_tar_at_far() -> None:
    rng = np.random.default_rng(1)
    y = rng.random(6000) < 0.3
    s = np.round(rng.normal(size=6000) + 1.2 * y, 3)  # rounding makes ties
    f, t, _ = roc_curve(y, s, drop_intermediate=False)
    fl, tl, _ = M.roc_curve(s, y)
    roc = M.compact_roc(fl, tl)
    cf, ct = np.array(roc["fpr"]), np.array(roc["tpr"])
    assert 100 < len(cf) <= 200 and cf[0] == 0 and ct[0] == 0 and cf[-1] == 1 and ct[-1] == 1
    assert np.all(np.diff(cf) >= 0) and np.all(np.diff(ct) >= 0)
    # every kept point is an operating point of sklearn's curve (up to the 6 digits stored)
    full = np.c_[f, t]
    d = np.abs(full[None, :, :] - np.c_[cf, ct][:, None, :]).max(axis=2).min(axis=1)
    assert d.max() < 1e-6
    for far in (0.3, 0.1, 0.01, 0.001):
        assert ct[cf <= far + 1e-12].max() == pytest.approx(t[f <= far].max(), abs=1e-6)
    # chord error of a monotone curve is at most (largest TPR step kept) x (FPR span)
    assert abs(np.trapezoid(ct, cf) - roc_auc_score(y, s)) <= np.diff(ct).max() + 1e-9
    short = M.compact_roc([0.0, 0.5, 1.0], [0.0, 0.7, 1.0])
    assert short == {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 0.7, 1.0]}


def test_record_round_trip_merge_and_schema_checks(tmp_path: Path) -> None:
    a = EvalRecord.build(dataset="lfw", model=_model("r"), results={"8": {"accuracy": 0.6}}, protocol_info={"setting": "hr-lr"},
                         images={"align": "center-crop"}, degradation={"method": "bicubic", "variants": ["hr", "8px"]})
    p = a.save(tmp_path / "e.json")
    doc = json.loads(p.read_text())
    assert doc["schema"] == SCHEMA == "lrfr.eval/1" and list(doc)[:3] == ["schema", "command", "dataset"]
    b = EvalRecord.build(dataset="lfw", model=_model("r"), results={"16": {"accuracy": 0.7}, "112": {"accuracy": 0.9}}, protocol_info={"setting": "hr-lr"},
                         images={"align": "center-crop"}, degradation={"method": "bicubic", "variants": ["hr", "16px"]})
    assert b.merge_previous(EvalRecord.load(p)) == ["8"]
    assert list(b.results) == ["8", "16", "112"] and b.doc["sizes"] == [8, 16, 112]
    c = EvalRecord.build(**{**b.doc, "degradation": {"method": "area"}})
    assert c.merge_previous(EvalRecord.load(p)) == [] and not c.same_setup(a)
    # written before the schema field existed: same layout, read as version 0
    legacy = {k: v for k, v in doc.items() if k != "schema"}
    (tmp_path / "old.json").write_text(json.dumps(legacy))
    assert EvalRecord.load(tmp_path / "old.json").schema_version == 0
    bad = {
        "newer.json": (json.dumps({**doc, "schema": "lrfr.eval/2"}), "newer than this lrfr"),
        "other.json": (json.dumps({**doc, "schema": "someone.else/1"}), "unknown schema"),
        "notours.json": (json.dumps({"a": 1}), "not an lrfr eval JSON"),
        "list.json": ("[1, 2]", "top level is a list"),
        "trunc.json": (p.read_text()[: len(p.read_text()) // 2], "truncated"),
        "empty.json": ("", "empty file"),
        "noresults.json": (json.dumps({**doc, "results": None}), "'results'"),
    }
    for name, (text, msg) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ResultsError, match=msg):
            EvalRecord.load(tmp_path / name)
    with pytest.raises(ResultsError, match="no such"):
        EvalRecord.load(tmp_path / "missing.json")


# --------------------------------------------------------------------------- numbers and formats
def test_report_numbers_equal_the_eval_jsons(cli, filled) -> None:
    ws, files = filled
    r = cli(ws, "report", "--format", "json", "--no-plots")
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)  # the whole stdout is the JSON document
    runs = {x["run"]: x for x in out["runs"]}
    assert sorted(runs) == ["ada", "arc"]
    assert runs["ada"]["loss"] == "adaface" and runs["ada"]["parent"] == "arc" and runs["arc"]["parent"] == ""
    assert runs["arc"]["backbone"] == "ir18" and runs["arc"]["data"] == "lists/celeba"
    for run in RUNS:
        lfw = json.loads(files[run]["lfw"].read_text())["results"]
        sc = json.loads(files[run]["scface"].read_text())["results"]
        sv = json.loads(files[run]["survface"].read_text())["results"]["native"]
        m = runs[run]["metrics"]
        for s in SIZES:
            assert m[f"lfw-pairsDevTest/hr-lr@{s}"] == lfw[str(s)]["accuracy"]
            assert m[f"lfw-pairsDevTest/hr-lr@{s}:auc"] == lfw[str(s)]["auc"]
            assert m[f"lfw-pairsDevTest/hr-lr@{s}:tar@far=0.001"] == lfw[str(s)]["tar_at_far"]["0.001"]
        for d in (1, 2, 3):
            assert m[f"scface/d{d}:rank1"] == sc[f"d{d}"]["rank1"] and m[f"scface/d{d}:rank5"] == sc[f"d{d}"]["rank5"]
        assert m["survface:tar@far=0.01"] == sv["tar_at_far"]["0.01"] and m["survface:auc"] == sv["auc"]
    assert out["columns"] == [*(f"lfw-pairsDevTest/hr-lr@{s}" for s in SIZES), "scface/d1:rank1", "scface/d2:rank1",
                              "scface/d3:rank1", "survface:auc", "survface:tar@far=0.01"]
    # csv on stdout: a run per row, the same numbers to full precision
    r = cli(ws, "report", "--format", "csv", "--no-save")
    rows = {row["run"]: row for row in csv.DictReader(io.StringIO(r.stdout))}
    assert float(rows["ada"]["lfw-pairsDevTest/hr-lr@16"]) == json.loads(files["ada"]["lfw"].read_text())["results"]["16"]["accuracy"]
    try:
        import pandas as pd
    except ImportError:
        pd = None
    if pd is not None:
        df = pd.read_csv(io.StringIO(r.stdout)).set_index("run")
        assert df.loc["arc", "survface:auc"] == runs["arc"]["metrics"]["survface:auc"]
    # the files in reports/latest hold the same table
    saved = ws / "reports" / "latest"
    assert (saved / "results.csv").read_text() == r.stdout
    assert json.loads((saved / "results.json").read_text())["runs"] == out["runs"]
    md = (saved / "results.md").read_text()
    assert md.count("\n") == 4 and f"| {100 * runs['arc']['metrics']['survface:auc']:.2f} |" in md
    assert (saved / "manifest.json").is_file()


def test_report_of_a_real_eval(cli, ws, data_dir, tmp_path, monkeypatch) -> None:
    """eval → report through the CLI: the seam the CI pipeline uses."""
    import torch
    import torch.nn.functional as F

    from lrfr_cli.embed import extract
    from lrfr_cli.models import build_backbone

    monkeypatch.setattr(extract, "forward", lambda m, x, p: F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1) - 0.5)
    run = ws / "runs" / "tiny"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"model": build_backbone("tiny").state_dict()}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps({"backbone": "tiny", "loss": "softmax", "data": "/w/lists/celeba"}))
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t5\n" + "\n".join(lines[:5] + lines[500:505] + lines[100:105] + lines[600:605]) + "\n")
    r = cli(ws, "eval", "--dataset", "lfw", "-m", "tiny", "--data", data_dir / "lfw", "--pairs", pairs, "--align", "center-crop",
            "--sizes", "8,112", "--workers", "0", "--json")
    assert r.exit_code == 0, r.stderr
    ev = json.loads((ws / "evals" / "tiny" / "lfw.json").read_text())
    assert ev["schema"] == SCHEMA and len(ev["results"]["8"]["roc"]["fpr"]) <= 200
    out = json.loads(cli(ws, "report", "--format", "json").stdout)
    (row,) = out["runs"]
    assert row["metrics"]["lfw/hr-lr@8"] == ev["results"]["8"]["accuracy"] and row["loss"] == "softmax"
    assert row["metrics"]["lfw/hr-lr@112:auc"] == ev["results"]["112"]["auc"]
    assert sorted(p.name for p in (ws / "reports" / "latest").glob("*.png")) == ["accuracy_vs_size_lfw_hr-lr.png", "quality_tiny_lfw_hr-lr.png",
                                                                                "roc_tiny_lfw_hr-lr.png"]


def test_list_metrics(cli, filled) -> None:
    ws, _ = filled
    r = cli(ws, "report", "--list-metrics")
    names = r.stdout.split()
    assert r.exit_code == 0 and "lfw-pairsDevTest/hr-lr@16" in names and "scface/d2:rank1" in names
    assert "survface:tar@far=0.01" in names and "lfw-pairsDevTest/hr-lr@8:tar@far=0.01" in names
    assert len(names) == len(set(names)) == 3 * 4 + 3 * 2 + 5
    j = json.loads(cli(ws, "report", "--list-metrics", "--format", "json").stdout)
    assert {x["metric"]: x["runs"] for x in j}["survface:auc"] == ["ada", "arc"]
    assert not (ws / "reports").exists()  # listing writes nothing


# --------------------------------------------------------------------------- gates
def test_fail_under_exit_codes(cli, filled) -> None:
    ws, files = filled
    acc16 = {run: json.loads(files[run]["lfw"].read_text())["results"]["16"]["accuracy"] for run in RUNS}
    lo, hi = min(acc16.values()), max(acc16.values())
    assert lo < hi
    ok = cli(ws, "report", "--no-save", "--format", "json", "--fail-under", f"lfw-pairsDevTest/hr-lr@16={lo}")
    assert ok.exit_code == 0, ok.stderr
    gates = json.loads(ok.stdout)["gates"]
    assert [(g["run"], g["ok"]) for g in gates] == [("ada", True), ("arc", True)]
    worse = min(acc16, key=acc16.get)
    bad = cli(ws, "report", "--no-save", "--format", "csv", "--fail-under", f"lfw-pairsDevTest/hr-lr@16={hi}",
              "--fail-under", "survface:tar@far=0.01=0%")
    assert bad.exit_code == 1
    fails = [ln for ln in bad.stderr.splitlines() if ln.startswith("FAIL")]
    assert len(fails) == 1 and worse in fails[0] and "lfw-pairsDevTest/hr-lr@16" in fails[0]
    assert list(csv.DictReader(io.StringIO(bad.stdout)))  # the data still reaches stdout
    # percent form, and a metric name containing '='
    assert cli(ws, "report", "--no-save", "-f", "csv", "--fail-under", f"lfw-pairsDevTest/hr-lr@16={100 * hi:.6f}%").exit_code == 1
    # a metric no eval has: exit 2, the closest names listed
    typo = cli(ws, "report", "--no-save", "--fail-under", "lfw/hr-lr@16=0.9")
    assert typo.exit_code == 2 and "lfw-pairsDevTest/hr-lr@16" in typo.stderr and len(typo.stderr.strip().splitlines()) == 1
    for spec, msg in (("lfw-pairsDevTest/hr-lr@16", "METRIC=VALUE"), ("lfw-pairsDevTest/hr-lr@16=90", "outside"),
                      ("lfw-pairsDevTest/hr-lr@16=high", "not a number")):
        r = cli(ws, "report", "--no-save", "--fail-under", spec)
        assert r.exit_code == 2 and msg in r.stderr, (spec, r.stderr)


def test_baseline_max_drop(cli, filled, tmp_path) -> None:
    ws, files = filled
    base = tmp_path / "base.json"
    base.write_text(cli(ws, "report", "--no-save", "--format", "json").stdout)
    assert cli(ws, "report", "--no-save", "--baseline", base).exit_code == 0
    # ada drops 2 points at 8 px
    doc = json.loads(files["ada"]["lfw"].read_text())
    was = doc["results"]["8"]["accuracy"]
    doc["results"]["8"]["accuracy"] = was - 0.02
    files["ada"]["lfw"].write_text(json.dumps(doc))
    r = cli(ws, "report", "--no-save", "-f", "json", "--baseline", base, "--max-drop", "0.01")
    assert r.exit_code == 1
    failed = [g for g in json.loads(r.stdout)["gates"] if not g["ok"]]
    assert [(g["run"], g["metric"]) for g in failed] == [("ada", "lfw-pairsDevTest/hr-lr@8")]
    assert failed[0]["baseline"] == was
    assert cli(ws, "report", "--no-save", "--baseline", base, "--max-drop", "0.03").exit_code == 0
    # an eval JSON works as a baseline too
    assert cli(ws, "report", "--no-save", "--runs", "ada", "--baseline", files["arc"]["scface"]).exit_code == 0
    # nothing in common, --max-drop alone, unreadable baseline: usage errors
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "lrfr.report/1", "runs": [{"run": "x", "metrics": {"q": 1.0}}, {"run": "y", "metrics": {}}]}))
    assert cli(ws, "report", "--no-save", "--baseline", other).exit_code == 2
    assert cli(ws, "report", "--no-save", "--max-drop", "0.1").exit_code == 2
    (tmp_path / "cut.json").write_text(base.read_text()[:50])
    r = cli(ws, "report", "--no-save", "--baseline", tmp_path / "cut.json")
    assert r.exit_code == 2 and "truncated" in r.stderr


# --------------------------------------------------------------------------- figures
def test_figures_are_valid_pngs_one_per_expected_figure(cli, filled) -> None:
    ws, _ = filled
    r = cli(ws, "report", "--format", "md")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("| run | loss |")
    pngs = sorted((ws / "reports" / "latest").glob("*.png"))
    assert [p.name for p in pngs] == sorted([
        "accuracy_vs_size_lfw-pairsDevTest_hr-lr.png", "roc_ada_lfw-pairsDevTest_hr-lr.png", "roc_arc_lfw-pairsDevTest_hr-lr.png",
        "cmc_scface.png", "survface_roc.png", "training_ada.png", "training_arc.png"])
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size == SIZE_PX
            colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
            assert colours is not None and len(colours) > 50, p.name  # lines, text, anti-aliasing: not blank
    manifest = json.loads((ws / "reports" / "latest" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["figures"] == 7
    # a second report replaces the folder as a whole: no figure of the old one survives
    cli(ws, "report", "--runs", "arc", "--no-plots")
    assert not list((ws / "reports" / "latest").glob("*.png"))
    assert not [p for p in (ws / "reports").iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_exit_2_with_one_line(cli, ws, tmp_path) -> None:
    r = cli(ws, "report")
    assert r.exit_code == 2 and "no evaluations" in r.stderr and "lrfr eval" in r.stderr and r.stdout == ""
    make_workspace(ws, training=False)
    (tmp_path / "newer.json").write_text(json.dumps({"schema": "lrfr.eval/9", "command": "eval"}))
    full = (ws / "evals" / "arc" / "scface.json").read_text()
    (tmp_path / "cut.json").write_text(full[: len(full) - 40])
    for args, msg in (([tmp_path / "newer.json"], "newer"), ([tmp_path / "cut.json"], "truncated"),
                      ([tmp_path / "none.json"], "no such"), (["--runs", "nope"], "evaluated runs: ada, arc"),
                      (["--format", "xml"], "--format"), (["--name", "../x"], "--name")):
        r = cli(ws, "report", *args)
        assert r.exit_code == 2, (args, r.stderr)
        assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert r.stdout == ""


def test_report_command_does_not_import_torch(filled) -> None:
    ws, _ = filled
    code = ("import sys; from lrfr_cli.cli import app\n"
            "try: app(args=['-w', sys.argv[1], 'report', '--format', 'csv'], prog_name='lrfr')\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "bad = [m for m in ('torch', 'torchvision', 'cv2') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code, str(ws)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("run,loss,backbone,data,parent,")
