"""Benchmark: `lrfr degrade` (all cores, torch pipeline) vs a plain single-process PIL loop.

Both read the same LFW JPEGs and write, for each of 4 sizes, a down-then-up-sampled PNG.
Usage: python benchmarks/degrade.py [--limit N] [--sizes 8,12,16,20] [--workers N]
(LRFR_DATA must point at the shared data; --limit 0 = all 13,233 LFW images.)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from lrfr_cli.data.degrade import DegradeSpec
from lrfr_cli.data.degrade_files import degrade_tree
from lrfr_cli.data.images import list_images


def pil_loop(src: Path, rels: list[str], sizes: list[int], out: Path) -> None:
    """The textbook way: one process, PIL resize down and up, save PNG."""
    for rel in rels:
        with Image.open(src / rel) as im:
            im = im.convert("RGB")
            for s in sizes:
                lr = im.resize((s, s), Image.BICUBIC)
                up = lr.resize(im.size, Image.BICUBIC)
                dst = out / f"{s}px" / Path(rel).with_suffix(".png")
                dst.parent.mkdir(parents=True, exist_ok=True)
                up.save(dst, compress_level=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=2000, help="number of LFW images (0 = all)")
    ap.add_argument("--sizes", default="8,12,16,20")
    ap.add_argument("--workers", type=int, default=0, help="lrfr worker processes (0 = all cores)")
    args = ap.parse_args()
    data = Path(os.environ.get("LRFR_DATA", "data")) / "lfw" / "lfw-deepfunneled"
    if not data.is_dir():
        raise SystemExit(f"LFW not found at {data}; set LRFR_DATA")
    images = list_images(data)
    if args.limit:
        images = images[: args.limit]
    rels = [p.relative_to(data).as_posix() for p in images]
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="lrfr-bench-"))
    try:
        t0 = time.perf_counter()
        pil_loop(data, rels, sizes, tmp / "pil")
        t_pil = time.perf_counter() - t0

        targets = [(DegradeSpec(s), tmp / "lrfr" / f"{s}px") for s in sizes]
        t0 = time.perf_counter()
        res = degrade_tree(data, rels, targets, workers=args.workers or None)
        t_ours = time.perf_counter() - t0
        assert not res.failures and all(v == len(rels) for v in res.written.values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n = len(rels)
    print(f"degrade benchmark: {n} LFW images (250x250 JPEG) x sizes {sizes} -> PNG, up-sampled back")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print(f"{'method':<40}{'seconds':>10}{'img/s':>10}{'ratio':>8}")
    print(f"{'plain PIL loop (1 process)':<40}{t_pil:>10.1f}{n / t_pil:>10.1f}{1.0:>8.2f}")
    workers = args.workers or os.cpu_count()
    print(f"{f'lrfr degrade ({workers} workers)':<40}{t_ours:>10.1f}{n / t_ours:>10.1f}{t_pil / t_ours:>8.2f}")


if __name__ == "__main__":
    main()
