"""Benchmark: the `lrfr train` loop vs a plain fp32 textbook loop, and JPEG vs --cache loading.

Part 1 — training images/s on synthetic 112×112 data, same model/head/batch in one run:
  * baseline: the textbook loop (float tensors already in memory, fp32, SGD, zero_grad/backward/step);
  * lrfr: `engine.loop.fit` with a `ClassifierTask` (uint8 batches through the DataLoader + sampler,
    handed raw to the task, which preprocesses on the device; one all-reduce + NaN check per step
    for the loss and its named terms, per-group LR schedule, metrics) in fp32, and on CUDA additionally
    bf16 + channels_last (+ --compile). Reported: img/s, ratio to the baseline, and on CUDA the MFU
    (model FLOPs from torch.utils.flop_counter / --peak-tflops).
Part 2 — the low-resolution recipes' cost, for the first model, through the same `fit` loop:
  * arcface without CRB (the same loop as "lrfr fp32" of part 1: its row there is this run);
  * arcface with Cross-Resolution Batches, mode copies (the task sees 2·batch images);
  * approach2 with CRB copies (Laplacian quality of all 2·batch images, inside the head).
  Reported per recipe: the median step time and, measured *inside* the step by timers around the
  stage (not by subtracting noisy totals), the share of the step spent in the CRB transform
  (`degrade_batch` + mixing) and in `laplacian_quality`. Issue 10's targets: CRB <= 10 %,
  quality <= 2 % of the step. On CUDA the device is synchronised around each timed stage.
Part 3 — data loading images/s over celeba_subset: decoding the JPEG folder vs the packed uint8
memmap (`--cache`), same workers and batch.

Usage: python benchmarks/train.py [--device cpu|cuda] [--batch-size N] [--steps N] [--models ir50,mobilefacenet]
       [--lr-sizes 8,12,16,20,24] [--no-recipes]
CPU defaults are small (batch 8, 2 timed steps) so the run ends in < 3 minutes on 2 cores;
on CUDA the default batch is 128. Issue 10's figures: --models mobilefacenet --batch-size 128
--threads 1 (about 10 minutes on 2 shared cores). LRFR_DATA must point at the shared data for part 3.
Print `uptime` with every figure: on shared cores the load moves the numbers.
"""

from __future__ import annotations

import argparse
import collections
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

import lrfr_cli.data.crb as crb_module
import lrfr_cli.losses.approach as approach_module
from lrfr_cli.data.batch_fields import CrossResolutionBatches
from lrfr_cli.data.cache import CachedDataset, build_cache
from lrfr_cli.data.datasets import (
    EpochBatchSampler,
    FaceDataset,
    ImageFileDataset,
    resolve_training_data,
)
from lrfr_cli.engine import dist_info, resolve_device
from lrfr_cli.engine.loop import LoopConfig, fit
from lrfr_cli.engine.tasks import ClassifierTask
from lrfr_cli.losses import build_head
from lrfr_cli.models import build_backbone

CLASSES = 1000


class Synthetic(FaceDataset):
    """Random faces held in memory: measures the loop, not the disk."""

    def __init__(self, n: int, classes: int = CLASSES) -> None:
        g = np.random.default_rng(0)
        self.pool = g.integers(0, 256, (64, 112, 112, 3), dtype=np.uint8)
        self.labels = g.integers(0, classes, n)

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


class StageTimer:
    """Wall time of named stages inside each training step.

    ``wrap(name, fn)`` times every call of ``fn`` (synchronising CUDA before and after, so the
    time is the stage's own); ``step`` is fit()'s progress callback, called once when the loop
    starts and once after every optimiser step: it closes the step's wall time and its stage sums.
    """

    def __init__(self, dev: torch.device) -> None:
        self.dev = dev
        self.current: dict[str, float] = collections.defaultdict(float)
        self.stages: list[dict[str, float]] = []
        self.steps: list[float] = []
        self._t: float | None = None

    def wrap(self, name: str, fn):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            sync(self.dev)
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.dev)
            self.current[name] += time.perf_counter() - t
            return out

        return timed

    def step(self, advance: int = 0, total: int | None = None, **info) -> None:  # type: ignore[no-untyped-def]
        sync(self.dev)
        now = time.perf_counter()
        if total is None and self._t is not None:
            self.steps.append(now - self._t)
            self.stages.append(dict(self.current))
        self.current.clear()
        self._t = now


RECIPES = (("arcface", False), ("arcface", True), ("approach2", True))


def recipe_cost(model_name: str, loss: str, crb: bool, lr_sizes: list[int], batch: int, steps: int, warmup: int, dev: torch.device) -> dict[str, float]:
    """Median step time and the median per-step share of the CRB transform, ``degrade_batch`` and
    ``laplacian_quality`` for one recipe (fp32, CRB mode copies)."""
    timer = StageTimer(dev)
    torch.manual_seed(0)
    transforms = [timer.wrap("crb", CrossResolutionBatches(lr_sizes, mode="copies"))] if crb else []
    task = ClassifierTask(build_backbone(model_name), build_head(loss, 512, CLASSES), transforms=transforms)
    cfg = LoopConfig(global_batch=batch, max_steps=warmup + steps, lr=0.01, schedule="constant",
                     checkpoint_every=10**9, log_every=1, workers=0)
    # Time the library's own functions where the step calls them (module attributes), then restore.
    saved = (crb_module.degrade_batch, approach_module.laplacian_quality)
    crb_module.degrade_batch = timer.wrap("degrade", crb_module.degrade_batch)
    approach_module.laplacian_quality = timer.wrap("quality", approach_module.laplacian_quality)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            fit(task, Synthetic(batch * (warmup + steps)), cfg, Path(tmp), device=dev, info=dist_info(), config={}, progress=timer.step)
    finally:
        crb_module.degrade_batch, approach_module.laplacian_quality = saved
    steps_s = timer.steps[warmup:]
    out = {"step_s": statistics.median(steps_s), "img_s": batch / statistics.median(steps_s)}
    for name in ("crb", "degrade", "quality"):
        out[f"{name}_s"] = statistics.median(st.get(name, 0.0) for st in timer.stages[warmup:])
        out[f"{name}_share"] = statistics.median(st.get(name, 0.0) / s for st, s in zip(timer.stages[warmup:], steps_s))
    return out


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
    ap.add_argument("--lr-sizes", default="16", help="CRB heights for part 2, e.g. 8,12,16,20,24 (default 16, as lrfr train)")
    ap.add_argument("--no-recipes", action="store_true", help="skip part 2 (the recipes' cost)")
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
    if not args.no_recipes:
        name = args.models.split(",")[0]
        sizes = [int(v) for v in args.lr_sizes.split(",")]
        print(f"recipes: {name}, batch {batch} (CRB copies: the network sees {2 * batch} images), LR sizes {sizes}, fp32; "
              "shares measured inside the step (targets: CRB <= 10 %, quality <= 2 %)")
        print(f"{'recipe':<26} {'step s':>8} {'img/s':>8} {'CRB ms':>8} {'CRB %':>7} {'degrade %':>10} {'quality ms':>11} {'quality %':>10}")
        for loss, crb in RECIPES:
            r = recipe_cost(name, loss, crb, sizes, batch, args.steps, args.warmup, dev)
            label = f"{loss}{' + CRB copies' if crb else ' (no CRB)'}"
            print(f"{label:<26} {r['step_s']:>8.3f} {r['img_s']:>8.1f} {1e3 * r['crb_s']:>8.1f} {100 * r['crb_share']:>6.2f}% "
                  f"{100 * r['degrade_share']:>9.2f}% {1e3 * r['quality_s']:>11.1f} {100 * r['quality_share']:>9.2f}%")
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
