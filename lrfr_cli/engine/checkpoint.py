"""Atomic checkpoint save and safe load (``weights_only=True``: a checkpoint is data, not code)."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import LrfrError
from ..workspace import atomic_path


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a crash mid-save leaves the previous checkpoint intact."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; every failure is a one-line LrfrError."""
    p = Path(path)
    if not p.exists():
        raise LrfrError(f"checkpoint {p} does not exist")
    if not p.is_file():
        raise LrfrError(f"checkpoint {p} is not a file")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "Weights only load failed" in str(e) or "weights_only" in str(e):
            raise LrfrError(
                f"checkpoint {p} contains pickled Python objects that weights_only=True refuses to load "
                "(it could run code); re-save it as a plain state_dict"
            ) from e
        raise LrfrError(f"checkpoint {p} is corrupt or not a PyTorch file ({first})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LrfrError(f"checkpoint {p} is corrupt or truncated ({first[:200]})") from e
