"""Seeding, per-step seeds and RNG state capture (for bit-for-bit resume on CPU)."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (initial weights; on-device step randomness has its own
    per-step generators, see :func:`step_seed`)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of step ``step`` on ``rank``: the first 8 bytes of SHA-256 of ``"seed:step:rank"``,
    little-endian, masked to 63 bits (``manual_seed``'s range).

    A cryptographic hash rather than Python's ``hash``: that one is salted per process for
    strings (and collides trivially for tuples of small ints), so it would differ between the
    killed run and its resumption. SHA-256 gives every (seed, step, rank) an unrelated stream.
    """
    digest = hashlib.sha256(f"lrfr-step:{int(seed)}:{int(step)}:{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rng_state() -> dict[str, Any]:
    """All RNG states as tensors/plain types, so ``weights_only=True`` can load them back."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import ast

    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    random.setstate(_to_tuple(ast.literal_eval(state["python"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_to_tuple(v) for v in x)
    return x
