"""The PCA detector catches a joint shift the per-feature tests cannot see, and stays quiet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor.drift import DriftDetector
from backline.monitor.multivariate import PCADriftDetector, cornish_fisher
from backline.monitor.profile import profile_from_arrow
from backline.monitor.window import profile_window

COLUMNS = ["amount", "amount_1d", "count_10m", "age", "hour"]
RHO = 0.8


def draw(n: int, rng: np.random.Generator, *, rotate: bool = False) -> dict[str, np.ndarray]:
    """Five columns: a heavy-tailed amount and its correlated 1-day average, a count, a normal,
    a discrete hour. `rotate` flips the sign of the correlation; every marginal stays the same
    (the average's latent normal is symmetric, so mirroring it changes nothing on its own)."""
    a, noise = rng.normal(size=n), rng.normal(size=n)
    b = RHO * a + np.sqrt(1 - RHO**2) * noise
    if rotate:
        b = -b
    return {
        "amount": np.exp(3 + 1.2 * a),
        "amount_1d": np.exp(3 + 1.2 * b),
        "count_10m": rng.poisson(3, n).astype(np.float64),
        "age": rng.normal(40, 12, n),
        "hour": rng.integers(0, 24, n).astype(np.float64),
    }


@pytest.fixture(scope="module")
def fitted() -> PCADriftDetector:
    rng = np.random.default_rng(0)
    return PCADriftDetector.fit(pa.table(draw(30_000, rng)), COLUMNS)


def test_a_rotation_with_unchanged_marginals_is_caught_here_and_only_here(
    fitted: PCADriftDetector,
) -> None:
    rng = np.random.default_rng(1)
    training = pa.table(draw(30_000, np.random.default_rng(0)))
    marginal = DriftDetector(profile_from_arrow(training))
    caught = 0
    for _ in range(10):
        rows = pa.table(draw(2_000, rng, rotate=True))
        result = fitted.check(rows)
        caught += result.drifted
        assert result.statistic > 1.5  # the mirrored direction varies ~9x more than before
        assert marginal.check(profile_window(rows, marginal.reference)).drifted == ()
    assert caught == 10


def test_stationary_windows_do_not_alarm(fitted: PCADriftDetector) -> None:
    rng = np.random.default_rng(2)
    for n, windows in ((500, 200), (5_000, 60)):
        statistics = [fitted.check(pa.table(draw(n, rng))).statistic for _ in range(windows)]
        threshold = fitted.threshold(n)
        assert max(statistics) < threshold, (n, max(statistics), threshold)
        assert abs(np.mean(statistics) - 1.0) < 0.03  # 1.0 means "like the reference"
    # the threshold tightens as windows grow, and is cached per size
    assert fitted.threshold(500) > fitted.threshold(5_000) > 1.0
    assert fitted.threshold(5_000) == fitted.threshold(5_050)


def test_monotone_transforms_of_a_column_change_nothing(fitted: PCADriftDetector) -> None:
    """Columns enter through their reference quantiles, so a log-amount model reads a window
    as the amount model does: a heavy tail cannot dominate."""

    def logged(rows: dict[str, np.ndarray]) -> pa.Table:
        return pa.table({k: np.log(v) if k.startswith("amount") else v for k, v in rows.items()})

    on_logs = PCADriftDetector.fit(logged(draw(30_000, np.random.default_rng(0))), COLUMNS)
    rng = np.random.default_rng(6)
    for rotate in (False, True):
        rows = draw(2_000, rng, rotate=rotate)
        assert on_logs.statistic(logged(rows)) == pytest.approx(
            fitted.statistic(pa.table(rows)), rel=0.02
        )


def test_a_small_reference_sample_is_not_its_own_calibration() -> None:
    """The components fit some rows and the others calibrate: a PCA reads the rows it was
    fitted on as better than new ones, which would make every window look drifted."""
    rng = np.random.default_rng(7)
    names = [f"c{i}" for i in range(20)]
    detector = PCADriftDetector.fit(rng.normal(size=(1_000, 20)), names)
    statistics = [detector.statistic(rng.normal(size=(2_000, 20))) for _ in range(20)]
    assert abs(np.mean(statistics) - 1.0) < 0.05
    assert not any(detector.check(rng.normal(size=(2_000, 20))).drifted for _ in range(20))


def test_each_dropped_direction_counts_in_its_own_units() -> None:
    """With several dropped directions, the one in which two correlated columns barely move
    apart weighs as much as the others: its rise is not diluted by their larger scale."""
    rng = np.random.default_rng(8)

    def rows(n: int, rotate: bool = False) -> np.ndarray:
        x = rng.normal(size=(n, 10))
        b = 0.9 * x[:, 0] + np.sqrt(1 - 0.81) * x[:, 1]
        x[:, 1] = -b if rotate else b
        return x

    detector = PCADriftDetector.fit(rows(20_000), [f"c{i}" for i in range(10)], variance=0.7)
    assert len(detector.model.residual_variance) >= 3
    assert detector.statistic(rows(2_000, rotate=True)) > 2.2  # 1.6 if all shared one unit


def test_threshold_counts_the_reference_noise_and_the_skew(fitted: PCADriftDetector) -> None:
    errors = fitted.model.errors
    cv = errors.std() / errors.mean()
    z = stats.norm.isf(fitted.alpha)
    # a huge window has no noise of its own; the held-out reference mean still does
    floor = z * cv / np.sqrt(fitted.model.holdout_rows)
    assert fitted.threshold(10**7) - 1 > 0.8 * floor
    # the Cornish-Fisher quantile of a chi-square(10) from its moments, against the exact one
    k = 10
    approx = k + np.sqrt(2 * k) * cornish_fisher(1e-4, np.sqrt(8 / k), 12 / k)
    exact = stats.chi2.isf(1e-4, k)
    assert approx == pytest.approx(exact, rel=0.03)
    assert abs(k + np.sqrt(2 * k) * stats.norm.isf(1e-4) - exact) > 4 * abs(approx - exact)


def test_a_few_extreme_rows_do_not_alarm(fitted: PCADriftDetector) -> None:
    rows = draw(2_000, np.random.default_rng(3))
    rows["amount"][:10] = 1e9  # ten absurd amounts, far past the reference's largest
    rows["count_10m"][10:20] = np.nan  # and a few missing values
    result = fitted.check(pa.table(rows))
    assert not result.drifted and result.statistic < result.threshold


def test_json_round_trip_and_log_columns(fitted: PCADriftDetector) -> None:
    again = PCADriftDetector.from_json(fitted.to_json())
    rows = draw(1_000, np.random.default_rng(4), rotate=True)
    served = pa.table({f"feature__{k}": v for k, v in rows.items() if k != "amount"})
    served = served.append_column("amount", pa.array(rows["amount"]))  # a request field
    matrix = np.column_stack([rows[c] for c in COLUMNS])
    assert again.check(served) == fitted.check(matrix)
    assert again.threshold(1_000) == fitted.threshold(1_000)
    assert again.columns == tuple(COLUMNS) and again.kept_components == fitted.kept_components
    renamed = served.rename_columns(["a1", "c", "ag", "h", "amt"])
    mapping = {"amount_1d": "a1", "count_10m": "c", "age": "ag", "hour": "h", "amount": "amt"}
    assert again.check(renamed, column_of=mapping).statistic == fitted.statistic(matrix)
    with pytest.raises(SchemaError, match="does not parse"):
        PCADriftDetector.from_json('{"format": 1, "kind": "pca"}')
    with pytest.raises(SchemaError, match="inconsistent model"):
        PCADriftDetector.from_json(fitted.to_json().replace('"cap":', '"cap":-'))


def test_bad_input_is_refused(fitted: PCADriftDetector) -> None:
    rng = np.random.default_rng(5)
    with pytest.raises(InvalidArgument, match="vary in the reference rows"):
        PCADriftDetector.fit(pa.table({"a": [1.0] * 100, "b": rng.normal(size=100)}))
    with pytest.raises(InvalidArgument, match="too few"):
        PCADriftDetector.fit(rng.normal(size=(25, 5)), list("abcde"))
    with pytest.raises(InvalidArgument, match=r"needs columns=\[\.\.\.\]"):
        PCADriftDetector.fit(rng.normal(size=(300, 3)))
    with pytest.raises(SchemaError, match=r"columns \['nope'\] are not in"):
        PCADriftDetector.fit(pa.table({"a": [1.0]}), ["nope"])
    with pytest.raises(InvalidArgument, match="alpha = 2"):
        PCADriftDetector.fit(rng.normal(size=(300, 3)), list("abc"), alpha=2)
    with pytest.raises(InvalidArgument, match="variance = 1"):
        PCADriftDetector.fit(rng.normal(size=(300, 3)), list("abc"), variance=1)
    with pytest.raises(InvalidArgument, match=r"shape \(10, 2\)"):
        fitted.check(np.zeros((10, 2)))
    empty = fitted.check(np.zeros((0, len(COLUMNS))))
    assert empty.rows == 0 and not empty.drifted
