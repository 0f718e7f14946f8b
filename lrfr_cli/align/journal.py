"""The journal of an output folder, and the CSVs rewritten from it.

``.align-journal.jsonl`` is the single record of what an output folder holds: its first line is
the options the folder was made with, then one line per finished photo (faces written, or why
none). A line is appended only after the photo's files are in place (atomic renames), so after a
crash, ``kill -9`` included, every journalled photo is complete and every other photo is redone;
a line cut by the crash is ignored. Lines are buffered and flushed once per batch: a lost buffer
only means a few photos are aligned again. Faces are not fsynced one by one (that cost ~10 % of
a run); :meth:`Journal.__exit__` syncs once, before the caller can mark the folder complete, and
a face left empty by a power cut counts as not done. Aligned faces and passthrough copies go through the
same :meth:`Journal.commit`. ``landmarks.csv`` and ``failures.csv`` are views of the journal,
rewritten at the end of every run.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..data.images import save_rgb
from ..errors import LrfrError
from ..workspace import atomic_path, atomic_write_text
from .aligner import FaceRecord

JOURNAL = ".align-journal.jsonl"
LANDMARKS_CSV = "landmarks.csv"
FAILURES_CSV = "failures.csv"


def read_journal(path: Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(options line, {source: last entry}) of a journal file; (None, {}) when there is none."""
    config, entries = None, {}
    if not path.exists():
        return None, {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that photo is simply redone
            if "config" in obj:
                config = obj["config"]
            elif "source" in obj:
                entries[obj["source"]] = obj
    return config, entries


class Journal:
    """Append-only journal of ``out_root`` for one run with options ``config``.

    Opening refuses a folder made with other options (mixing two recipes in one folder would
    give a training set whose faces disagree). Use as a context manager.
    """

    MAX_PENDING = 256  # lines held before an automatic flush

    def __init__(self, out_root: Path, config: dict[str, Any], *, quality: int = 92, fsync: bool = False) -> None:
        self.out_root = Path(out_root)
        self.path = self.out_root / JOURNAL
        self.config = config
        self.quality = quality
        self.fsync = fsync
        old, self.entries = read_journal(self.path)
        if old is not None and old != config:
            raise LrfrError(f"{self.out_root} holds faces aligned with other options; remove it or choose another output folder")
        self._new = old is None
        self._fh: IO[str] | None = None
        self._pending: list[str] = []
        self.written = 0

    def __enter__(self) -> Journal:
        self.out_root.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        if self._new:
            self._fh.write(json.dumps({"config": self.config}) + "\n")
            self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._fh is not None
        self.flush()
        self._fh.close()
        self._fh = None
        if self.written and not self.fsync:
            os.sync()  # one flush of everything written, instead of an fsync per face

    def done(self, source: str) -> bool:
        """True when ``source`` is journalled and all its files exist, non-empty (a deleted face is redone)."""
        entry = self.entries.get(source)
        if entry is None:
            return False
        for f in entry.get("faces", []):
            try:
                if (self.out_root / f["path"]).stat().st_size == 0:
                    return False
            except OSError:
                return False
        return True

    def commit(self, source: str, reason: str | None, faces: Sequence[tuple[FaceRecord, np.ndarray | bytes]]) -> None:
        """Write each face (an RGB array to encode, or the bytes of a file to copy), then journal the photo."""
        for rec, payload in faces:
            with atomic_path(self.out_root / rec.path, fsync=self.fsync) as tmp:
                if isinstance(payload, bytes):
                    tmp.write_bytes(payload)
                else:
                    save_rgb(tmp, payload, jpeg_quality=self.quality)
            self.written += 1
        entry = {"source": source, "reason": reason, "faces": [asdict(r) for r, _ in faces]}
        self._pending.append(json.dumps(entry) + "\n")
        self.entries[source] = entry
        if len(self._pending) >= self.MAX_PENDING:  # callers without batches (passthrough) still flush
            self.flush()

    def flush(self) -> None:
        """Append the buffered lines (their files already exist) and hand them to the OS."""
        if self._pending and self._fh is not None:
            self._fh.write("".join(self._pending))
            self._fh.flush()
            self._pending.clear()

    def records(self, sources: Iterable[str]) -> list[FaceRecord]:
        """The faces journalled for ``sources``, in that order."""
        return [FaceRecord(**f) for s in sources if s in self.entries for f in self.entries[s].get("faces", [])]

    def write_reports(self) -> tuple[int, list[tuple[str, str]]]:
        """(Re)write landmarks.csv and failures.csv from the journal; returns (faces, failures)."""
        return write_reports(self.out_root, self.entries.values())


def write_reports(out_root: Path, entries: Iterable[dict[str, Any]]) -> tuple[int, list[tuple[str, str]]]:
    """(Re)write landmarks.csv and failures.csv from journal entries; returns (faces, failures)."""
    entries = sorted(entries, key=lambda e: e["source"])
    lm = io.StringIO()
    w = csv.writer(lm)
    header = ["path", "source", "face", "faces_in_image", "status", "det_prob", "box_x1", "box_y1", "box_x2", "box_y2"]
    header += [f"{a}{i}" for i in range(1, 6) for a in ("x", "y")]
    header += ["m00", "m01", "m02", "m10", "m11", "m12", "fit_error_px"]
    w.writerow(header)
    n_faces = 0
    failures: list[tuple[str, str]] = []
    fl = io.StringIO()
    fw = csv.writer(fl)
    fw.writerow(["path", "reason", "fallback"])
    for e in entries:
        for f in e.get("faces", []):
            n_faces += 1
            box = f.get("box") or [""] * 4
            pts = [v for p in (f.get("landmarks") or [[""] * 2] * 5) for v in p]
            mat = [v for row in (f.get("matrix") or [[""] * 3] * 2) for v in row]
            prob = f.get("prob")
            err = f.get("fit_error")
            w.writerow([f["path"], f["source"], f["face"], f["faces_in_image"], f["status"], "" if prob is None else prob, *box, *pts, *mat, "" if err is None else err])
        if e.get("reason"):
            failures.append((e["source"], e["reason"]))
            fb = next((f["path"] for f in e.get("faces", []) if f["status"] == "fallback"), "")
            fw.writerow([e["source"], e["reason"], fb])
    atomic_write_text(out_root / LANDMARKS_CSV, lm.getvalue())
    atomic_write_text(out_root / FAILURES_CSV, fl.getvalue())
    return n_faces, failures


def read_landmarks(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a ``landmarks.csv`` with numbers parsed (for audits and reproduction)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            out: dict[str, Any] = dict(r)
            for k, v in r.items():
                if k not in ("path", "source", "status") and v != "":
                    out[k] = float(v)
            rows.append(out)
    return rows
