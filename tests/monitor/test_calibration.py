"""Isotonic calibration and calibration metrics (backline.monitor.calibration).

The fit is checked three independent ways: against the min-max formula of isotonic regression
(brute force, small inputs), against scipy's implementation, and by its defining properties
(monotone, no monotone vector has a smaller squared error).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import isotonic_regression as scipy_isotonic

from backline.core.errors import InvalidArgument
from backline.monitor.calibration import (
    IsotonicCalibrator,
    brier_score,
    expected_calibration_error,
    isotonic_regression,
)

values = st.lists(
    st.floats(-5, 5, allow_nan=False).map(lambda v: round(v, 2)), min_size=1, max_size=12
)


def brute_force_isotonic(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """f_i = max over j <= i of min over k >= i of the weighted mean of y[j..k]."""
    n = y.size
    out = np.empty(n)
    for i in range(n):
        out[i] = max(
            min(np.sum(w[j : k + 1] * y[j : k + 1]) / np.sum(w[j : k + 1]) for k in range(i, n))
            for j in range(i + 1)
        )
    return out


@settings(max_examples=150, deadline=None)
@given(values, st.data())
def test_pav_equals_the_min_max_formula(ys: list[float], data: st.DataObject) -> None:
    y = np.array(ys)
    w = np.array(data.draw(st.lists(st.integers(1, 5), min_size=y.size, max_size=y.size)), float)
    fit = isotonic_regression(y, w)
    assert np.all(np.diff(fit) >= -1e-12)
    np.testing.assert_allclose(fit, brute_force_isotonic(y, w), atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(0, 2**32 - 1))
def test_pav_equals_scipy_and_no_monotone_vector_beats_it(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = np.round(rng.normal(np.linspace(0, 1, n), 0.7), 3)
    w = rng.integers(1, 4, n).astype(float)
    fit = isotonic_regression(y, w)
    np.testing.assert_allclose(fit, scipy_isotonic(y, weights=w).x, atol=1e-9)
    best = np.sum(w * (y - fit) ** 2)
    for _ in range(20):  # random monotone competitors, including perturbations of the fit
        other = np.sort(fit + rng.normal(0, 0.05, n))
        assert np.sum(w * (y - other) ** 2) >= best - 1e-9


def test_pav_rejects_bad_input() -> None:
    with pytest.raises(InvalidArgument, match="weights"):
        isotonic_regression([1.0, 2.0], [1.0])
    with pytest.raises(InvalidArgument, match="finite"):
        isotonic_regression([1.0, math.nan])
    with pytest.raises(InvalidArgument, match="positive"):
        isotonic_regression([1.0, 2.0], [1.0, 0.0])


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 300), st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_calibrator_is_the_pooled_isotonic_fit_and_monotone(
    n: int, seed: int, distinct: int
) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, distinct, n) / distinct  # many ties
    labels = rng.random(n) < scores
    labels[:2] = (True, False)  # both classes
    cal = IsotonicCalibrator.fit(scores, labels)
    # at each reference score: the weighted isotonic fit of per-score label means (scipy)
    unique, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=labels, minlength=unique.size) / counts
    expected = scipy_isotonic(means, weights=counts.astype(float)).x
    np.testing.assert_allclose(cal.predict(unique), expected, atol=1e-12)
    # tied scores get one probability, and any scores map monotonically
    probs = cal.predict(scores)
    np.testing.assert_array_equal(probs, expected[inverse])
    grid = np.sort(rng.uniform(-0.5, 1.5, 200))
    mapped = cal.predict(grid)
    assert np.all(np.diff(mapped) >= 0)
    assert mapped.min() >= 0 and mapped.max() <= 1
    assert (cal.reference_rows, cal.reference_positives) == (n, int(labels.sum()))


def test_calibrator_interpolates_between_blocks_and_holds_the_ends() -> None:
    cal = IsotonicCalibrator.fit([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1])
    assert cal.knots == (0.1, 0.2, 0.3, 0.4)
    assert cal.values == (0.0, 0.0, 1.0, 1.0)
    np.testing.assert_allclose(cal.predict([-3.0, 0.15, 0.25, 0.35, 9.0]), [0, 0, 0.5, 1, 1])


def test_calibrator_fixes_miscalibrated_scores() -> None:
    rng = np.random.default_rng(7)

    def world(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=n)
        truth = 1 / (1 + np.exp(-(-3.0 + 1.5 * x)))
        score = 1 / (1 + np.exp(-(-1.0 + 0.8 * x)))  # same order, far too high
        return score, rng.random(n) < truth

    ref_scores, ref_labels = world(40_000)
    cal = IsotonicCalibrator.fit(ref_scores, ref_labels)
    scores, labels = world(40_000)
    raw = expected_calibration_error(labels, scores)
    fixed = expected_calibration_error(labels, cal.predict(scores))
    assert raw > 0.15 and fixed < 0.01
    assert brier_score(labels, cal.predict(scores)) < brier_score(labels, scores)


def test_calibrator_json_round_trip_and_errors() -> None:
    cal = IsotonicCalibrator.fit([0.3, 0.1, 0.2, 0.9, 0.5], [0, 0, 1, 1, 0])
    assert IsotonicCalibrator.from_json(cal.to_json()) == cal
    with pytest.raises(InvalidArgument, match="both classes"):
        IsotonicCalibrator.fit([0.1, 0.2], [0, 0])
    with pytest.raises(InvalidArgument, match="one label per score"):
        IsotonicCalibrator.fit([0.1, 0.2], [0, 1, 1])
    with pytest.raises(InvalidArgument, match="0/1"):
        IsotonicCalibrator.fit([0.1, 0.2], [0, 2])
    with pytest.raises(InvalidArgument, match="NaN or infinite"):
        cal.predict([0.1, math.inf])
    with pytest.raises(InvalidArgument, match="not a calibrator"):
        IsotonicCalibrator.from_json('{"kind": "platt"}')


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 100)), min_size=1, max_size=60),
    st.integers(1, 12),
)
def test_ece_and_brier_equal_their_definitions(rows: list[tuple[bool, int]], bins: int) -> None:
    y = np.array([r[0] for r in rows], float)
    p = np.array([r[1] for r in rows]) / 100
    total = 0.0
    for b in range(bins):  # bin b holds [b/bins, (b+1)/bins), and 1.0 goes in the last
        inside = [i for i in range(y.size) if b / bins <= p[i] < (b + 1) / bins]
        if b == bins - 1:
            inside += [i for i in range(y.size) if p[i] == 1.0]
        if inside:
            gap = abs(np.mean(y[inside]) - np.mean(p[inside]))
            total += len(inside) / y.size * gap
    assert expected_calibration_error(y, p, bins) == pytest.approx(total, abs=1e-12)
    assert brier_score(y, p) == pytest.approx(
        np.mean([(a - b) ** 2 for a, b in zip(p, y, strict=True)])
    )


def test_calibration_metrics_reject_non_probabilities() -> None:
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        expected_calibration_error([0, 1], [0.5, 1.5])
    with pytest.raises(InvalidArgument, match="bins"):
        expected_calibration_error([0, 1], [0.5, 0.5], bins=0)
    assert math.isnan(brier_score([], []))
