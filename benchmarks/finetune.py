"""Benchmark: one `lrfr finetune` step per method against the plain classifier step, same backbone
and P×K batch, plus the share of octuplet's batch-hard mining in its step.

Each step is what the training loop runs: the task's forward on the raw uint8 batch (LR copies
made inside it by ``degrade_batch``), backward, and an SGD step over the task's parameter
groups. Reported: the median wall time of ``--steps`` timed steps after one warm-up step, and the
ratio to the classifier step (``ClassifierTask`` + arcface on the same HR batch; octuplet,
siamese and derivenet also embed one LR copy per face, so they see 2× the images).

Mining: ``batch_hard_blocks`` (distance matrix, masks, hardest positive/negative of the four
blocks) forward + backward on the ``2B × d`` embeddings of a ``--mining-batch`` (256) batch,
timed alone, divided by the octuplet step time at that batch (issue 11's target: under 5 %).

Usage: python benchmarks/finetune.py [--backbone tiny|mobilefacenet|ir50] [--p 8 --k 4] [--steps 3]
       [--mining-batch 256] [--threads 1] [--device cpu|cuda]
Print `uptime` with the figures: on shared cores the load moves them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from lrfr_cli.engine import resolve_device
from lrfr_cli.engine.tasks import ClassifierTask, StepContext
from lrfr_cli.finetune import METHODS, build_method, resolve_options
from lrfr_cli.finetune.base import batch_hard_blocks
from lrfr_cli.losses import build_head
from lrfr_cli.models import build_backbone


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(p: int, k: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (p * k, 3, 112, 112), dtype=np.uint8)).to(device)
    return {"images": images, "labels": torch.arange(p, device=device).repeat_interleave(k)}


def _task(method: str, backbone: str, emb: int, classes: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone(backbone, emb)
    if method == "classifier":
        return ClassifierTask(model, build_head("arcface", emb, classes)).to(device)
    cls = METHODS.get(method)
    opts = resolve_options(method, {})
    teacher = build_backbone(backbone, emb) if cls.needs_teacher else None
    return build_method(method, model, embedding_size=emb, num_classes=classes, lr_sizes=cls.default_lr_sizes, opts={},
                        loss=cls.identity_loss(None, (), opts), teacher=teacher).to(device)


def step_times(task: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, steps: int) -> list[float]:
    opt = torch.optim.SGD(task.param_groups(5e-4), lr=1e-3, momentum=0.9)
    task.train()
    times = []
    for i in range(steps + 1):  # the first step warms up allocators and kernels
        ctx = StepContext(step=i, epoch=0, seed=0, device=device)
        _sync(device)
        t0 = time.perf_counter()
        out = task(dict(batch), ctx)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return times


def mining_time(b: int, emb: int, device: torch.device, repeats: int = 5) -> float:
    labels = torch.arange(b // 4, device=device).repeat_interleave(4)
    labels = torch.cat([labels, labels])
    e = torch.randn(2 * b, emb, device=device, requires_grad=True)
    out = []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        blocks, _ = batch_hard_blocks(e, labels, 0.5)
        blocks.sum().backward()
        _sync(device)
        if i:
            out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--embedding-size", type=int, default=512)
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--classes", type=int, default=300)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--mining-batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    load = os.getloadavg()
    print(f"# finetune step benchmark: {args.backbone}, batch P×K = {args.p}×{args.k}, {args.steps} timed steps, "
          f"device {device}, threads {torch.get_num_threads()}, {platform.processor() or platform.machine()}, "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    batch = _batch(args.p, args.k, device)
    rows = []
    base = None
    for method in ("classifier", *METHODS):
        task = _task(method, args.backbone, args.embedding_size, args.classes, device)
        med = statistics.median(step_times(task, batch, device, args.steps))
        base = base or med
        rows.append((method, med))
    print("| step | images seen | median s/step | × classifier |")
    print("| --- | --- | --- | --- |")
    b = args.p * args.k
    for method, med in rows:
        seen = b if method in ("classifier", "distill") else 2 * b
        print(f"| {method} | {seen} | {med:.3f} | {med / base:.2f} |")

    mb = args.mining_batch
    mine = mining_time(mb, args.embedding_size, device)
    big = _batch(mb // 4, 4, device, seed=1)
    oct_step = statistics.median(step_times(_task("octuplet", args.backbone, args.embedding_size, args.classes, device), big, device, 1))
    load = os.getloadavg()
    print(f"\noctuplet mining at batch {mb} (2×{mb} embeddings of {args.embedding_size}-d, forward + backward): "
          f"{mine * 1e3:.1f} ms of a {oct_step:.2f} s step = {100 * mine / oct_step:.2f} % "
          f"(load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")


if __name__ == "__main__":
    main()
