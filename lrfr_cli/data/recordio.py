"""insightface's RecordIO training sets (``train.rec`` + ``train.idx``) read without MXNet.

Format (MXNet ``dmlc::RecordIOWriter`` + ``mx.recordio.pack``), little-endian:

* ``train.idx``: text lines ``key<TAB>byte offset`` into ``train.rec``;
* each record: ``uint32 magic 0xCED7230A``, ``uint32 lrec`` (upper 3 bits: continuation flag,
  lower 29: payload length), the payload, zero padding to a multiple of 4. A payload containing
  the magic number is split into parts (flag 1 = first, 2 = middle, 3 = last) and the reader
  joins them with the magic in between;
* payload = ``IRHeader`` ``struct 'IfQQ'`` (flag, label, id, id2), then ``flag`` float32 labels
  when ``flag > 0`` (the first is the class), then the encoded image (JPEG/PNG);
* insightface's record 0 is a header whose ``label[0]`` is one past the last image key
  (images are keys ``1 .. label[0]-1``); sets without it use every key in the index.

:func:`write_recordio` writes the same format (for tests and for packing our own sets).
"""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import LrfrError
from .faces import FaceDataset
from .images import ImageReadError, load_rgb

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LEN_MASK = (1 << 29) - 1


def pack_record(label: float | Iterable[float], payload: bytes, key: int = 0) -> bytes:
    """``IRHeader`` + payload (what ``mx.recordio.pack`` produces)."""
    if isinstance(label, (int, float)):
        return _HEADER.pack(0, float(label), key, 0) + payload
    labels = np.asarray(list(label), dtype=np.float32)
    return _HEADER.pack(len(labels), 0.0, key, 0) + labels.tobytes() + payload


def unpack_record(buf: bytes) -> tuple[np.ndarray, bytes]:
    """(labels as float32 array, image bytes)."""
    if len(buf) < _HEADER.size:
        raise LrfrError("RecordIO record shorter than its header")
    flag, label, _id, _id2 = _HEADER.unpack_from(buf)
    body = buf[_HEADER.size :]
    if flag > 0:
        labels = np.frombuffer(body[: 4 * flag], dtype=np.float32).copy()
        return labels, body[4 * flag :]
    return np.asarray([label], dtype=np.float32), body


def _frame(payload: bytes, cflag: int) -> bytes:
    pad = (-len(payload)) % 4
    return _MAGIC_BYTES + struct.pack("<I", (cflag << 29) | len(payload)) + payload + b"\0" * pad


def _frames(payload: bytes) -> bytes:
    """Split a payload at embedded magic numbers, as dmlc's writer does."""
    # Like dmlc's writer, split only where the magic sits at a 4-byte-aligned offset.
    cuts = [i for i in range(0, len(payload) - 3, 4) if payload[i : i + 4] == _MAGIC_BYTES]
    bounds = [0] + [c for cut in cuts for c in (cut, cut + 4)] + [len(payload)]
    parts = [payload[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]
    if len(parts) == 1:
        return _frame(payload, 0)
    out = [_frame(parts[0], 1)] + [_frame(p, 2) for p in parts[1:-1]] + [_frame(parts[-1], 3)]
    return b"".join(out)


def write_recordio(folder: str | os.PathLike[str], items: Iterable[tuple[bytes, int]], header: bool = True) -> int:
    """Write ``train.rec``/``train.idx`` from (encoded image, label) pairs; returns the count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    records = list(items)
    idx_lines = []
    with open(folder / "train.rec", "wb") as rec:
        start_key = 0
        if header:
            n = len(records)
            rec.write(_frames(pack_record([n + 1, n + 1], b"")))
            idx_lines.append("0\t0")
            start_key = 1
        for k, (img, label) in enumerate(records, start_key):
            idx_lines.append(f"{k}\t{rec.tell()}")
            rec.write(_frames(pack_record(float(label), img, key=k)))
    (folder / "train.idx").write_text("\n".join(idx_lines) + "\n")
    return len(records)


class RecordIOReader:
    """Random access to records by key through ``os.pread`` (safe across worker processes)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.rec_path = self.folder / "train.rec"
        self.offsets: dict[int, int] = {}
        idx = self.folder / "train.idx"
        try:
            lines = idx.read_text().splitlines()
        except (ValueError, OSError) as e:
            raise LrfrError(f"{idx}: unreadable index ({e})") from None
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    k, off = line.split()
                    self.offsets[int(k)] = int(off)
                except ValueError:
                    raise LrfrError(f"{idx}:{n}: unreadable index line {line.strip()[:60]!r} (expected 'KEY OFFSET')") from None
        self.size = self.rec_path.stat().st_size
        self._fd: int | None = None
        self._pid = -1
        keys = sorted(self.offsets)
        if 0 in self.offsets:
            labels, _ = unpack_record(self.read(0))
            if len(labels) >= 2 and labels[0] > 0:
                end = int(labels[0])
                keys = [k for k in range(1, end) if k in self.offsets]
        self.keys = keys

    def _handle(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # reopen after fork
            self._fd = os.open(self.rec_path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def read(self, key: int) -> bytes:
        if key not in self.offsets:
            raise LrfrError(f"{self.rec_path}: key {key} is not in train.idx")
        fd = self._handle()
        pos = self.offsets[key]
        parts: list[bytes] = []
        while True:
            head = os.pread(fd, 8, pos)
            if len(head) < 8:
                raise LrfrError(f"{self.rec_path}: truncated at byte {pos}")
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise LrfrError(f"{self.rec_path}: bad magic at byte {pos} (not a RecordIO file, or a stale .idx)")
            cflag, length = lrec >> 29, lrec & _LEN_MASK
            data = os.pread(fd, length, pos + 8)
            if len(data) < length:
                raise LrfrError(f"{self.rec_path}: truncated record at byte {pos}")
            parts.append(data)
            pos += 8 + length + ((-length) % 4)
            if cflag in (0, 3):
                break
        return _MAGIC_BYTES.join(parts)

    def labels(self) -> np.ndarray:
        """Class of every image key (reads each header once: 24 bytes per record)."""
        out = np.empty(len(self.keys), dtype=np.int64)
        for i, k in enumerate(self.keys):
            labels, _ = unpack_record(self.read(k)[: _HEADER.size + 64])
            out[i] = int(labels[0])
        return out

    def image(self, key: int) -> np.ndarray:
        _, img = unpack_record(self.read(key))
        try:
            return load_rgb(io.BytesIO(img))
        except ImageReadError as e:
            raise LrfrError(f"{self.rec_path} record {key}: {e}") from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fd"] = None
        return state


class RecordIODataset(FaceDataset):
    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.reader = RecordIOReader(folder)
        self.labels = self.reader.labels()

    def image(self, i: int) -> np.ndarray:
        return self.reader.image(self.reader.keys[i])
