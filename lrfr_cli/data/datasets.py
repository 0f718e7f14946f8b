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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import INPUT_SIZE
from ..errors import LrfrError
from ..workspace import fingerprint_file, fingerprint_tree
from .faces import FaceDataset, load_face, to_input_size
from .images import ImageReadError, load_rgb
from .lists import build_list, check_inside_root, has_undecodable, outside_root, read_list_lines
from .recordio import RecordIODataset, RecordIOReader

# Re-exported: engine/, commands/train.py and benchmarks import these from here.
__all__ = [
    "INPUT_SIZE",
    "FaceDataset",
    "ImageFileDataset",
    "TrainingSet",
    "is_recordio",
    "load_face",
    "open_dataset",
    "resolve_training_data",
    "to_input_size",
]


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


def _check_entries(lines: list[tuple[int, str, int]], root: Path, num_classes: int, where: str) -> None:
    """Labels in range and every image present, before a run starts; errors name ``file:line``."""
    if not lines:
        raise LrfrError(f"{where}: the dataset is empty (no images); check the path or run lrfr make-list")
    for lineno, rel, label in lines:
        if label >= num_classes:
            raise LrfrError(f"{where}:{lineno}: {rel} has label {label}, out of range for {num_classes} classes")
        if not os.path.isfile(root / rel):
            note = ", and its name is not valid UTF-8" if has_undecodable(rel) else ""
            raise LrfrError(f"{where}:{lineno}: image {root / rel} not found{note} (fix the list or --data-root)")


def _from_list_file(list_path: Path, data_root: Path | None, allow_outside_root: bool = False) -> TrainingSet:
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
    lines = read_list_lines(list_path)
    if not lines:
        raise LrfrError(f"{list_path}: the dataset is empty (no 'rel/path label' lines)")
    if not allow_outside_root:
        check_inside_root(list_path, lines, root)
    entries = [(rel, label) for _, rel, label in lines]
    num_classes = int(meta.get("num_classes") or (max(lab for _, lab in entries) + 1))
    _check_entries(lines, root, num_classes, str(list_path))
    inside = [root / r for r, _ in entries if not outside_root(r)]
    fp = {"list": fingerprint_file(list_path), "images": fingerprint_tree(root, inside)}
    if len(inside) < len(entries):  # allowed with allow_outside_root: fingerprinted by absolute path
        outside = [Path(os.path.abspath(root / r)) for r, _ in entries if outside_root(r)]
        fp["outside_root"] = fingerprint_tree(Path(os.sep), outside)
    return TrainingSet("list", root.resolve(), entries, num_classes, str(list_path), fp, meta.get("classes"))


def _from_folder(folder: Path) -> TrainingSet:
    res = build_list(folder)
    n = len(res.classes)
    fp = {"images": fingerprint_tree(folder, [folder / r for r, _ in res.train])}
    return TrainingSet("folder", folder.resolve(), res.train, n, str(folder), fp, res.classes)


def is_recordio(folder: Path) -> bool:
    return (folder / "train.rec").is_file() and (folder / "train.idx").is_file()


def resolve_training_data(
    data: str | os.PathLike[str],
    data_root: str | os.PathLike[str] | None,
    ws_root: Path,
    *,
    allow_outside_root: bool = False,
) -> TrainingSet:
    """Interpret ``--data``: list artifact (``lists/NAME`` or its ``train.txt``), list file +
    ``--data-root``, identity folder, workspace artifact (``aligned/NAME``) or RecordIO folder.

    A list entry that leaves its data root by its spelling (absolute, or ``..`` past the root) is
    refused with ``file:line`` unless ``allow_outside_root`` (``--allow-outside-root``): a list
    handed around should not be able to make training read ``/etc`` or another user's files.
    The check is lexical, so identity folders that are symlinks to shared storage stay allowed.
    """
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
            return _from_list_file(p, root, allow_outside_root)
    if is_recordio(p):
        reader = RecordIOReader(p)
        labels = reader.labels()
        entries = [(str(k), int(lab)) for k, lab in zip(reader.keys, labels)]
        if not entries:
            raise LrfrError(f"{p}: the RecordIO set is empty")
        num_classes = int(labels.max()) + 1
        fp = {"rec": fingerprint_file(p / "train.rec", content=False), "idx": fingerprint_file(p / "train.idx")}
        return TrainingSet("recordio", p.resolve(), entries, num_classes, str(p), fp)
    if (p / "train.txt").is_file():
        return _from_list_file(p / "train.txt", root, allow_outside_root)
    return _from_folder(p)


# --------------------------------------------------------------------------- datasets
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
