"""The face-dataset base class and the resize every reader shares.

It lives apart from :mod:`.datasets` so that the concrete datasets (image files, RecordIO, the
packed cache) can subclass it while :mod:`.datasets` imports them at module level: before, the
RecordIO module imported the base from ``datasets`` and ``datasets`` had to import RecordIO lazily
to dodge the cycle.
"""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import INPUT_SIZE
from ..errors import LrfrError
from .images import ImageReadError, load_rgb


def to_input_size(img: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """Aligned faces pass through; other sizes are resized (area filter), never padded."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def load_face(path: str | os.PathLike[str], size: int = INPUT_SIZE, center_crop: float = 0.5) -> np.ndarray:
    """A face image for quick validation: 112-px aligned images as they are; larger, un-aligned
    images (e.g. LFW's 250-px deep-funneled photos, face roughly centred) by a central crop of
    ``center_crop`` of the shorter side, resized. Crude, but enough to rank checkpoints."""
    try:
        img = load_rgb(path)
    except ImageReadError as e:
        raise LrfrError(f"{path}: {e}") from None
    h, w = img.shape[:2]
    if (h, w) != (size, size) and center_crop < 1.0:
        side = max(1, int(round(min(h, w) * center_crop)))
        y0, x0 = (h - side) // 2, (w - side) // 2
        img = img[y0 : y0 + side, x0 : x0 + side]
    return to_input_size(img, size)


class FaceDataset(Dataset):
    """Base: subclasses implement ``image(i)`` (H×W×3 uint8) and set ``labels``.

    An index is ``2·i + flip`` (see ``EpochBatchSampler``): the sampler, not the dataset, decides
    the mirror, so an epoch is a pure function of the seed.
    """

    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, code: int) -> tuple[torch.Tensor, int]:
        i, flip = divmod(int(code), 2)
        img = to_input_size(self.image(i))
        if flip:
            img = img[:, ::-1]
        return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))), int(self.labels[i])


__all__ = ["INPUT_SIZE", "FaceDataset", "load_face", "to_input_size"]
