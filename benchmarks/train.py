"""Benchmark: the `lrfr train` loop vs a plain fp32 textbook loop, and JPEG vs --cache loading.

Part 1 — training images/s on synthetic 112×112 data, same model/head/batch in one run:
  * baseline: the textbook loop (float tensors already in memory, fp32, SGD, zero_grad/backward/step);
  * lrfr: `engine.loop.fit` with a `ClassifierTask` (uint8 batches through the DataLoader + sampler,
    handed raw to the task, which preprocesses on the device; one all-reduce + NaN check per step
    for the loss and its named terms, per-group LR schedule, metrics) in fp32, and on CUDA additionally
    bf16 + channels_last (+ --compile). Reported: img/s, ratio to the baseline, and on CUDA the MFU
    (model FLOPs from torch.utils.flop_counter / --peak-tflops).
Part 2 — data loading images/s over celeba_subset: decoding the JPEG folder vs the packed uint8
memmap (`--cache`), same workers and batch.

Usage: python benchmarks/train.py [--device cpu|cuda] [--batch-size N] [--steps N] [--models ir50,mobilefacenet]
CPU defaults are small (batch 8, 2 timed steps) so the run ends in < 3 minutes on 2 cores;
on CUDA the default batch is 128. LRFR_DATA must point at the shared data for part 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from lrfr_cli.data.cache import CachedDataset, build_cache
from lrfr_cli.data.datasets import (
    EpochBatchSampler,
    FaceDataset,
    ImageFileDataset,
    resolve_training_data,
)
from lrfr_cli.engine import dist_info, resolve_device
from lrfr_cli.engine.loop import ClassifierTask, LoopConfig, fit
from lrfr_cli.losses import build_head
from lrfr_cli.models import build_backbone

CLASSES = 1000


class Synthetic(FaceDataset):
    """Random faces held in memory: measures the loop, not the disk."""

    def __init__(self, n: int) -> None:
        g = np.random.default_rng(0)
        self.pool = g.integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
        self.labels = g.integers(0, CLASSES, n)

    def image(self, i: int) -> np.ndarray:
        return self.pool[i % 64]


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def textbook(model_name: str, batch: int, steps: int, warmup: int, dev: torch.device) -> float:
    torch.manual_seed(0)
    model = build_backbone(model_name).to(dev)
    head = build_head("arcface", 512, CLASSES).to(dev)
    opt = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 112, 112, device=dev)
    y = torch.randint(0, CLASSES, (batch,), device=dev)
    times = []
    for i in range(warmup + steps):
        sync(dev)
        t = time.perf_counter()
        loss = F.cross_entropy(head(model(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def ours(model_name: str, batch: int, steps: int, warmup: int, dev: torch.device, precision: str, channels_last: bool, compile_: bool) -> float:
    torch.manual_seed(0)
    task = ClassifierTask(build_backbone(model_name), build_head("arcface", 512, CLASSES))
    cfg = LoopConfig(global_batch=batch, max_steps=warmup + steps, lr=0.01, schedule="constant", precision=precision,
                     channels_last=channels_last, compile=compile_, checkpoint_every=10**9, log_every=1, workers=0)
    with tempfile.TemporaryDirectory() as tmp:
        fit(task, Synthetic(batch * (warmup + steps)), cfg, Path(tmp), device=dev, info=dist_info(), config={})
        rates = [json.loads(ln)["images_per_s"] for ln in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(rates[warmup:])


def train_flops(model_name: str, dev: torch.device) -> float:
    """FLOPs of one forward+backward of one image (counted on a batch of 2)."""
    model = build_backbone(model_name).to(dev)
    x = torch.randn(2, 3, 112, 112, device=dev)
    with FlopCounterMode(display=False) as fc:
        model(x).sum().backward()
    return fc.get_total_flops() / 2


def loader_rate(ds: FaceDataset, batch: int, workers: int, n_batches: int) -> float:
    sampler = EpochBatchSampler(len(ds), batch, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, prefetch_factor=4 if workers else None)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    n = 0
    for _ in range(n_batches):
        images, _ = next(it)
        n += images.shape[0]
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--models", default="mobilefacenet,ir50")
    ap.add_argument("--batch-size", type=int, default=None, help="default 8 on CPU (ir50 on 2 shared cores is ~16 s a step), 128 on CUDA")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per measurement (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="CUDA: also torch.compile the bf16 loop")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU (H100 SXM dense bf16: 989)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--loader-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default); 1 is steadier on shared cores")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    batch = args.batch_size or (128 if dev.type == "cuda" else 8)
    hw = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    print(f"device: {dev} ({hw}); torch {torch.__version__}; batch {batch}; median of {args.steps} steps after {args.warmup} warm-up")
    print()
    print(f"{'model':<14} {'loop':<34} {'img/s':>9} {'vs textbook':>12} {'TFLOP/s':>8} {'MFU':>6}")
    for name in args.models.split(","):
        flops = train_flops(name, dev)
        base = textbook(name, batch, args.steps, args.warmup, dev)
        rows = [("textbook fp32", base), ("lrfr fp32", ours(name, batch, args.steps, args.warmup, dev, "fp32", False, False))]
        if dev.type == "cuda":
            rows.append(("lrfr bf16+channels_last", ours(name, batch, args.steps, args.warmup, dev, "bf16", True, False)))
            if args.compile:
                rows.append(("lrfr bf16+channels_last+compile", ours(name, batch, args.steps, args.warmup + 3, dev, "bf16", True, True)))
        for label, rate in rows:
            tflops = rate * flops / 1e12
            mfu = f"{100 * tflops / args.peak_tflops:5.1f}%" if dev.type == "cuda" else "-"
            print(f"{name:<14} {label:<34} {rate:>9.1f} {rate / base:>11.2f}x {tflops:>8.3f} {mfu:>6}")
    print()
    data = Path(os.environ.get("LRFR_DATA", "data")) / "celeba_subset" / "images"
    if not data.is_dir():
        print(f"loader part skipped: {data} not found (set LRFR_DATA)")
        return
    ts = resolve_training_data(data, None, Path("."))
    jpeg = ImageFileDataset(ts.root, ts.entries)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build_cache(jpeg, Path(tmp), workers=args.workers)
        pack_s = time.perf_counter() - t
        cached = CachedDataset(Path(tmp))
        lb = 128
        r_jpeg = loader_rate(jpeg, lb, args.workers, args.loader_batches)
        r_cache = loader_rate(cached, lb, args.workers, args.loader_batches)
    print(f"loader: celeba_subset ({len(ts)} JPEGs, 112x112), batch {lb}, {args.workers} workers, {args.loader_batches} batches")
    print(f"{'source':<28} {'img/s':>9} {'vs JPEG':>8}")
    print(f"{'JPEG folder (PIL decode)':<28} {r_jpeg:>9.0f} {1.0:>7.2f}x")
    print(f"{'--cache uint8 memmap':<28} {r_cache:>9.0f} {r_cache / r_jpeg:>7.2f}x")
    print(f"(packing the cache once took {pack_s:.1f} s)")


if __name__ == "__main__":
    main()
