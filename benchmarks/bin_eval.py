"""Benchmark: an insightface ``.bin`` pack scored HR–LR at several probe sizes, lrfr's eval vs a plain loop.

* **plain loop** (the per-pair way of the seeds' scripts): for every size, for every batch of
  pairs, decode both faces from the pack's JPEG bytes, degrade the second, run the network on
  both, score; then the same 10-fold accuracy;
* **lrfr cold**: ``lrfr eval --dataset bin``'s path (``plan_bin`` + ``embed`` + ``score``) with an
  empty cache: every face decoded once, the HR side embedded once, only the probe side embedded
  per size (degraded on the device);
* **lrfr warm**: the same eval again, every embedding from the cache.

The pack is built here from LFW View-2 pairs (centre-crop aligned, JPEG q95, cycled when more
than 6,000 pairs are asked for) and written by a plain ``pickle.dump``, as insightface's scripts do.
Same model (random weights: speed does not depend on training) both ways; the script checks that
both give the same 10-fold accuracy at every size.

Usage: python benchmarks/bin_eval.py [--pairs 100] [--sizes 8,12,16,20,112] [--backbone mobilefacenet]
       [--device cpu|cuda] [--batch-size 64] [--workers 2] [--threads 0]
The issue's full size is ``--pairs 7000`` (cfp_fp's count; minutes on a GPU, an hour on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from lrfr_cli import metrics as M
from lrfr_cli.data.binfile import read_bin
from lrfr_cli.data.degrade import DegradeSpec, degrade_batch, parse_sizes
from lrfr_cli.data.sources import LfwCenterCrop
from lrfr_cli.embed import EmbeddingCache, LoadedModel, embed, forward
from lrfr_cli.engine import resolve_device
from lrfr_cli.models import build_backbone
from lrfr_cli.protocols.base import EvalOptions
from lrfr_cli.protocols.binpack import plan_bin
from lrfr_cli.protocols.lfw import read_pairs
from lrfr_cli.workspace import Workspace


def build_pack(root: Path, n_pairs: int, out: Path) -> Path:
    """``n_pairs`` View-2 pairs (fold order kept, cycled past 6,000), faces as JPEG bytes."""
    pairs, _ = read_pairs(root / "pairs.txt")
    src = LfwCenterCrop(root)
    chosen = [pairs[i % len(pairs)] for i in range(n_pairs)] if n_pairs > len(pairs) else \
        [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, n_pairs).round()]
    enc: dict[str, bytes] = {}

    def jpg(rel: str) -> bytes:
        if rel not in enc:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(src.load(rel), cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
            enc[rel] = buf.tobytes()
        return enc[rel]

    bins = [jpg(r) for p in chosen for r in (p.rel1, p.rel2)]
    with open(out, "wb") as fh:
        pickle.dump((bins, [p.same for p in chosen]), fh, protocol=4)
    return out


def plain_loop(model: LoadedModel, pack_path: Path, sizes: list[int], device: torch.device, pair_batch: int) -> dict[int, float]:
    """Per size, per batch of pairs: decode both faces, degrade the second, embed both, score."""
    pack = read_bin(pack_path)
    y, folds = pack.issame, pack.folds()
    out = {}
    for s in sizes:
        spec = DegradeSpec(s) if s < 112 else None
        scores: list[float] = []
        for i in range(0, len(pack), pair_batch):
            idx = range(i, min(i + pair_batch, len(pack)))
            a = torch.stack([torch.from_numpy(pack.decode(2 * j)).permute(2, 0, 1) for j in idx]).to(device)
            b = torch.stack([torch.from_numpy(pack.decode(2 * j + 1)).permute(2, 0, 1) for j in idx]).to(device)
            if spec is not None:
                b = degrade_batch(b, spec)
            e = torch.nn.functional.normalize(forward(model, torch.cat([a, b]), "fp32"), dim=1)
            scores += (e[: len(idx)] * e[len(idx) :]).sum(1).tolist()
        out[s] = M.kfold_accuracy(np.array(scores), y, folds).accuracy
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=100, help="pairs in the synthetic pack (7000 = cfp_fp's size)")
    ap.add_argument("--sizes", default="8,12,16,20,112")
    ap.add_argument("--backbone", default="mobilefacenet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(os.environ.get("LRFR_DATA", "data")) / "lfw"
    if not (root / "pairs.txt").is_file():
        raise SystemExit(f"LFW not found at {root}; set LRFR_DATA")
    device = resolve_device(args.device)
    sizes = parse_sizes(args.sizes)
    torch.manual_seed(0)
    module = build_backbone(args.backbone).eval().to(device)
    model = LoadedModel(module=module, name=f"bench-{args.backbone}", backbone=args.backbone, embedding_size=512,
                        checkpoint=Path("-"), sha1="0" * 40, source="benchmark")
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        pack_path = build_pack(root, args.pairs, Path(tmp) / "bench.bin")
        build_s = time.perf_counter() - t
        ws = Workspace(Path(tmp) / "ws")

        def lrfr_eval() -> tuple[float, dict, object]:
            t = time.perf_counter()
            plan = plan_bin(pack_path, EvalOptions(sizes=sizes, setting="hr-lr"))
            cache = EmbeddingCache(ws, model.cache_id, plan.images.name, {"images": plan.images.describe()})
            emb, stats = embed(model, plan.images, plan.requests, cache, device=device, batch_size=args.batch_size, workers=args.workers)
            res = plan.score(emb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t, res, stats

        cold_s, res, stats = lrfr_eval()
        warm_s, res2, stats2 = lrfr_eval()
        assert stats2.forward_images == 0 and res2 == res
        t = time.perf_counter()
        plain = plain_loop(model, pack_path, sizes, device, max(1, args.batch_size // 2))
        if device.type == "cuda":
            torch.cuda.synchronize()
        plain_s = time.perf_counter() - t
        for s in sizes:  # same accuracy (a score within float noise of a threshold may move one pair)
            assert abs(plain[s] - res[str(s)]["accuracy"]) <= 1.0 / args.pairs + 1e-9, (s, plain[s], res[str(s)]["accuracy"])
    load1 = os.getloadavg()

    n = args.pairs
    work = n * len(sizes)
    plain_fwd = 2 * n * len(sizes)
    print(f".bin pack HR-LR, {n} pairs x sizes {','.join(map(str, sizes))} (built from LFW View 2 in {build_s:.1f} s), "
          f"{args.backbone} (random weights), device {device}, batch {args.batch_size}, {args.workers} decode workers")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}; "
          f"load average (1/5/15 min) before {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f}, after {load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f}")
    print()
    print("| way | images through the network | faces decoded | seconds | pairs x sizes / s | speed-up vs plain loop |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| plain loop ({max(1, args.batch_size // 2)} pairs per batch) | {plain_fwd} | {plain_fwd} | {plain_s:.1f} | {work / plain_s:.1f} | 1.00x |")
    for label, s, st in (("lrfr eval, cold cache", cold_s, stats), ("lrfr eval, warm cache", warm_s, stats2)):
        print(f"| {label} | {st.forward_images} | {st.images_loaded} | {s:.1f} | {work / s:.1f} | {plain_s / s:.2f}x |")
    print()
    print("10-fold accuracy per size (lrfr; the plain loop agrees): " + ", ".join(f"{s}px {res[str(s)]['accuracy']:.4f}" for s in sizes))


if __name__ == "__main__":
    main()
