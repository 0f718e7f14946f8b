"""Aligning a tree of photos to the ArcFace template: the library API behind ``lrfr align``.

The default recipe is the one the shared ``celeba_subset`` training faces were made with (see
``$LRFR_DATA/celeba_subset/README.md``), so faces aligned here match the training data:

1. the photo is scaled (area filter) so its longer side is at most 800 px, for detection only;
2. MTCNN (facenet-pytorch's networks and packaged weights, ``min_face_size`` 30, default
   thresholds 0.6/0.7/0.7) finds faces and 5 landmarks;
3. among faces with probability >= 0.95 the one with the largest box is kept;
4. a least-squares similarity (Umeyama) maps the landmarks, in full-resolution coordinates, onto
   the ArcFace 112x112 template; the full-resolution photo is warped (bilinear, reflected border)
   with that transform exactly as ``landmarks.csv`` records it (rounded), and saved as JPEG
   quality 92.

The faces written do not depend on ``batch_size``, ``workers``, ``threads`` or an interruption:
see :mod:`.invariant` (every network call has a shape the photo alone decides, or a fixed one).

The pieces, one module each: :mod:`.options` (what to do), :mod:`.pool` (decoding, in worker
processes when asked), :mod:`.aligner` (detect in batches + warp), :mod:`.journal` (files,
journal, CSVs: what makes a killed run resumable). This module walks the tree and joins them.

Use it without the CLI::

    from lrfr_cli.align.pipeline import align_tree
    res = align_tree("lfw/lfw-deepfunneled", "out/lfw", device="cpu")
    print(res.faces, len(res.failures))
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import IMAGE_EXTS, list_images
from ..errors import LrfrError
from ..progress import ProgressFn, null_progress
from .aligner import Aligner, FaceRecord, ImageResult, rounded_list
from .decode import Decoded, image_size
from .journal import JOURNAL, Journal, read_landmarks
from .options import AlignConfig, check_name_clashes
from .pool import batches, decoded_stream
from .warp import template_for

__all__ = ["JOURNAL", "AlignResult", "align_tree", "default_workers", "is_prealigned", "read_landmarks"]


@dataclass
class AlignResult:
    """What :func:`align_tree` did. ``images`` counts the photos asked for in this call."""

    images: int = 0
    faces: int = 0
    written: int = 0
    already_done: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    fallbacks: int = 0
    passthrough: bool = False
    note: str | None = None
    seconds: float = 0.0
    records: list[FaceRecord] = field(default_factory=list)
    mean_fit_error: float | None = None
    # seconds per stage: setup (loading MTCNN), decode (waiting for decoded photos), pnet/rnet/onet
    # (MTCNN's three stages), warp, write (encode + atomic writes + journal + the final sync),
    # reports (the CSVs)
    timings: dict[str, float] = field(default_factory=dict)
    workers: int = 0  # decode processes used
    threads: int = 0  # torch threads the detector ran with (0: no detection ran)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def is_prealigned(paths: Sequence[Path], out_wh: tuple[int, int]) -> bool:
    """True when every image is already exactly the output size (checked from file headers)."""
    if not paths:
        return False
    return all(image_size(p) == out_wh for p in paths)


# Photos above this many pixels (median of a sample) are decoded in worker processes by default.
# A 250x250 LFW JPEG decodes in 0.4 ms, a few % of its share of detection, and shipping it between
# processes costs about as much: on 600 LFW photos --workers 0, 1 and 2 ran 2.3x, 2.5x and 2.6x
# the facenet loop (benchmarks/align.py, 1 torch thread, load 5-6 on 2 cores: a tie), and on a
# quiet machine before issue 9 --workers 0 beat 1 (1.23x vs 1.07x). A 3.4-megapixel photo takes
# ~50 ms to decode and scale to 800 px, as long as detecting faces in that copy: worth a process.
LARGE_PHOTO_PIXELS = 1_000_000


def default_workers(paths: Sequence[Path], cores: int | None = None, sample: int = 32) -> int:
    """Decode processes for these photos: 0 for small photos, one per spare core for large ones."""
    sizes = [wh for wh in (image_size(p) for p in paths[:sample]) if wh is not None]
    if not sizes:
        return 0
    if float(np.median([w * h for w, h in sizes])) <= LARGE_PHOTO_PIXELS:
        return 0
    return max(1, (cores or os.cpu_count() or 1) - 1)


def detector_threads(threads: int, workers: int, device: str, cores: int | None = None) -> int:
    """Torch threads for the detector: ``threads`` when given, else torch's setting less the
    cores the decode processes keep busy (a core running a decoder stalls a multi-threaded
    kernel that counted on it, as any busy core does)."""
    import torch

    if threads > 0:
        return threads
    current = torch.get_num_threads()
    if workers <= 0 or not device.startswith("cpu"):
        return current
    return max(1, min(current, (cores or os.cpu_count() or 1) - workers))


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for a block, then restored."""
    import torch

    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n != old:
            torch.set_num_threads(old)


def align_tree(
    src_root: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    rels: Sequence[str] | None = None,
    *,
    size: int | tuple[int, int] = 112,
    select: str = "largest",
    device: str = "cpu",
    batch_size: int = 16,
    workers: int = 0,
    threads: int = 0,
    progress: ProgressFn = null_progress,
    exts: Sequence[str] = IMAGE_EXTS,
    passthrough: bool = True,
    **options: Any,
) -> AlignResult:
    """Align every photo ``<src_root>/<rel>`` to ``<out_root>/<rel with .jpg>``.

    ``rels`` defaults to every image below ``src_root`` (found by
    :func:`lrfr_cli.data.images.list_images`, the one tree walker). ``options`` are further
    :class:`AlignConfig` fields (min_face, thresholds, min_prob, max_side, margin, fallback,
    assume_cropped, fmt, quality). ``device`` is a torch device string (``cpu``, ``cuda:0``).
    ``workers`` decode processes (0 = decode in this process; -1 = :func:`default_workers`);
    ``threads`` torch threads for the detector during the call (0 = :func:`detector_threads`:
    torch's setting, less one per decode process on a CPU; on cores shared with other jobs 1 is
    often fastest). Photos already recorded in
    ``out_root``'s journal with their files present are skipped (resume); a journal made with
    other options is refused. With ``passthrough`` and every input already the output size, files
    are copied unchanged (``result.passthrough``). Never raises for a bad photo: it lands in
    ``result.failures`` and ``failures.csv``.
    """
    t0 = time.time()
    cfg = AlignConfig(size=size, select=select, **options).validate()
    src_root, out_root = Path(src_root), Path(out_root)
    if rels is None:
        rels = [p.relative_to(src_root).as_posix() for p in list_images(src_root, exts)]
    rels = list(dict.fromkeys(rels))
    check_name_clashes(rels, cfg)
    if batch_size < 1:
        raise LrfrError(f"--batch-size {batch_size}: expected >= 1")
    if threads < 0:
        raise LrfrError(f"--threads {threads}: expected >= 0 (0 = torch's default)")
    journal = Journal(out_root, cfg.to_dict(), quality=cfg.quality)
    result = AlignResult(images=len(rels))
    todo = [r for r in rels if not journal.done(r)]
    result.already_done = len(rels) - len(todo)
    progress(0, total=len(rels))
    if result.already_done:
        progress(result.already_done)
    timings = result.timings

    def tick(key: str, since: float) -> float:
        now = time.perf_counter()
        timings[key] = timings.get(key, 0.0) + now - since
        return now

    with journal:
        if todo and passthrough and not cfg.assume_cropped and is_prealigned([src_root / r for r in rels], cfg.out_wh):
            result.passthrough = True
            w, h = cfg.out_wh
            result.note = f"every image is already {w}x{h}: treated as aligned and copied unchanged"
            tpl, _ = template_for(cfg.size)
            for r in todo:
                t = time.perf_counter()
                rec = FaceRecord(r, r, 0, 1, "passthrough", landmarks=rounded_list(tpl, 4), matrix=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
                journal.commit(r, None, [(rec, (src_root / r).read_bytes())])
                tick("write", t)
                progress(1)
        elif todo:
            if workers < 0:
                workers = default_workers([src_root / r for r in todo])
            result.workers = workers
            result.threads = detector_threads(threads, workers, device)
            aligner = Aligner(cfg, device)
            n_fail = 0

            def on_error(d: Decoded) -> None:
                nonlocal n_fail
                journal.commit(d.rel, d.error, [])
                n_fail += 1
                progress(1)

            stream = decoded_stream(src_root, todo, cfg.max_side, workers, lookahead=max(4, 2 * batch_size))
            with _torch_threads(result.threads):
                t = time.perf_counter()
                for batch in batches(stream, batch_size, on_error=on_error):
                    t = tick("decode", t)
                    results: list[ImageResult] = aligner.align_decoded(batch)
                    t = time.perf_counter()
                    for res in results:
                        journal.commit(res.source, res.reason, [(rec, face) for face, rec in res.faces])
                        n_fail += res.reason is not None
                    journal.flush()
                    t = tick("write", t)
                    progress(len(batch), faces=journal.written, failed=n_fail)
            for k, v in aligner.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        t = time.perf_counter()  # leaving the block flushes the journal and syncs the faces
    tick("write", t)

    t = time.perf_counter()
    _, failures = journal.write_reports()
    tick("reports", t)
    result.written = journal.written
    wanted = set(rels)
    result.failures = [(s, r) for s, r in failures if s in wanted]
    result.records = journal.records(rels)
    result.faces = len(result.records)
    result.fallbacks = sum(1 for f in result.records if f.status == "fallback")
    errs = [f.fit_error for f in result.records if f.fit_error is not None]
    result.mean_fit_error = float(np.mean(errs)) if errs else None
    result.seconds = time.time() - t0
    return result
