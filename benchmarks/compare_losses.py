"""The thesis comparison, one command away: margin losses trained alike, scored HR–LR on LFW View 2.

Trains every loss in ``--losses`` on the same list, backbone, batch, steps and seed(s) with
Cross-Resolution Batches (``--crb``), then scores each on LFW View 2 (10 folds, threshold chosen
on nine) with an HR gallery and probes down-sampled to each of ``--sizes`` and up-sampled back.
Writes one table (``compare.md``, ``compare.json``) into the workspace's ``reports/`` folder and
prints it.

Everything goes through the ``lrfr`` command itself, so the table is exactly what a user gets
from the documented command sequence (printed as it runs). Each step is an lrfr artifact: a
re-run skips what is complete and resumes what was killed.

Training data is ``celeba_subset``. CelebA identities are anonymous numbers, so a few of them may
also be LFW people: that flatters every loss alike, and the comparison between losses stays fair.

Usage::

    python benchmarks/compare_losses.py                       # tiny backbone, 1 seed, CPU
    python benchmarks/compare_losses.py --seeds 0,1 --epochs 8
    python benchmarks/compare_losses.py --backbone ir50 --device cuda --precision bf16 \\
        --batch-size 256 --epochs 20 --threads 0
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOSSES = ("cosface", "arcface", "adaface", "approach1", "approach2")
SIZES = "7,8,12,14,16,20,28,112"


def run(cmd: list[str], env: dict[str, str]) -> dict:
    """Run one lrfr command with --json; its last stdout line is the machine-readable summary."""
    print("$ " + shlex.join(cmd), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {shlex.join(cmd)}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    doc = json.loads(lines[-1]) if lines else {}
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", default=os.environ.get("LRFR_WORKSPACE", "lrfr-workspace"), help="lrfr workspace (default $LRFR_WORKSPACE or ./lrfr-workspace)")
    ap.add_argument("--losses", default=",".join(LOSSES), help="comma-separated losses to train")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; the table shows the mean over seeds")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--optimizer", default="adamw")
    ap.add_argument("--lr", default="2e-3")
    ap.add_argument("--weight-decay", default="0.05")
    ap.add_argument("--lr-sizes", default="8,12,16,20,24", help="CRB: LR sizes drawn per sample")
    ap.add_argument("--crb-mode", default="split", choices=["copies", "split"], help="CRB: split (the thesis seed's: a share of each batch replaced by LR versions) or copies (every image also as an LR copy: twice the work)")
    ap.add_argument("--lr-prob", default="0.5", help="CRB split: share of each batch replaced by LR versions")
    ap.add_argument("--sizes", default=SIZES, help="LFW probe sizes (112 = HR)")
    ap.add_argument("--align", default="center-crop", choices=["mtcnn", "center-crop"], help="LFW alignment: center-crop (fixed warp from the median MTCNN landmarks; fast) or mtcnn (as the training faces were made; aligns LFW once)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", default="1", help="torch threads per process for train (0 = torch's default)")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--prefix", default="cmp", help="run names are PREFIX-LOSS-sSEED")
    args = ap.parse_args()

    data = os.environ.get("LRFR_DATA")
    if not data or not Path(data, "celeba_subset").is_dir():
        sys.exit("set LRFR_DATA to the shared data folder (it needs celeba_subset/ and lfw/)")
    lrfr = str(Path(sys.executable).with_name("lrfr"))
    env = {**os.environ, "LRFR_WORKSPACE": str(Path(args.workspace).resolve())}
    losses = [x for x in args.losses.split(",") if x]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    load0, t_start = os.getloadavg(), time.time()

    run([lrfr, "make-list", f"{data}/celeba_subset/images", "--out", "celeba", "--val-fraction", "0", "--json"], env)
    results: dict[str, dict[int, dict]] = {}
    train_s: dict[str, list[float]] = {}
    for loss in losses:
        for seed in seeds:
            name = f"{args.prefix}-{loss}-s{seed}"
            t0 = time.time()
            run([lrfr, "train", "--data", "lists/celeba", "--backbone", args.backbone, "--loss", loss, "--crb",
                 "--lr-sizes", args.lr_sizes, "--crb-mode", args.crb_mode, "--lr-prob", args.lr_prob,
                 "--optimizer", args.optimizer, "--lr", args.lr, "--weight-decay", args.weight_decay,
                 "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(seed),
                 "--device", args.device, "--precision", args.precision, "--threads", args.threads,
                 "--workers", args.workers, "--cache", "--run", name, "--json"], env)
            train_s.setdefault(loss, []).append(time.time() - t0)
            doc = run([lrfr, "eval", "--dataset", "lfw", "--model", f"runs/{name}", "--checkpoint", "last",
                       "--sizes", args.sizes, "--setting", "hr-lr", "--align", args.align,
                       "--device", args.device, "--name", "lfw-compare", "--json"], env)
            path = Path(doc.get("path") or Path(args.workspace) / "evals" / name / "lfw-compare.json")
            results.setdefault(loss, {})[seed] = json.loads(path.read_text())["results"]

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for loss in losses:
        row = {"loss": loss, "train_s": round(statistics.mean(train_s[loss]), 1), "sizes": {}}
        for s in sizes:
            per_seed = [results[loss][seed][str(s)] for seed in seeds]
            row["sizes"][str(s)] = {
                "accuracy": statistics.mean(r["accuracy"] for r in per_seed),
                "fold_std": statistics.mean(r["accuracy_std"] for r in per_seed),
                "per_seed": [r["accuracy"] for r in per_seed],
            }
        rows.append(row)

    head = "| loss | " + " | ".join(f"{s} px" for s in sizes) + " |"
    lines = [head, "|" + "---|" * (len(sizes) + 1)]
    for row in rows:
        cells = [f"{100 * c['accuracy']:.1f} ± {100 * c['fold_std']:.1f}" for c in (row["sizes"][str(s)] for s in sizes)]
        lines.append(f"| {row['loss']} | " + " | ".join(cells) + " |")
    load1 = os.getloadavg()
    meta = (f"LFW View 2 HR–LR accuracy (%), 10 folds, mean ± std over folds"
            f"{' (mean over seeds ' + args.seeds + ')' if len(seeds) > 1 else ''}; "
            f"{args.backbone}, {args.epochs} epochs × batch {args.batch_size} on celeba_subset, CRB {args.crb_mode}{' ' + args.lr_prob if args.crb_mode == 'split' else ''} "
            f"at {args.lr_sizes} px, align {args.align}, device {args.device}; "
            f"wall {(time.time() - t_start) / 60:.1f} min; load average {load0[0]:.2f} before, {load1[0]:.2f} after")
    table = "\n".join(lines)
    out_dir = Path(args.workspace) / "reports"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "compare.md").write_text(meta + "\n\n" + table + "\n")
    (out_dir / "compare.json").write_text(json.dumps({"meta": meta, "args": vars(args), "rows": rows}, indent=2) + "\n")
    print("\n" + meta + "\n\n" + table)
    print(f"\nwritten: {out_dir / 'compare.md'}, {out_dir / 'compare.json'}")


if __name__ == "__main__":
    main()
