"""Benchmark: LFW HR–LR at several sizes, lrfr's cached embedding pass vs the per-pair way.

* **per-pair** (what the seeds' scripts do): for every size, for every pair, decode and align
  both images, degrade the second, run the network on the two images, score the pair;
* **lrfr cold**: ``lrfr_cli.embed.embed`` with an empty cache: each unique (image, size) is
  decoded once, degraded on the device and embedded in batches; pairs are scored from the cache;
* **lrfr warm**: the same eval again (the cache holds every embedding: no forward pass).

Same model (random weights: speed does not depend on training), same images (the fixed
center-crop alignment), same degradation; the script checks that both ways give the same AUC.

Usage: python benchmarks/eval.py [--pairs-per-fold 5] [--sizes 8,12,16,20,28,112]
       [--backbone mobilefacenet] [--device cpu|cuda] [--batch-size 64] [--workers 2]
``--pairs-per-fold N`` takes the first N matched and first N mismatched pairs of each of the 10
View-2 folds (0 = all 6,000 pairs; far too slow for the per-pair way on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lrfr_cli import metrics as M
from lrfr_cli.data.degrade import DegradeSpec, degrade_batch, parse_sizes
from lrfr_cli.data.sources import LfwCenterCrop
from lrfr_cli.embed import EmbeddingCache, LoadedModel, embed, forward
from lrfr_cli.engine import resolve_device
from lrfr_cli.models import build_backbone
from lrfr_cli.protocols.lfw import plan_lfw, read_pairs
from lrfr_cli.workspace import Workspace


def subset_pairs(src: Path, per_fold: int, dst: Path) -> Path:
    lines = src.read_text().splitlines()
    folds, n = (int(v) for v in lines[0].split())
    if per_fold == 0 or per_fold >= n:
        return src
    body = []
    for f in range(folds):
        block = lines[1 + f * 2 * n : 1 + (f + 1) * 2 * n]
        body += block[:per_fold] + block[n : n + per_fold]
    dst.write_text(f"{folds}\t{per_fold}\n" + "\n".join(body) + "\n")
    return dst


def per_pair(model: LoadedModel, images: LfwCenterCrop, pairs, sizes: list[int], device: torch.device,
             pair_batch: int) -> dict[int, float]:
    """The seeds' loop: every size re-reads, re-aligns and re-embeds both images of every pair.

    Pairs are batched (``pair_batch`` pairs = 2x images per forward) like the seeds' DataLoaders,
    so the comparison measures the caching and de-duplication, not batching.
    """
    y = np.array([p.same for p in pairs])
    out = {}
    for s in sizes:
        spec = DegradeSpec(s) if s < 112 else None
        scores = []
        for i in range(0, len(pairs), pair_batch):
            chunk = pairs[i : i + pair_batch]
            a = torch.stack([torch.from_numpy(images.load(p.rel1)).permute(2, 0, 1) for p in chunk]).to(device)
            b = torch.stack([torch.from_numpy(images.load(p.rel2)).permute(2, 0, 1) for p in chunk]).to(device)
            if spec is not None:
                b = degrade_batch(b, spec)
            e = torch.nn.functional.normalize(forward(model, torch.cat([a, b]), "fp32"), dim=1)
            scores += (e[: len(chunk)] * e[len(chunk) :]).sum(1).tolist()
        out[s] = M.roc_auc(np.array(scores), y)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs-per-fold", type=int, default=5)
    ap.add_argument("--sizes", default="8,12,16,20,28,112")
    ap.add_argument("--backbone", default="mobilefacenet")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-per-pair", action="store_true", help="only time lrfr (e.g. for all 6,000 pairs)")
    args = ap.parse_args()
    root = Path(os.environ.get("LRFR_DATA", "data")) / "lfw"
    if not (root / "pairs.txt").is_file():
        raise SystemExit(f"LFW not found at {root}; set LRFR_DATA")
    device = resolve_device(args.device)
    sizes = parse_sizes(args.sizes)
    torch.manual_seed(0)
    module = build_backbone(args.backbone).eval().to(device)
    model = LoadedModel(module=module, name=f"bench-{args.backbone}", backbone=args.backbone, embedding_size=512,
                        checkpoint=Path("-"), sha1="0" * 40, source="benchmark")
    images = LfwCenterCrop(root)
    with tempfile.TemporaryDirectory() as tmp:
        pf = subset_pairs(root / "pairs.txt", args.pairs_per_fold, Path(tmp) / "pairs_subset.txt")
        pairs, _ = read_pairs(pf)
        plan = plan_lfw(images, root, pf, setting="hr-lr", sizes=sizes, input_size=112, method="bicubic")
        ws = Workspace(Path(tmp) / "ws")
        n_req = sum(len(v) for v in plan.requests.values())

        def lrfr_eval() -> tuple[float, dict, object]:
            t = time.perf_counter()
            cache = EmbeddingCache(ws, model.cache_id, images.name, {"images": images.describe()})
            emb, stats = embed(model, images, plan.requests, cache, device=device, batch_size=args.batch_size, workers=args.workers)
            res = plan.score(emb)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t, res, stats

        cold_s, res, stats = lrfr_eval()
        warm_s, res2, stats2 = lrfr_eval()
        assert stats2.forward_images == 0 and res2 == res
        pp_s, pp_auc = None, None
        if not args.skip_per_pair:
            t = time.perf_counter()
            pp_auc = per_pair(model, images, pairs, sizes, device, max(1, args.batch_size // 2))
            if device.type == "cuda":
                torch.cuda.synchronize()
            pp_s = time.perf_counter() - t
            for s in sizes:
                assert abs(pp_auc[s] - res[str(s)]["auc"]) < 1e-3, (s, pp_auc[s], res[str(s)]["auc"])

    n_pairs = len(pairs)
    pp_fwd = 2 * n_pairs * len(sizes)
    print(f"LFW View 2 HR-LR, {n_pairs} pairs ({args.pairs_per_fold or 'all'} matched + mismatched per fold x 10 folds), "
          f"sizes {','.join(map(str, sizes))}, {args.backbone} (random weights), device {device}, "
          f"batch {args.batch_size}, {args.workers} decode workers")
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}")
    print()
    print("| way | images through the network | images decoded | seconds | pairs x sizes / s | speed-up vs per-pair |")
    print("|---|---:|---:|---:|---:|---:|")
    work = n_pairs * len(sizes)
    if pp_s is not None:
        print(f"| per-pair (seeds; {max(1, args.batch_size // 2)} pairs per batch) | {pp_fwd} | {pp_fwd} | {pp_s:.1f} | {work / pp_s:.1f} | 1.00x |")
    for label, s, st in (("lrfr, cold cache", cold_s, stats), ("lrfr, warm cache", warm_s, stats2)):
        ratio = f"{pp_s / s:.2f}x" if pp_s else "–"
        print(f"| {label} | {st.forward_images} | {st.images_loaded} | {s:.1f} | {work / s:.1f} | {ratio} |")
    print()
    print(f"(requested (image, size) embeddings: {n_req}; AUC per size, lrfr: "
          + ", ".join(f"{s}px {res[str(s)]['auc']:.4f}" for s in sizes)
          + ("; per-pair agrees within 1e-3" if pp_auc else "") + ")")


if __name__ == "__main__":
    main()
