"""Benchmark: `lrfr train` vs insightface's arcface_torch, side by side on one GPU (issue 15).

Same machine, same sitting, same backbone (IResNet-50), batch (128), class count (93,431, as
MS1MV3), margin (ArcFace m=0.5, s=64), optimiser (SGD 0.1, momentum 0.9, wd 5e-4), precision
(fp16 autocast + GradScaler) and gradient clipping (norm 5):

* **peer**: arcface_torch's own ``train_v2.py`` with its synthetic config
  (``configs/bench_synthetic_r50.py``: one random image repeated, no decoding), launched as its
  README says (``torchrun --standalone --nproc_per_node 1``, ``PYTHONPATH=../stubs:.``). Its loop
  runs one epoch of 1,000,000 images whatever the config's step count, so this script stops it
  once it has logged enough steps. Its own ``Speed N samples/sec`` lines (every 10 steps) are parsed.
* **lrfr**: ``lrfr train`` on a synthetic insightface RecordIO set written here (``train.rec`` +
  ``train.idx``, 64 distinct JPEG faces repeated, labels spread over all 93,431 classes, so
  ``num_classes`` is exactly the peer's), read through ``--cache`` (packed once into the uint8
  memmap, before the timed steps). Images/s come from the run's ``metrics.jsonl`` windows.

Steady state: the first ``--warmup`` steps (default 50, as the peers README says) are skipped by
both; a rate is total images / total seconds over the remaining windows (the harmonic mean of
the windows' rates). MFU = 3 × forward FLOPs per image × images/s ÷ the GPU's dense bf16/fp16
peak, with the forward FLOPs of IR-50 at 112×112 counted by ``torch.utils.flop_counter`` on the
CPU plus the classifier's 2·512·93,431 (the 3× stands for forward + the two backward matmuls).

Differences the matched row cannot remove (listed so the ratio is read correctly): the peer's
classifier runs in fp32 outside autocast while lrfr's head runs under autocast; the peer's data
is one tensor already normalised in memory while lrfr reads uint8 faces from a memmap through
its sampler and normalises on the GPU; the peer clips the backbone's gradient only, lrfr all of it.

After the matched row, a sweep of lrfr settings (bf16, channels_last, compile, batch 256/512).
``--profile ROW`` runs that row's settings in-process under ``torch.profiler`` and prints where
the GPU time goes (do it before tuning).

Usage:
    python benchmarks/vs_arcface_torch.py --dry-run            # CPU: commands + IR-50 FLOPs, no GPU needed
    python benchmarks/vs_arcface_torch.py                      # GPU: peer + matched row + sweep
    python benchmarks/vs_arcface_torch.py --rows match,bf16-cl --no-peer
    python benchmarks/vs_arcface_torch.py --profile bf16-cl
The peer is read from ``--peers`` (default ``$LRFR_PEERS``, else ``.peers/`` in the repository,
else ``../shared/peers``): the folder holding ``arcface_torch/`` and ``stubs/``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = 93_431  # MS1MV3's identities, the peer config's num_classes
EMBEDDING = 512
PEER_CONFIG = "configs/bench_synthetic_r50.py"
PEER_SPEED = re.compile(r"Speed\s+([0-9.]+)\s+samples/sec.*?Global Step:\s*(\d+)")

# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, from NVIDIA's data sheets. Matched
# on torch.cuda.get_device_name(); anything else needs --peak-tflops.
PEAKS = [
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM5 / "H100 80GB HBM3"
    ("GH200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
]


@dataclass
class Row:
    """One lrfr setting of the sweep."""

    name: str
    precision: str
    batch: int = 128
    channels_last: bool = False
    compile: bool = False
    clip_grad: float | None = None
    note: str = ""

    def flags(self) -> list[str]:
        out = ["--precision", self.precision, "--batch-size", str(self.batch)]
        if self.channels_last:
            out.append("--channels-last")
        if self.compile:
            out.append("--compile")
        if self.clip_grad:
            out += ["--clip-grad", str(self.clip_grad)]
        return out


ROWS = {r.name: r for r in [
    Row("match", "fp16", 128, clip_grad=5.0, note="the peer's settings: fp16 + GradScaler, batch 128, clip 5"),
    Row("bf16", "bf16", 128),
    Row("bf16-cl", "bf16", 128, channels_last=True),
    Row("bf16-cl-compile", "bf16", 128, channels_last=True, compile=True),
    Row("bf16-cl-b256", "bf16", 256, channels_last=True),
    Row("bf16-cl-b512", "bf16", 512, channels_last=True),
    Row("bf16-cl-compile-b256", "bf16", 256, channels_last=True, compile=True),
    Row("bf16-cl-compile-b512", "bf16", 512, channels_last=True, compile=True),
]}


@dataclass
class Result:
    name: str
    settings: str
    images_per_s: float | None
    median_window: float | None
    windows: int
    seconds: float
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- FLOPs and peak
def forward_flops(backbone: str = "ir50", classes: int = CLASSES) -> dict[str, float]:
    """Forward FLOPs of one 112×112 image: the backbone counted by FlopCounterMode on the CPU
    (convolutions and matmuls, 2 FLOPs per multiply-add), plus the classifier's cosine logits."""
    from torch.utils.flop_counter import FlopCounterMode

    from lrfr_cli.models import build_backbone

    model = build_backbone(backbone, EMBEDDING).eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    body = fc.get_total_flops() / 2
    head = 2.0 * EMBEDDING * classes
    return {"backbone": body, "head": head, "total": body + head}


def peak_tflops(override: float | None) -> tuple[float, str]:
    if override:
        return override, "--peak-tflops"
    name = torch.cuda.get_device_name()
    for key, value in PEAKS:
        if key in name:
            return value, f"data-sheet peak for {key}"
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (its dense bf16 tensor-core peak in TFLOP/s)")


def mfu(images_per_s: float | None, flops: float, peak: float) -> float | None:
    return None if not images_per_s else 3.0 * flops * images_per_s / (peak * 1e12)


# --------------------------------------------------------------------------- synthetic data
def write_synthetic_recordio(folder: Path, n: int, classes: int = CLASSES, seed: int = 0) -> Path:
    """An insightface-format RecordIO set of ``n`` faces whose labels cover ``classes`` classes.

    64 distinct smooth random faces (JPEG, quality 90) are repeated; each record gets a random
    label, and record 1 gets the last class so that max label + 1 = ``classes``. Written with
    lrfr's own ``pack_record`` framing; done once per size (a marker file records what was made).
    """
    import cv2

    from lrfr_cli.data.recordio import MAGIC, pack_record

    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "made.json"
    want = {"n": n, "classes": classes, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == want:
        return folder
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(64):
        small = rng.integers(0, 256, (14, 14, 3), dtype=np.uint8)
        face = cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC)
        ok, buf = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        pool.append(buf.tobytes())
    labels = rng.integers(0, classes, n)
    labels[0] = classes - 1
    magic = struct.pack("<I", MAGIC)

    def frame(payload: bytes) -> bytes:
        if magic in payload:  # would need dmlc's split framing; cannot happen for these headers, checked anyway
            raise RuntimeError("a synthetic record contains the RecordIO magic number")
        return magic + struct.pack("<I", len(payload)) + payload + b"\0" * ((-len(payload)) % 4)

    lines = []
    with open(folder / "train.rec", "wb") as rec:
        lines.append("0\t0")
        rec.write(frame(pack_record([n + 1, n + 1], b"")))
        for k in range(1, n + 1):
            lines.append(f"{k}\t{rec.tell()}")
            rec.write(frame(pack_record(float(labels[k - 1]), pool[k % 64], key=k)))
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    marker.write_text(json.dumps(want))
    return folder


# --------------------------------------------------------------------------- the peer
def find_peers(arg: str | None) -> Path:
    for cand in (arg, os.environ.get("LRFR_PEERS"), REPO / ".peers", REPO.parent / "shared" / "peers"):
        if cand and (Path(cand) / "arcface_torch" / "train_v2.py").is_file():
            return Path(cand).resolve()
    raise SystemExit("arcface_torch not found: pass --peers DIR (the folder holding arcface_torch/ and stubs/), set "
                     "LRFR_PEERS, or copy ../shared/peers to .peers/ (scripts/gpu_session.sh prepare does)")


def peer_command(peers: Path) -> tuple[list[str], Path, dict[str, str]]:
    env = dict(os.environ, PYTHONPATH=f"{peers / 'stubs'}:.", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train_v2.py", PEER_CONFIG]
    return cmd, peers / "arcface_torch", env


def steady_rate(windows: list[tuple[int, float]], warmup: int, step_images: int, per_window: int) -> tuple[float | None, float | None, int]:
    """(images/s over the windows past ``warmup``, their median rate, how many): each window of
    ``per_window`` steps took per_window·step_images / rate seconds."""
    keep = [r for s, r in windows if s > warmup and r > 0]
    if not keep:
        return None, None, 0
    images = len(keep) * per_window * step_images
    seconds = sum(per_window * step_images / r for r in keep)
    return images / seconds, statistics.median(keep), len(keep)


def run_peer(peers: Path, steps: int, warmup: int, timeout: float, log: Path) -> Result:
    """Run the peer until it logged ``warmup + steps`` steps, then stop its process group."""
    cmd, cwd, env = peer_command(peers)
    t0 = time.time()
    windows: list[tuple[int, float]] = []
    error = None
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                fh.write(line)
                m = PEER_SPEED.search(line)
                if m:
                    windows.append((int(m.group(2)), float(m.group(1))))
                    if windows[-1][0] >= warmup + steps:
                        break
                if time.time() - t0 > timeout:
                    error = f"timed out after {timeout:.0f} s"
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    if not windows and error is None:
        error = f"no 'Speed' lines (exit code {proc.returncode}); see {log}"
    rate, med, n = steady_rate(windows, warmup, 128, 10)
    return Result("arcface_torch", "r50, fp16 (backbone), fp32 classifier, batch 128, clip 5", rate, med, n, time.time() - t0, error)


# --------------------------------------------------------------------------- lrfr
def lrfr_command(row: Row, data: Path, ws: Path, steps: int, workers: int) -> list[str]:
    lrfr = Path(sys.executable).with_name("lrfr")
    exe = [str(lrfr)] if lrfr.exists() else [sys.executable, "-m", "lrfr_cli"]
    return [*exe, "-w", str(ws), "--quiet", "--json", "train", "--data", str(data), "--backbone", "ir50", "--loss", "arcface",
            "--lr", "0.1", "--momentum", "0.9", "--weight-decay", "5e-4", "--max-steps", str(steps), "--log-every", "10",
            "--checkpoint-every", str(10 * steps), "--workers", str(workers), "--cache", "--device", "cuda",
            "--run", f"bench-{row.name}", "--force", *row.flags()]


def run_lrfr(row: Row, data: Path, ws: Path, steps: int, warmup: int, workers: int, timeout: float, log: Path) -> Result:
    cmd = lrfr_command(row, data, ws, steps, workers)
    t0 = time.time()
    error = None
    with open(log, "w") as fh:
        fh.write(" ".join(cmd) + "\n")
        fh.flush()
        try:
            p = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            if p.returncode != 0:
                error = f"exit code {p.returncode}; see {log}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
    metrics = ws / "runs" / f"bench-{row.name}" / "metrics.jsonl"
    windows = []
    if metrics.is_file():
        for ln in metrics.read_text().splitlines():
            rec = json.loads(ln)
            if "images_per_s" in rec:
                windows.append((int(rec["step"]), float(rec["images_per_s"])))
    rate, med, n = steady_rate(windows, warmup, row.batch, 10)
    settings = f"ir50, {row.precision}, batch {row.batch}" + (", channels_last" if row.channels_last else "") + \
        (", compile" if row.compile else "") + (f", clip {row.clip_grad:g}" if row.clip_grad else "")
    return Result(f"lrfr {row.name}", settings, rate, med, n, time.time() - t0, error)


# --------------------------------------------------------------------------- profile
def profile_row(row: Row, steps: int, workers: int, work: Path, out_dir: Path) -> None:
    """``row``'s settings through the lrfr loop (``engine.loop.fit``) in-process, under
    torch.profiler for 10 steps after 20 warm-up steps; prints the top kernels by GPU time and
    the share of the step the GPU is busy."""
    from torch.profiler import ProfilerActivity, profile, schedule

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train import Synthetic  # benchmarks/train.py: random faces held in memory

    from lrfr_cli.engine import dist_info, resolve_device
    from lrfr_cli.engine.loop import LoopConfig, fit
    from lrfr_cli.engine.tasks import ClassifierTask
    from lrfr_cli.losses import build_head
    from lrfr_cli.models import build_backbone

    dev = resolve_device("cuda")
    torch.manual_seed(0)
    task = ClassifierTask(build_backbone("ir50", EMBEDDING), build_head("arcface", EMBEDDING, CLASSES))
    total = max(steps, 35)
    cfg = LoopConfig(global_batch=row.batch, max_steps=total, lr=0.1, precision=row.precision, channels_last=row.channels_last,
                     compile=row.compile, clip_grad=row.clip_grad, checkpoint_every=10 * total, workers=workers)
    sched = schedule(wait=20, warmup=3, active=10, repeat=1)
    t_steps: list[float] = []
    last = [time.perf_counter()]
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], schedule=sched, record_shapes=False) as prof:
        def progress(n: int = 0, **_: Any) -> None:
            if n == 1:
                now = time.perf_counter()
                t_steps.append(now - last[0])
                last[0] = now
                prof.step()

        fit(task, Synthetic(row.batch * (total + 1), CLASSES), cfg, work / f"profile-{row.name}", device=dev, info=dist_info(), config={}, progress=progress)
    shutil.rmtree(work / f"profile-{row.name}", ignore_errors=True)
    avg = prof.key_averages()
    table = avg.table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=70)
    gpu_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)) for e in avg
                 if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    wall = sum(t_steps[23:33])
    text = (f"profile of lrfr {row.name} ({row.precision}, batch {row.batch}, channels_last={row.channels_last}, compile={row.compile}):\n"
            f"10 profiled steps: wall {wall * 1e3:.1f} ms, GPU kernels {gpu_us / 1e3:.1f} ms "
            f"({100 * gpu_us / 1e6 / max(wall, 1e-9):.0f} % busy; the rest is host overhead, syncs and data waits)\n{table}")
    print(text)
    (out_dir / f"profile-{row.name}.txt").write_text(text)


def tail(log: Path, n: int = 40) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return "\n".join(f"    | {ln}" for ln in lines[-n:])


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="print the commands and IR-50's FLOPs, run nothing (works without a GPU)")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"lrfr settings to time, comma-separated, in order: {', '.join(ROWS)}")
    ap.add_argument("--no-peer", action="store_true", help="skip arcface_torch (e.g. a second call that only sweeps lrfr)")
    ap.add_argument("--peers", default=None, help="folder holding arcface_torch/ and stubs/ (default $LRFR_PEERS, .peers/, ../shared/peers)")
    ap.add_argument("--steps", type=int, default=200, help="timed steps per run, after --warmup")
    ap.add_argument("--warmup", type=int, default=50, help="steps skipped at the start of every run (compile, cudnn autotuning, allocator)")
    ap.add_argument("--workers", type=int, default=8, help="lrfr's data-loading workers")
    ap.add_argument("--timeout", type=float, default=420, help="seconds allowed per run")
    ap.add_argument("--work", default=str(REPO / ".bench" / "vs_arcface_torch"), help="folder for the synthetic RecordIO set and the lrfr workspace")
    ap.add_argument("--out", default=None, help="folder for the results JSON and profile tables (default $OUT if set, else --work); "
                    "per-run logs go to --work/logs (a failed run's log tail is printed)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak in TFLOP/s (default: from its name, e.g. 989.4 for H100 SXM)")
    ap.add_argument("--profile", default=None, metavar="ROW", help="profile this row's settings in-process with torch.profiler instead of timing")
    args = ap.parse_args()

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or (args.profile and args.profile not in ROWS):
        raise SystemExit(f"unknown row(s) {', '.join(unknown or [args.profile])}; choose from {', '.join(ROWS)}")
    work = Path(args.work)
    out = Path(args.out or os.environ.get("OUT") or work)
    flops = forward_flops()
    n_images = max(ROWS[r].batch for r in rows) * (args.steps + args.warmup + 1)
    data = work / f"synthetic-rec-{n_images}"
    ws = work / "ws"
    print(f"IR-50 forward FLOPs at 112x112 (torch.utils.flop_counter, CPU): {flops['backbone'] / 1e9:.3f} GFLOP/image; "
          f"classifier 2x512x{CLASSES:,}: {flops['head'] / 1e9:.4f} GFLOP; total {flops['total'] / 1e9:.3f} GFLOP/image "
          f"(x3 per trained image = {3 * flops['total'] / 1e9:.2f} GFLOP)")
    if args.dry_run:
        peers = None
        try:
            peers = find_peers(args.peers)
        except SystemExit as e:
            print(f"(peer: {e})")
        if peers and not args.no_peer:
            cmd, cwd, env = peer_command(peers)
            print(f"\npeer (in {cwd}, PYTHONPATH={env['PYTHONPATH']}; stopped after step {args.warmup + args.steps}):\n  {' '.join(cmd)}")
        print(f"\nsynthetic RecordIO: {n_images:,} records, {CLASSES:,} classes -> {data}")
        for r in rows:
            print(f"\nlrfr {r} ({ROWS[r].note or 'sweep'}):\n  {' '.join(lrfr_command(ROWS[r], data, ws, args.steps + args.warmup, args.workers))}")
        for peak_name, peak in (PEAKS[0], PEAKS[3]):
            print(f"\nMFU at 1,000 img/s on an {peak_name} ({peak} TFLOP/s dense bf16): {100 * mfu(1000, flops['total'], peak):.2f} %")
        return
    if not torch.cuda.is_available():
        raise SystemExit("vs_arcface_torch.py needs a CUDA GPU (torch.cuda.is_available() is False); "
                         "on a CPU use --dry-run to see the commands and IR-50's FLOPs")
    out.mkdir(parents=True, exist_ok=True)
    peak, peak_src = peak_tflops(args.peak_tflops)
    gpu = torch.cuda.get_device_name()
    print(f"GPU: {gpu}; peak {peak} TFLOP/s ({peak_src}); torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"{os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}")
    if args.profile:
        profile_row(ROWS[args.profile], args.steps, args.workers, work, out)
        return

    t = time.time()
    write_synthetic_recordio(data, n_images)
    print(f"synthetic RecordIO ({n_images:,} records, {CLASSES:,} classes) ready in {time.time() - t:.1f} s")
    results: list[Result] = []
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if not args.no_peer:
        res = run_peer(find_peers(args.peers), args.steps, args.warmup, args.timeout, logs / "peer.log")
        results.append(res)
        print(f"arcface_torch: {res.images_per_s or 0:,.1f} img/s ({res.windows} windows){' ERROR ' + res.error if res.error else ''}", flush=True)
        if res.error:
            print(tail(logs / "peer.log"))
    for r in rows:
        res = run_lrfr(ROWS[r], data, ws, args.steps + args.warmup, args.warmup, args.workers, args.timeout, logs / f"lrfr-{r}.log")
        results.append(res)
        print(f"lrfr {r}: {res.images_per_s or 0:,.1f} img/s ({res.windows} windows){' ERROR ' + res.error if res.error else ''}", flush=True)
        if res.error:
            print(tail(logs / f"lrfr-{r}.log"))
        shutil.rmtree(ws / "runs" / f"bench-{r}" / "checkpoints", ignore_errors=True)  # ~0.6 GB each (93k-class head + momentum)

    peer = next((x for x in results if x.name == "arcface_torch" and x.images_per_s), None)
    print(f"\n{gpu}, steady state after {args.warmup} warm-up steps, {args.steps} timed steps per run\n")
    print("| run | settings | img/s | median window | vs arcface_torch | MFU |")
    print("|---|---|---:|---:|---:|---:|")
    for x in results:
        ratio = f"{x.images_per_s / peer.images_per_s:.2f}x" if (peer and x.images_per_s) else "–"
        m = mfu(x.images_per_s, flops["total"], peak)
        cells = [x.name, x.settings, f"{x.images_per_s:,.1f}" if x.images_per_s else f"error: {x.error}",
                 f"{x.median_window:,.1f}" if x.median_window else "–", ratio, f"{100 * m:.1f} %" if m else "–"]
        print("| " + " | ".join(cells) + " |")
    doc = {"gpu": gpu, "peak_tflops": peak, "forward_flops": flops, "warmup": args.warmup, "steps": args.steps,
           "torch": torch.__version__, "results": [asdict(x) | {"mfu": mfu(x.images_per_s, flops["total"], peak)} for x in results]}
    (out / f"vs_arcface_torch-{'sweep' if args.no_peer else 'bench'}.json").write_text(json.dumps(doc, indent=2))
    if any(x.error for x in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
