"""Pre-emption: ``kill -9`` a command while its worker processes run, re-run it at once (issue 9.2).

A job scheduler that pre-empts a job kills the parent and starts the same command again right
away. Every command here takes the artifact's writer lock and then starts worker processes
(DataLoader workers are forked; align/degrade decode workers are spawned). The orphaned workers
outlive the parent for a while: a DataLoader worker notices the dead parent only every few
seconds, a worker busy decoding not until it is done. The lock must die with the parent all the
same, so each test:

1. starts ``lrfr`` as a subprocess with workers and waits until the workers exist and the
   artifact is ``running`` (outputs or a checkpoint on disk where the command writes some);
2. ``SIGSTOP``s the workers, so they stay alive (and keep every inherited descriptor) for as
   long as the test needs: the worst case of "orphans that have not noticed yet", made
   deterministic instead of racing their exit;
3. ``SIGKILL``s the parent only (not the process group: the workers become orphans);
4. re-runs the identical command in-process immediately: it must be accepted (not "being
   written by another lrfr process") and finish with a complete artifact that kept the killed
   run's finished work.

The orphans are killed afterwards. With the old ``flock`` lock step 4 failed for train, finetune and eval
(their DataLoader workers are forked and shared the lock); degrade/align spawn theirs.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from helpers import Killable, alive, descendants, lrfr_argv, signal_all
from synthetic import make_identity_faces

LOCKED = "being written by another lrfr process"


# --------------------------------------------------------------------------- process helpers
def _initialised(pid: int) -> bool:
    """Whether a DataLoader worker ran lrfr's worker init (it then ignores SIGINT)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ign = next((int(ln.split()[1], 16) for ln in status.splitlines() if ln.startswith("SigIgn:")), 0)
    return bool(ign & (1 << (signal.SIGINT - 1)))


@contextmanager
def _preempted(
    ws: Path, args: list[str], ready: Callable[[], bool], env: dict[str, str] | None = None, timeout: float = 120,
    die_with_parent: bool = False,
) -> Iterator[list[int]]:
    """Run ``lrfr ARGS`` until ``ready()`` with workers alive, then stop the workers and SIGKILL
    the parent only. Yields the (stopped, orphaned) worker pids; kills them on exit.

    ``die_with_parent``: DataLoader workers (train, finetune, eval) ask the kernel to kill them
    with their parent (``PR_SET_PDEATHSIG``, issue 18.2): instead of orphans that outlive it, the
    re-run must find them gone, even stopped ones. The lock's independence of forked children is
    tested directly in tests/test_workspace.py."""
    workers: list[int] = []
    try:
        with Killable(lrfr_argv(ws, *args), env={**os.environ, **(env or {})}) as victim:

            def stop_workers() -> list[int]:
                kids = [p for p in descendants(victim.pid) if alive(p)]
                if kids and ready():
                    # Workers first: once stopped they can neither exit nor take more work.
                    signal_all(kids, signal.SIGSTOP)
                    return kids
                return []

            workers = victim.wait_for(stop_workers, timeout, poll=0.05) or []
            returncode = victim.kill()  # the parent only
            log = victim.output()
        assert workers, f"never saw the workers and a ready state before the run ended:\n{log[-3000:]}"
        assert returncode == -signal.SIGKILL, log[-3000:]
        if die_with_parent:
            # A worker stopped between its fork and its init (it does not ignore SIGINT yet) has
            # not asked for the death signal: it may stay; every initialised one must go.
            deadline = time.time() + 30
            while time.time() < deadline and any(alive(p) and _initialised(p) for p in workers):
                time.sleep(0.05)
            assert not any(alive(p) and _initialised(p) for p in workers), "the DataLoader workers must die with their parent"
        else:
            assert any(alive(p) for p in workers), "the orphaned workers must still exist at the re-run"
        yield workers
    finally:
        signal_all(workers, signal.SIGKILL)
        signal_all(workers, signal.SIGCONT)


def _accepted(r) -> None:  # type: ignore[no-untyped-def]
    assert LOCKED not in r.stderr, r.stderr
    assert r.exit_code == 0, r.stdout + r.stderr


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _visible(root: Path, pattern: str) -> list[Path]:
    return sorted(p for p in root.rglob(pattern) if not p.name.startswith("."))


# --------------------------------------------------------------------------- commands
@pytest.mark.slow  # two spawned pools over 80 LFW images: ~10 s on idle cores, 19-33 s at load 2-8
def test_degrade_kill9_rerun(cli, tmp_path, data_dir):
    src = tmp_path / "src"
    lfw = data_dir / "lfw" / "lfw-deepfunneled"
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[:80]  # a process pool from 64 images on
    for person in people:
        f = min(person.glob("*.jpg"))
        (src / person.name).mkdir(parents=True)
        (src / person.name / f.name).write_bytes(f.read_bytes())
    ws = tmp_path / "ws"
    out = ws / "degraded" / "d" / "16px"
    args = ["degrade", str(src), "--sizes", "16", "--name", "d", "--workers", "2"]
    with _preempted(ws, args, lambda: len(_visible(out, "*.png")) >= 3):
        before = len(_visible(out, "*.png"))
        assert _manifest(out)["status"] == "running"
        r = cli(ws, *args, "--json")
        _accepted(r)
    assert r.json()["already_present"] >= before and r.json()["written"] + r.json()["already_present"] == 80
    assert _manifest(out)["status"] == "complete" and len(_visible(out, "*.png")) == 80


@pytest.mark.slow  # MTCNN: ~10 s on idle cores, 25 s at load 6
def test_align_kill9_rerun(cli, tmp_path, data_dir):
    # Small face photos (160 px crops) keep MTCNN cheap; copies make enough work for a mid-run kill.
    photos = sorted((data_dir / "raw_photos" / "facenet_pytorch" / "aligned_160").glob("*.png"))
    if not photos:
        pytest.skip(f"no photos under {data_dir / 'raw_photos'}")
    src = tmp_path / "src"
    src.mkdir()
    for k in range(2):
        for p in photos:
            (src / f"{k}_{p.name}").write_bytes(p.read_bytes())
    n = 2 * len(photos)
    ws = tmp_path / "ws"
    out = ws / "aligned" / "a"
    args = ["align", str(src), "--out", "a", "--workers", "1", "--device", "cpu", "--format", "png", "--batch-size", "2"]
    journal = out / ".align-journal.jsonl"

    def journaled() -> int:
        # First line: the run's options; then one line per photo, flushed once per batch.
        return max(0, len(journal.read_text().splitlines()) - 1) if journal.is_file() else 0

    with _preempted(ws, args, lambda: (out / "manifest.json").is_file() and journaled() >= 2):
        assert _manifest(out)["status"] == "running"
        flushed = journaled()
        r = cli(ws, *args, "--json")
        _accepted(r)
    doc = r.json()
    # Photos are journaled in batches after their faces are written: what the journal held at the
    # kill is kept; faces written after the last flush are redone.
    assert doc["up_to_date"] is False and flushed <= doc["already_done"] < n, (flushed, doc)
    assert doc["already_done"] + doc["written"] + doc["failed"] == n, doc
    assert _manifest(out)["status"] == "complete" and len(_visible(out, "*.png")) == doc["faces"]


def test_train_kill9_rerun_resumes(cli, tmp_path):
    faces = make_identity_faces(tmp_path / "faces", 3, 8, seed=1, noise=25.0)
    ws = tmp_path / "ws"
    run = ws / "runs" / "r"
    args = ["train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "32", "--loss", "softmax",
            "--batch-size", "4", "--max-steps", "12", "--checkpoint-every", "2", "--log-every", "1",
            "--workers", "1", "--device", "cpu", "--threads", "1", "--run", "r"]
    with _preempted(ws, args, lambda: (run / "checkpoints" / "last.pt").is_file(), die_with_parent=True):
        assert _manifest(run)["status"] == "running"
        r = cli(ws, *args, "--json")  # the identical command resumes an interrupted run
        _accepted(r)
    assert r.json()["resumed_from"] is not None and r.json()["resumed_from"] >= 2
    assert r.json()["steps"] == 12 and _manifest(run)["status"] == "complete"


def test_finetune_kill9_rerun_resumes(cli, tmp_path):
    """``finetune`` runs on the same training seam (lock, then DataLoader workers): same contract."""
    faces = make_identity_faces(tmp_path / "faces", 3, 8, seed=1, noise=25.0)
    ws = tmp_path / "ws"
    parent = ["train", "--data", str(faces), "--backbone", "tiny", "--embedding-size", "32", "--loss", "softmax",
              "--batch-size", "4", "--max-steps", "2", "--workers", "0", "--device", "cpu", "--threads", "1", "--run", "p"]
    assert cli(ws, *parent).exit_code == 0
    run = ws / "runs" / "f"
    args = ["finetune", "--method", "siamese", "--from", "runs/p", "--data", str(faces), "--p", "2", "--k", "4",
            "--max-steps", "12", "--checkpoint-every", "2", "--log-every", "1", "--workers", "1", "--device", "cpu",
            "--threads", "1", "--run", "f"]
    with _preempted(ws, args, lambda: (run / "checkpoints" / "last.pt").is_file(), die_with_parent=True):
        assert _manifest(run)["status"] == "running"
        r = cli(ws, *args, "--json")
        _accepted(r)
    assert r.json()["resumed_from"] is not None and r.json()["resumed_from"] >= 2
    assert r.json()["steps"] == 12 and _manifest(run)["status"] == "complete"


def _mini_pairs(data_dir: Path, tmp: Path, n: int) -> Path:
    """``n`` matched + ``n`` mismatched View 1 test pairs, one fold."""
    lines = (data_dir / "lfw" / "pairsDevTest.txt").read_text().splitlines()[1:]
    f = tmp / "mini.txt"
    f.write_text(f"{n}\n" + "\n".join(lines[:n] + lines[500 : 500 + n]) + "\n")
    return f


def _eval_args(model: Path, data_dir: Path, pairs: Path) -> list[str]:
    return ["eval", "--dataset", "lfw", "--model", str(model), "--data", str(data_dir / "lfw"), "--pairs", str(pairs),
            "--align", "center-crop", "--sizes", "8,16", "--workers", "1", "--batch-size", "8", "--name", "mini"]


def _npz_rows(folder: Path) -> int:
    total = 0
    for f in folder.rglob("*.npz"):
        if not f.name.startswith(".") and not f.name.endswith(".quality.npz"):  # embeddings, not the per-face quality beside them
            with np.load(f) as z:
                total += len(z["keys"])
    return total


def test_eval_flush_interval_default(monkeypatch):
    """A pre-empted eval loses at most one flush interval of embedding work (issue 9.2: ~10 s)."""
    from lrfr_cli.embed import extract

    assert extract.FLUSH_SECONDS <= 10.0
    monkeypatch.delenv(extract.FLUSH_ENV, raising=False)
    assert extract.flush_seconds() == extract.FLUSH_SECONDS


def test_eval_kill9_after_a_flush_rerun_keeps_embeddings(cli, tmp_path, data_dir, trained_model, monkeypatch):
    """Killed once the first flush reached the cache: the re-run is accepted at once and embeds
    only what the killed run had not flushed. The interval is made 0.5 s through
    ``LRFR_FLUSH_SECONDS`` (the default 10 s is pinned above) so the test stays short."""
    from lrfr_cli.embed import extract

    model_ws, run = trained_model
    args = _eval_args(model_ws / "runs" / run, data_dir, _mini_pairs(data_dir, tmp_path, 60))
    ws = tmp_path / "ws"
    cache = ws / "embeddings"

    def flushed() -> bool:  # wait for a flush that also wrote the cache's manifest (keys it valid)
        return any(cache.rglob("manifest.json")) and _npz_rows(cache) > 0

    with _preempted(ws, args, flushed, env={extract.FLUSH_ENV: "0.5"}, die_with_parent=True):
        kept = _npz_rows(cache)
        monkeypatch.delenv(extract.FLUSH_ENV, raising=False)
        r = cli(ws, *args, "--json")
        _accepted(r)
    doc = r.json()
    emb = doc["embeddings"]
    wanted = sum(v["images"] for v in emb["per_variant"].values())
    assert 0 < kept < wanted, "the kill must land after the first flush and before the end"
    assert emb["cached"] == kept and emb["computed"] == wanted - kept
    assert set(doc["results"]) == {"8", "16"} and doc["results"]["8"]["pairs"] == 120
    assert len(list((ws / "evals").rglob("mini.json"))) == 1
