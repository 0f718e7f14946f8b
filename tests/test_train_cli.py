"""``lrfr train`` end to end on a tiny synthetic set: outputs, skip/resume rules, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lrfr_cli.engine import load_checkpoint
from lrfr_cli.losses import HEADS
from lrfr_cli.models import BACKBONES, build_backbone

from synthetic import make_identity_faces

FAST = ["--backbone", "tiny", "--loss", "softmax", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--threads", "1"]


def make_faces(root: Path, identities: int = 3, per: int = 4) -> Path:
    return make_identity_faces(root, identities, per, seed=0, noise=20.0)


class Evil:
    """Any non-tensor class: its pickle would run code on load."""


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return make_faces(tmp_path / "faces")


def test_train_writes_the_run_contract(cli, ws, faces):
    r = cli(ws, "train", "--data", faces, *FAST, "--max-steps", "5", "--checkpoint-every", "2", "--log-every", "1", "--run", "r1", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    assert out["steps"] == 5 and out["num_classes"] == 3 and out["images"] == 12 and not out["up_to_date"]
    run = ws / "runs" / "r1"
    cfg = json.loads((run / "config.json").read_text())
    assert {k: cfg[k] for k in ("backbone", "embedding_size", "input_size", "loss", "num_classes")} == {
        "backbone": "tiny", "embedding_size": 512, "input_size": 112, "loss": "softmax", "num_classes": 3,
    }
    assert cfg["data"] == str(faces)
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    for key in ("model", "head", "optimizer", "scheduler", "scaler", "step", "epoch", "rng", "config"):
        assert key in ck, key
    assert ck["step"] == 5 and ck["config"] == cfg
    m = build_backbone(cfg["backbone"], cfg["embedding_size"])
    m.load_state_dict(ck["model"])  # plain backbone state_dict: the eval side loads it directly
    assert ck["head"]["weight"].shape == (3, 512)
    lines = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [ln["step"] for ln in lines] == [1, 2, 3, 4, 5]
    assert all(np.isfinite(ln["loss"]) and ln["lr"] > 0 for ln in lines)
    # The LR follows the cosine schedule by hand: 0.1·(1 + cos(π·t))/2 with t = step/5.
    assert [ln["lr"] for ln in lines] == pytest.approx([0.05 * (1 + np.cos(np.pi * s / 5)) for s in range(5)], rel=1e-6)
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "complete" and man["counts"]["steps"] == 5
    assert "log.txt" in {p.name for p in run.iterdir()}
    # Same command again: nothing to do.
    again = cli(ws, "train", "--data", faces, *FAST, "--max-steps", "5", "--checkpoint-every", "2", "--log-every", "1", "--run", "r1", "--json")
    assert again.exit_code == 0 and again.json()["up_to_date"] is True
    # Other options on the same run name: refused unless --force.
    other = cli(ws, "train", "--data", faces, *FAST, "--max-steps", "6", "--run", "r1")
    assert other.exit_code != 0 and "--force" in other.stdout + other.stderr
    # --resume --force: continue from the kept checkpoint with the changed options.
    more = cli(ws, "train", "--data", faces, *FAST, "--max-steps", "8", "--log-every", "1", "--run", "r1", "--resume", "--force", "--json")
    assert more.exit_code == 0, more.stdout + more.stderr
    assert more.json()["resumed_from"] == 5 and more.json()["steps"] == 8
    assert [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 9))


def test_list_artifact_cache_and_val_pairs(cli, ws, faces, tmp_path):
    assert cli(ws, "make-list", faces, "--out", "syn").exit_code == 0
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("id00/0.png id00/1.png 1\nid00/0.png id01/0.png 0\nid01/1.png id01/2.png 1\nid02/0.png id01/3.png 0\n")
    r = cli(ws, "train", "--data", "lists/syn", *FAST, "--epochs", "2", "--cache", "--val-pairs", pairs, "--val-root", faces, "--run", "v", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    out = r.json()
    assert out["steps"] == 6 and 0.5 <= out["best_val_acc"] <= 1.0
    run = ws / "runs" / "v"
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["best"]["val_acc"] == out["best_val_acc"]
    vals = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "val_acc" in ln]
    assert len(vals) == 2  # one verification per epoch
    caches = list((ws / "cache").iterdir())
    assert len(caches) == 1 and (caches[0] / "images.npy").is_file()
    # A list file given directly with --data-root works too.
    r2 = cli(ws, "train", "--data", ws / "lists" / "syn" / "train.txt", "--data-root", faces, *FAST, "--max-steps", "1", "--run", "v2")
    assert r2.exit_code == 0, r2.stdout + r2.stderr


def _err(r) -> str:
    assert r.exit_code != 0
    text = r.stdout + r.stderr
    assert "Traceback" not in text
    return text


def test_unknown_backbone_and_loss_list_choices(cli, ws, faces):
    text = _err(cli(ws, "train", "--data", faces, "--backbone", "resnet9000", "--max-steps", "1"))
    assert all(b in text for b in BACKBONES)
    text = _err(cli(ws, "train", "--data", faces, "--loss", "magicface", "--max-steps", "1"))
    assert all(h in text for h in HEADS)


def test_list_with_missing_image_or_bad_label(cli, ws, faces, tmp_path):
    lst = tmp_path / "l.txt"
    lst.write_text("id00/0.png 0\nid00/nope.png 0\nid01/0.png 1\n")
    assert "nope.png not found" in _err(cli(ws, "train", "--data", lst, "--data-root", faces, *FAST, "--max-steps", "1"))
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("id00/0.png 0\nid01/0.png 7\n")
    (tmp_path / "lists" / "labels.json").write_text(json.dumps({"root": str(faces), "classes": ["a", "b"], "num_classes": 2}))
    assert "out of range" in _err(cli(ws, "train", "--data", tmp_path / "lists", *FAST, "--max-steps", "1"))
    assert "--data-root" in _err(cli(ws, "train", "--data", lst, *FAST, "--max-steps", "1"))


def test_empty_dataset_and_missing_data(cli, ws, tmp_path):
    (tmp_path / "empty" / "id0").mkdir(parents=True)
    assert "no identity folder" in _err(cli(ws, "train", "--data", tmp_path / "empty", *FAST, "--max-steps", "1"))
    (tmp_path / "e.txt").write_text("")
    assert "empty" in _err(cli(ws, "train", "--data", tmp_path / "e.txt", "--data-root", tmp_path, *FAST, "--max-steps", "1"))
    assert "not found" in _err(cli(ws, "train", "--data", tmp_path / "nothing", *FAST, "--max-steps", "1"))


def test_resume_without_checkpoint_and_bad_checkpoints(cli, ws, faces):
    assert "no checkpoint" in _err(cli(ws, "train", "--data", faces, *FAST, "--max-steps", "2", "--run", "x", "--resume"))
    # Kill-like state: a running manifest and a corrupt last.pt → clear error on resume.
    ck = ws / "runs" / "x" / "checkpoints" / "last.pt"
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(b"PK\x03\x04 this is not a checkpoint")
    assert "corrupt" in _err(cli(ws, "train", "--data", faces, *FAST, "--max-steps", "2", "--run", "x", "--resume"))
    # A pickle checkpoint (arbitrary Python objects) is refused by weights_only=True.
    torch.save({"model": Evil(), "step": 1}, ck)
    assert "weights_only" in _err(cli(ws, "train", "--data", faces, *FAST, "--max-steps", "2", "--run", "x", "--resume"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cli, ws, faces):
    r = cli(ws, "train", "--data", faces, *FAST, "--optimizer", "sgd", "--lr", "1e30", "--max-steps", "50", "--checkpoint-every", "1", "--run", "nan")
    text = _err(r)
    assert "loss became" in text and "last good checkpoint" in text
    ck = load_checkpoint(ws / "runs" / "nan" / "checkpoints" / "last.pt")
    assert 1 <= ck["step"] < 50
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    man = json.loads((ws / "runs" / "nan" / "manifest.json").read_text())
    assert man["status"] == "running" and "loss became" in man["error"]


def test_bad_batch_and_device_options(cli, ws, faces):
    assert "fewer than --batch-size" in _err(cli(ws, "train", "--data", faces, "--backbone", "tiny", "--batch-size", "64", "--max-steps", "1", "--workers", "0"))
    assert "fp16" in _err(cli(ws, "train", "--data", faces, *FAST, "--precision", "fp16", "--max-steps", "1"))


def test_data_from_workspace_artifact_and_recordio(cli, ws, faces):
    import shutil

    from lrfr_cli.data.datasets import resolve_training_data
    from lrfr_cli.data.recordio import write_recordio

    shutil.copytree(faces, ws / "aligned" / "syn")
    threads = torch.get_num_threads()
    r = cli(ws, "train", "--data", "aligned/syn", *FAST, "--max-steps", "2", "--run", "a", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert torch.get_num_threads() == threads  # --threads is restored for in-process callers
    ts = resolve_training_data(faces, None, ws)
    write_recordio(ws / "rec", [((faces / rel).read_bytes(), lab) for rel, lab in ts.entries])
    r = cli(ws, "train", "--data", ws / "rec", *FAST, "--max-steps", "2", "--run", "rec", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["images"] == 12 and r.json()["num_classes"] == 3
    assert json.loads((ws / "runs" / "rec" / "config.json").read_text())["data_kind"] == "recordio"
