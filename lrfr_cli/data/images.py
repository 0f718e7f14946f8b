"""Finding and decoding images robustly.

Real datasets contain grayscale JPEGs, RGBA PNGs, CMYK JPEGs and the odd truncated file. Every
reader in lrfr goes through :func:`load_rgb`, which returns HxWx3 uint8 RGB or raises
:class:`ImageReadError` with a short reason, so a command can skip and report instead of dying.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import LrfrError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageReadError(Exception):
    """An image that cannot be decoded; the message is a short reason for a failures list."""


def parse_exts(ext: str | None) -> tuple[str, ...]:
    """``"jpg,png"`` → ``(".jpg", ".png")``; None → every known image extension."""
    if not ext:
        return IMAGE_EXTS
    out = []
    for e in ext.split(","):
        e = e.strip().lower()
        if not e:
            continue
        out.append(e if e.startswith(".") else "." + e)
    if not out:
        raise LrfrError(f"--ext {ext!r}: no extensions given")
    return tuple(out)


def check_folder(path: str | os.PathLike[str], what: str = "input folder") -> Path:
    """A clear error for a missing path or a file where a folder is expected."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LrfrError(f"{what} {p} does not exist")
    if not p.is_dir():
        raise LrfrError(f"{what} {p} is a file, not a folder")
    return p


def walk_files(root: str | os.PathLike[str], exts: Iterable[str] | None = None) -> list[Path]:
    """Every file below ``root`` the way lrfr reads a data tree: the one walker.

    * Symbolic links are followed, to folders and to files: a tree of symlinked identity folders
      (usual on shared storage) is read like a real one.
    * A folder is not entered again while it is being walked (its ``(st_dev, st_ino)`` is on the
      path from ``root``), which is exactly what a link loop such as ``a/up -> ..`` needs. The
      guard is per path, not global, so two identity links to the same folder are both listed,
      each under its own name, and which one "wins" never depends on the walk order.
    * Hidden files and hidden folders (``.name``) are skipped; so are broken links.
    * ``exts`` (lower-case, with the dot) keeps files whose name ends with one of them, compared
      case-insensitively (``.JPG`` is a ``.jpg``); ``None`` keeps every file.
    * Output order is deterministic: each folder's files sorted by name, then its sub-folders,
      sorted by name, depth first (the order ``os.walk`` with sorted names gave before).

    Paths are joined under ``root`` as spelled, never resolved, so ``p.relative_to(root)`` holds
    for every result even when the folder it sits in is a link to elsewhere. An unreadable folder
    is an error naming it, not a silent gap in a training set.
    """
    root = Path(root)
    ends = None if exts is None else tuple(e.lower() for e in exts)
    try:
        st = os.stat(root)
    except OSError as e:
        raise LrfrError(f"cannot read folder {root}: {e.strerror or e}") from None
    found: list[Path] = []
    # Stack of (folder, (dev, ino) of the folders on the path to it); popped in sorted order.
    stack: list[tuple[str, frozenset[tuple[int, int]]]] = [(os.fspath(root), frozenset({(st.st_dev, st.st_ino)}))]
    while stack:
        folder, ancestors = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as e:
            raise LrfrError(f"cannot read folder {folder}: {e.strerror or e}") from None
        subdirs: list[tuple[str, frozenset[tuple[int, int]]]] = []
        for e in entries:
            try:
                if e.is_dir():  # follows links
                    s = e.stat()
                    key = (s.st_dev, s.st_ino)
                    if key not in ancestors:  # a link back up the path: a loop
                        subdirs.append((e.path, ancestors | {key}))
                elif e.is_file() and (ends is None or e.name.lower().endswith(ends)):
                    found.append(Path(e.path))
            except OSError:
                continue  # vanished while walking, or a link the OS refuses to follow (ELOOP)
        stack.extend(reversed(subdirs))
    return found


def list_images(root: str | os.PathLike[str], exts: Iterable[str] = IMAGE_EXTS) -> list[Path]:
    """Image files below ``root``: :func:`walk_files` with an extension set (all known by default)."""
    return walk_files(root, exts)


#: Largest face image decoded, in pixels: 50 MP is a 7000x7000 photo, far beyond any face crop,
#: while a 13000x13000 PNG (167 KB on disk when flat) would cost gigabytes per worker. Larger
#: images are refused as unreadable (degrade lists them in failures.csv); env
#: ``LRFR_MAX_MEGAPIXELS`` raises (or lowers) the limit.
DEFAULT_MAX_MEGAPIXELS = 50.0
MAX_MEGAPIXELS_ENV = "LRFR_MAX_MEGAPIXELS"


def max_pixels() -> int:
    """The pixel limit for one image: ``LRFR_MAX_MEGAPIXELS`` (a positive number) or 50 MP."""
    raw = os.environ.get(MAX_MEGAPIXELS_ENV, "").strip()
    if not raw:
        return int(DEFAULT_MAX_MEGAPIXELS * 1e6)
    try:
        mp = float(raw)
    except ValueError:
        mp = float("nan")
    if not (mp > 0 and mp != float("inf")):
        raise LrfrError(f"{MAX_MEGAPIXELS_ENV}={raw!r}: expected a positive number of megapixels, e.g. 50")
    return int(mp * 1e6)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit greyscale to 8 bits instead of letting Pillow clip them.

    ``convert("RGB")`` clips ``I;16``/``I`` values to 0..255, so a 16-bit PNG (0..65535) comes
    out nearly white. Integer images are taken as 16-bit (PNG, TIFF) and keep their top byte;
    float images (``F``) in 0..1 are scaled by 255, others clipped to 0..255.
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        return Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8))
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    return im


def load_rgb(path: str | os.PathLike[str] | BinaryIO) -> np.ndarray:
    """Decode any common image to HxWx3 uint8 RGB (grayscale, 16-bit, RGBA, CMYK, palette handled).

    Images over :func:`max_pixels` are refused before they are decoded. Pillow's own
    ``DecompressionBombWarning`` is not silenced with the decoder's other chatter (EXIF, ICC
    notes): with the default limit it cannot fire, and if it does the user should see it.
    """
    limit = max_pixels()
    if os.environ.get(MAX_MEGAPIXELS_ENV) and limit > (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = limit  # the user raised our limit: Pillow's must not refuse first
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("default", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > limit:
                    raise ImageReadError(
                        f"{w}x{h} is {w * h / 1e6:.0f} MP, over the {limit / 1e6:g} MP limit for face images "
                        f"(set {MAX_MEGAPIXELS_ENV} to raise it)"
                    )
                im.load()
                if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                    # Composite on black? No: on white looks less like a face edge; any constant works.
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, rgba)
                rgb = _to_8bit(im).convert("RGB")
                arr = np.array(rgb, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image or unknown format") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"refused by Pillow as a decompression bomb ({e}); set {MAX_MEGAPIXELS_ENV} to allow it") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"corrupt or truncated image ({e})") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise ImageReadError(f"unexpected image shape {arr.shape}")
    return np.ascontiguousarray(arr)


def save_rgb(path: str | os.PathLike[str], arr: np.ndarray, jpeg_quality: int = 95) -> None:
    """Save HxWx3 uint8 RGB; format from the suffix (PNG lossless, JPEG at ``jpeg_quality``)."""
    im = Image.fromarray(arr, mode="RGB") if arr.ndim == 3 else Image.fromarray(arr)
    suffix = Path(path).suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        im.save(path, format="JPEG", quality=jpeg_quality)
    elif suffix == ".png":
        im.save(path, format="PNG", compress_level=1)
    else:
        im.save(path)
