"""Degrading a folder tree of images into mirrored low-resolution trees, on all cores.

Each source image is decoded once and written for every requested size. Outputs are written
atomically and existing ones are skipped, so a killed run resumes where it stopped. Unreadable
images are returned as failures, never raised.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

from ..progress import ProgressFn, null_progress
from ..workspace import atomic_path
from .degrade import DegradeSpec, degrade_array
from .images import ImageReadError, load_rgb, save_rgb
from .tree import TreeResult, output_rel

FORMATS = ("png", "jpg")


def _work(args: tuple[str, str, Sequence[tuple[DegradeSpec, str]], int, str]) -> tuple[str, list[int], list[int], str | None]:
    src, rel, jobs, seed, fmt = args
    written, existing = [], []
    todo = [(spec, out) for spec, out in jobs if not os.path.exists(out)]
    existing = [spec.size for spec, out in jobs if os.path.exists(out)]
    if not todo:
        return rel, written, existing, None
    try:
        img = load_rgb(src)
    except ImageReadError as e:
        return rel, written, existing, str(e)
    for spec, out in todo:
        if spec.size > img.shape[0]:
            return rel, written, existing, f"image height {img.shape[0]}px is smaller than {spec.size}px"
        lr = degrade_array(img, spec, seed=seed, key=rel)
        with atomic_path(out, fsync=False) as tmp:
            save_rgb(tmp, lr, jpeg_quality=95)
        written.append(spec.size)
    return rel, written, existing, None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def degrade_tree(
    src_root: Path,
    rels: Iterable[str],
    targets: Sequence[tuple[DegradeSpec, Path]],
    seed: int = 0,
    fmt: str = "png",
    workers: int | None = None,
    progress: ProgressFn = null_progress,
) -> TreeResult:
    """Write ``target_dir/<rel with .fmt>`` for every image ``rel`` and every ``(spec, target_dir)``."""
    rels = list(rels)
    result = TreeResult.for_sizes(s.size for s, _ in targets)
    tasks = [
        (str(src_root / rel), rel, [(spec, str(d / output_rel(rel, fmt))) for spec, d in targets], seed, fmt)
        for rel in rels
    ]
    progress(0, total=len(tasks))
    workers = workers or os.cpu_count() or 1

    def consume(out: tuple[str, list[int], list[int], str | None]) -> None:
        rel, written, existing, err = out
        for s in written:
            result.written[s] += 1
        for s in existing:
            result.existing[s] += 1
        if err:
            result.failures.append((rel, err))
        progress(1)

    if workers <= 1 or len(tasks) < 64:
        import torch

        threads = torch.get_num_threads()
        try:
            for t in tasks:
                consume(_work(t))
        finally:
            torch.set_num_threads(threads)
    else:
        # spawn, not fork: a forked child of a process that already ran torch's thread pool can hang.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=ctx) as pool:
            try:
                for out in pool.map(_work, tasks, chunksize=16):
                    consume(out)
            except BaseException:
                # A full disk (or Ctrl-C): drop the queued images instead of failing each in turn.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    os.sync()  # one flush for the whole tree instead of an fsync per image
    result.failures.sort()
    return result
