"""Benchmark: full classifier under DDP vs the sharded classifier, 2 gloo processes on the CPU.

Both runs train the same thing for a few steps: a linear "backbone" (features → 512-d embeddings,
under DDP in both) and an ArcFace head over --classes identities, SGD with momentum, batch
--batch per process. Per step it reports the bytes each process hands to collectives, *counted*
as they happen (DDP's gradient buckets through a communication hook; the sharded classifier's
all-gathers and all-reduces through its own log), the bytes a ring algorithm then sends per
process (all-reduce 2(W−1)/W·n, all-gather (W−1)·part, reduce-scatter (W−1)/W·n), the step time
(median, min) and the classifier's memory per process (weights + gradient + momentum). The load
average is printed before and after: on a shared machine the times move with it, the bytes do not.
Then the same formulas "on paper" for --paper-classes on --paper-ranks GPUs.

Usage: python benchmarks/sharded.py [--classes 100000] [--dim 512] [--batch 64] [--steps 5]
       [--threads 1] [--sample-rate 1.0] [--paper-classes 2000000 --paper-ranks 8 --paper-batch 128]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lrfr_cli.losses import build_head
from lrfr_cli.losses.sharded import COMM, build_sharded, mark_ddp_ignored

FEATURES = 128
WORLD = 2


def ring_bytes(op: str, payload: int, world: int) -> float:
    """Bytes one process sends for a collective of ``payload`` bytes (ring algorithms)."""
    if op.startswith("all_gather"):
        return (world - 1) * payload
    if op.startswith("reduce_scatter"):
        return (world - 1) / world * payload
    return 2 * (world - 1) / world * payload  # all-reduce


class Net(nn.Module):
    def __init__(self, dim: int, head: nn.Module) -> None:
        super().__init__()
        self.model = nn.Linear(FEATURES, dim)
        self.head = head

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.head.loss(self.model(x), labels)


def _counting_hook(log: list[tuple[str, int]]) -> Any:
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    def hook(state, bucket):  # type: ignore[no-untyped-def]  # DDP checks real (not string) annotations: none here
        buf = bucket.buffer()
        log.append(("all_reduce DDP gradient buckets", buf.numel() * buf.element_size()))
        return allreduce_hook(state, bucket)

    return hook


def _worker(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    results: dict[str, Any] = {}
    try:
        for mode in ("full", "sharded"):
            torch.manual_seed(0)
            if mode == "full":
                head: nn.Module = build_head("arcface", args.dim, args.classes)
                head_w = head.weight
            else:
                head = build_sharded("arcface", args.dim, args.classes, sample_rate=args.sample_rate)
                head_w = head.weight
            net = Net(args.dim, head)
            mark_ddp_ignored(net)
            ddp = nn.parallel.DistributedDataParallel(net, bucket_cap_mb=25)
            ddp_log: list[tuple[str, int]] = []
            ddp.register_comm_hook(None, _counting_hook(ddp_log))
            opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            g = torch.Generator().manual_seed(1 + rank)
            times, per_step = [], []
            for step in range(args.warmup + args.steps):
                x = torch.randn(args.batch, FEATURES, generator=g)
                y = torch.randint(0, args.classes, (args.batch,), generator=g)
                ddp_log.clear()
                COMM.clear()
                COMM.enabled = True
                dist.barrier()
                t0 = time.perf_counter()
                loss = ddp(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                dist.barrier()
                dt = time.perf_counter() - t0
                COMM.enabled = False
                if step >= args.warmup:
                    times.append(dt)
                    per_step.append(list(ddp_log) + list(COMM.records))
            mem = head_w.numel() * head_w.element_size() * 3  # weight + gradient + SGD momentum
            results[mode] = {"times": times, "comm": per_step[-1], "mem": mem, "rows": head_w.shape[0]}
            del ddp, net, head, opt
        if rank == 0:
            torch.save(results, Path(out) / "res.pt")
    finally:
        dist.destroy_process_group()


def paper(classes: int, dim: int, ranks: int, batch: int, sample_rate: float = 1.0) -> dict[str, dict[str, float]]:
    """Per-process bytes per step and classifier memory (fp32 weights + grad + SGD momentum)."""
    w = classes * dim * 4
    n = ranks * batch
    part = batch * (dim + 1) * 4 + batch * 8  # embeddings + one margin term (fp32) + labels (int64)
    full_send = ring_bytes("all_reduce", w, ranks)
    sh_comm = [("all_gather", part), ("reduce_scatter", n * (dim + 1) * 4), ("all_reduce", n * 4), ("all_reduce", n * 4), ("all_reduce", n * 8)]
    sh_send = sum(ring_bytes(op, b, ranks) for op, b in sh_comm)
    local = -(-classes // ranks)
    return {
        "full": {"payload": w, "send": full_send, "mem": 3 * w, "logits": batch * classes * 4 * 2},
        "sharded": {"payload": sum(b for _, b in sh_comm), "send": sh_send, "mem": 3 * local * dim * 4,
                    "logits": n * max(1, int(sample_rate * local)) * 4 * 2},
    }


def _mb(b: float) -> str:
    return f"{b / 1e6:,.3f} MB" if b < 1e9 else f"{b / 1e9:,.2f} GB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=100_000, help="identities (class weights)")
    ap.add_argument("--dim", type=int, default=512, help="embedding size")
    ap.add_argument("--batch", type=int, default=64, help="batch per process")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--sample-rate", type=float, default=1.0, help="sharded classifier's class sampling rate")
    ap.add_argument("--paper-classes", type=int, default=2_000_000, help="identities for the on-paper table")
    ap.add_argument("--paper-ranks", type=int, default=8, help="GPUs for the on-paper table")
    ap.add_argument("--paper-batch", type=int, default=128, help="batch per GPU for the on-paper table")
    args = ap.parse_args()

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as out, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        mp.spawn(_worker, args=(port, args, out), nprocs=WORLD, join=True)
        res = torch.load(Path(out) / "res.pt", weights_only=False)
    load_after = os.getloadavg()

    print(f"# sharded vs full classifier: {WORLD} gloo processes, {args.classes:,} classes × {args.dim}-d, batch {args.batch}/process, "
          f"arcface, SGD momentum, {args.threads} thread(s)/process, sample rate {args.sample_rate}")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"load average before {load_before[0]:.2f} {load_before[1]:.2f}, after {load_after[0]:.2f} {load_after[1]:.2f}")
    print()
    print("| classifier | collective (per step, per process) | payload | ring send |")
    print("|---|---|---:|---:|")
    totals = {}
    for mode in ("full", "sharded"):
        agg: dict[str, int] = {}
        for op, b in res[mode]["comm"]:
            agg[op] = agg.get(op, 0) + b
        pay = send = 0.0
        for op, b in agg.items():
            sent = ring_bytes(op, b, WORLD)
            pay, send = pay + b, send + sent
            print(f"| {mode} | {op} | {_mb(b)} | {_mb(sent)} |")
        totals[mode] = (pay, send)
        print(f"| **{mode}** | **total** | **{_mb(pay)}** | **{_mb(send)}** |")
    print()
    print("| classifier | class rows / process | weights+grad+momentum / process | step median | step min |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("full", "sharded"):
        t = res[mode]["times"]
        print(f"| {mode} | {res[mode]['rows']:,} | {_mb(res[mode]['mem'])} | {statistics.median(t):.3f} s | {min(t):.3f} s |")
    ratio = totals["full"][1] / max(totals["sharded"][1], 1)
    backbone = sum(b for op, b in res["sharded"]["comm"] if op.startswith("all_reduce DDP"))
    head_only = (totals["full"][1] - backbone) / max(totals["sharded"][1] - backbone, 1)
    print(f"\nbytes sent per step: sharded is {ratio:,.0f}× less than full with the backbone's {_mb(backbone)} all-reduce "
          f"(identical in both), {head_only:,.0f}× for the classifier alone.")

    p = paper(args.paper_classes, args.dim, args.paper_ranks, args.paper_batch, args.sample_rate)
    print(f"\n# on paper: {args.paper_classes:,} classes × {args.dim}-d fp32 on {args.paper_ranks} GPUs, batch {args.paper_batch}/GPU")
    print("| classifier | collective payload / step | ring send / GPU / step | weights+grad+momentum / GPU | logits+softmax / GPU |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("full", "sharded"):
        v = p[mode]
        print(f"| {mode} | {_mb(v['payload'])} | {_mb(v['send'])} | {_mb(v['mem'])} | {_mb(v['logits'])} |")
    check = paper(args.classes, args.dim, WORLD, args.batch, args.sample_rate)
    print(f"\n(the same formulas at the measured size: full {_mb(check['full']['send'])}, sharded {_mb(check['sharded']['send'])} sent per process "
          "and step, backbone excluded; they assume NCCL's reduce-scatter for the embedding gradient, which gloo replaces by an all-reduce)")


if __name__ == "__main__":
    main()
