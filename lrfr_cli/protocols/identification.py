"""Closed-set identification scoring shared by SCface and TinyFace: rank-k and CMC."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import metrics as M


def identify(probe_emb: np.ndarray, probe_labels: list[Any], gallery_emb: np.ndarray, gallery_labels: list[Any],
             max_rank: int = 20, ranks: tuple[int, ...] = (1, 5, 10, 20), chunk: int = 512) -> dict[str, Any]:
    """Rank-k accuracies (fractions) and the CMC curve for rank 1..max_rank.

    Probes whose identity is not in the gallery are excluded and counted (``unmatched_probes``).
    """
    labels = {l: i for i, l in enumerate(dict.fromkeys(list(gallery_labels) + list(probe_labels)))}
    g = np.array([labels[l] for l in gallery_labels])
    p = np.array([labels[l] for l in probe_labels])
    # Probe chunks keep memory at chunk x gallery (TinyFace: 150k distractors).
    gal = np.asarray(gallery_emb, dtype=np.float32)
    r = np.concatenate([
        M.true_match_ranks(np.asarray(probe_emb[i : i + chunk], dtype=np.float32) @ gal.T, p[i : i + chunk], g)
        for i in range(0, len(p), chunk)
    ]) if len(p) else np.zeros(0, dtype=np.int64)
    max_rank = min(max_rank, len(gallery_labels))
    curve = M.cmc(r, max_rank)
    out: dict[str, Any] = {
        "probes": int((r > 0).sum()),
        "unmatched_probes": int((r == 0).sum()),
        "gallery": len(gallery_labels),
        "cmc": [float(v) for v in curve],
    }
    for k in ranks:
        if k <= max_rank:
            out[f"rank{k}"] = float(curve[k - 1])
    return out
