"""Benchmark: batched `lrfr align` vs facenet-pytorch's plain one-image-at-a-time loop.

Same LFW photos for every method, in one run:
  * baseline: `mtcnn(img)` per image (PIL decode, detect, crop) — the facenet-pytorch README way;
  * facenet-pytorch's own batched `mtcnn.detect(batch)` (detection only, for reference);
  * `align_tree` (lrfr): decode in worker processes, batched cascade, similarity warp, JPEG write,
    journal and CSVs — the whole command minus the CLI.
Usage: python benchmarks/align.py [--limit 200] [--device cpu|cuda] [--batch-size 16] [--workers 1]
(LRFR_DATA must point at the shared data.)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lrfr_cli.align.pipeline import align_tree
from lrfr_cli.engine import resolve_device


def lfw_sample(root: Path, n: int) -> list[str]:
    """First image of every k-th person: n photos spread over the alphabet."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // n)
    rels = []
    for person in people[::step][:n]:
        first = sorted(person.iterdir())[0]
        rels.append(f"{person.name}/{first.name}")
    return rels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=200, help="number of LFW photos")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=1, help="lrfr decode processes")
    ap.add_argument("--min-face", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (fairness under shared load)")
    args = ap.parse_args()
    from facenet_pytorch import MTCNN

    root = Path(os.environ.get("LRFR_DATA", "data")) / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(f"LFW not found at {root}; set LRFR_DATA")
    dev = resolve_device(args.device)
    rels = lfw_sample(root, args.limit)
    n = len(rels)
    mtcnn = MTCNN(image_size=112, min_face_size=args.min_face, device=dev)
    warm = Image.open(root / rels[0]).convert("RGB")
    mtcnn(warm)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    load0 = os.getloadavg()[0]
    # Interleave the methods in rounds so that load from other processes on a shared machine
    # hits all of them alike; the order inside a round rotates.
    times = {"plain": 0.0, "batched": 0.0, "lrfr": 0.0}
    found = {"plain": 0, "batched": 0, "lrfr": 0}
    failed = 0
    fit_errors: list[float] = []
    tmp = Path(tempfile.mkdtemp(prefix="lrfr-bench-align-"))

    def run_plain(chunk: list[str]) -> None:
        for rel in chunk:
            img = Image.open(root / rel).convert("RGB")
            found["plain"] += mtcnn(img) is not None

    def run_batched(chunk: list[str]) -> None:
        for i in range(0, len(chunk), args.batch_size):
            batch = np.stack([np.asarray(Image.open(root / r).convert("RGB")) for r in chunk[i : i + args.batch_size]])
            boxes, _ = mtcnn.detect(batch)
            found["batched"] += sum(b is not None for b in boxes)

    def run_lrfr(chunk: list[str], k: int) -> None:
        nonlocal failed
        res = align_tree(root, tmp / f"out{k}", chunk, device=str(dev), batch_size=args.batch_size, workers=args.workers, min_prob=0.0, min_face=args.min_face)
        found["lrfr"] += res.faces
        failed += len(res.failures)
        fit_errors.extend(r.fit_error for r in res.records if r.fit_error is not None)

    try:
        rounds = max(1, args.rounds)
        for k in range(rounds):
            chunk = rels[k::rounds]
            jobs = [("plain", lambda: run_plain(chunk)), ("batched", lambda: run_batched(chunk)), ("lrfr", lambda: run_lrfr(chunk, k))]
            jobs = jobs[k % 3 :] + jobs[: k % 3]
            for name, job in jobs:
                t0 = time.perf_counter()
                job()
                sync()
                times[name] += time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    t_plain = times["plain"]
    rows = [
        ("facenet-pytorch mtcnn(img) loop", times["plain"], f"{found['plain']} faces"),
        (f"facenet-pytorch detect(batch of {args.batch_size}), detect only", times["batched"], f"{found['batched']} faces"),
        (f"lrfr align_tree (batch {args.batch_size}, {args.workers} decode worker(s))", times["lrfr"], f"{found['lrfr']} faces, {failed} failed"),
    ]
    load1 = os.getloadavg()[0]

    print(f"align benchmark: {n} LFW deep-funneled photos (250x250 JPEG), MTCNN min_face {args.min_face}, device {dev}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load0:.1f} -> {load1:.1f}")
    print(f"{'method':<62}{'seconds':>9}{'img/s':>9}{'ratio':>7}  result")
    for name, t, note in rows:
        print(f"{name:<62}{t:>9.1f}{n / t:>9.2f}{t_plain / t:>7.2f}  {note}")
    if fit_errors:
        e = np.array(fit_errors)
        print(f"landmark fit error after the similarity (112 px template): mean {e.mean():.2f} px, median {np.median(e):.2f}, 90th pct {np.percentile(e, 90):.2f}")


if __name__ == "__main__":
    main()
