"""Benchmark: CLI start-up time, next to `python -c pass` and `python -c "import torch"`.

Each row is a fresh process (what a user waits for), run --repeat times; the table shows the
median and min wall time. The two baselines come from the same run so a busy machine shows up
in them too; the load average is printed before and after.
Usage: python benchmarks/startup.py [--repeat 7] [--lrfr PATH]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(argv: list[str], repeat: int, env: dict[str, str]) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    return times


def _default_lrfr() -> list[str]:
    """The venv's console script (what users run); `python -m lrfr_cli` when there is none."""
    exe = Path(sys.executable).parent / "lrfr"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "lrfr_cli"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7, help="runs per row (median and min reported)")
    ap.add_argument("--lrfr", default=None, help="lrfr executable (default: the venv's console script)")
    args = ap.parse_args()
    lrfr = [args.lrfr] if args.lrfr else _default_lrfr()
    py = sys.executable
    ws = tempfile.mkdtemp(prefix="lrfr-startup-")
    env = {**os.environ, "LRFR_WORKSPACE": ws}
    rows = [
        ("python -c pass", [py, "-c", "pass"]),
        ('python -c "import torch"', [py, "-c", "import torch"]),
        ("lrfr --help", [*lrfr, "--help"]),
        ("lrfr status", [*lrfr, "status"]),
        ("lrfr make-list --help", [*lrfr, "make-list", "--help"]),
        ("lrfr train --help", [*lrfr, "train", "--help"]),
    ]
    load_before = os.getloadavg()
    try:
        _time(rows[0][1], 1, env)  # warm the page cache once so row order matters less
        results = [(label, _time(argv, args.repeat, env)) for label, argv in rows]
    finally:
        shutil.rmtree(ws, ignore_errors=True)
    load_after = os.getloadavg()

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {args.repeat} runs each, lrfr = {' '.join(lrfr)}")
    print(f"load average (1/5/15 min): before {' '.join(f'{x:.2f}' for x in load_before)}, after {' '.join(f'{x:.2f}' for x in load_after)}")
    print(f"| {'command':<28} | median s | min s |")
    print(f"|{'-' * 30}|----------|-------|")
    for label, t in results:
        print(f"| {label:<28} | {statistics.median(t):8.3f} | {min(t):5.3f} |")


if __name__ == "__main__":
    main()
