"""The low-resolution recipes through ``lrfr train``: registered with their options, CRB on by
default for approach1/2 (and config.json says why), bad input as one line with nothing written,
a short run of each new loss lowers its loss and loads in ``lrfr eval``, and AdaFace's norm
statistics are all-reduced in a 2-process gloo run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lrfr_cli.cli import app, hoist_global_options
from lrfr_cli.data.datasets import open_dataset, resolve_training_data
from lrfr_cli.data.samplers import build_sampler
from lrfr_cli.engine import load_checkpoint, seed_everything
from lrfr_cli.losses import describe_losses, heads
from lrfr_cli.models import build_backbone, preprocess

from helpers import LRFR
from synthetic import make_identity_faces

FAST = ["--backbone", "tiny", "--embedding-size", "32", "--workers", "0", "--device", "cpu", "--threads", "1"]
NEW = ("adaface", "approach1", "approach2")
STEPS = 40


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _config(ws: Path, run: str) -> dict:
    return json.loads((ws / "runs" / run / "config.json").read_text())


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    return make_identity_faces(tmp_path_factory.mktemp("faces") / "faces", 3, 8, seed=1, noise=25.0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, faces) -> Path:
    """One workspace with a 40-step run of each new loss (tiny backbone, batch 8, defaults
    otherwise: approach1/2 therefore with CRB copies at 16 px): about 3 s a run on one thread."""
    ws = tmp_path_factory.mktemp("recipes") / "ws"
    runner = CliRunner()
    for loss in NEW:
        argv = ["-w", str(ws), "--quiet", "train", "--data", str(faces), *FAST, "--loss", loss, "--batch-size", "8",
                "--max-steps", str(STEPS), "--log-every", "5", "--lr", "0.05", "--run", loss]
        r = runner.invoke(app, hoist_global_options(argv), catch_exceptions=True)
        assert r.exit_code == 0, f"{loss}: {r.stdout}{r.stderr}"
    return ws


# --------------------------------------------------------------------------- registry and help
def test_help_lists_the_new_losses_with_their_options_and_quality(cli, monkeypatch):
    import typer.rich_utils

    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 300)
    assert set(NEW) <= set(heads())
    text = " ".join(cli(None, "train", "--help").stdout.split())
    lines = {ln.split(" ", 1)[0]: ln for ln in describe_losses()}
    assert "adaface (s=64, m=0.4, h=0.333, t_alpha=0.01):" in lines["adaface"]
    assert "approach1 (s=64, m_hr=0.35, m_lr=0.5):" in lines["approach1"]
    assert "approach2 (s=64, m_min=0.35, m_max=0.5, quality=variance):" in lines["approach2"]
    for name in NEW:
        assert " ".join(lines[name].split()) in text
    assert "--quality" in text and "mean-abs" in text


# --------------------------------------------------------------------------- CRB defaults in config.json
def test_crb_defaults_and_their_reason_are_in_config(trained, cli, faces):
    want = {"sizes": [16], "mode": "copies", "lr_prob": 0.5}
    assert _config(trained, "approach1")["crb"] == {"enabled": True, "why": "required by approach1 (its margin depends on the HR/LR flag)", **want}
    assert _config(trained, "approach2")["crb"] == {"enabled": True, "why": "default for approach2", **want}
    assert _config(trained, "adaface")["crb"] == {"enabled": False, "why": "default for adaface"}
    # approach2 without CRB is allowed (quality still varies between images) and recorded as such;
    # --quality mean-abs reaches the head under its canonical name.
    ws = trained.parent / "ws-nocrb"
    r = cli(ws, "train", "--data", faces, *FAST, "--loss", "approach2", "--no-crb", "--quality", "MEAN_ABS", "--batch-size", "4",
            "--max-steps", "1", "--run", "a2", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    cfg = _config(ws, "a2")
    assert cfg["crb"] == {"enabled": False, "why": "--no-crb"} and cfg["head"] == {"quality": "mean-abs"}
    ck = load_checkpoint(ws / "runs" / "a2" / "checkpoints" / "last.pt")
    assert ck["config"]["head"] == {"quality": "mean-abs"}
    # the same through --loss-opt: same identity, so the run is up to date
    r = cli(ws, "train", "--data", faces, *FAST, "--loss", "approach2", "--no-crb", "--loss-opt", "quality=mean-abs", "--batch-size", "4",
            "--max-steps", "1", "--run", "a2", "--json")
    assert r.exit_code == 0 and r.json()["up_to_date"] is True, r.stdout + r.stderr


# --------------------------------------------------------------------------- bad input
BAD = [
    (["--loss", "approach1", "--no-crb"], "--loss approach1 needs cross-resolution batches"),
    (["--loss", "approach2", "--loss-opt", "m_min=0.5", "--loss-opt", "m_max=0.4"], "m_min must not exceed m_max"),
    (["--loss", "approach2", "--quality", "sharpness"], "--quality: unknown quality mode 'sharpness': choose one of variance, mean-abs"),
    (["--loss", "approach2", "--loss-opt", "quality=sharpness"], "unknown quality mode 'sharpness'"),
    (["--loss", "arcface", "--quality", "mean-abs"], "--quality: loss arcface has no option 'quality'"),
    (["--loss", "approach1", "--lr-sizes", "0"], "size 0 must be > 0"),
    (["--loss", "approach1", "--lr-sizes", "8,112"], "size 112px must be below the input height 112px"),
    (["--loss", "approach2", "--lr-sizes", "8,200"], "below the input height"),
    (["--loss", "approach1", "--margin", "0.3"], "--margin does not apply to approach1"),
    (["--loss", "adaface", "--loss-opt", "h=0"], "AdaFace h=0"),
]


@pytest.mark.parametrize(("bad", "needle"), BAD, ids=[" ".join(b) for b, _ in BAD])
def test_bad_recipe_options_are_one_line_and_write_nothing(cli, tmp_path, faces, bad, needle):
    ws = tmp_path / "ws"
    r = cli(ws, "train", "--data", faces, *FAST, "--batch-size", "4", "--max-steps", "1", *bad)
    out = (r.stdout + r.stderr).strip()
    assert r.exit_code == 2, out
    assert needle in out and len(out.splitlines()) == 1 and "Traceback" not in out, out
    assert not (ws / "runs").exists()


# --------------------------------------------------------------------------- learning + eval
@pytest.mark.parametrize("loss", NEW)
def test_short_run_lowers_the_loss_and_logs_the_head_stats(trained, loss):
    rows = [r for r in _metrics(trained / "runs" / loss) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(5, STEPS + 1, 5))
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert np.isfinite(last) and last < 0.5 * first, (first, last)
    ck = load_checkpoint(trained / "runs" / loss / "checkpoints" / "last.pt")
    if loss == "adaface":
        assert {"norm_mean", "norm_std", "norm_scaler_mean"} <= set(rows[0])
        # the EMA has moved from its start (20, 100) and the checkpoint holds it
        assert rows[-1]["norm_std"] < rows[0]["norm_std"] < 100.0
        assert float(ck["head"]["norm_std"]) < 100.0 and float(ck["head"]["norm_mean"]) != 20.0
    elif loss == "approach1":
        # CRB copies: half the rows HR (0.35), half LR (0.5)
        assert [r["margin_mean"] for r in rows] == pytest.approx([(0.35 + 0.5) / 2] * len(rows), abs=1e-6)
    else:
        assert all(0.35 <= r["margin_mean"] <= 0.5 and r["quality_mean"] > 0 for r in rows)


@pytest.mark.parametrize("loss", NEW)
def test_checkpoint_loads_in_eval(trained, cli, data_dir, tmp_path, loss):
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    pairs = tmp_path / "small_pairs.txt"
    pairs.write_text("2\t6\n" + "\n".join(lines[:6] + lines[500:506] + lines[100:106] + lines[600:606]) + "\n")
    r = cli(trained, "eval", "--dataset", "lfw", "--model", f"runs/{loss}", "--data", data_dir / "lfw", "--pairs", pairs,
            "--align", "center-crop", "--sizes", "8,112", "--workers", "0", "--name", f"small-{loss}", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    ck = trained / "runs" / loss / "checkpoints" / "last.pt"
    assert out["model"]["checkpoint_sha1"] == hashlib.sha1(ck.read_bytes()).hexdigest()
    assert (out["model"]["backbone"], out["model"]["embedding_size"]) == ("tiny", 32)
    for size in ("8", "112"):
        assert out["results"][size]["pairs"] == 24 and 0.0 <= out["results"][size]["accuracy"] <= 1.0


# --------------------------------------------------------------------------- DDP: AdaFace statistics
@pytest.mark.slow
def test_adaface_norm_statistics_are_all_reduced_in_a_two_process_train_run(tmp_path):
    """torchrun, 2 gloo ranks × 6 images, t_alpha=1 (μ, σ = the batch's statistics). After one
    step the saved μ, σ are those of all 12 embeddings of the initial network, computed here by
    hand; either rank's own half would give other values. sphere20 has no BatchNorm, so an
    embedding does not depend on how the batch was split."""
    faces = make_identity_faces(tmp_path / "faces", 3, 4, seed=2, noise=25.0)
    args = ["train", "--data", str(faces), "--backbone", "sphere20", "--embedding-size", "64", "--loss", "adaface",
            "--loss-opt", "t_alpha=1", "--batch-size", "12", "--max-steps", "1", "--no-flip", "--workers", "0",
            "--device", "cpu", "--threads", "1", "--log-every", "1", "--seed", "5", "--run-name", "d"]
    ws = tmp_path / "ws"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", LRFR, "-w", str(ws), "--json", *args],
                       check=False, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])["world_size"] == 2
    run = ws / "runs" / "d"
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    mu, sigma = float(ck["head"]["norm_mean"]), float(ck["head"]["norm_std"])

    ds = open_dataset(resolve_training_data(str(faces), None, tmp_path))
    images = torch.stack([ds[2 * i][0] for i in range(len(ds))])  # code 2·i: image i, not flipped
    seed_everything(5)  # the runner seeds, then builds the backbone first
    model = build_backbone("sphere20", 64).train()
    with torch.no_grad():
        norms = model(preprocess(images)).double().norm(dim=1).clamp(0.001, 100.0).numpy()
    # fp32 forward of the same images in another batch layout: ~1e-6 relative; σ is a few % of μ
    assert mu == pytest.approx(norms.mean(), rel=1e-5)
    assert sigma == pytest.approx(norms.std(ddof=1), rel=1e-4)
    # The test can tell: each rank's own half has other statistics, far beyond the tolerance.
    labels = np.asarray(ds.labels)
    for rank in (0, 1):
        (codes,) = list(build_sampler("epoch", labels, 12, 5, 0, rank, 2, flip=False))
        half = norms[np.asarray(codes) // 2]
        assert abs(half.mean() - mu) > 1e-3 * mu or abs(half.std(ddof=1) - sigma) > 1e-2 * sigma
    # ...and metrics.jsonl carries the head's statistics beside the loss.
    (row,) = [r for r in _metrics(run) if "loss" in r]
    assert row["norm_mean"] == pytest.approx(mu, rel=1e-6) and row["norm_std"] == pytest.approx(sigma, rel=1e-6)
    assert "norm_scaler_mean" in row
