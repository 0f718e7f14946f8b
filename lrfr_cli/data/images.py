"""Finding and decoding images robustly.

Real datasets contain grayscale JPEGs, RGBA PNGs, CMYK JPEGs and the odd truncated file. Every
reader in lrfr goes through :func:`load_rgb`, which returns HxWx3 uint8 RGB or raises
:class:`ImageReadError` with a short reason, so a command can skip and report instead of dying.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterable

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


def list_images(root: str | os.PathLike[str], exts: Iterable[str] = IMAGE_EXTS) -> list[Path]:
    """Image files below ``root`` (recursively), sorted, skipping hidden files and folders."""
    root = Path(root)
    exts = tuple(e.lower() for e in exts)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if f.lower().endswith(exts):
                found.append(Path(dirpath) / f)
    return found


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode any common image to HxWx3 uint8 RGB (grayscale, RGBA, CMYK, palette handled)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                im.load()
                if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
                    # Composite on black? No: on white looks less like a face edge; any constant works.
                    rgba = im.convert("RGBA")
                    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    im = Image.alpha_composite(bg, rgba)
                rgb = im.convert("RGB")
                arr = np.array(rgb, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only)
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image or unknown format") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
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
