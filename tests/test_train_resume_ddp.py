"""Resume after a real SIGKILL equals an uninterrupted run; 2-process DDP equals 1 process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lrfr_cli.engine import load_checkpoint
from synthetic import make_identity_faces

LRFR = str(Path(sys.executable).parent / "lrfr")


def make_faces(root: Path, identities: int = 3, per: int = 8) -> Path:
    return make_identity_faces(root, identities, per, seed=1, noise=25.0)


def _weights(ws: Path, run: str) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(ws / "runs" / run / "checkpoints" / "last.pt")
    out = {f"model.{k}": v for k, v in ck["model"].items()}
    out.update({f"head.{k}": v for k, v in ck["head"].items()})
    return out


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(cli, tmp_path):
    faces = make_faces(tmp_path / "faces")
    # tiny has BatchNorm, so running statistics must survive the restart too.
    args = ["train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "64", "--loss", "arcface",
            "--batch-size", "4", "--max-steps", "40", "--checkpoint-every", "5", "--log-every", "1", "--workers", "0",
            "--device", "cpu", "--threads", "1", "--lr", "0.05", "--warmup-steps", "3", "--run", "r"]
    ref_ws, ws = tmp_path / "ref", tmp_path / "ws"
    r = cli(ref_ws, *args)
    assert r.exit_code == 0, r.stdout + r.stderr

    env = dict(os.environ)
    proc = subprocess.Popen([LRFR, "-w", str(ws), "--quiet", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = ws / "runs" / "r" / "metrics.jsonl"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.strip()]
            if steps and steps[-1] >= 10:
                proc.send_signal(signal.SIGKILL)
                killed_at = steps[-1]
                break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    ck = load_checkpoint(ws / "runs" / "r" / "checkpoints" / "last.pt")
    assert 5 <= ck["step"] < 40
    assert json.loads((ws / "runs" / "r" / "manifest.json").read_text())["status"] == "running"

    r = cli(ws, *args, "--resume", "--json")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert r.json()["resumed_from"] == ck["step"] and r.json()["steps"] == 40
    _assert_same(_weights(ws, "r"), _weights(ref_ws, "r"), atol=1e-5)
    # metrics.jsonl has each step once, as if the run had never stopped.
    steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41))
    ref_losses = [json.loads(ln)["loss"] for ln in (ref_ws / "runs" / "r" / "metrics.jsonl").read_text().splitlines()]
    losses = [json.loads(ln)["loss"] for ln in metrics.read_text().splitlines()]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-4)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(cli, tmp_path):
    """Same global batch (4 = 2 × 2) and data order: same weights. sphere20 has no BatchNorm,
    whose per-process statistics would (correctly) differ."""
    faces = make_faces(tmp_path / "faces", identities=3, per=4)
    args = ["train", "--data", str(faces), "--backbone", "sphere20", "--loss", "cosface", "--batch-size", "4",
            "--max-steps", "4", "--workers", "0", "--device", "cpu", "--lr", "0.01", "--log-every", "1",
            "--embedding-size", "64", "--threads", "1", "--run-name", "d"]
    one = tmp_path / "one"
    r = cli(one, *args)
    assert r.exit_code == 0, r.stdout + r.stderr
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", LRFR, "-w", str(two), "--json", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    out = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("{")][-1])
    assert out["world_size"] == 2 and out["steps"] == 4
    _assert_same(_weights(two, "d"), _weights(one, "d"), atol=1e-5)
    l1 = [json.loads(ln)["loss"] for ln in (one / "runs" / "d" / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(ln)["loss"] for ln in (two / "runs" / "d" / "metrics.jsonl").read_text().splitlines()]
    np.testing.assert_allclose(l2, l1, rtol=1e-4)
    # Only rank 0 wrote: one manifest, complete.
    assert json.loads((two / "runs" / "d" / "manifest.json").read_text())["status"] == "complete"
