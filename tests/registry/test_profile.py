"""profile_from_arrow on data whose bins can be counted by hand."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from backline.core.errors import SchemaError
from backline.monitor.profile import (
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    profile_from_arrow,
)


def test_quantile_bins_count_exactly() -> None:
    values = [float(i) for i in range(100)] + [None, math.nan, math.inf]
    profile = profile_from_arrow(pa.table({"x": values}), bins=4)
    x = profile.feature("x")
    assert isinstance(x, NumericProfile)
    assert x.edges == (0.0, 24.75, 49.5, 74.25, 99.0)
    assert x.counts == (25, 25, 25, 25)
    assert x.null_count == 3  # null, NaN and infinity are never binned
    assert profile.row_count == 103 and profile.score is None


def test_uniform_bins_and_open_ends() -> None:
    table = pa.table({"n": pa.array(list(range(11)), pa.int64())})
    n = profile_from_arrow(table, bins=5, method="uniform").feature("n")
    assert isinstance(n, NumericProfile)
    assert n.edges == (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)
    # [0,2) [2,4) [4,6) [6,8) [8,10]: the last bin also holds the maximum
    assert n.counts == (2, 2, 2, 2, 3)
    # served values outside the training range land in the outer bins
    served = pa.array([-5.0, 0.0, 1.9, 2.0, 9.99, 10.0, 250.0, None, math.nan])
    assert n.bin_counts(served) == (3, 1, 0, 0, 3)
    assert n.bin_counts(np.array([3.0, 3.5])) == (0, 2, 0, 0, 0)


def test_ties_few_values_constants_and_empty_columns() -> None:
    table = pa.table(
        {
            "zero_inflated": [0.0] * 12 + [float(i) for i in range(1, 9)],
            "hour": [0, 0, 0, 6, 6, 12, 23, 23, 23, 23] * 2,
            "constant": [5] * 4 + [None] * 16,
            "empty": pa.array([None] * 20, pa.float64()),
        }
    )
    profile = profile_from_arrow(table, bins=4)
    # quantile edges 0, 0, 0, 3.25, 8 collapse; the zeros keep a bin of their own [0, 1)
    assert profile.feature("zero_inflated") == NumericProfile(
        "zero_inflated", (0.0, 1.0, 3.25, 8.0), (12, 3, 5), 0
    )
    # four distinct values and four bins: one bin per value, edges halfway between them
    assert profile.feature("hour") == NumericProfile(
        "hour", (0.0, 3.0, 9.0, 17.5, 23.0), (6, 4, 2, 8), 0
    )
    assert profile.feature("constant") == NumericProfile("constant", (5.0, 5.0), (4,), 16)
    assert profile.feature("empty") == NumericProfile("empty", (), (), 20)


def test_categorical_counts() -> None:
    table = pa.table(
        {
            "channel": ["web", "pos", "web", None, "atm", "web", "pos", "moto"],
            "is_foreign": [True, False, False, None, False, True, False, False],
            "country": pa.array(
                ["DE", "FR", "DE", "DE", None, None, "FR", "US"]
            ).dictionary_encode(),
        }
    )
    profile = profile_from_arrow(table, max_categories=2)
    assert profile.feature("channel") == CategoricalProfile(
        "channel", ("web", "pos"), (3, 2), other_count=2, null_count=1
    )
    assert profile.feature("is_foreign") == CategoricalProfile(
        "is_foreign", ("false", "true"), (5, 2), other_count=0, null_count=1
    )
    assert profile.feature("country") == CategoricalProfile(
        "country", ("DE", "FR"), (3, 2), other_count=1, null_count=2
    )


def test_score_histogram_and_column_choice() -> None:
    table = pa.table(
        {
            "amount": [1.0, 2.0, 3.0, 4.0],
            "event_time": pa.array([0, 1, 2, 3], pa.timestamp("us", tz="UTC")),
            "score": [0.1, 0.4, 0.6, 0.9],
        }
    )
    with pytest.raises(SchemaError, match="'event_time' has type timestamp"):
        profile_from_arrow(table, score_column="score")
    profile = profile_from_arrow(table, score_column="score", columns=["amount"], bins=2)
    assert [f.name for f in profile.features] == ["amount"]
    assert profile.score == NumericProfile("score", (0.1, 0.5, 0.9), (2, 2), 0)
    with pytest.raises(SchemaError, match="column 'nope' is not in the table"):
        profile_from_arrow(table, score_column="nope")
    with pytest.raises(SchemaError, match="scores must be numeric"):
        profile_from_arrow(pa.table({"s": ["a"]}), score_column="s")
    with pytest.raises(SchemaError, match="method = 'kmeans'"):
        profile_from_arrow(table, columns=["amount"], method="kmeans")


def test_json_round_trip_is_exact() -> None:
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "amount": rng.lognormal(3, 1.2, 5000),
            "merchant": rng.choice(["a", "b", "c", "d"], 5000),
            "score": rng.random(5000),
        }
    )
    profile = profile_from_arrow(table, score_column="score", bins=20)
    again = ReferenceProfile.from_json(profile.to_json())
    assert again == profile
    amount = again.feature("amount")
    assert isinstance(amount, NumericProfile)
    assert sum(amount.counts) == 5000 and len(amount.counts) == 20
    with pytest.raises(SchemaError, match="does not parse"):
        ReferenceProfile.from_json('{"row_count": 1}')
