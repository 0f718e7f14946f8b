"""Closed-set identification scoring shared by SCface and TinyFace: rank-k, CMC and mAP."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import metrics as M


def average_precisions(sim: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """Average precision of each probe's gallery ranking (``nan`` for a probe with no true match).

    AP = (1 / n_pos) · Σ over the probe's true matches m of precision(score >= score_m): tied
    scores form one operating point, exactly scikit-learn's ``average_precision_score`` (a step
    sum over distinct thresholds). That is the same tie convention as the pessimistic ranks of
    :func:`metrics.true_match_ranks`: a wrong entry tied with a true match counts before it.
    Only the true matches' scores are looked up, so a 150k-image gallery costs
    O(true matches × gallery) comparisons, not a sort per probe.
    """
    sim = np.asarray(sim)
    match = M.match_matrix(sim, probe_labels, gallery_labels)
    n_pos = match.sum(axis=1)
    ap = np.full(match.shape[0], np.nan)
    if match.shape[0] == 0 or not n_pos.any():
        return ap
    k_max = int(n_pos.max())
    # Scores of each probe's true matches, left-aligned and padded with -inf: probes x k_max.
    pos = np.full((match.shape[0], k_max), -np.inf)
    rows, cols = np.nonzero(match)
    slot = np.arange(rows.size) - np.searchsorted(rows, rows)  # position among the row's matches
    pos[rows, slot] = sim[rows, cols]
    wrong = np.where(match, -np.inf, sim)
    # True matches at or above each true match (itself included); -inf padding never counts.
    pos_ge = (pos[:, None, :] >= pos[:, :, None]).sum(axis=2)
    wrong_ge = np.zeros_like(pos_ge)
    for k in range(k_max):
        r = np.nonzero(n_pos > k)[0]
        wrong_ge[r, k] = (wrong[r] >= pos[r, k : k + 1]).sum(axis=1)
    valid = np.arange(k_max)[None, :] < n_pos[:, None]
    prec = np.where(valid, pos_ge / np.maximum(pos_ge + wrong_ge, 1), 0.0)
    has = n_pos > 0
    ap[has] = prec[has].sum(axis=1) / n_pos[has]
    return ap


def identify(probe_emb: np.ndarray, probe_labels: list[Any], gallery_emb: np.ndarray, gallery_labels: list[Any],
             max_rank: int = 20, ranks: tuple[int, ...] = (1, 5, 10, 20), chunk: int = 512,
             mean_ap: bool = False) -> dict[str, Any]:
    """Rank-k accuracies (fractions), the CMC curve for rank 1..max_rank and, with ``mean_ap``,
    ``map``: the mean over probes of the average precision of the whole gallery ranking.

    Probes whose identity is not in the gallery are excluded from every number and counted
    (``unmatched_probes``). Ranks whose k exceeds the gallery size are left out.
    """
    labels = {l: i for i, l in enumerate(dict.fromkeys(list(gallery_labels) + list(probe_labels)))}
    g = np.array([labels[l] for l in gallery_labels])
    p = np.array([labels[l] for l in probe_labels])
    # Probe chunks keep memory at chunk x gallery (TinyFace: 150k distractors).
    gal = np.asarray(gallery_emb, dtype=np.float32)
    r_parts: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    ap_parts: list[np.ndarray] = [np.zeros(0)]
    for i in range(0, len(p), chunk):
        sim = np.asarray(probe_emb[i : i + chunk], dtype=np.float32) @ gal.T
        r_parts.append(M.true_match_ranks(sim, p[i : i + chunk], g))
        if mean_ap:
            ap_parts.append(average_precisions(sim, p[i : i + chunk], g))
    r = np.concatenate(r_parts)
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
    if mean_ap:
        ap = np.concatenate(ap_parts)
        out["map"] = float(np.nanmean(ap)) if np.isfinite(ap).any() else None
    return out
