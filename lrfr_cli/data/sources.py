"""Where evaluation faces come from and how they are aligned to the network's 112×112 input.

Each source is a small picklable class (it runs inside DataLoader workers) whose ``describe()``
goes into the embedding-cache key and the eval JSON, so a number can always be traced back to
the exact pixels it was computed from. They live with the data, below ``protocols/``, because
training validation (``.bin`` packs) and the quality pass read faces the same way eval does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..align.warp import template_for, umeyama, warp_face
from .images import ImageReadError, load_rgb

# Median MTCNN 5-point landmarks (left eye, right eye, nose, left/right mouth corner) of the
# deep-funneled 250×250 LFW images, measured on 300 random images (facenet-pytorch MTCNN, face
# nearest the centre, p >= 0.95; per-point std 3-5 px). Warping every image with these fixed
# points onto the ArcFace template is our documented "center-crop": the same similarity warp the
# training faces went through, minus per-image detection (a ~133 px box around (126, 136),
# resized to 112).
LFW_DEEPFUNNELED_LANDMARKS = np.array(
    [[104.83, 113.37], [146.73, 112.42], [126.20, 137.80], [108.23, 159.08], [145.39, 158.35]],
    dtype=np.float64,
)
LFW_DEEPFUNNELED_SIZE = 250


def _read(root: Path, rel: str) -> np.ndarray:
    return load_rgb(root / rel)


def fit_square(img: np.ndarray, size: int) -> np.ndarray:
    """A square crop resized to ``size`` (area filter down, bicubic up); unchanged at that size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


PAD_MODES = {"edge": cv2.BORDER_REPLICATE, "zero": cv2.BORDER_CONSTANT}


def letterbox_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """``(height, width)`` of a ``h x w`` crop scaled so its longer side is ``size`` (aspect kept)."""
    scale = size / max(h, w)
    return max(1, min(size, round(h * scale))), max(1, min(size, round(w * scale)))


def letterbox(img: np.ndarray, size: int, pad: str = "edge") -> np.ndarray:
    """A face crop of any shape → ``size x size``: the longer side scaled to ``size``, aspect kept,
    the short side padded symmetrically (the odd pixel goes to the bottom/right).

    Stretching a 20x14 surveillance crop to a square widens the face by 40 %, a distortion the
    network never saw in training; letterboxing keeps its geometry. ``pad="edge"`` (default)
    replicates the border pixels rather than adding black bands: the padding then continues the
    crop's own background colours instead of putting a high-contrast edge beside the face.

    The filter is chosen from both axes' factors: shrinking on both → ``INTER_AREA`` (anti-aliased
    box), enlarging on both → ``INTER_CUBIC`` (the up-sampling filter ``degrade`` uses). With the
    aspect ratio kept the two factors only differ through rounding (one axis left unchanged), so
    a mixed case never shrinks one axis while enlarging the other; if it did, the longer side's
    factor (the true scale) would decide.
    """
    if pad not in PAD_MODES:
        raise ValueError(f"pad {pad!r}: choose one of {', '.join(PAD_MODES)}")
    h, w = img.shape[:2]
    nh, nw = letterbox_shape(h, w, size)
    if (nh, nw) != (h, w):
        fy, fx = nh / h, nw / w
        if fy <= 1 and fx <= 1:
            shrink = True
        elif fy >= 1 and fx >= 1:
            shrink = False
        else:
            shrink = (fy if h >= w else fx) < 1
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    if nh == size and nw == size:
        return img
    top, left = (size - nh) // 2, (size - nw) // 2
    return cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, PAD_MODES[pad], value=0)


def fit_face(img: np.ndarray, size: int) -> np.ndarray:
    """A face crop to ``size x size``: a square one resized, any other letterboxed (the ``.bin``
    packs' faces, whichever tool wrote them)."""
    return fit_square(img, size) if img.shape[0] == img.shape[1] else letterbox(img, size)


def warp_antialiased(img: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """:func:`warp_face`, after an area pre-shrink when the warp would shrink the face > 2×.

    Bilinear sampling of a 1,000-px mugshot straight to 112 px aliases badly; shrinking first with
    an area filter (landmarks scaled along) keeps the same similarity geometry without aliasing.
    """
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    tpl = template_for(size)[0]
    m = umeyama(lm, tpl)
    scale = float(np.hypot(m[0, 0], m[0, 1]))
    if scale < 0.5:
        f = scale * 1.5  # leave the final warp a mild 1.5x reduction
        h, w = img.shape[:2]
        nw, nh = max(1, int(round(w * f))), max(1, int(round(h * f)))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        lm = lm * np.array([nw / w, nh / h])
    return warp_face(img, lm, size)[0]


@dataclass
class LfwCenterCrop:
    """Deep-funneled LFW → fixed similarity warp with :data:`LFW_DEEPFUNNELED_LANDMARKS`."""

    root: Path
    size: int = 112
    name: str = "lfw-center-crop"

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "align": "center-crop", "landmarks": LFW_DEEPFUNNELED_LANDMARKS.tolist(), "size": self.size}

    def load(self, rel: str) -> np.ndarray:
        img = _read(self.root, rel)
        h, w = img.shape[:2]
        lm = LFW_DEEPFUNNELED_LANDMARKS * np.array([w / LFW_DEEPFUNNELED_SIZE, h / LFW_DEEPFUNNELED_SIZE])
        return warp_face(img, lm, self.size)[0]


@dataclass
class AlignedFolder:
    """Faces already aligned (by ``lrfr align``) under ``root``; ``fallback`` serves the rest."""

    root: Path
    name: str
    size: int = 112
    fallback_rels: frozenset[str] = field(default_factory=frozenset)
    fallback: Any = None
    how: str = "aligned"
    fingerprint: str = ""

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"root": str(self.root), "align": self.how, "size": self.size, "fingerprint": self.fingerprint}
        if self.fallback is not None:
            # Which images fell back is a per-image fact of the alignment, not part of the key.
            d["fallback"] = self.fallback.describe()
        return d

    def load(self, rel: str) -> np.ndarray:
        if rel in self.fallback_rels and self.fallback is not None:
            return self.fallback.load(rel)
        return fit_square(_read(self.root, rel), self.size)


@dataclass
class LandmarkWarp:
    """Images aligned with given 5-point landmarks (SCface's landmark lists)."""

    root: Path
    landmarks: dict[str, np.ndarray]
    name: str
    size: int = 112
    source: str = ""

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root), "align": f"5-point landmarks ({self.source}), similarity warp to the ArcFace template", "size": self.size}

    def load(self, rel: str) -> np.ndarray:
        lm = self.landmarks.get(rel)
        if lm is None:
            raise ImageReadError(f"no landmarks for {rel}")
        return warp_antialiased(_read(self.root, rel), lm, self.size)


@dataclass
class ResizedCrops:
    """Face crops used as they are (SurvFace/TinyFace), letterboxed to the input size (:func:`letterbox`)."""

    root: Path
    name: str
    size: int = 112
    pad: str = "edge"

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "align": f"none (face crops letterboxed: longer side to the input size, aspect kept, {self.pad}-padded; area down, bicubic up)",
            "size": self.size,
        }

    def load(self, rel: str) -> np.ndarray:
        return letterbox(_read(self.root, rel), self.size, self.pad)
