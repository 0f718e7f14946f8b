"""Training datasets: what ``--data`` can point at, and the map-style datasets the loop reads.

Every dataset yields ``(uint8 tensor 3×112×112 RGB, label)``; the loop converts to float on the
device (``lrfr_cli.models.preprocess``), so worker processes move 4× fewer bytes. The sampler,
not the dataset, decides the horizontal flip: an index from :class:`EpochBatchSampler` is
``2·i + flip``, which makes every epoch a pure function of ``(seed, epoch)`` — the property that
lets a killed run resume bit-for-bit and a DDP run match a single-process one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import LrfrError
from ..workspace import fingerprint_file, fingerprint_tree
from .images import ImageReadError, load_rgb
from .lists import build_list, read_list

INPUT_SIZE = 112


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


# --------------------------------------------------------------------------- what --data means
@dataclass
class TrainingSet:
    """A resolved ``--data``: where images come from, their labels, and a fingerprint."""

    kind: str  # "list" | "folder" | "recordio"
    root: Path
    entries: list[tuple[str, int]]
    num_classes: int
    source: str
    fingerprint: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> np.ndarray:
        return np.fromiter((lab for _, lab in self.entries), dtype=np.int64, count=len(self.entries))


def _check_entries(entries: list[tuple[str, int]], root: Path, num_classes: int, where: str) -> None:
    if not entries:
        raise LrfrError(f"{where}: the dataset is empty (no images); check the path or run lrfr make-list")
    for i, (rel, label) in enumerate(entries, 1):
        if label >= num_classes:
            raise LrfrError(f"{where}: entry {i} ({rel}) has label {label}, out of range for {num_classes} classes")
        if not os.path.isfile(root / rel):
            raise LrfrError(f"{where}: entry {i}: image {root / rel} not found (fix the list or --data-root)")


def _from_list_file(list_path: Path, data_root: Path | None) -> TrainingSet:
    labels_file = list_path.parent / "labels.json"
    meta: dict[str, Any] = {}
    if labels_file.is_file():
        try:
            meta = json.loads(labels_file.read_text())
        except json.JSONDecodeError as e:
            raise LrfrError(f"{labels_file}: not valid JSON ({e}); re-run lrfr make-list") from None
    root = data_root or (Path(meta["root"]) if meta.get("root") else None)
    if root is None:
        raise LrfrError(f"--data {list_path}: a bare list file needs --data-root (the folder its paths are relative to)")
    if not root.is_dir():
        raise LrfrError(f"image root {root} of {list_path} is not a folder (pass --data-root)")
    entries = read_list(list_path)
    if not entries:
        raise LrfrError(f"{list_path}: the dataset is empty (no 'rel/path label' lines)")
    num_classes = int(meta.get("num_classes") or (max(lab for _, lab in entries) + 1))
    _check_entries(entries, root, num_classes, str(list_path))
    fp = {"list": fingerprint_file(list_path), "images": fingerprint_tree(root, [root / r for r, _ in entries])}
    return TrainingSet("list", root.resolve(), entries, num_classes, str(list_path), fp, meta.get("classes"))


def _from_folder(folder: Path) -> TrainingSet:
    res = build_list(folder)
    n = len(res.classes)
    fp = {"images": fingerprint_tree(folder, [folder / r for r, _ in res.train])}
    return TrainingSet("folder", folder.resolve(), res.train, n, str(folder), fp, res.classes)


def is_recordio(folder: Path) -> bool:
    return (folder / "train.rec").is_file() and (folder / "train.idx").is_file()


def resolve_training_data(data: str | os.PathLike[str], data_root: str | os.PathLike[str] | None, ws_root: Path) -> TrainingSet:
    """Interpret ``--data``: list artifact (``lists/NAME`` or its ``train.txt``), list file +
    ``--data-root``, identity folder, workspace artifact (``aligned/NAME``) or RecordIO folder."""
    p = Path(data).expanduser()
    if not p.exists() and not p.is_absolute() and (ws_root / p).exists():
        p = ws_root / p
    if not p.exists():
        raise LrfrError(f"--data {data}: not found (give a list, an identity folder, lists/NAME, aligned/NAME or a RecordIO folder)")
    root = Path(data_root).expanduser() if data_root else None
    if p.is_file():
        if p.suffix == ".rec":
            p = p.parent
        else:
            return _from_list_file(p, root)
    if is_recordio(p):
        from .recordio import RecordIOReader

        reader = RecordIOReader(p)
        labels = reader.labels()
        entries = [(str(k), int(lab)) for k, lab in zip(reader.keys, labels)]
        if not entries:
            raise LrfrError(f"{p}: the RecordIO set is empty")
        num_classes = int(labels.max()) + 1
        fp = {"rec": fingerprint_file(p / "train.rec", content=False), "idx": fingerprint_file(p / "train.idx")}
        return TrainingSet("recordio", p.resolve(), entries, num_classes, str(p), fp)
    if (p / "train.txt").is_file():
        return _from_list_file(p / "train.txt", root)
    return _from_folder(p)


# --------------------------------------------------------------------------- datasets
class FaceDataset(Dataset):
    """Base: subclasses implement ``image(i)`` (H×W×3 uint8) and set ``labels``."""

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


class ImageFileDataset(FaceDataset):
    """JPEG/PNG files from a list or an identity folder."""

    def __init__(self, root: Path, entries: Sequence[tuple[str, int]]) -> None:
        self.root = Path(root)
        self.paths = [r for r, _ in entries]
        self.labels = np.asarray([lab for _, lab in entries], dtype=np.int64)

    def image(self, i: int) -> np.ndarray:
        path = self.root / self.paths[i]
        try:
            return load_rgb(path)
        except ImageReadError as e:
            raise LrfrError(f"{path}: {e}") from None


def open_dataset(ts: TrainingSet) -> FaceDataset:
    if ts.kind == "recordio":
        from .recordio import RecordIODataset

        return RecordIODataset(ts.root)
    return ImageFileDataset(ts.root, ts.entries)


# --------------------------------------------------------------------------- sampling
class EpochBatchSampler:
    """Deterministic batches of ``2·index + flip`` codes, sharded over DDP ranks.

    Epoch ``e`` is a permutation drawn from ``seed + e``; global batch ``k`` is
    ``perm[k·B : (k+1)·B]`` and rank ``r`` of ``W`` takes its ``r``-th slice of ``B/W``, so the
    union over ranks is exactly the single-process batch. The last partial batch is dropped (BN
    and the per-rank mean need equal shards). ``start`` skips batches already trained on (resume).
    """

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int = 0, rank: int = 0, world_size: int = 1, flip: bool = True, start: int = 0) -> None:
        if global_batch % world_size:
            raise LrfrError(f"--batch-size {global_batch} must be divisible by the number of processes ({world_size})")
        if n < global_batch:
            raise LrfrError(f"the dataset has {n} images, fewer than --batch-size {global_batch}; lower --batch-size")
        self.n, self.global_batch, self.seed, self.epoch = n, global_batch, seed, epoch
        self.rank, self.world_size, self.flip, self.start = rank, world_size, flip, start

    def __len__(self) -> int:
        return self.n // self.global_batch - self.start

    def codes(self) -> np.ndarray:
        rng = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        perm = rng.permutation(self.n)
        flips = rng.integers(0, 2, self.n) if self.flip else np.zeros(self.n, dtype=np.int64)
        return perm * 2 + flips

    def __iter__(self) -> Iterator[list[int]]:
        codes = self.codes()
        per = self.global_batch // self.world_size
        for k in range(self.start, self.n // self.global_batch):
            g = codes[k * self.global_batch : (k + 1) * self.global_batch]
            yield g[self.rank * per : (self.rank + 1) * per].tolist()


# --------------------------------------------------------------------------- verification pairs
_LFW_NAME = re.compile(r"^\S+$")


def _lfw_path(root: Path, name: str, idx: str) -> Path:
    stem = f"{name}/{name}_{int(idx):04d}"
    for ext in (".jpg", ".png", ".jpeg"):
        if (root / (stem + ext)).is_file():
            return root / (stem + ext)
    return root / (stem + ".jpg")


def read_pairs(pairs_file: str | os.PathLike[str], root: str | os.PathLike[str] | None = None) -> list[tuple[Path, Path, bool]]:
    """Verification pairs: LFW format (``name i j`` / ``name1 i name2 j``, optional count header)
    relative to ``root`` (default: ``lfw-deepfunneled/`` beside the file, else the file's folder),
    or ``path1 path2 same(0|1)`` lines relative to ``root``."""
    pf = Path(pairs_file)
    if not pf.is_file():
        raise LrfrError(f"--val-pairs {pf}: file not found")
    if root is None:
        root = pf.parent / "lfw-deepfunneled" if (pf.parent / "lfw-deepfunneled").is_dir() else pf.parent
    root = Path(root)
    pairs: list[tuple[Path, Path, bool]] = []
    for n, line in enumerate(pf.read_text().splitlines(), 1):
        t = line.split()
        if not t or line.startswith("#") or all(x.isdigit() for x in t):
            continue
        if len(t) == 3 and t[1].isdigit() and t[2].isdigit():
            pairs.append((_lfw_path(root, t[0], t[1]), _lfw_path(root, t[0], t[2]), True))
        elif len(t) == 4 and t[1].isdigit() and t[3].isdigit():
            pairs.append((_lfw_path(root, t[0], t[1]), _lfw_path(root, t[2], t[3]), False))
        elif len(t) == 3 and t[2] in ("0", "1"):
            pairs.append((root / t[0], root / t[1], t[2] == "1"))
        else:
            raise LrfrError(f"{pf}:{n}: not a pair line ({line.strip()!r})")
    if not pairs:
        raise LrfrError(f"--val-pairs {pf}: no pairs found")
    missing = [str(p) for a, b, _ in pairs for p in (a, b) if not p.is_file()]
    if missing:
        raise LrfrError(f"--val-pairs {pf}: {len(missing)} image(s) not found, e.g. {missing[0]} (set --val-root)")
    return pairs
