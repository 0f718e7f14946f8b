"""Synthetic identity folders for training tests: each identity is one random base image plus
per-image Gaussian noise, so a model can learn to separate identities in a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def make_identity_faces(root: Path, identities: int = 3, per: int = 4, seed: int = 0, noise: float = 20.0) -> Path:
    """Write ``root/id00/0.png`` ... (112x112 RGB PNG); deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    for i in range(identities):
        base = rng.random((112, 112, 3)) * 255
        d = root / f"id{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per):
            img = np.clip(base + rng.normal(0, noise, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{j}.png")
    return root
