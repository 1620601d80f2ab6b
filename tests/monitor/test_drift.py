"""Drift statistics on binned counts, and a detector that is calibrated, powerful and quiet.

Most windows here are drawn as counts straight from the true bucket probabilities (a
multinomial), which is exactly how a window profile of rows from that distribution is
distributed, and lets hundreds of windows run in a second. One test goes through real rows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor.drift import (
    DriftDetector,
    EffectFloors,
    benjamini_hochberg,
    bh_adjusted,
    calibration_size,
    chi_square,
    js_distance,
    ks_binned,
    psi,
    total_variation,
    wasserstein_binned,
)
from backline.monitor.profile import NumericProfile, ReferenceProfile, profile_from_arrow
from backline.monitor.window import (
    CategoricalWindow,
    NumericWindow,
    WindowProfile,
    bins_digest,
    profile_window,
)

# ---------------------------------------------------------------------------------------------
# a world whose true distribution is known


CATS = [f"m{i}" for i in range(30)]
CAT_P = 1 / np.arange(1, 31) ** 1.1 / np.sum(1 / np.arange(1, 31) ** 1.1)
CHANNELS = ["web", "pos", "atm", "moto", "app"]
CHANNEL_P = np.array([0.45, 0.3, 0.15, 0.06, 0.04])
HOUR_P = np.array([0.1, 0.3, 0.25, 0.2, 0.15])
NULL_SHARE = 0.02


def draw_rows(n: int, rng: np.random.Generator, *, shift: float = 0.0) -> dict[str, np.ndarray]:
    """Rows of the true distribution; `shift` moves x0's mean by that many sds."""
    x3 = rng.normal(size=n)
    x3[rng.random(n) < NULL_SHARE] = np.nan
    return {
        "x0": rng.normal(shift, 1.0, n),
        "x1": rng.normal(10.0, 3.0, n),
        "x2": rng.lognormal(3.0, 1.2, n),
        "x3": x3,
        "hour": rng.choice(5, n, p=HOUR_P).astype(np.float64),
        "channel": rng.choice(CHANNELS, n, p=CHANNEL_P),
        "merchant": rng.choice(CATS, n, p=CAT_P),
        "score": rng.beta(2, 5, n),
    }


def make_reference(n: int, seed: int) -> ReferenceProfile:
    rows = draw_rows(n, np.random.default_rng(seed))
    return profile_from_arrow(pa.table(rows), score_column="score", max_categories=20)


TRUE_CDF = {
    "x0": stats.norm().cdf,
    "x1": stats.norm(10, 3).cdf,
    "x2": stats.lognorm(1.2, scale=math.exp(3)).cdf,
    "x3": stats.norm().cdf,
    "score": stats.beta(2, 5).cdf,
}


def true_probabilities(
    reference: ReferenceProfile, shifts: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Each feature's true bucket probabilities (bins then null, or categories, other, null)."""
    shifts = shifts or {}
    out: dict[str, np.ndarray] = {}
    features = [*reference.features, *([reference.score] if reference.score else [])]
    for f in features:
        if isinstance(f, NumericProfile):
            edges = np.asarray(f.edges)
            if f.name == "hour":
                index = np.searchsorted(edges[1:-1], np.arange(5), side="right")
                bins = np.bincount(index, weights=HOUR_P, minlength=edges.size - 1)
            else:
                shift = shifts.get(f.name, 0.0)
                cdf = TRUE_CDF[f.name](edges[1:-1] - shift)
                bins = np.diff(np.concatenate(([0.0], cdf, [1.0])))
            null = NULL_SHARE if f.name == "x3" else 0.0
            out[f.name] = np.append(bins * (1 - null), null)
        else:
            names, p = (CHANNELS, CHANNEL_P) if f.name == "channel" else (CATS, CAT_P)
            position = {v: i for i, v in enumerate(f.values)}
            probs = np.zeros(len(f.values) + 2)
            for name, share in zip(names, p, strict=True):
                probs[position.get(name, len(f.values))] += share
            out[f.name] = probs
    return out


def window_of(
    reference: ReferenceProfile,
    probabilities: dict[str, np.ndarray],
    n: int,
    rng: np.random.Generator,
) -> WindowProfile:
    """A window profile of n rows drawn from `probabilities`, without making the rows."""
    made: list[NumericWindow | CategoricalWindow] = []
    features = [*reference.features, *([reference.score] if reference.score else [])]
    for f in features:
        counts = [int(c) for c in rng.multinomial(n, probabilities[f.name])]
        if isinstance(f, NumericProfile):
            made.append(NumericWindow(f.name, f.edges, tuple(counts[:-1]), counts[-1], 0, 0))
        else:
            made.append(
                CategoricalWindow(f.name, f.values, tuple(counts[:-2]), counts[-2], counts[-1])
            )
    score = made.pop() if reference.score else None
    assert score is None or isinstance(score, NumericWindow)
    return WindowProfile(bins_digest(reference), n, None, None, (), tuple(made), score)


@dataclass
class World:
    reference: ReferenceProfile
    truth: dict[str, np.ndarray]
    detector: DriftDetector


@pytest.fixture(scope="module")
def world() -> World:
    reference = make_reference(50_000, seed=1)
    return World(reference, true_probabilities(reference), DriftDetector(reference))


# ---------------------------------------------------------------------------------------------
# the statistics


counts = st.lists(st.integers(0, 500), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_chi_square_is_the_homogeneity_statistic(data: st.DataObject) -> None:
    r = data.draw(counts)
    w = data.draw(st.lists(st.integers(0, 500), min_size=len(r), max_size=len(r)))
    keep = [i for i in range(len(r)) if r[i] + w[i] > 0]
    if sum(r) == 0 or sum(w) == 0 or len(keep) < 2:
        return
    table = np.array([[r[i] for i in keep], [w[i] for i in keep]])
    expected = stats.chi2_contingency(table, correction=False).statistic
    assert chi_square(r, w) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_js_ks_tv_psi_properties(data: st.DataObject) -> None:
    r = data.draw(counts.filter(lambda c: sum(c) > 0))
    w = data.draw(st.lists(st.integers(0, 500), min_size=len(r), max_size=len(r)))
    if sum(w) == 0:
        return
    p, q = np.array(r) / sum(r), np.array(w) / sum(w)
    assert js_distance(r, w) == pytest.approx(jensenshannon(p, q, base=2), abs=1e-9)
    assert 0 <= js_distance(r, w) <= 1 and js_distance(r, w) == pytest.approx(js_distance(w, r))
    assert ks_binned(r, w) == pytest.approx(np.max(np.abs(np.cumsum(p) - np.cumsum(q))))
    assert total_variation(r, w) == pytest.approx(0.5 * np.abs(p - q).sum())
    assert ks_binned(r, w) <= total_variation(r, w) + 1e-12  # a CDF gap is a moved share
    assert math.isfinite(psi(r, w)) and psi(r, w) >= 0  # empty buckets stay finite
    assert js_distance(r, r) == 0 and psi(r, r) == pytest.approx(0, abs=1e-12)


def test_statistics_by_hand() -> None:
    # half a count added to each bucket: shares (0.5, 0.5) against (25.5, 75.5) / 101
    q1, q2 = 25.5 / 101, 75.5 / 101
    assert psi([50, 50], [25, 75]) == pytest.approx(
        (q1 - 0.5) * math.log(q1 / 0.5) + (q2 - 0.5) * math.log(q2 / 0.5)
    )
    assert psi([10, 0], [0, 10]) == pytest.approx(2 * (10 / 11) * math.log(21))  # finite
    assert js_distance([1, 0], [0, 1]) == 1.0
    assert ks_binned([1, 1, 1, 1], [0, 0, 2, 2]) == 0.5
    assert total_variation([3, 1], [1, 3]) == 0.5
    with pytest.raises(InvalidArgument, match="same length"):
        psi([1, 2], [1, 2, 3])
    with pytest.raises(InvalidArgument, match="counts >= 0"):
        chi_square([1, -2], [1, 2])
    with pytest.raises(InvalidArgument, match="one edge more than bins"):
        wasserstein_binned([0, 1], [1, 1], [1, 1])


def _w1_by_integration(edges: np.ndarray, r: np.ndarray, w: np.ndarray) -> float:
    """W1 of two histograms, mass spread evenly in each bin, integrated on a fine grid."""
    grid = np.linspace(edges[0], edges[-1], 200_001)

    def cdf(c: np.ndarray) -> np.ndarray:
        at_edges = np.concatenate(([0.0], np.cumsum(c / c.sum())))
        return np.interp(grid, edges, at_edges)

    return float(np.trapezoid(np.abs(cdf(r) - cdf(w)), grid))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.1, 5), min_size=2, max_size=8),
    st.data(),
    st.floats(-100, 100),
    st.floats(0.01, 1000),
)
def test_wasserstein_is_the_area_between_cdfs_and_scale_free(
    widths: list[float], data: st.DataObject, offset: float, scale: float
) -> None:
    k = len(widths)
    r = np.array(data.draw(st.lists(st.integers(1, 100), min_size=k, max_size=k)), float)
    w = np.array(data.draw(st.lists(st.integers(0, 100), min_size=k, max_size=k)), float)
    if w.sum() == 0:
        return
    edges = np.concatenate(([0.0], np.cumsum(widths)))
    centre = (edges[:-1] + edges[1:]) / 2
    p = r / r.sum()
    sd = math.sqrt(np.sum(p * (np.diff(edges) ** 2 / 12 + (centre - np.sum(p * centre)) ** 2)))
    expected = _w1_by_integration(edges, r, w) / sd
    assert wasserstein_binned(edges, r, w) == pytest.approx(expected, rel=1e-3, abs=1e-6)
    # in reference standard deviations: moving and stretching the axis changes nothing
    moved = wasserstein_binned(edges * scale + offset, r, w)
    assert moved == pytest.approx(wasserstein_binned(edges, r, w), rel=1e-6, abs=1e-9)


def test_a_one_sigma_shift_reads_about_one(world: World) -> None:
    reference = world.reference
    x0 = reference.feature("x0")
    assert isinstance(x0, NumericProfile)
    for shift, low, high in ((1.0, 0.85, 1.05), (0.5, 0.42, 0.52), (0.25, 0.21, 0.26)):
        moved = true_probabilities(reference, {"x0": shift})["x0"][:-1]
        value = wasserstein_binned(x0.edges, x0.counts, moved * 1e6)
        assert low <= value <= high, (shift, value)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=30), st.sampled_from([0.001, 0.01, 0.05, 0.2]))
def test_benjamini_hochberg_is_the_step_up_procedure(pvalues: list[float], q: float) -> None:
    m = len(pvalues)
    ordered = sorted(pvalues)
    # textbook: the largest k with p_(k) <= k q / m; reject every p <= p_(k)
    passing = [k for k in range(1, m + 1) if ordered[k - 1] <= k * q / m]
    expected = [p <= ordered[max(passing) - 1] for p in pvalues] if passing else [False] * m
    assert list(benjamini_hochberg(pvalues, q)) == expected
    adjusted = bh_adjusted(pvalues)
    assert all(a >= p * (1 - 1e-12) for a, p in zip(adjusted, pvalues, strict=True))
    # adjusted <= q is the same decision, but for rounding at an exact boundary
    assert list(adjusted <= q * (1 + 1e-9)) == expected or any(
        math.isclose(a, q, rel_tol=1e-9) for a in adjusted
    )
    order = np.argsort(pvalues, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= 0)  # adjusted values keep the p-values' order


def test_benjamini_hochberg_refuses_bad_input() -> None:
    assert list(benjamini_hochberg([0.001, 0.02, 0.03, 0.9], 0.05)) == [True, True, True, False]
    with pytest.raises(InvalidArgument, match="q = 0"):
        benjamini_hochberg([0.1], 0)
    with pytest.raises(InvalidArgument, match=r"numbers in \[0, 1\]"):
        benjamini_hochberg([0.1, 1.5], 0.05)


# ---------------------------------------------------------------------------------------------
# calibration: quiet on stationary data


def test_stationary_p_values_are_uniform_and_nothing_alarms(world: World) -> None:
    """300 windows of 1k rows, 8 features: p-values are calibrated, and no window alarms (the
    budget is q = 0.001 per window)."""
    rng = np.random.default_rng(2)
    pvalues, alarms, significant = [], 0, 0
    for _ in range(300):
        report = world.detector.check(window_of(world.reference, world.truth, 1000, rng))
        pvalues += [f.p_value for f in report.features]
        alarms += bool(report.drifted)
        significant += any(f.significant for f in report.features)
    p = np.array(pvalues)
    assert p.size == 2400
    assert 0.035 <= np.mean(p <= 0.05) <= 0.065
    assert 0.003 <= np.mean(p <= 0.01) <= 0.018
    assert alarms == 0 and significant <= 1


def test_windows_larger_than_the_reference_do_not_cry_wolf() -> None:
    """A 20k-row reference against 200k-row windows: the reference's own noise is ten times the
    window's, which a one-sample null would read as drift in every window."""
    reference = make_reference(20_000, seed=4)
    detector = DriftDetector(reference)
    truth = true_probabilities(reference)
    rng = np.random.default_rng(5)
    reports = [detector.check(window_of(reference, truth, 200_000, rng)) for _ in range(60)]
    assert sum(any(f.significant for f in r.features) for r in reports) <= 1
    assert not any(r.drifted for r in reports)


def test_p_values_beyond_the_bootstrap_are_continuous_and_decreasing(world: World) -> None:
    detector = world.detector
    size = detector.calibrate(5000)
    for cal in detector._cache[size]:
        from backline.monitor.drift import _p_value

        points = np.linspace(0, cal.anchor * 4 + 50, 400)
        values = np.array([_p_value(float(t), cal) for t in points])
        assert np.all(np.diff(values) <= 1e-15) and values[0] == 1.0
        near = [_p_value(cal.anchor * (1 + e), cal) for e in (-1e-9, 1e-9)]
        assert near[1] == pytest.approx(near[0], rel=0.05)
        assert values[-1] < 1 / (detector.n_boot + 1)  # the tail resolves below the bootstrap


def test_rare_buckets_are_pooled_for_the_test() -> None:
    from backline.monitor.drift import _pool

    shares = np.array([0.5, 0.3, 0.15, 0.03, 0.02, 0.0])
    # at 100 rows: 3 and 2 expected rows pool together (5 rows), the empty bucket stays apart
    assert list(_pool(shares, 100)) == [0, 1, 2, 3, 3, 4]
    # at 50 rows the pool expects 2.5 rows, still too few: it joins the smallest regular bucket
    assert list(_pool(shares, 50)) == [0, 1, 2, 2, 2, 3]
    assert list(_pool(shares, 10_000)) == [0, 1, 2, 3, 4, 5]


# ---------------------------------------------------------------------------------------------
# power: real drifts are caught, in the right feature


@pytest.mark.parametrize("shift", [0.5, 0.25])
def test_a_mean_shift_in_one_feature_is_caught_at_10k_rows(world: World, shift: float) -> None:
    rng = np.random.default_rng(6)
    moved = true_probabilities(world.reference, {"x0": shift})
    reports = [
        world.detector.check(window_of(world.reference, moved, 10_000, rng)) for _ in range(40)
    ]
    assert sum(r.drifted == ("x0",) for r in reports) >= 38  # >= 95%, nothing else alarms
    effect = np.mean([r.feature("x0").effect for r in reports])
    assert shift * 0.8 <= effect <= shift


def test_a_five_percent_category_swap_is_caught(world: World) -> None:
    rng = np.random.default_rng(7)
    moved = dict(world.truth)
    channel = moved["channel"].copy()
    channel[0] -= 0.05  # web -> app
    channel[4] += 0.05
    moved["channel"] = channel
    reports = [
        world.detector.check(window_of(world.reference, moved, 10_000, rng)) for _ in range(40)
    ]
    assert sum(r.drifted == ("channel",) for r in reports) >= 38
    assert np.mean([r.feature("channel").effect for r in reports]) == pytest.approx(0.05, abs=0.01)


def test_a_significant_but_negligible_shift_stays_below_the_floor(world: World) -> None:
    """0.06 sd at 100k rows is plainly significant, and too small to matter: no alarm, unless
    the floor is turned off."""
    rng = np.random.default_rng(8)
    moved = true_probabilities(world.reference, {"x0": 0.06})
    no_floor = DriftDetector(world.reference, floors=EffectFloors(wasserstein=0))
    reports, bare = [], []
    for _ in range(10):
        window = window_of(world.reference, moved, 100_000, rng)
        reports.append(world.detector.check(window))
        bare.append(no_floor.check(window))
    assert sum(r.feature("x0").significant for r in reports) >= 9
    assert not any(r.drifted for r in reports)
    assert all(r.feature("x0").effect < 0.1 for r in reports)
    assert sum(r.drifted == ("x0",) for r in bare) >= 9


def test_nulls_surging_alarm_and_a_stray_null_does_not(world: World) -> None:
    rng = np.random.default_rng(9)
    surge = dict(world.truth)
    x3 = surge["x3"].copy()
    x3[:-1] *= 0.9 / x3[:-1].sum()
    x3[-1] = 0.1  # 2% -> 10% nulls, the values otherwise as before
    surge["x3"] = x3
    report = world.detector.check(window_of(world.reference, surge, 5_000, rng))
    assert report.drifted == ("x3",)
    assert report.feature("x3").null_shift == pytest.approx(0.08, abs=0.015)
    assert report.feature("x3").effect < 0.1  # the values did not move: nulls decided
    stray = dict(world.truth)
    x0 = stray["x0"].copy()
    x0[:-1] *= 0.998
    x0[-1] = 0.002  # x0 never had a null; now one row in 500
    stray["x0"] = x0
    report = world.detector.check(window_of(world.reference, stray, 10_000, rng))
    assert report.feature("x0").significant and not report.feature("x0").drifted


def test_real_rows_through_profile_window(world: World) -> None:
    rng = np.random.default_rng(10)
    calm = world.detector.check(profile_window(pa.table(draw_rows(5_000, rng)), world.reference))
    assert calm.drifted == () and calm.row_count == 5_000
    moved = world.detector.check(
        profile_window(pa.table(draw_rows(5_000, rng, shift=0.5)), world.reference)
    )
    assert moved.drifted == ("x0",)
    x0 = moved.feature("x0")
    assert x0.kind == "numeric" and x0.ks is not None and x0.ks > 0.1 and x0.psi > 0.1
    assert moved.feature("merchant").ks is None and moved.feature("score").kind == "score"


# ---------------------------------------------------------------------------------------------
# the API around it


def test_calibration_is_cached_per_size_and_reproducible(world: World) -> None:
    detector = DriftDetector(world.reference, seed=3)
    rng = np.random.default_rng(11)
    window = window_of(world.reference, world.truth, 10_000, rng)
    first = detector.check(window)
    assert calibration_size(10_000) == calibration_size(10_100) == detector.calibrate(10_100)
    assert len(detector._cache) == 1
    assert detector.check(window) == first
    assert DriftDetector(world.reference, seed=3).check(window) == first
    assert calibration_size(50) == 50 and calibration_size(0) == 1


def test_report_serialises_and_names_features(world: World) -> None:
    rng = np.random.default_rng(12)
    report = world.detector.check(window_of(world.reference, world.truth, 2_000, rng))
    obj = json.loads(report.to_json())
    assert [f["name"] for f in obj["features"]] == [
        "x0", "x1", "x2", "x3", "hour", "channel", "merchant", "score"
    ]  # fmt: skip
    assert report.feature("x2").floor == 0.1 and report.feature("channel").floor == 0.02
    with pytest.raises(KeyError):
        report.feature("nope")


def test_empty_window_and_bad_arguments(world: World) -> None:
    empty = world.detector.check(
        window_of(world.reference, world.truth, 0, np.random.default_rng(0))
    )
    assert empty.drifted == () and all(f.p_value == 1.0 for f in empty.features)
    other = make_reference(1_000, seed=99)
    with pytest.raises(SchemaError, match="counted on other bins"):
        world.detector.check(
            window_of(other, true_probabilities(other), 10, np.random.default_rng(0))
        )
    with pytest.raises(InvalidArgument, match=r"q = 1\.5"):
        DriftDetector(world.reference, q=1.5)
    with pytest.raises(InvalidArgument, match="n_boot = 10"):
        DriftDetector(world.reference, n_boot=10)
    with pytest.raises(InvalidArgument, match=r"EffectFloors\.wasserstein = -1"):
        EffectFloors(wasserstein=-1)
    with pytest.raises(InvalidArgument, match="no rows"):
        DriftDetector(ReferenceProfile(row_count=0, features=()))
