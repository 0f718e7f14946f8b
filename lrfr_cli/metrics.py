"""Verification and identification metrics: the one module every protocol, training validation
and the eval record score with. It sits low (numpy and :mod:`lrfr_cli.errors` only), so
validation during training and ``lrfr eval`` compute a number the same way without one importing
the other.

Conventions (fixed here so every number in an eval JSON means the same thing):

* scores are similarities (cosine of L2-normalised embeddings): higher = more alike;
* a pair is accepted as "same" when ``score >= threshold``;
* the ROC is computed by sorting the scores once (O(n log n)), with one point per distinct
  score, exactly like scikit-learn's ``roc_curve(..., drop_intermediate=False)``;
* TAR@FAR=f is the highest true-accept rate among operating points whose false-accept rate is
  ``<= f`` (no interpolation: the number is achievable by an actual threshold);
* the accuracy threshold is picked among the mid-points between consecutive distinct scores
  (plus one below the minimum and one above the maximum); ties in training accuracy go to the
  lowest such threshold. Mid-points, not the scores themselves, because a test-fold score equal
  to a training score must not decide the outcome by floating-point accident.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import LrfrError


def _check_binary(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if s.size == 0:
        raise LrfrError("no pairs to score")
    if not np.all(np.isfinite(s)):
        raise LrfrError("non-finite similarity scores (the model produced NaN/inf embeddings)")
    return s, y


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, thresholds decreasing, first point ``(0, 0)`` at ``+inf``.

    One operating point per distinct score: accepting every pair with ``score >= t``.
    """
    s, y = _check_binary(scores, labels)
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise LrfrError(f"ROC needs both genuine and impostor pairs (got {n_pos} genuine, {n_neg} impostor)")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # Keep the last index of every run of equal scores: all of them are accepted together.
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tpr = np.r_[0.0, tp[last] / n_pos]
    fpr = np.r_[0.0, fp[last] / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fpr, tpr, thresholds


def auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Area under a ROC curve by the trapezoidal rule (fpr increasing)."""
    return float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return auc(fpr, tpr)


def tar_at_far(scores: np.ndarray, labels: np.ndarray, fars: float | list[float]) -> dict[float, float]:
    """True-accept rate at each false-accept rate: max TPR over points with FPR <= far."""
    fpr, tpr, _ = roc_curve(scores, labels)
    targets = [fars] if isinstance(fars, (int, float)) else list(fars)
    out: dict[float, float] = {}
    for f in targets:
        ok = fpr <= f + 1e-12
        out[float(f)] = float(tpr[ok].max())  # (0, 0) is always admissible
    return out


def candidate_thresholds(scores: np.ndarray) -> np.ndarray:
    """Mid-points between consecutive distinct scores, plus one below and one above all of them."""
    u = np.unique(np.asarray(scores, dtype=np.float64))
    if u.size == 0:
        return np.array([0.0])
    mids = (u[:-1] + u[1:]) / 2.0
    pad = max(1e-6, 1e-6 * float(np.abs(u).max()))
    return np.r_[u[0] - pad, mids, u[-1] + pad]


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """``(threshold, accuracy)`` maximising accuracy of ``score >= threshold`` on these pairs.

    Sort-based: with the scores sorted ascending, putting the threshold just above the k
    lowest scores rejects exactly those k pairs, so accuracy for every candidate is a cumsum.
    """
    s, y = _check_binary(scores, labels)
    cands = candidate_thresholds(s)
    s_sorted = np.sort(s)
    y_by_score = y[np.argsort(s, kind="mergesort")]
    # For candidate c: rejected = scores < c (count k), accepted = the rest.
    k = np.searchsorted(s_sorted, cands, side="left")
    neg_below = np.r_[0, np.cumsum(~y_by_score)]  # impostors among the k lowest
    pos_total = int(y.sum())
    pos_below = k - neg_below[k]
    correct = neg_below[k] + (pos_total - pos_below)
    acc = correct / s.size
    i = int(np.argmax(acc))  # first maximum = lowest threshold among ties
    return float(cands[i]), float(acc[i])


def accuracy_at(scores: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    s, y = _check_binary(scores, labels)
    return float(np.mean((s >= threshold) == y))


@dataclass
class KFoldResult:
    """Accuracy from cross-validated thresholds (LFW's protocol); fractions in [0, 1]."""

    accuracy: float
    std: float
    fold_accuracies: list[float] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> KFoldResult:
    """For each fold: threshold chosen on the other folds, accuracy measured on this one.

    ``std`` is the population standard deviation over folds (``ddof=0``), as insightface and
    facenet report it.
    """
    s, y = _check_binary(scores, labels)
    f = np.asarray(folds).ravel()
    if f.shape != s.shape:
        raise ValueError("folds must have one entry per pair")
    ids = np.unique(f)
    if ids.size < 2:
        raise LrfrError("k-fold accuracy needs at least two folds")
    accs, thrs = [], []
    for k in ids:
        test = f == k
        thr, _ = best_threshold(s[~test], y[~test])
        accs.append(accuracy_at(s[test], y[test], thr))
        thrs.append(thr)
    a = np.asarray(accs)
    return KFoldResult(float(a.mean()), float(a.std()), [float(v) for v in a], thrs)


# --------------------------------------------------------------------------- identification
TIES = "pessimistic"
TIES_NOTE = (
    "rank = 1 + number of wrong-identity gallery entries scoring >= the best correct one "
    "(ties count against the probe: a model that scores every face alike gets rank-1 = 0)"
)


def match_matrix(sim: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """probes × gallery booleans: same identity; checks ``sim`` has that shape."""
    p = np.asarray(probe_labels)
    g = np.asarray(gallery_labels)
    if np.shape(sim) != (p.size, g.size):
        raise ValueError(f"similarity matrix {np.shape(sim)} does not match {p.size} probes x {g.size} gallery")
    return p[:, None] == g[None, :]


def true_match_ranks(sim: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> np.ndarray:
    """1-based rank of the best-scoring correct gallery entry for each probe.

    ``sim`` is probes × gallery. The rank is 1 + the number of wrong-identity gallery entries
    scoring *at least* as high as the best correct one: ties are counted against the probe
    (pessimistic). Resolving them in the probe's favour would let a degenerate model that
    outputs the same vector for every face score rank-1 = 100 %; with continuous scores from a
    working model ties practically never occur, so the convention only bites where it should.
    Probes whose identity is absent from the gallery get rank 0 (callers exclude or count them).
    """
    sim = np.asarray(sim, dtype=np.float64)
    match = match_matrix(sim, probe_labels, gallery_labels)
    has = match.any(axis=1)
    best_true = np.where(match, sim, -np.inf).max(axis=1)
    wrong_not_lower = (np.where(match, -np.inf, sim) >= best_true[:, None]).sum(axis=1)
    return np.where(has, wrong_not_lower + 1, 0).astype(np.int64)


def cmc(ranks: np.ndarray, max_rank: int = 20) -> np.ndarray:
    """Cumulative match characteristic: fraction of probes with rank <= r, for r = 1..max_rank."""
    r = np.asarray(ranks)
    r = r[r > 0]
    if r.size == 0:
        raise LrfrError("no probe has a matching identity in the gallery")
    return np.array([float(np.mean(r <= k)) for k in range(1, max_rank + 1)])


def pair_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally long lists of L2-normalised embeddings."""
    return np.einsum("ij,ij->i", np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


# --------------------------------------------------------------------------- ROC for plots
ROC_MAX_POINTS = 200
"""Upper bound on the ROC points stored per setting: enough for a smooth plot (log-FAR axis
included), small enough that an eval JSON stays a few kB per size."""


def compact_roc(fpr: Sequence[float], tpr: Sequence[float], max_points: int = ROC_MAX_POINTS,
                keep_fars: Iterable[float] = (0.3, 0.1, 0.01, 0.001, 1e-4)) -> dict[str, list[float]]:
    """A subset of a full ROC (``fpr``/``tpr`` non-decreasing, as :func:`roc_curve` returns)
    with at most ``max_points`` points, every one an actual operating point of the full curve.

    Half the budget goes to FAR values log-spaced from the smallest non-zero FPR to 1 (the
    SurvFace-style log axis), half to evenly spaced TAR values (the linear plot's knee); at each
    FAR target the kept point is the best TAR at FPR <= target, so TAR@FAR read off the compact
    curve at ``keep_fars`` equals the full curve's (to the 6 significant digits stored).
    """
    f = np.asarray(fpr, dtype=np.float64)
    t = np.asarray(tpr, dtype=np.float64)
    if f.shape != t.shape or f.ndim != 1 or f.size == 0:
        raise ValueError("fpr and tpr must be 1-d arrays of the same, non-zero length")
    if max_points < 4:
        raise ValueError("max_points must be at least 4")
    if f.size <= max_points:
        idx = np.arange(f.size)
    else:
        fars = list(keep_fars)
        n_far = (max_points - 2 - len(fars)) // 2
        n_tar = max_points - 2 - len(fars) - n_far
        lo = f[f > 0].min() if (f > 0).any() else 1.0
        targets = np.r_[np.geomspace(lo, 1.0, n_far), fars]
        # last index with fpr <= target: both rates are non-decreasing, so it has the best TAR
        i_far = np.searchsorted(f, targets + 1e-12, side="right") - 1
        i_tar = np.searchsorted(t, np.linspace(0.0, 1.0, n_tar), side="left")
        idx = np.unique(np.clip(np.r_[0, f.size - 1, i_far, i_tar], 0, f.size - 1))  # <= max_points by construction
    return {"fpr": [float(f"{v:.6g}") for v in f[idx]], "tpr": [float(f"{v:.6g}") for v in t[idx]]}
