"""Metrics against hand-computed values, brute force over pairs and thresholds, and scipy."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu

from backline.package.metrics import (
    average_precision,
    evaluate,
    expected_calibration_error,
    recall_at_fpr,
    roc_auc,
)


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def brute_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Precision at each distinct threshold, weighted by the recall it adds."""
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        flagged = s >= t
        tp = float((flagged & (y == 1)).sum())
        recall = tp / y.sum()
        total += (recall - prev_recall) * tp / flagged.sum()
        prev_recall = recall
    return total


def test_hand_computed_example() -> None:
    y = np.array([1, 0, 1, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])
    # thresholds 0.9: P=1 R=1/3; 0.8: P=1/2; 0.7: P=2/3 R=2/3; 0.2: P=1/2 R=1
    assert average_precision(y, s) == pytest.approx((1 + 2 / 3 + 1 / 2) / 3)
    # positive/negative pairs won: 0.9 beats 3, 0.7 beats 2, 0.2 beats 0 -> 5 of 9
    assert roc_auc(y, s) == pytest.approx(5 / 9)
    # FPR <= 1/3 allows one false positive: threshold 0.7 catches 2 of 3
    assert recall_at_fpr(y, s, 1 / 3) == (pytest.approx(2 / 3), 0.7)
    # no false positive allowed: only 0.9
    assert recall_at_fpr(y, s, 0.0) == (pytest.approx(1 / 3), 0.9)


def test_ties_count_half_and_move_together() -> None:
    y = np.array([1, 0, 1, 0])
    s = np.array([0.5, 0.5, 0.5, 0.5])
    assert roc_auc(y, s) == 0.5
    assert average_precision(y, s) == 0.5  # one threshold: precision 1/2 at recall 1
    # a tie between the only positive and a negative cannot be split by any threshold
    y2, s2 = np.array([1, 0, 0]), np.array([0.8, 0.8, 0.1])
    assert recall_at_fpr(y2, s2, 0.0) == (0.0, math.inf)
    assert recall_at_fpr(y2, s2, 0.5) == (1.0, 0.8)
    assert roc_auc(y2, s2) == 0.75


def test_perfect_and_inverted_scores() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert average_precision(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert average_precision(y, [0.9, 0.8, 0.2, 0.1]) == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_one_class_gives_nan() -> None:
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.2, 0.3]))
    assert all(math.isnan(v) for v in recall_at_fpr([0, 0], [0.1, 0.2], 0.1))


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])),
        min_size=2,
        max_size=40,
    )
)
def test_against_brute_force_and_scipy(pairs: list[tuple[int, float]]) -> None:
    y = np.array([p[0] for p in pairs], dtype=float)
    s = np.array([p[1] for p in pairs])
    if y.min() == y.max():
        return
    auc = roc_auc(y, s)
    assert auc == pytest.approx(brute_auc(y, s), abs=1e-12)
    u = mannwhitneyu(s[y == 1], s[y == 0], alternative="two-sided").statistic
    assert auc == pytest.approx(u / ((y == 1).sum() * (y == 0).sum()), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(brute_ap(y, s), abs=1e-12)
    for target in (0.0, 0.1, 0.5):
        recall, threshold = recall_at_fpr(y, s, target)
        best = 0.0
        for t in set(s.tolist()):
            flagged = s >= t
            if (flagged & (y == 0)).sum() / (y == 0).sum() <= target:
                best = max(best, (flagged & (y == 1)).sum() / y.sum())
        assert recall == pytest.approx(best)
        if recall > 0:
            flagged = s >= threshold
            assert (flagged & (y == 0)).sum() / (y == 0).sum() <= target


def test_expected_calibration_error_by_hand() -> None:
    # bin [0.1, 0.2): probs 0.15, 0.15, labels 0, 1 -> |0.5 - 0.15| = 0.35, weight 2/5
    # bin [0.9, 1.0]: probs 0.95, 0.95, 1.0, labels 1, 1, 1 -> |1 - 0.9666...|, weight 3/5
    y = np.array([0, 1, 1, 1, 1])
    p = np.array([0.15, 0.15, 0.95, 0.95, 1.0])
    expected = 2 / 5 * 0.35 + 3 / 5 * abs(1 - (0.95 + 0.95 + 1.0) / 3)
    assert expected_calibration_error(y, p) == pytest.approx(expected)
    # perfectly calibrated within each bin
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.55, 0.55]) == pytest.approx(0.025)
    assert expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1], [1.5])


def test_evaluate_bundles_everything() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.1).astype(float)
    p = np.clip(0.1 + 0.5 * y + 0.2 * rng.standard_normal(2000), 0, 1)
    m = evaluate(y, p, target_fpr=0.05)
    assert m.examples == 2000 and m.positives == int(y.sum())
    assert m.auc_pr == average_precision(y, p) and m.roc_auc == roc_auc(y, p)
    assert (m.recall_at_fpr, m.threshold) == recall_at_fpr(y, p, 0.05)
    assert 0.9 < m.roc_auc < 1 and 0 < m.ece < 1 and m.log_loss > 0
    assert set(m.to_dict()) >= {"auc_pr", "roc_auc", "recall_at_fpr", "ece"}


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="0 or 1"):
        roc_auc([2, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([1, 0], [math.nan, 0.2])
    with pytest.raises(ValueError, match="3 values"):
        roc_auc([1, 0, 1], [0.1, 0.2])
