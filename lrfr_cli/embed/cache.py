"""The embedding cache: every (image, degradation) is embedded once per model.

Layout: ``<ws>/embeddings/<model-id>/<image-set>/<variant>[.flip].npz`` with arrays ``keys``
(image paths relative to the image set's root) and ``emb`` (raw, un-normalised float32 rows, so
``--flip`` can add the flipped view before normalising). ``manifest.json`` beside them records
what the embeddings were made from; when that changes (another image root, alignment, precision)
the folder's old files are discarded rather than mixed in.

Files are rewritten atomically (temp + rename), so an interrupted eval leaves whole files that
the next eval extends instead of redoing.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Iterable

import numpy as np

from ..errors import LrfrError
from ..workspace import Artifact, Workspace, atomic_path, atomic_write_json


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _key(meta: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


class EmbeddingCache:
    """Read-modify-write store of embeddings for one model and one image set."""

    def __init__(self, ws: Workspace, model_id: str, image_set: str, meta: dict[str, Any], *, refresh: bool = False):
        self.artifact: Artifact = ws.artifact("embeddings", model_id, image_set)
        self.dir = self.artifact.path
        self.meta = meta
        self.key = _key(meta)
        self.refresh = refresh  # --force: recompute what is asked for, keep the rest
        self._data: dict[str, tuple[list[str], list[np.ndarray], dict[str, int]]] = {}
        self._dirty: set[str] = set()
        self._valid: bool | None = None

    # ------------------------------------------------------------------ reading
    def _check_valid(self) -> bool:
        if self._valid is None:
            m = self.artifact.manifest() if self.dir.is_dir() else None
            self._valid = bool(m and m.get("key") == self.key)
        return self._valid

    def _load(self, fname: str) -> tuple[list[str], list[np.ndarray], dict[str, int]]:
        if fname in self._data:
            return self._data[fname]
        keys: list[str] = []
        rows: list[np.ndarray] = []
        path = self.dir / f"{fname}.npz"
        if self._check_valid() and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    keys = [str(k) for k in z["keys"]]
                    emb = np.asarray(z["emb"], dtype=np.float32)
            except (OSError, ValueError, KeyError) as e:
                raise LrfrError(f"embedding cache {path} is unreadable ({e}); delete it or pass --force") from e
            if emb.shape[0] != len(keys):
                raise LrfrError(f"embedding cache {path} is inconsistent; delete it or pass --force")
            rows = list(emb)
        entry = (keys, rows, {k: i for i, k in enumerate(keys)})
        self._data[fname] = entry
        return entry

    def missing(self, fname: str, rels: Iterable[str]) -> list[str]:
        index = self._load(fname)[2]
        seen: set[str] = set()
        out = []
        for r in rels:
            if (self.refresh or r not in index) and r not in seen:
                seen.add(r)
                out.append(r)
        return out

    def count(self, fname: str) -> int:
        return len(self._load(fname)[0])

    def get(self, fname: str, rels: list[str]) -> np.ndarray:
        _, rows, index = self._load(fname)
        try:
            return np.stack([rows[index[r]] for r in rels]) if rels else np.zeros((0, 0), np.float32)
        except KeyError as e:
            raise RuntimeError(f"embedding of {e.args[0]} ({fname}) was never computed") from None

    # ------------------------------------------------------------------ writing
    def add(self, fname: str, rels: list[str], emb: np.ndarray) -> None:
        keys, rows, index = self._load(fname)
        for r, e in zip(rels, np.asarray(emb, dtype=np.float32)):
            if r in index:
                rows[index[r]] = e
            else:
                index[r] = len(keys)
                keys.append(r)
                rows.append(e)
        self._dirty.add(fname)

    def flush(self) -> None:
        """Write every changed file atomically."""
        if not self._dirty:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._check_valid():
            # Made from other inputs: discard the old files before writing ours.
            for old in self.dir.glob("*.npz"):
                old.unlink()
        manifest = {
            "artifact": self.artifact.rel,
            "command": "eval",
            "key": self.key,
            "status": "complete",
            "inputs": self.meta,
            "finished": _now(),
            "counts": {},
        }
        for fname in sorted(self._dirty):
            keys, rows, _ = self._data[fname]
            with atomic_path(self.dir / f"{fname}.npz") as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, keys=np.asarray(keys, dtype=str), emb=np.stack(rows).astype(np.float32))
        for f in sorted(self.dir.glob("*.npz")):
            fname = f.name[: -len(".npz")]
            manifest["counts"][fname] = len(self._data[fname][0]) if fname in self._data else None
        atomic_write_json(self.dir / "manifest.json", manifest)
        self._valid = True
        self._dirty.clear()
