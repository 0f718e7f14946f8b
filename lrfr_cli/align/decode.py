"""Decoding photos for detection, in worker processes.

Kept free of torch imports so spawned decode workers start in a fraction of a second.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..data.images import ImageReadError, load_rgb


@dataclass
class Decoded:
    """One photo: the full-resolution image (what is warped) and the image MTCNN sees.

    ``det`` is ``full`` scaled so its longer side is at most ``max_side`` (the same object when no
    scaling was needed); ``sx``, ``sy`` map detection coordinates back to full resolution.
    """

    rel: str
    full: np.ndarray | None = None
    det: np.ndarray | None = None
    sx: float = 1.0
    sy: float = 1.0
    error: str | None = None


def detection_image(full: np.ndarray, max_side: int) -> tuple[np.ndarray, float, float]:
    """Scale ``full`` down (area filter) so its longer side is <= ``max_side``; never up."""
    h, w = full.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return full, 1.0, 1.0
    s = max_side / max(h, w)
    dw, dh = max(1, round(w * s)), max(1, round(h * s))
    det = cv2.resize(full, (dw, dh), interpolation=cv2.INTER_AREA)
    return det, w / dw, h / dh


def decode(args: tuple[str, str, int]) -> Decoded:
    """Worker entry point: (absolute path, relative path, max_side) → :class:`Decoded`."""
    path, rel, max_side = args
    try:
        full = upright(load_rgb(path), exif_orientation(path))
    except ImageReadError as e:
        return Decoded(rel, error=str(e))
    except MemoryError:
        return Decoded(rel, error="image too large to decode in memory")
    det, sx, sy = detection_image(full, max_side)
    return Decoded(rel, full, det, sx, sy)


def exif_orientation(path: str | os.PathLike[str]) -> int:
    """The EXIF orientation tag (1 = upright) from the header; 1 when absent or unreadable.

    Phone photos are often stored sideways with this tag; MTCNN only finds upright faces.
    """
    try:
        with Image.open(path) as im:
            value = im.getexif().get(0x0112, 1)
            return int(value) if value in range(1, 9) else 1
    except Exception:  # noqa: BLE001 - a broken header is reported by the decoder, not here
        return 1


def upright(img: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) to an HxWxC array, as viewers display the photo."""
    if orientation in (2, 4, 5, 7):
        img = img[:, ::-1]  # mirror first, then rotate (EXIF's transpose/transverse cases)
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)  # counter-clockwise quarter turns
    if turns:
        img = np.rot90(img, turns)
    return np.ascontiguousarray(img)


def image_size(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(width, height) from the file header without decoding; None when unreadable."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 - an unreadable file simply is not "already aligned"
        return None


def init_worker() -> None:
    """Decode workers use one OpenCV thread each; parallelism comes from the processes."""
    cv2.setNumThreads(1)
