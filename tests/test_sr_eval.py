"""`lrfr eval --sr`: SR touches only the LR probes (HR embeddings come from the cache), the
probe really is the SR network's output, the record says so, and the kinds of runs are checked.

The recogniser is swapped for a cheap pixel embedding (as in tests/test_eval.py), so these tests
count forward passes and check embeddings exactly without training anything.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lrfr_cli.data.degrade import DegradeSpec, degrade_array
from lrfr_cli.data.sources import LfwCenterCrop
from lrfr_cli.embed import extract
from lrfr_cli.models import build_backbone
from lrfr_cli.models.sr import SRCNN


def pixel_embedding(x: torch.Tensor) -> torch.Tensor:
    y = F.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1)
    return y - y.mean(dim=1, keepdim=True) + 1e-3


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"images": 0}

    def fake_forward(model, x, precision):  # type: ignore[no-untyped-def]
        calls["images"] += int(x.shape[0])
        return pixel_embedding(x)

    monkeypatch.setattr(extract, "forward", fake_forward)
    return calls


def make_recogniser(ws: Path, name: str = "rec") -> None:
    run = ws / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = {"backbone": "tiny", "embedding_size": 512, "input_size": 112}
    torch.manual_seed(0)
    torch.save({"model": build_backbone("tiny").state_dict(), "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(cfg))


def make_sr_run(ws: Path, name: str = "srfake", sizes: tuple[int, ...] = (16,)) -> SRCNN:
    """An SR run whose network visibly changes faces (random last layer, not the identity init)."""
    run = ws / "runs" / name
    (run / "checkpoints").mkdir(parents=True)
    torch.manual_seed(1)
    net = SRCNN()
    torch.nn.init.normal_(net.body[-1].weight, std=0.05)
    cfg = {"kind": "sr", "arch": "srcnn", "lr_sizes": list(sizes), "degradation": "bicubic", "input_size": 112}
    torch.save({"model": net.state_dict(), "step": 5, "config": cfg}, run / "checkpoints" / "last.pt")
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 5, "epoch": 0, "val_psnr": 25.5, "val_bicubic_psnr": 25.0, "val_psnr@16": 25.5,
                                                         "val_bicubic_psnr@16": 25.0, "val_ssim@16": 0.75, "val_bicubic_ssim@16": 0.7}) + "\n")
    return net.eval()


@pytest.fixture
def lfw_small(data_dir: Path, tmp_path: Path) -> Path:
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    same, diff = lines[:500], lines[500:]
    f = tmp_path / "small_pairs.txt"
    f.write_text("2\t4\n" + "\n".join(same[:4] + diff[:4] + same[100:104] + diff[100:104]) + "\n")
    return f


def _args(data_dir: Path, pairs: Path, *extra: str, as_json: bool = True) -> list[str]:
    return ["eval", "--dataset", "lfw", "--model", "rec", "--data", str(data_dir / "lfw"), "--pairs", str(pairs),
            "--align", "center-crop", "--workers", "0", *(["--json"] if as_json else []), *extra]


def _second_images(pairs: Path) -> set[str]:
    out = set()
    for ln in pairs.read_text().splitlines()[1:]:
        t = ln.split()
        n, i = (t[0], int(t[2])) if len(t) == 3 else (t[2], int(t[3]))
        out.add(f"lfw-deepfunneled/{n}/{n}_{i:04d}.jpg")
    return out


def test_sr_changes_only_the_lr_probes_and_reuses_hr_embeddings(cli, ws, data_dir, lfw_small, counter) -> None:
    make_recogniser(ws)
    net = make_sr_run(ws)
    base = cli(ws, *_args(data_dir, lfw_small, "--sizes", "16,112"))
    assert base.exit_code == 0, base.stdout + base.stderr
    b = base.json()
    assert b["super_resolution"]["method"] == "bicubic" and "sr" not in b["degradation"]
    n0 = counter["images"]

    r = cli(ws, *_args(data_dir, lfw_small, "--sizes", "16,112", "--sr", "runs/srfake"))
    assert r.exit_code == 0, r.stdout + r.stderr
    d = r.json()
    probes = _second_images(lfw_small)
    sha1 = hashlib.sha1((ws / "runs" / "srfake" / "checkpoints" / "last.pt").read_bytes()).hexdigest()
    tag = f"sr-srcnn-{sha1[:12]}"
    # only the 16-px probes went through the network again; every HR image came from the cache
    assert counter["images"] - n0 == len(probes)
    assert d["embeddings"]["per_variant"]["hr"]["computed"] == 0
    assert d["embeddings"]["per_variant"][f"16px_bicubic_{tag}"] == {"images": len(probes), "computed": len(probes), "cached": 0}
    assert d["results"]["112"] == b["results"]["112"]
    assert d["results"]["16"]["accuracy"] != b["results"]["16"]["accuracy"] or d["results"]["16"]["auc"] != b["results"]["16"]["auc"]
    assert d["super_resolution"]["run"] == "srfake" and d["super_resolution"]["checkpoint_sha1"] == sha1
    assert d["super_resolution"]["trained_sizes"] == [16] and d["super_resolution"]["sizes_outside_training"] == []
    assert d["super_resolution"]["validation"]["val_psnr"] == 25.5
    assert d["degradation"]["sr"] == tag and Path(d["path"]).name == "lfw-small_pairs-sr-srfake.json"
    assert (ws / "evals" / "rec" / "lfw-small_pairs.json").is_file()  # the baseline is kept beside it

    # the cached probe embedding is the pixel embedding of the SR network's (rounded) output
    rel = min(probes)
    lr = degrade_array(LfwCenterCrop(data_dir / "lfw").load(rel), DegradeSpec(16, "bicubic"))
    with torch.no_grad():
        sr = net(torch.from_numpy(lr).permute(2, 0, 1)[None].float() / 255.0)
    sr_u8 = torch.round(sr.clamp(0, 1) * 255).to(torch.uint8)
    assert int((sr_u8.int() - torch.from_numpy(lr).permute(2, 0, 1)[None].int()).abs().max()) > 3  # SR did something
    z = np.load(Path(d["embeddings"]["cache"]) / f"16px_bicubic_{tag}.npz")
    got = z["emb"][list(z["keys"]).index(rel)]
    np.testing.assert_allclose(got, pixel_embedding(sr_u8)[0].numpy(), atol=1e-5)

    # a second SR eval is served from the cache entirely
    again = cli(ws, *_args(data_dir, lfw_small, "--sizes", "16,112", "--sr", "runs/srfake")).json()
    assert again["embeddings"]["computed"] == 0 and again["results"] == d["results"]
    # --sr bicubic is the baseline itself: same cache entries, same numbers
    named = cli(ws, *_args(data_dir, lfw_small, "--sizes", "16,112", "--sr", "bicubic")).json()
    assert named["embeddings"]["computed"] == 0 and named["results"] == b["results"]


def test_sr_at_a_size_it_was_not_trained_for_warns_and_is_recorded(cli, ws, data_dir, lfw_small, counter) -> None:
    make_recogniser(ws)
    make_sr_run(ws)
    r = cli(ws, *_args(data_dir, lfw_small, "--sizes", "8,16", "--sr", "srfake", as_json=False))  # without --json: the warning shows
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "trained at 16 px; also applying it at 8 px" in " ".join((r.stdout + r.stderr).split())
    d = json.loads((ws / "evals" / "rec" / "lfw-small_pairs-sr-srfake.json").read_text())
    assert d["super_resolution"]["sizes_outside_training"] == [8]


def test_kind_mismatches_and_bad_sr_options_are_one_line_errors(cli, ws, data_dir, lfw_small, counter) -> None:
    make_recogniser(ws)
    make_sr_run(ws)
    cases = [
        (_args(data_dir, lfw_small, "--sizes", "16", "--model", "srfake", as_json=False), "runs/srfake is a super-resolution run, not a face recogniser"),
        (_args(data_dir, lfw_small, "--sizes", "16", "--sr", "runs/rec", as_json=False), "runs/rec is a face-recognition run, not a super-resolution one"),
        (_args(data_dir, lfw_small, "--sizes", "16", "--sr", "runs/nope", as_json=False), "--sr runs/nope: no such run"),
        (_args(data_dir, lfw_small, "--setting", "hr-hr", "--sr", "srfake", as_json=False), "not to --setting hr-hr"),
    ]
    for argv, msg in cases:
        r = cli(ws, *argv)
        out = r.stdout + r.stderr
        assert r.exit_code != 0, argv
        assert msg in " ".join(out.split()) and "Traceback" not in out and len(out.strip().splitlines()) <= 2, out
    assert not (ws / "evals").exists()
