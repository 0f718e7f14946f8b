"""Metrics against independent computations: scikit-learn, numpy brute force, hand numbers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from lrfr_cli import metrics as M
from lrfr_cli.errors import LrfrError


def _scores(n: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    s = rng.normal(0, 1, n) + 1.2 * y
    if ties:
        s = np.round(s, 1)  # many equal scores across classes
    return s, y


@pytest.mark.parametrize("ties", [False, True])
def test_roc_matches_sklearn(ties: bool) -> None:
    s, y = _scores(3000, 1, ties)
    fpr, tpr, thr = M.roc_curve(s, y)
    sfpr, stpr, sthr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr)
    np.testing.assert_allclose(tpr, stpr)
    np.testing.assert_allclose(thr[1:], sthr[1:])
    assert M.auc(fpr, tpr) == pytest.approx(sk_auc(sfpr, stpr), abs=1e-12)
    assert M.roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_tar_at_far_matches_sklearn_roc(ties: bool) -> None:
    s, y = _scores(4000, 2, ties)
    sfpr, stpr, _ = sk_roc_curve(y, s, drop_intermediate=False)
    got = M.tar_at_far(s, y, [0.3, 0.1, 0.01, 0.001])
    for far, tar in got.items():
        assert tar == pytest.approx(stpr[sfpr <= far].max())
    # brute force over every threshold: accept score >= t
    for far in (0.1, 0.01):
        best = 0.0
        for t in np.unique(s):
            acc = s >= t
            if acc[~y].mean() <= far:
                best = max(best, acc[y].mean())
        assert got[far] == pytest.approx(best)


def _brute_best_threshold(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    u = np.unique(s)
    cands = np.r_[u[0] - 1e-6 * max(1, np.abs(u).max()), (u[:-1] + u[1:]) / 2, u[-1] + 1e-6 * max(1, np.abs(u).max())]
    best_t, best_a = None, -1.0
    for t in cands:  # ascending: first maximum = lowest threshold
        a = float(np.mean((s >= t) == y))
        if a > best_a:
            best_t, best_a = float(t), a
    return best_t, best_a


@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_equals_brute_force(ties: bool) -> None:
    s, y = _scores(500, 3, ties)
    t, a = M.best_threshold(s, y)
    bt, ba = _brute_best_threshold(s, y)
    assert a == pytest.approx(ba)
    assert t == pytest.approx(bt)


def test_kfold_accuracy_equals_brute_force() -> None:
    s, y = _scores(600, 4)
    folds = np.repeat(np.arange(10), 60)
    res = M.kfold_accuracy(s, y, folds)
    accs = []
    for k in range(10):
        tr = folds != k
        t, _ = _brute_best_threshold(s[tr], y[tr])
        accs.append(np.mean((s[~tr] >= t) == y[~tr]))
    np.testing.assert_allclose(res.fold_accuracies, accs)
    assert res.accuracy == pytest.approx(np.mean(accs))
    assert res.std == pytest.approx(np.std(accs))


def test_hand_made_scores_give_known_numbers() -> None:
    # genuine 0.9 0.8 0.4 ; impostor 0.5 0.3 0.1 -> best threshold between 0.5 and 0.8 (=0.65)
    # or between 0.3 and 0.4 (=0.35): both 5/6; the lowest is chosen.
    s = np.array([0.9, 0.8, 0.4, 0.5, 0.3, 0.1])
    y = np.array([1, 1, 1, 0, 0, 0], bool)
    t, a = M.best_threshold(s, y)
    assert a == pytest.approx(5 / 6)
    assert t == pytest.approx(0.35)
    # AUC = P(genuine > impostor) = 8/9 (0.4 < 0.5 is the only wrong ordering)
    assert M.roc_auc(s, y) == pytest.approx(8 / 9)
    # FAR 0 -> accept only above 0.5: TAR 2/3 ; FAR 1/3 -> threshold 0.4 accepts all 3 genuine
    assert M.tar_at_far(s, y, 0.0)[0.0] == pytest.approx(2 / 3)
    assert M.tar_at_far(s, y, 1 / 3)[1 / 3] == pytest.approx(1.0)


def test_ranks_and_cmc_equal_argsort_brute_force() -> None:
    rng = np.random.default_rng(5)
    n_id = 30
    gal_labels = np.r_[np.arange(n_id), rng.integers(0, n_id, 20), np.full(40, -1)]  # extra images + distractors
    probe_labels = rng.integers(0, n_id, 200)
    sim = rng.normal(size=(200, gal_labels.size))
    sim += 1.5 * (probe_labels[:, None] == gal_labels[None, :])
    ranks = M.true_match_ranks(sim, probe_labels, gal_labels)
    for i in range(200):
        order = np.argsort(-sim[i])
        first = int(np.nonzero(gal_labels[order] == probe_labels[i])[0][0]) + 1
        assert ranks[i] == first
    curve = M.cmc(ranks, 20)
    for k in (1, 5, 20):
        assert curve[k - 1] == pytest.approx(np.mean(ranks <= k))
    assert np.all(np.diff(curve) >= 0)


def test_rank_zero_for_probe_without_gallery_identity() -> None:
    sim = np.array([[0.1, 0.9], [0.5, 0.2]])
    r = M.true_match_ranks(sim, np.array([7, 0]), np.array([0, 1]))
    assert r.tolist() == [0, 1]
    assert M.cmc(r, 2).tolist() == [1.0, 1.0]


def test_degenerate_inputs_are_user_errors() -> None:
    with pytest.raises(LrfrError):
        M.roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))
    with pytest.raises(LrfrError):
        M.roc_curve(np.array([np.nan, 0.2]), np.array([1, 0]))
    with pytest.raises(LrfrError):
        M.cmc(np.array([0, 0]))


def _brute_pessimistic_rank(row: np.ndarray, probe: int, gal: np.ndarray) -> int:
    """Plain loop: 1 + wrong-identity entries whose score is >= the best correct score."""
    best = max(row[j] for j in range(gal.size) if gal[j] == probe)
    return 1 + sum(1 for j in range(gal.size) if gal[j] != probe and row[j] >= best)


def test_constant_embeddings_score_rank1_zero_not_perfect() -> None:
    # A network that returns the same vector for every face: every similarity is equal.
    n_id, per_id = 130, 5
    gal = np.arange(n_id)
    probes = np.repeat(np.arange(n_id), per_id)
    e = np.ones((1, 8)) / np.sqrt(8)
    sim = np.repeat(e, probes.size, 0) @ np.repeat(e, n_id, 0).T
    ranks = M.true_match_ranks(sim, probes, gal)
    assert np.all(ranks == n_id)  # behind all 129 wrong mugshots
    curve = M.cmc(ranks, n_id)
    assert curve[0] == 0.0
    assert np.all(curve[:-1] == 0.0) and curve[-1] == 1.0


def test_tied_ranks_equal_pessimistic_brute_force() -> None:
    rng = np.random.default_rng(6)
    gal = np.r_[np.arange(25), rng.integers(0, 25, 15), np.full(20, -1)]
    probes = rng.integers(0, 25, 150)
    sim = np.round(rng.normal(size=(150, gal.size)) + 0.8 * (probes[:, None] == gal[None, :]), 1)  # many ties
    ranks = M.true_match_ranks(sim, probes, gal)
    want = np.array([_brute_pessimistic_rank(sim[i], probes[i], gal) for i in range(150)])
    np.testing.assert_array_equal(ranks, want)
    # Ties do occur at the true score here, so the check is not vacuous:
    optimistic = np.array([1 + sum(1 for j in range(gal.size) if gal[j] != probes[i] and sim[i, j] > sim[i][gal == probes[i]].max())
                           for i in range(150)])
    assert np.sum(want != optimistic) > 5
    curve = M.cmc(ranks, 20)
    np.testing.assert_allclose(curve, [np.mean(want <= k) for k in range(1, 21)])
