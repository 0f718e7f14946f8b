"""Aligning photos to the ArcFace template: the library API behind ``lrfr align``.

The default recipe is the one the shared ``celeba_subset`` training faces were made with (see
``$LRFR_DATA/celeba_subset/README.md``), so faces aligned here match the training data:

1. the photo is scaled (area filter) so its longer side is at most 800 px, for detection only;
2. MTCNN (facenet-pytorch's networks and packaged weights, ``min_face_size`` 30, default
   thresholds 0.6/0.7/0.7) finds faces and 5 landmarks;
3. among faces with probability >= 0.95 the one with the largest box is kept;
4. a least-squares similarity (Umeyama) maps the landmarks, in full-resolution coordinates, onto
   the ArcFace 112x112 template; the full-resolution photo is warped (bilinear, reflected border)
   and saved as JPEG quality 92.

Photos are decoded in worker processes and detected in batches: MTCNN's pyramid stage runs once
per distinct image size in the batch (LFW's 250x250 photos all share one), its refinement stages
on the candidate boxes of the whole batch. Every output is written atomically and recorded in a journal
(``.align-journal.jsonl``) after its files exist, so a killed run resumes where it stopped; at
the end ``landmarks.csv`` (every face: box, landmarks, transform, fit error) and ``failures.csv``
(every photo without a face, with the reason) are rewritten from the journal.

Use it without the CLI::

    from lrfr_cli.align.pipeline import align_tree
    res = align_tree("lfw/lfw-deepfunneled", "out/lfw", device="cpu")
    print(res.faces, len(res.failures))
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import sys
import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from ..data.images import IMAGE_EXTS, list_images, save_rgb
from ..errors import LrfrError
from ..ui import ProgressFn, null_progress
from ..workspace import atomic_path, atomic_write_text
from .decode import Decoded, decode, image_size, init_worker
from .mtcnn import DEFAULT_THRESHOLDS, Detections, MtcnnDetector
from .warp import fit_error, template_for, template_with_margin, warp_face, warp_with_matrix

SELECTS = ("largest", "center", "all")
FALLBACKS = ("none", "center-crop")
FORMATS = ("jpg", "png")
JOURNAL = ".align-journal.jsonl"
LANDMARKS_CSV = "landmarks.csv"
FAILURES_CSV = "failures.csv"

# Median MTCNN box (x1, y1, x2, y2) of a face aligned to the 112x112 ArcFace template, measured
# on 200 faces of the shared celeba_subset (MTCNN run on the aligned crops). --assume-cropped maps
# a tight face crop onto this box, so an undetectable tiny face lands roughly where MTCNN-aligned
# faces do.
TEMPLATE_FACE_BOX_112 = (16.0, 11.1, 93.6, 120.0)


# --------------------------------------------------------------------------- options/results
@dataclass(frozen=True)
class AlignConfig:
    """Everything that changes the pixels written (the workspace key is made from it)."""

    size: int | tuple[int, int] = 112
    select: str = "largest"
    min_face: int = 30
    thresholds: tuple[float, float, float] = DEFAULT_THRESHOLDS
    min_prob: float = 0.95
    max_side: int = 800
    margin: float = 0.0
    fallback: str = "none"
    assume_cropped: bool = False
    fmt: str = "jpg"
    quality: int = 92

    def validate(self) -> "AlignConfig":
        template_with_margin(self.size, self.margin)  # raises for a bad size or margin
        if self.select not in SELECTS:
            raise LrfrError(f"--select {self.select!r}: choose one of {', '.join(SELECTS)}")
        if self.fallback not in FALLBACKS:
            raise LrfrError(f"--fallback {self.fallback!r}: choose one of {', '.join(FALLBACKS)}")
        if self.fmt not in FORMATS:
            raise LrfrError(f"--format {self.fmt!r}: choose one of {', '.join(FORMATS)}")
        if not 0.0 <= self.min_prob <= 1.0:
            raise LrfrError(f"--min-prob {self.min_prob}: expected a probability in [0, 1]")
        if self.min_face < 12:
            raise LrfrError(f"--min-face {self.min_face}: MTCNN cannot search for faces under 12 px (use >= 12)")
        if self.max_side and self.max_side < self.min_face:
            raise LrfrError(f"--max-side {self.max_side} is smaller than --min-face {self.min_face}")
        if not 1 <= self.quality <= 100:
            raise LrfrError(f"--quality {self.quality}: expected 1..100")
        return self

    @property
    def out_wh(self) -> tuple[int, int]:
        return template_for(self.size)[1]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if isinstance(self.size, tuple) else self.size
        d["thresholds"] = list(self.thresholds)
        return d


@dataclass
class FaceRecord:
    """One written face: a row of ``landmarks.csv``. Coordinates are source-photo pixels."""

    path: str
    source: str
    face: int
    faces_in_image: int
    status: str  # ok | fallback | assumed | passthrough
    prob: float | None = None
    box: list[float] | None = None
    landmarks: list[list[float]] | None = None
    matrix: list[list[float]] | None = None
    fit_error: float | None = None


@dataclass
class ImageResult:
    """Outcome of one photo: the faces (arrays + records) or why there is none."""

    source: str
    faces: list[tuple[np.ndarray, FaceRecord]] = field(default_factory=list)
    reason: str | None = None  # set when no face was aligned (a fallback crop may still be written)


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

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def parse_size(text: str | int) -> int | tuple[int, int]:
    """``"112"`` → 112, ``"96x112"`` → (96, 112) (width x height)."""
    if isinstance(text, int):
        return text
    t = str(text).lower().replace(" ", "")
    try:
        if "x" in t:
            w, h = (int(v) for v in t.split("x", 1))
            size: int | tuple[int, int] = (w, h) if w != h else w
        else:
            size = int(t)
    except ValueError:
        raise LrfrError(f"--size {text!r}: expected 112, 128 or 96x112") from None
    template_for(size)
    return size


def parse_thresholds(text: str | Sequence[float]) -> tuple[float, float, float]:
    if isinstance(text, str):
        try:
            vals = tuple(float(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise LrfrError(f"--thresholds {text!r}: expected three numbers such as 0.6,0.7,0.7") from None
    else:
        vals = tuple(float(v) for v in text)
    if len(vals) != 3 or not all(0.0 <= v <= 1.0 for v in vals):
        raise LrfrError(f"--thresholds {text!r}: expected three probabilities such as 0.6,0.7,0.7")
    return vals  # type: ignore[return-value]


def output_rel(rel: str, fmt: str, index: int | None = None) -> str:
    """Where the face of source ``rel`` is written: same folders, ``.fmt`` suffix, ``_k`` for --select all."""
    p = Path(rel)
    stem = p.stem if index is None else f"{p.stem}_{index}"
    return (p.parent / f"{stem}.{fmt}").as_posix()


# --------------------------------------------------------------------------- per-image logic
def _select(det: Detections, how: str, wh: tuple[int, int]) -> list[int]:
    if len(det) == 0:
        return []
    if how == "all":
        area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
        return [int(i) for i in np.argsort(-area, kind="stable")]
    if how == "largest":
        area = (det.boxes[:, 2] - det.boxes[:, 0]) * (det.boxes[:, 3] - det.boxes[:, 1])
        return [int(np.argmax(area))]
    centre = np.array(wh, dtype=np.float64) / 2.0
    mid = (det.boxes[:, :2] + det.boxes[:, 2:]) / 2.0
    return [int(np.argmin(np.linalg.norm(mid - centre, axis=1)))]


def centre_crop_matrix(w: int, h: int, out_wh: tuple[int, int]) -> np.ndarray:
    """2x3 matrix taking the largest centred crop of the output's aspect ratio to ``out_wh``."""
    ow, oh = out_wh
    s = max(ow / w, oh / h)  # the crop fills the output (no border), centred
    return np.array([[s, 0.0, ow / 2.0 - s * w / 2.0], [0.0, s, oh / 2.0 - s * h / 2.0]])


def assumed_crop_matrix(w: int, h: int, cfg: AlignConfig) -> np.ndarray:
    """Similarity taking a tight w x h face crop onto the template's typical MTCNN face box.

    Uniform scale (geometric mean of the two axes' ratios), centre onto centre.
    """
    tpl112 = np.array(TEMPLATE_FACE_BOX_112)
    tpl, _ = template_with_margin(cfg.size, cfg.margin)
    base, _ = template_for(112)
    # the 112 box follows the template: same scale/shift as template_with_margin applied to it
    k = np.linalg.norm(tpl[1] - tpl[0]) / np.linalg.norm(base[1] - base[0])
    shift = tpl.mean(0) - base.mean(0) * k
    x1, y1 = tpl112[:2] * k + shift
    x2, y2 = tpl112[2:] * k + shift
    s = float(np.sqrt(((x2 - x1) / w) * ((y2 - y1) / h)))
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    return np.array([[s, 0.0, cx - s * w / 2.0], [0.0, s, cy - s * h / 2.0]])


def _tolist(a: np.ndarray | None, nd: int = 4) -> Any:
    if a is None:
        return None
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


class Aligner:
    """Detect + align in memory (no files): what :func:`align_tree` runs on each batch.

    Reuse one instance: it holds the MTCNN networks on ``device``.
    """

    def __init__(self, config: AlignConfig | None = None, device: str = "cpu") -> None:
        self.config = (config or AlignConfig()).validate()
        self.device = device
        self._detector: MtcnnDetector | None = None

    @property
    def detector(self) -> MtcnnDetector:
        if self._detector is None:
            self._detector = MtcnnDetector(self.device, min_face=self.config.min_face, thresholds=self.config.thresholds)
        return self._detector

    def align_decoded(self, batch: Sequence[Decoded]) -> list[ImageResult]:
        """Align a batch of decoded photos (any sizes; detected in one MTCNN pass)."""
        cfg = self.config
        if cfg.assume_cropped:
            return [self._assumed(d) for d in batch]
        out: list[ImageResult | None] = [None] * len(batch)
        todo = []
        for i, d in enumerate(batch):
            h, w = d.det.shape[:2]  # type: ignore[union-attr]
            if min(h, w) < cfg.min_face:
                out[i] = self._no_face(d, f"image {w}x{h} px is smaller than --min-face {cfg.min_face} px (for tight face crops use --assume-cropped)")
            else:
                todo.append(i)
        if todo:
            dets = self.detector.detect([batch[i].det for i in todo])  # type: ignore[misc]
            for i, det in zip(todo, dets):
                out[i] = self._from_detections(batch[i], det)
        return out  # type: ignore[return-value]

    def align_images(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[ImageResult]:
        """Convenience: align HxWx3 uint8 RGB arrays of any sizes."""
        from .decode import detection_image

        names = list(names) if names is not None else [str(i) for i in range(len(images))]
        decoded = []
        for n, img in zip(names, images):
            det, sx, sy = detection_image(img, self.config.max_side)
            decoded.append(Decoded(n, img, det, sx, sy))
        return self.align_decoded(decoded)

    # ------------------------------------------------------------------ internals
    def _from_detections(self, d: Decoded, det: Detections) -> ImageResult:
        cfg = self.config
        full = d.full
        assert full is not None
        H, W = full.shape[:2]
        det = det.scaled(d.sx, d.sy)
        n_found = len(det)
        good = det.subset(det.probs >= cfg.min_prob)
        if len(good) == 0:
            if n_found == 0:
                return self._no_face(d, "no face found")
            return self._no_face(d, f"no face with probability >= {cfg.min_prob:g} (best {det.probs.max():.3f})")
        picks = _select(good, cfg.select, (W, H))
        res = ImageResult(d.rel)
        tpl, _ = template_with_margin(cfg.size, cfg.margin)
        for k, i in enumerate(picks):
            lm = good.landmarks[i]
            try:
                face, m = warp_face(full, lm, cfg.size, margin=cfg.margin)
            except (ValueError, cv2.error) as e:  # degenerate landmarks: report, do not stop the run
                if not res.faces and k == len(picks) - 1:
                    return self._no_face(d, f"could not align the face ({e})")
                continue
            index = k if cfg.select == "all" else None
            rec = FaceRecord(
                path=output_rel(d.rel, cfg.fmt, index),
                source=d.rel,
                face=k,
                faces_in_image=len(good),
                status="ok",
                prob=round(float(good.probs[i]), 6),
                box=_tolist(good.boxes[i], 2),
                landmarks=_tolist(lm, 3),
                matrix=_tolist(m, 6),
                fit_error=round(fit_error(m, lm, tpl), 4),
            )
            res.faces.append((face, rec))
        return res

    def _no_face(self, d: Decoded, reason: str) -> ImageResult:
        res = ImageResult(d.rel, reason=reason)
        if self.config.fallback == "center-crop" and d.full is not None:
            H, W = d.full.shape[:2]
            m = centre_crop_matrix(W, H, self.config.out_wh)
            if m[0, 0] < 0.5:
                face = _area_then_place(d.full, m, self.config.out_wh)
            else:
                face = warp_with_matrix(d.full, m, self.config.out_wh, interpolation="linear")
            rec = FaceRecord(output_rel(d.rel, self.config.fmt, 0 if self.config.select == "all" else None), d.rel, 0, 0, "fallback", matrix=_tolist(m, 6))
            res.faces.append((face, rec))
        return res

    def _assumed(self, d: Decoded) -> ImageResult:
        assert d.full is not None
        H, W = d.full.shape[:2]
        m = assumed_crop_matrix(W, H, self.config)
        # bicubic when enlarging: the same filter `degrade` uses to bring LR faces back to 112
        if m[0, 0] < 0.5:  # cv2.warpAffine has no true area filter: shrink first, then place
            face = _area_then_place(d.full, m, self.config.out_wh)
        else:
            interp = "cubic" if m[0, 0] > 1 else "linear"
            face = warp_with_matrix(d.full, m, self.config.out_wh, border="replicate", interpolation=interp)
        rec = FaceRecord(output_rel(d.rel, self.config.fmt, 0 if self.config.select == "all" else None), d.rel, 0, 1, "assumed", box=[0.0, 0.0, float(W), float(H)], matrix=_tolist(m, 6))
        return ImageResult(d.rel, faces=[(face, rec)])


def _area_then_place(img: np.ndarray, m: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Down-scale with an area filter, then translate: anti-aliased shrink for a pure scale+shift."""
    s = m[0, 0]
    H, W = img.shape[:2]
    small = cv2.resize(img, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
    sx, sy = small.shape[1] / W, small.shape[0] / H
    m2 = np.array([[s / sx, 0.0, m[0, 2]], [0.0, s / sy, m[1, 2]]])
    return cv2.warpAffine(small, m2, out_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# --------------------------------------------------------------------------- decoding stream
def _decoded_stream(src_root: Path, rels: Sequence[str], max_side: int, workers: int, lookahead: int) -> Iterator[Decoded]:
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


def _batches(stream: Iterable[Decoded], batch_size: int, on_error: Callable[[Decoded], None]) -> Iterator[list[Decoded]]:
    """Consecutive decoded photos in batches of ``batch_size``; unreadable ones go to ``on_error``.

    Sizes may differ: the detector runs its pyramid stage per distinct size (LFW's photos all
    share one) and the refinement stages on the whole batch.
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


# --------------------------------------------------------------------------- journal + CSVs
def _read_journal(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    config, entries = None, {}
    if not path.exists():
        return None, {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that photo is simply redone
            if "config" in obj:
                config = obj["config"]
            elif "source" in obj:
                entries[obj["source"]] = obj
    return config, entries


def _entry_done(out_root: Path, entry: dict[str, Any]) -> bool:
    return all((out_root / f["path"]).exists() for f in entry.get("faces", []))


def write_reports(out_root: Path, entries: Iterable[dict[str, Any]]) -> tuple[int, list[tuple[str, str]]]:
    """(Re)write landmarks.csv and failures.csv from journal entries; returns (faces, failures)."""
    entries = sorted(entries, key=lambda e: e["source"])
    lm = io.StringIO()
    w = csv.writer(lm)
    header = ["path", "source", "face", "faces_in_image", "status", "det_prob", "box_x1", "box_y1", "box_x2", "box_y2"]
    header += [f"{a}{i}" for i in range(1, 6) for a in ("x", "y")]
    header += ["m00", "m01", "m02", "m10", "m11", "m12", "fit_error_px"]
    w.writerow(header)
    n_faces = 0
    failures: list[tuple[str, str]] = []
    fl = io.StringIO()
    fw = csv.writer(fl)
    fw.writerow(["path", "reason", "fallback"])
    for e in entries:
        for f in e.get("faces", []):
            n_faces += 1
            box = f.get("box") or [""] * 4
            pts = [v for p in (f.get("landmarks") or [[""] * 2] * 5) for v in p]
            mat = [v for row in (f.get("matrix") or [[""] * 3] * 2) for v in row]
            prob = f.get("prob")
            err = f.get("fit_error")
            w.writerow([f["path"], f["source"], f["face"], f["faces_in_image"], f["status"], "" if prob is None else prob, *box, *pts, *mat, "" if err is None else err])
        if e.get("reason"):
            failures.append((e["source"], e["reason"]))
            fb = next((f["path"] for f in e.get("faces", []) if f["status"] == "fallback"), "")
            fw.writerow([e["source"], e["reason"], fb])
    atomic_write_text(out_root / LANDMARKS_CSV, lm.getvalue())
    atomic_write_text(out_root / FAILURES_CSV, fl.getvalue())
    return n_faces, failures


def read_landmarks(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``landmarks.csv`` with numbers parsed (for audits and reproduction)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out: dict[str, Any] = dict(r)
            for k, v in r.items():
                if k not in ("path", "source", "status") and v != "":
                    out[k] = float(v)
            rows.append(out)
    return rows


def check_name_clashes(rels: Sequence[str], cfg: AlignConfig) -> None:
    """Refuse inputs whose faces would be written to the same file (``a.jpg`` and ``a.png``)."""
    seen: dict[str, str] = {}
    for r in rels:
        key = output_rel(r, cfg.fmt)
        if key in seen:
            raise LrfrError(f"{seen[key]} and {r} would both be written as {key}; rename one of them")
        seen[key] = r


def is_prealigned(paths: Sequence[Path], out_wh: tuple[int, int]) -> bool:
    """True when every image is already exactly the output size (checked from file headers)."""
    if not paths:
        return False
    return all(image_size(p) == out_wh for p in paths)


# --------------------------------------------------------------------------- the tree API
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
    progress: ProgressFn = null_progress,
    exts: Sequence[str] = IMAGE_EXTS,
    passthrough: bool = True,
    **options: Any,
) -> AlignResult:
    """Align every photo ``<src_root>/<rel>`` to ``<out_root>/<rel with .jpg>``.

    ``rels`` defaults to every image below ``src_root``. ``options`` are further
    :class:`AlignConfig` fields (min_face, thresholds, min_prob, max_side, margin, fallback,
    assume_cropped, fmt, quality). ``device`` is a torch device string (``cpu``, ``cuda:0``).
    ``workers`` decode processes (0 = decode in this process). Photos already recorded in
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
    out_root.mkdir(parents=True, exist_ok=True)
    journal_path = out_root / JOURNAL
    old_cfg, entries = _read_journal(journal_path)
    if old_cfg is not None and old_cfg != cfg.to_dict():
        raise LrfrError(f"{out_root} holds faces aligned with other options; remove it or choose another output folder")
    result = AlignResult(images=len(rels))
    done = {r for r in rels if r in entries and _entry_done(out_root, entries[r])}
    result.already_done = len(done)
    todo = [r for r in rels if r not in done]
    progress(0, total=len(rels))
    if done:
        progress(len(done))

    with open(journal_path, "a", encoding="utf-8") as journal:
        if old_cfg is None:
            journal.write(json.dumps({"config": cfg.to_dict()}) + "\n")
            journal.flush()

        def commit(res: ImageResult) -> None:
            for face, rec in res.faces:
                with atomic_path(out_root / rec.path) as tmp:
                    save_rgb(tmp, face, jpeg_quality=cfg.quality)
                result.written += 1
            entry = {"source": res.source, "reason": res.reason, "faces": [asdict(r) for _, r in res.faces]}
            journal.write(json.dumps(entry) + "\n")
            journal.flush()
            entries[res.source] = entry

        if todo and passthrough and not cfg.assume_cropped and is_prealigned([src_root / r for r in rels], cfg.out_wh):
            result.passthrough = True
            w, h = cfg.out_wh
            result.note = f"every image is already {w}x{h}: treated as aligned and copied unchanged"
            tpl, _ = template_for(cfg.size)
            for r in todo:
                with atomic_path(out_root / r) as tmp:
                    tmp.write_bytes((src_root / r).read_bytes())
                rec = FaceRecord(r, r, 0, 1, "passthrough", landmarks=_tolist(tpl, 4), matrix=[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
                entry = {"source": r, "reason": None, "faces": [asdict(rec)]}
                journal.write(json.dumps(entry) + "\n")
                entries[r] = entry
                result.written += 1
                progress(1)
            journal.flush()
        elif todo:
            aligner = Aligner(cfg, device)

            def on_error(d: Decoded) -> None:
                commit(ImageResult(d.rel, reason=d.error))
                progress(1)

            stream = _decoded_stream(src_root, todo, cfg.max_side, workers, lookahead=max(4, 2 * batch_size))
            n_fail = 0
            for batch in _batches(stream, batch_size, on_error=on_error):
                for res in aligner.align_decoded(batch):
                    commit(res)
                    n_fail += res.reason is not None
                progress(len(batch), faces=result.written, failed=n_fail)

    n_faces, failures = write_reports(out_root, entries.values())
    wanted = set(rels)
    result.failures = [(s, r) for s, r in failures if s in wanted]
    result.records = [FaceRecord(**f) for r in rels if r in entries for f in entries[r].get("faces", [])]
    result.faces = len(result.records)
    result.fallbacks = sum(1 for f in result.records if f.status == "fallback")
    errs = [f.fit_error for f in result.records if f.fit_error is not None]
    result.mean_fit_error = float(np.mean(errs)) if errs else None
    result.seconds = time.time() - t0
    return result
