"""Detect + warp in memory: decoded photos in, aligned faces and their records out (no files).

The per-photo rules live here: which faces to keep (probability, ``--select``), the similarity
warp of each onto the template, and the crops written when no face is found (``--fallback``) or
detection is skipped (``--assume-cropped``). Batches of photos share one MTCNN pass, whose
results do not depend on the batch (see :mod:`.invariant`); every warp uses its matrix as
recorded in ``landmarks.csv`` (rounded), so the CSV reproduces the pixels.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..data.tree import output_rel
from .decode import Decoded, detection_image
from .mtcnn import Detections, MtcnnDetector
from .options import AlignConfig
from .warp import (
    MATRIX_DECIMALS,
    fit_error,
    recorded_alignment,
    template_for,
    template_with_margin,
    warp_with_matrix,
)

# Median MTCNN box (x1, y1, x2, y2) of a face aligned to the 112x112 ArcFace template, measured
# on 200 faces of the shared celeba_subset (MTCNN run on the aligned crops). --assume-cropped maps
# a tight face crop onto this box, so an undetectable tiny face lands roughly where MTCNN-aligned
# faces do.
TEMPLATE_FACE_BOX_112 = (16.0, 11.1, 93.6, 120.0)


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


def select_faces(det: Detections, how: str, wh: tuple[int, int]) -> list[int]:
    """Indices of the faces to write: the largest box, the box nearest the centre, or all (largest first)."""
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


def rounded_list(a: np.ndarray | None, nd: int = 4) -> Any:
    """An array as nested lists rounded to ``nd`` decimals: what the journal and CSVs store."""
    if a is None:
        return None
    return np.round(np.asarray(a, dtype=np.float64), nd).tolist()


def _area_then_place(img: np.ndarray, m: np.ndarray, out_wh: tuple[int, int]) -> np.ndarray:
    """Down-scale with an area filter, then translate: anti-aliased shrink for a pure scale+shift."""
    s = m[0, 0]
    H, W = img.shape[:2]
    small = cv2.resize(img, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
    sx, sy = small.shape[1] / W, small.shape[0] / H
    m2 = np.array([[s / sx, 0.0, m[0, 2]], [0.0, s / sy, m[1, 2]]])
    return cv2.warpAffine(small, m2, out_wh, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class Aligner:
    """Detect + align in memory (no files): what :func:`~lrfr_cli.align.pipeline.align_tree` runs on each batch.

    Reuse one instance: it holds the MTCNN networks on ``device``. ``timings`` accumulates the
    seconds spent in detection (split by cascade stage) and in the warp, for profiles.
    """

    def __init__(self, config: AlignConfig | None = None, device: str = "cpu") -> None:
        self.config = (config or AlignConfig()).validate()
        self.device = device
        self._detector: MtcnnDetector | None = None
        self.timings: dict[str, float] = {}

    @property
    def detector(self) -> MtcnnDetector:
        if self._detector is None:
            t0 = time.perf_counter()
            self._detector = MtcnnDetector(self.device, min_face=self.config.min_face, thresholds=self.config.thresholds)
            self._detector.timings = self.timings  # one dict: the stages show up beside "warp"
            self.timings["setup"] = self.timings.get("setup", 0.0) + time.perf_counter() - t0
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
            t0 = time.perf_counter()
            for i, det in zip(todo, dets):
                out[i] = self._from_detections(batch[i], det)
            self.timings["warp"] = self.timings.get("warp", 0.0) + time.perf_counter() - t0
        return out  # type: ignore[return-value]

    def align_images(self, images: Sequence[np.ndarray], names: Sequence[str] | None = None) -> list[ImageResult]:
        """Convenience: align HxWx3 uint8 RGB arrays of any sizes."""
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
        picks = select_faces(good, cfg.select, (W, H))
        res = ImageResult(d.rel)
        tpl, _ = template_with_margin(cfg.size, cfg.margin)
        for k, i in enumerate(picks):
            try:
                # warp with the transform as recorded (rounded): landmarks.csv reproduces the face
                lm, m = recorded_alignment(good.landmarks[i], cfg.size, cfg.margin)
                face = warp_with_matrix(full, m, cfg.out_wh)
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
                box=rounded_list(good.boxes[i], 2),
                landmarks=lm.tolist(),
                matrix=m.tolist(),
                fit_error=round(fit_error(m, lm, tpl), 4),
            )
            res.faces.append((face, rec))
        return res

    def _no_face(self, d: Decoded, reason: str) -> ImageResult:
        res = ImageResult(d.rel, reason=reason)
        if self.config.fallback == "center-crop" and d.full is not None:
            H, W = d.full.shape[:2]
            m = np.round(centre_crop_matrix(W, H, self.config.out_wh), MATRIX_DECIMALS) + 0.0
            if m[0, 0] < 0.5:
                face = _area_then_place(d.full, m, self.config.out_wh)
            else:
                face = warp_with_matrix(d.full, m, self.config.out_wh, interpolation="linear")
            rec = FaceRecord(output_rel(d.rel, self.config.fmt, 0 if self.config.select == "all" else None), d.rel, 0, 0, "fallback", matrix=m.tolist())
            res.faces.append((face, rec))
        return res

    def _assumed(self, d: Decoded) -> ImageResult:
        assert d.full is not None
        H, W = d.full.shape[:2]
        m = np.round(assumed_crop_matrix(W, H, self.config), MATRIX_DECIMALS) + 0.0
        # bicubic when enlarging: the same filter `degrade` uses to bring LR faces back to 112
        if m[0, 0] < 0.5:  # cv2.warpAffine has no true area filter: shrink first, then place
            face = _area_then_place(d.full, m, self.config.out_wh)
        else:
            interp = "cubic" if m[0, 0] > 1 else "linear"
            face = warp_with_matrix(d.full, m, self.config.out_wh, border="replicate", interpolation=interp)
        rec = FaceRecord(output_rel(d.rel, self.config.fmt, 0 if self.config.select == "all" else None), d.rel, 0, 1, "assumed", box=[0.0, 0.0, float(W), float(H)], matrix=m.tolist())
        return ImageResult(d.rel, faces=[(face, rec)])
