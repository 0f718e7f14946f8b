"""The decode pool: photos decoded in order, in worker processes or in this one, then batched.

Decoding a multi-megapixel JPEG costs more than detecting faces in its 800 px copy, so large
photos are decoded in spawned processes while the main process detects; small ones (LFW's
250x250) cost 0.4 ms each and are as cheap to decode in place as to ship between processes
(see ``pipeline.default_workers``).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from .decode import Decoded, decode, init_worker


def decoded_stream(src_root: Path, rels: Sequence[str], max_side: int, workers: int, lookahead: int) -> Iterator[Decoded]:
    """Decoded photos in order; ``workers`` > 0 decodes in spawned processes with bounded look-ahead."""
    tasks = iter([(str(src_root / r), r, max_side) for r in rels])
    if workers <= 0:
        for t in tasks:
            yield decode(t)
        return
    # spawn, not fork: forking a process that already ran torch's thread pool can hang.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init_worker) as pool:
        window: deque[Future[Decoded]] = deque()
        with _light_children():  # the first submits start the worker processes
            for _ in range(min(lookahead, len(rels))):
                t = next(tasks, None)
                if t is not None:
                    window.append(pool.submit(decode, t))
        for t in tasks:
            window.append(pool.submit(decode, t))
            if len(window) >= lookahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


@contextmanager
def _light_children() -> Iterator[None]:
    """Keep spawned decode workers from re-running the parent's main script.

    A spawned child imports the parent's ``__main__`` file; for the ``lrfr`` script that means
    torch and every subcommand (seconds of start-up per worker, and the memory). The workers
    only need :mod:`lrfr_cli.align.decode`, so the main file is hidden while they start.
    (Mains run with ``-m`` are re-imported by module name and are left alone.)
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or getattr(getattr(main, "__spec__", None), "name", None):
        yield
        return
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


def batches(stream: Iterable[Decoded], batch_size: int, on_error: Callable[[Decoded], None]) -> Iterator[list[Decoded]]:
    """Consecutive decoded photos in batches of ``batch_size``; unreadable ones go to ``on_error``.

    Sizes may differ: the detector runs its pyramid stage photo by photo and the refinement
    stages on the whole batch's boxes in fixed-size chunks, so a photo's faces do not depend on
    the batch it lands in (``batch_size``, decode workers, a resumed run).
    """
    batch: list[Decoded] = []
    for d in stream:
        if d.error is not None:
            on_error(d)
            continue
        batch.append(d)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
