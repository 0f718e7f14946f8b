"""``--cache``: the aligned training set packed once into one uint8 memmap.

Decoding 6k–500k JPEGs every epoch makes CPU training JPEG-bound; a ``N×112×112×3`` uint8
``images.npy`` (plus ``labels.npy``) is read with ``np.load(mmap_mode="r")`` so workers share the
page cache and an item costs a memcpy. The pack is written under a temporary name and renamed,
so a killed build never leaves a cache that looks complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..constants import INPUT_SIZE
from ..engine.signals import quiet_worker_init
from ..workspace import atomic_path
from .faces import FaceDataset

IMAGES = "images.npy"
LABELS = "labels.npy"


def build_cache(dataset: FaceDataset, out_dir: Path, workers: int = 0, progress: Callable[..., None] | None = None, batch: int = 64) -> int:
    """Decode every image of ``dataset`` (un-flipped) into ``out_dir/images.npy``; returns N."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(dataset)
    codes = [list(range(2 * s, 2 * min(n, s + batch), 2)) for s in range(0, n, batch)]
    loader = DataLoader(dataset, batch_sampler=codes, num_workers=workers, worker_init_fn=quiet_worker_init if workers > 0 else None)
    with atomic_path(out_dir / IMAGES) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, INPUT_SIZE, INPUT_SIZE, 3))
        pos = 0
        for images, _labels in loader:
            b = images.shape[0]
            arr[pos : pos + b] = images.permute(0, 2, 3, 1).numpy()
            pos += b
            if progress:
                progress(b)
        arr.flush()
        del arr
    with atomic_path(out_dir / LABELS) as tmp:
        np.save(tmp, np.asarray(dataset.labels, dtype=np.int64))
    return n


def is_built(out_dir: Path) -> bool:
    return (Path(out_dir) / IMAGES).is_file() and (Path(out_dir) / LABELS).is_file()


class CachedDataset(FaceDataset):
    """Items from the packed memmap; opened lazily so each worker maps the file itself."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir)
        self.labels = np.load(self.dir / LABELS)
        self._images: np.ndarray | None = None
        self._pid = -1

    def _arr(self) -> np.ndarray:
        if self._images is None or self._pid != os.getpid():
            self._images = np.load(self.dir / IMAGES, mmap_mode="r")
            self._pid = os.getpid()
        return self._images

    def image(self, i: int) -> np.ndarray:
        return np.asarray(self._arr()[i])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None
        return state


__all__ = ["CachedDataset", "build_cache", "is_built", "torch"]
