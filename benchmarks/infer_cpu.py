"""Benchmark: images/s of the embedding pass on the CPU, per backend, with a per-image baseline.

For each backbone (random weights: speed does not depend on them; ``mobileface-onnx`` is the
shared, *trained* MobileFace imported from ONNX, so the bf16 row also shows the error on a real
network) the same uint8 faces go through:

- ``per-image``: torch fp32, one face per forward (the plain baseline every ratio refers to);
- ``torch fp32``: batches through :func:`lrfr_cli.models.forward.forward` (what eval does);
- ``torch bf16``: the same under bf16 autocast, only where the CPU has native bf16
  (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo); emulated bf16 is not a contender;
- ``onnxruntime``: lrfr's own export of the network (:func:`lrfr_cli.models.onnx_export.to_onnx_bytes`),
  run by :class:`lrfr_cli.embed.ort.OrtNet` as ``eval --backend onnxruntime`` does.

Every backend's L2-normalised embeddings are compared with torch fp32's: a backend is *correct*
when the smallest cosine is >= 0.9999 (the export round-trip bar). Rows time --repeat passes over
--images faces after one warm-up batch and report the best pass (the machine is shared: the best
is the least disturbed). The load average is printed before and after.

Usage: python benchmarks/infer_cpu.py [--models mobilefacenet,ir18,ir50] [--images 64]
       [--batch 32] [--threads 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lrfr_cli.embed import LoadedModel
from lrfr_cli.embed.ort import OrtNet
from lrfr_cli.models import build_backbone
from lrfr_cli.models.forward import forward
from lrfr_cli.models.onnx_export import to_onnx_bytes
from lrfr_cli.models.onnx_import import InputContract, load_proto, read_contract, to_torch


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def faces(n: int) -> np.ndarray:
    """Real aligned faces when LRFR_DATA has them (same pixels for every backend), else noise."""
    root = Path(os.environ.get("LRFR_DATA", "data")) / "celeba_subset" / "images"
    files = sorted(root.rglob("*.jpg"))[:n] if root.is_dir() else []
    if len(files) == n:
        from PIL import Image

        return np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    return np.random.default_rng(0).integers(0, 256, (n, 112, 112, 3), dtype=np.uint8)


def timed(fn, x: torch.Tensor, batch: int, repeat: int) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    fn(x[:batch])  # warm-up (oneDNN / onnxruntime pick their kernels on first use)
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])
        best = min(best, time.perf_counter() - t0)
    e = out.double()
    return len(x) / best, (e / e.norm(dim=1, keepdim=True)).numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="mobilefacenet,ir18,ir50,mobileface-onnx")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads (1 on shared cores)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x = torch.from_numpy(np.ascontiguousarray(faces(args.images).transpose(0, 3, 1, 2)))
    bf16 = cpu_has_bf16()
    load0 = os.getloadavg()
    rows = []
    for name in args.models.split(","):
        if name == "mobileface-onnx":
            path = Path(os.environ.get("LRFR_DATA", "data")) / "models" / "mobileface_112_rgb_nhwc.onnx"
            if not path.is_file():
                print(f"  {name}: skipped ({path} is absent)")
                continue
            model = load_proto(path)
            contract = read_contract(model, str(path), channel_order="rgb", mean="0", std="1")
            net = to_torch(model, contract)
            ortnet = OrtNet(path.read_bytes(), contract, "cpu", args.threads)  # the file itself, as eval runs it
        else:
            net = build_backbone(name, 512).eval()
            lm = LoadedModel(module=net, name=name, backbone=name, embedding_size=512, checkpoint=Path("-"), sha1="0" * 40, source="run")
            contract = InputContract("nchw", "rgb", (127.5,) * 3, (127.5,) * 3, 112, 512, "input", "embedding")
            ortnet = OrtNet(to_onnx_bytes(lm), contract, "cpu", args.threads)
        base_ips, ref = timed(lambda b, net=net: forward(net, b), x, 1, 1)  # noqa: B023
        ref_ips, ref = timed(lambda b, net=net: forward(net, b), x, args.batch, args.repeat)  # noqa: B023
        cands = [("per-image fp32", base_ips, ref), ("torch fp32", ref_ips, ref)]
        if bf16:
            ips, e = timed(lambda b, net=net: forward(net, b, "bf16"), x, args.batch, args.repeat)  # noqa: B023
            cands.append(("torch bf16", ips, e))
        ips, e = timed(ortnet.embed_uint8, x, args.batch, args.repeat)
        cands.append(("onnxruntime", ips, e))
        for label, ips, e in cands:
            cos = float((e * ref).sum(axis=1).min())
            rows.append((name, label, ips, ips / base_ips, ips / ref_ips, cos))
            print(f"  {name:14s} {label:15s} {ips:8.1f} img/s", flush=True)
    load1 = os.getloadavg()
    print(f"\nCPU inference, {args.images} faces, batch {args.batch}, {args.threads} thread(s), best of {args.repeat}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, native bf16: {'yes' if bf16 else 'no'}")
    print(f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}\n")
    print(f"| {'model':14s} | {'backend':15s} | {'img/s':>8s} | {'x per-image':>11s} | {'x torch fp32':>12s} | {'min cos':>8s} | correct |")
    print(f"|{'-' * 16}|{'-' * 17}|{'-' * 10}|{'-' * 13}|{'-' * 14}|{'-' * 10}|---------|")
    for name, label, ips, r_base, r_ref, cos in rows:
        print(f"| {name:14s} | {label:15s} | {ips:8.1f} | {r_base:11.2f} | {r_ref:12.2f} | {cos:8.5f} | {'yes' if cos >= 0.9999 else 'no'} |")
    by_model: dict[str, dict[str, tuple[float, float]]] = {}
    for name, label, _ips, _rb, r_ref, cos in rows:
        by_model.setdefault(name, {})[label] = (r_ref, cos)
    for backend in ("onnxruntime", "torch bf16"):
        ratios = [m[backend][0] for m in by_model.values() if backend in m and m[backend][1] >= 0.9999]
        if ratios and len(ratios) == len(by_model):
            print(f"\n{backend} vs torch fp32 (batched), correct on every model: x{min(ratios):.2f} .. x{max(ratios):.2f}"
                  f" -> {'wins by >= 1.2x everywhere' if min(ratios) >= 1.2 else 'not a >= 1.2x win everywhere'}")


if __name__ == "__main__":
    main()
