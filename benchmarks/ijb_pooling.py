"""Benchmark: IJB template pooling and pair scoring (lrfr's vectorised code) vs a plain loop.

Synthetic data shaped like IJB-C (469,375 crops, 23,124 templates, ~3.4 media per template,
15,658,489 pairs), scaled by --scale so it fits a small machine; 512-d embeddings. The baseline is
the textbook loop (per template: find its crops, per media average, sum; per pair chunk: gather and
dot), the way reference IJB scripts do it. Both give the same scores (checked here).
Usage: python benchmarks/ijb_pooling.py [--scale 0.05] [--dim 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from lrfr_cli.protocols.ijb import pair_scores, template_features

FULL = {"crops": 469_375, "templates": 23_124, "pairs": 15_658_489}


def loop_pool(feats: np.ndarray, w: np.ndarray, templates: np.ndarray, medias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(templates)
    out = np.zeros((len(ids), feats.shape[1]))
    x = feats * w[:, None]
    for i, t in enumerate(ids):
        (sel,) = np.where(templates == t)
        acc = np.zeros(feats.shape[1])
        for m in np.unique(medias[sel]):
            acc += x[sel[medias[sel] == m]].mean(axis=0)
        out[i] = acc / np.linalg.norm(acc)
    return ids, out


def loop_scores(ids: np.ndarray, f: np.ndarray, t1: np.ndarray, t2: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    row = {int(t): i for i, t in enumerate(ids)}
    out = np.empty(len(t1))
    for s in range(0, len(t1), chunk):
        a = f[[row[int(t)] for t in t1[s : s + chunk]]]
        b = f[[row[int(t)] for t in t2[s : s + chunk]]]
        out[s : s + chunk] = (a * b).sum(1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=0.05, help="fraction of IJB-C's size (1 = full)")
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, nt, npairs = (max(10, int(v * args.scale)) for v in FULL.values())
    templates = rng.integers(0, nt, n)
    medias = templates * 10 + rng.integers(0, 7, n)  # ~3.4 distinct media per template
    feats = rng.normal(size=(n, args.dim)).astype(np.float32)
    w = rng.uniform(0.5, 1.0, n)
    present = np.unique(templates)
    t1, t2 = rng.choice(present, npairs), rng.choice(present, npairs)

    t0 = time.perf_counter()
    ids, tf = template_features(feats, w, templates, medias)
    t_pool = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc = pair_scores(ids, tf, ids, tf, t1, t2)
    t_pairs = time.perf_counter() - t0

    t0 = time.perf_counter()
    ids_l, tf_l = loop_pool(feats.astype(np.float64), w, templates, medias)
    t_pool_l = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc_l = loop_scores(ids_l, tf_l, t1, t2)
    t_pairs_l = time.perf_counter() - t0
    assert np.allclose(sc, sc_l, atol=1e-9), "vectorised and loop scores differ"

    load = os.getloadavg()
    print(f"IJB pooling benchmark: scale {args.scale} of IJB-C = {n:,} crops, {len(ids):,} templates, {npairs:,} pairs, "
          f"{args.dim}-d; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {load[0]:.1f}/{load[1]:.1f}")
    print("| step | plain loop s | lrfr s | ratio |\n|---|---|---|---|")
    print(f"| template pooling | {t_pool_l:.2f} | {t_pool:.2f} | {t_pool_l / t_pool:.1f}x |")
    print(f"| pair scoring | {t_pairs_l:.2f} | {t_pairs:.2f} | {t_pairs_l / t_pairs:.1f}x |")


if __name__ == "__main__":
    main()
