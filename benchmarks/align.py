"""Benchmark: `lrfr align`'s batched path vs facenet-pytorch's one-image-at-a-time loop.

Same LFW photos for every method, in one process, interleaved in rounds so that load from other
processes on a shared machine hits every method alike:
  * baseline: `mtcnn(img)` per photo (PIL decode, detect, crop): the facenet-pytorch README way;
  * lrfr: `align_tree` with N decode workers for each N of --workers: decode, batched cascade,
    similarity warp, JPEG write, journal and CSVs: the whole command minus the CLI.
Each round runs every method over all --limit photos into a fresh folder (no resume). The table
gives the median img/s over the rounds and the median of the per-round ratios lrfr/loop (a ratio
taken inside one round is what survives a busy machine best), with the 1-minute load average
before and after. --profile adds lrfr's time per stage (shares of the busiest run).

Usage: python benchmarks/align.py [--limit 600] [--workers 0,1,2] [--rounds 3] [--threads 0]
       [--batch-size 16] [--device cpu] [--profile]     (LRFR_DATA must point at the shared data)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from lrfr_cli.align.pipeline import align_tree
from lrfr_cli.engine import resolve_device

STAGES = [
    ("setup", "load the MTCNN networks"),
    ("decode", "decode (waiting for photos)"),
    ("pnet", "pyramid + P-net"),
    ("rnet", "crops + R-net"),
    ("onet", "crops + O-net + landmarks"),
    ("warp", "select + similarity warp"),
    ("write", "JPEG encode + atomic write + journal"),
    ("reports", "landmarks.csv / failures.csv"),
]


def lfw_sample(root: Path, n: int) -> list[str]:
    """First image of every k-th person: n photos spread over the alphabet."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // n)
    rels = []
    for person in people[::step][:n]:
        first = min(person.iterdir())
        rels.append(f"{person.name}/{first.name}")
    return rels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=600, help="number of LFW photos (one per person, spread over the alphabet)")
    ap.add_argument("--workers", default="0,1,2", help="comma-separated decode-worker counts to time lrfr with")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    ap.add_argument("--threads", type=int, default=0, help="torch threads for every method (0 = torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--batch-size", type=int, default=16, help="lrfr's photos per MTCNN pass")
    ap.add_argument("--min-face", type=int, default=30, help="MTCNN min_face_size for every method")
    ap.add_argument("--profile", action="store_true", help="also print lrfr's seconds per stage")
    args = ap.parse_args()
    from facenet_pytorch import MTCNN

    root = Path(os.environ.get("LRFR_DATA", "data")) / "lfw" / "lfw-deepfunneled"
    if not root.is_dir():
        raise SystemExit(f"LFW not found at {root}; set LRFR_DATA")
    try:
        worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"--workers {args.workers!r}: expected a list such as 0,1,2") from None
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    rels = lfw_sample(root, args.limit)
    n = len(rels)
    mtcnn = MTCNN(image_size=112, min_face_size=args.min_face, device=dev)
    mtcnn(Image.open(root / rels[0]).convert("RGB"))  # warm-up, outside the clock
    tmp = Path(tempfile.mkdtemp(prefix="lrfr-bench-align-"))
    align_tree(root, tmp / "warm", rels[:4], device=str(dev), workers=0, min_prob=0.0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def run_loop() -> int:
        found = 0
        for rel in rels:
            found += mtcnn(Image.open(root / rel).convert("RGB")) is not None
        return found

    def run_lrfr(workers: int, k: int) -> tuple[int, dict[str, float]]:
        res = align_tree(root, tmp / f"w{workers}-r{k}", rels, device=str(dev), batch_size=args.batch_size, workers=workers, min_prob=0.0, min_face=args.min_face)
        return res.faces, res.timings

    methods = ["loop"] + [f"lrfr{w}" for w in worker_counts]
    secs: dict[str, list[float]] = {m: [] for m in methods}
    faces: dict[str, int] = {}
    stage_times: dict[str, dict[str, float]] = {}
    load0 = os.getloadavg()
    try:
        for k in range(max(1, args.rounds)):
            order = methods[k % len(methods) :] + methods[: k % len(methods)]  # rotate who goes first
            for m in order:
                t0 = time.perf_counter()
                if m == "loop":
                    faces[m] = run_loop()
                else:
                    faces[m], timings = run_lrfr(int(m[4:]), k)
                    for key, v in timings.items():
                        stage_times.setdefault(m, {}).setdefault(key, 0.0)
                        stage_times[m][key] += v
                sync()
                secs[m].append(time.perf_counter() - t0)
                shutil.rmtree(tmp / f"w{m[4:]}-r{k}", ignore_errors=True)  # outside the clock
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load1 = os.getloadavg()

    def ratio(m: str) -> float:
        return statistics.median(a / b for a, b in zip(secs["loop"], secs[m]))

    rate = {m: statistics.median(n / s for s in secs[m]) for m in methods}
    print(f"align benchmark: {n} LFW deep-funneled photos (250x250 JPEG), MTCNN min_face {args.min_face}, device {dev}, {args.rounds} rounds")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, load average (1/5/15 min) {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} before, "
        f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} after"
    )
    print(f"{'method':<48}{'img/s':>8}{'ratio':>8}  {'per-round img/s':<28}faces")
    for m in methods:
        name = "facenet-pytorch mtcnn(img) loop" if m == "loop" else f"lrfr align_tree, batch {args.batch_size}, --workers {m[4:]}"
        rounds = " ".join(f"{n / s:.1f}" for s in secs[m])
        print(f"{name:<48}{rate[m]:>8.1f}{(1.0 if m == 'loop' else ratio(m)):>7.2f}x  {rounds:<28}{faces[m]}")
    best = max(methods[1:], key=ratio) if len(methods) > 1 else None
    if best is not None:
        print()
        print("README row:")
        others = ", ".join(f"{m[4:]}: {rate[m]:.1f}" for m in methods[1:] if m != best)
        others = f" (--workers {others})" if others else ""
        print(
            f"| `benchmarks/align.py` | {n} LFW photos, whole job, load {load0[0]:.1f}→{load1[0]:.1f}, {torch.get_num_threads()} torch thread(s) "
            f"| facenet-pytorch `mtcnn(img)` loop: {rate['loop']:.1f} img/s | batched, --workers {best[4:]}: {rate[best]:.1f} img/s{others} | {ratio(best):.2f}× |"
        )
    if args.profile:
        for m, st in stage_times.items():
            total = sum(st.values())
            print()
            print(f"lrfr --workers {m[4:]}: seconds per stage over {args.rounds} rounds (sum {total:.1f} s of {sum(secs[m]):.1f} s wall)")
            for key, label in STAGES:
                if key in st:
                    print(f"  {label:<40}{st[key]:>8.2f} s {100 * st[key] / total:>6.1f} %")


if __name__ == "__main__":
    main()
