"""The open loop's arrival schedule: gamma gaps with shape B and mean 1/R, seeded."""

from __future__ import annotations

import numpy as np
import pytest

from backline.bench.loadgen import arrival_times
from backline.core.errors import InvalidArgument


def _gaps(times: np.ndarray) -> np.ndarray:
    return np.diff(np.concatenate([[0.0], times]))


@pytest.mark.parametrize(("burstiness", "cv"), [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)])
def test_gaps_have_mean_one_over_rate_and_cv_one_over_root_burstiness(
    burstiness: float, cv: float
) -> None:
    rate, duration = 1000.0, 40.0
    times = arrival_times(rate, duration, burstiness, seed=3)
    gaps = _gaps(times)
    # 40,000 gaps: the sample mean is within 1% (B=1) to 2% (B=0.25) of 1/R at 1 sigma
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)
    assert len(times) == pytest.approx(rate * duration, rel=0.05)


def test_poisson_counts_per_window_have_variance_equal_to_mean() -> None:
    """B=1 is a Poisson process: counts in fixed windows are Poisson (dispersion 1), while
    B=0.25 clumps them (dispersion about 1/B = 4)."""
    for burstiness, dispersion in ((1.0, 1.0), (0.25, 4.0)):
        times = arrival_times(500.0, 60.0, burstiness, seed=1)
        counts = np.bincount((times / 0.1).astype(int), minlength=600)
        assert counts.var() / counts.mean() == pytest.approx(dispersion, rel=0.2)


def test_the_schedule_is_sorted_inside_the_window_and_reproducible_by_seed() -> None:
    a = arrival_times(200.0, 2.0, 0.5, seed=7)
    assert np.array_equal(a, arrival_times(200.0, 2.0, 0.5, seed=7))
    assert not np.array_equal(a, arrival_times(200.0, 2.0, 0.5, seed=8))
    assert (np.diff(a) >= 0).all() and a[0] > 0 and a[-1] < 2.0
    # long runs need more than one chunk of draws: still one unbroken, increasing schedule
    long = arrival_times(50.0, 400.0, 0.1, seed=2)
    assert (np.diff(long) >= 0).all() and long[-1] < 400.0 and long[-1] > 390.0


@pytest.mark.parametrize(
    ("rate", "duration", "burstiness", "word"),
    [
        (0, 1, 1, "rate"),
        (-5, 1, 1, "rate"),
        (10, 0, 1, "duration"),
        (10, 1, 0, "burstiness"),
        (10, 1, float("nan"), "burstiness"),
    ],
)
def test_bad_values_say_which(rate: float, duration: float, burstiness: float, word: str) -> None:
    with pytest.raises(InvalidArgument, match=f"{word} must be a positive number"):
        arrival_times(rate, duration, burstiness)
