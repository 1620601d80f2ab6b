"""Window profiles: counts on the reference's bins, exact merges, JSON that round-trips."""

from __future__ import annotations

import itertools
import math
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor.profile import NumericProfile, ReferenceProfile, profile_from_arrow
from backline.monitor.window import (
    CategoricalWindow,
    NumericWindow,
    WindowProfile,
    bins_digest,
    merge,
    profile_window,
)

T0 = datetime(2026, 1, 14, 9, 0, tzinfo=UTC)


def reference() -> ReferenceProfile:
    """amount: quartile bins on 0..99; channel: top 2 of 4; score: halves of [0.1, 0.9]."""
    table = pa.table(
        {
            "amount": [float(i) for i in range(100)],
            "channel": (["web"] * 50 + ["pos"] * 30 + ["atm"] * 15 + ["moto"] * 5),
            "score": [0.1 + 0.8 * i / 99 for i in range(100)],
        }
    )
    return profile_from_arrow(table, score_column="score", bins=4, max_categories=2)


def log_rows(amount: list, channel: list, score: list, *, start: int = 0) -> pa.Table:
    """Rows shaped like the prediction log: core columns, a request field, feature columns."""
    n = len(amount)
    return pa.table(
        {
            "request_id": [f"r{start + i}" for i in range(n)],
            "scored_at": pa.array(
                [T0 + timedelta(seconds=start + i) for i in range(n)], pa.timestamp("us", "UTC")
            ),
            "model": ["fraud"] * n,
            "model_version": pa.array([3 if i % 2 else 4 for i in range(n)], pa.int64()),
            "score": pa.array(score, pa.float64()),
            "amount": pa.array(amount, pa.float64()),  # a request field: read by its own name
            "feature__channel": pa.array(channel, pa.string()),
        }
    )


def test_counts_on_the_reference_bins_by_hand() -> None:
    ref = reference()
    amount = ref.feature("amount")
    assert isinstance(amount, NumericProfile) and amount.edges == (0.0, 24.75, 49.5, 74.25, 99.0)
    rows = log_rows(
        [-5.0, 0.0, 24.75, 50.0, 99.0, 150.0, None, math.nan, math.inf, -math.inf],
        ["web", "pos", "atm", None, "web", "unseen", "web", "pos", "web", None],
        [0.05, 0.2, 0.5, 0.6, 0.95, None, 0.3, 0.3, 0.3, 0.3],
    )
    window = profile_window(rows, ref)
    assert window.feature("amount") == NumericWindow(
        "amount",
        amount.edges,
        counts=(2, 1, 1, 2),  # -5 and 0 | 24.75 | 50 | 99 and 150 (open outer bins)
        null_count=4,  # null, NaN and both infinities, as in the reference
        below=1,  # -5
        above=1,  # 150; 99 is the maximum itself, in range
    )
    # kept categories in the reference's order; atm and an unseen value are "other"
    assert window.feature("channel") == CategoricalWindow(
        "channel", ("web", "pos"), (4, 2), other_count=2, null_count=2
    )
    # 0.05 0.2 | 0.3 x4 | 0.5 0.6 | 0.95; one null; 0.05 below 0.1, 0.95 above 0.9
    assert window.score == NumericWindow(
        "score", ref.score.edges if ref.score else (), (2, 4, 2, 1), 1, 1, 1
    )
    assert window.row_count == 10
    assert window.first_scored_at == T0 and window.last_scored_at == T0 + timedelta(seconds=9)
    assert window.model_versions == (3, 4)
    assert window.bins_digest == bins_digest(ref)
    # the same values through the reference's own counting agree
    assert window.feature("amount").counts == amount.bin_counts(rows.column("amount"))


def test_column_choice_feature_prefix_mapping_and_errors() -> None:
    ref = reference()
    rows = log_rows([1.0, 2.0], ["web", "web"], [0.2, 0.2]).append_column(
        "feature__amount", pa.array([90.0, 95.0])
    )
    # feature__amount is preferred over the request field of the same name
    assert profile_window(rows, ref).feature("amount").counts == (0, 0, 0, 2)
    by_map = profile_window(rows, ref, column_of={"amount": "amount"})
    assert by_map.feature("amount").counts == (2, 0, 0, 0)
    renamed = rows.rename_columns([{"score": "s"}.get(c, c) for c in rows.column_names])
    by_function = profile_window(
        renamed, ref, column_of=lambda name: {"score": "s"}.get(name, f"feature__{name}")
    )
    assert by_function.score is not None and by_function.score.counts == (2, 0, 0, 0)
    with pytest.raises(SchemaError, match=r"reference feature 'channel'.*column_of="):
        profile_window(rows.drop(["feature__channel"]), ref)
    with pytest.raises(SchemaError, match="'amount' cannot be read as numbers"):
        profile_window(rows, ref, column_of={"amount": "request_id"})
    naive = rows.set_column(1, "scored_at", pa.array([0, 1], pa.timestamp("us")))
    with pytest.raises(SchemaError, match="tz-aware"):
        profile_window(naive, ref)
    bare = profile_window(rows.drop(["scored_at", "model_version"]), ref)
    assert bare.first_scored_at is None and bare.model_versions == ()


def test_categorical_types_read_as_the_reference_read_them() -> None:
    ref = profile_from_arrow(
        pa.table({"flag": [True, True, False, None], "c": pa.array(["a", "b", "a", "a"])})
    )
    rows = pa.table(
        {
            "flag": [False, False, None, True],
            "c": pa.array(["a", "z", None, "b"]).dictionary_encode(),
        }
    )
    window = profile_window(rows, ref)
    assert window.feature("flag") == CategoricalWindow("flag", ("true", "false"), (1, 2), 0, 1)
    assert window.feature("c") == CategoricalWindow("c", ("a", "b"), (1, 1), 1, 1)


def test_empty_window_and_reference_without_finite_values() -> None:
    ref = profile_from_arrow(pa.table({"x": pa.array([None, None], pa.float64()), "y": [1.0, 2.0]}))
    window = profile_window(pa.table({"x": [3.0, None, 4.0], "y": [1.0, 1.0, 2.0]}), ref)
    # no bins to count in: every finite served value is out of range
    assert window.feature("x") == NumericWindow("x", (), (), 1, 0, 2)
    empty = profile_window(
        pa.table({"x": pa.array([], pa.float64()), "y": pa.array([], pa.float64())}), ref
    )
    assert empty.row_count == 0 and empty.first_scored_at is None


def test_many_bins_take_the_binary_search_path() -> None:
    rng = np.random.default_rng(3)
    ref = profile_from_arrow(pa.table({"x": rng.normal(size=5000)}), bins=100)
    x = ref.feature("x")
    assert isinstance(x, NumericProfile) and len(x.counts) == 100
    served = np.concatenate((rng.normal(0.3, 1.2, 20_000), [-9.0, 9.0, np.nan]))
    window = profile_window(pa.table({"x": served}), ref).feature("x")
    assert isinstance(window, NumericWindow)
    assert window.counts == x.bin_counts(served)
    assert window.null_count == 1 and window.below >= 1 and window.above >= 1


# ---------------------------------------------------------------------------------------------
# properties: the two counting paths agree; merging is exact


edge_values = st.sampled_from([0.0, 24.75, 49.5, 74.25, 99.0])
served_values = st.one_of(
    st.floats(-200, 300, allow_nan=False),
    edge_values,  # exact edges decide which side of a bin a value falls on
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.none(),
)


@settings(max_examples=80, deadline=None)
@given(st.lists(served_values, max_size=60))
def test_window_counts_equal_the_reference_counting(values: list[float | None]) -> None:
    ref = reference()
    amount = ref.feature("amount")
    assert isinstance(amount, NumericProfile)
    column = pa.array(values, pa.float64())
    counted = profile_window(
        pa.table(
            {"amount": column, "channel": pa.nulls(len(values), pa.string()), "score": column}
        ),
        ref,
    ).feature("amount")
    assert isinstance(counted, NumericWindow)
    assert counted.counts == amount.bin_counts(column)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    assert counted.null_count == len(values) - len(finite)
    assert counted.below == sum(v < 0.0 for v in finite)
    assert counted.above == sum(v > 99.0 for v in finite)


rows_strategy = st.lists(
    st.tuples(
        served_values,
        st.one_of(st.sampled_from(["web", "pos", "atm", "moto", "never-seen"]), st.none()),
        st.one_of(st.floats(-1, 2, allow_nan=False), st.none()),
        st.integers(0, 3),  # version
    ),
    max_size=40,
)


def _table(rows: list[tuple], start: int) -> pa.Table:
    table = log_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], start=start)
    return table.set_column(
        table.column_names.index("model_version"),
        "model_version",
        pa.array([r[3] for r in rows], pa.int64()),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows_strategy, st.lists(st.integers(0, 40), max_size=5))
def test_merge_of_parts_equals_the_profile_of_the_whole(rows: list[tuple], cuts: list[int]) -> None:
    ref = reference()
    whole = _table(rows, 0)
    bounds = sorted({0, len(rows), *(min(c, len(rows)) for c in cuts)})
    parts = [whole.slice(a, b - a) for a, b in itertools.pairwise(bounds)] or [whole]
    profiles = [profile_window(p, ref) for p in parts]
    assert merge(profiles) == profile_window(whole, ref)
    # stored parts merge the same as live ones, in any order
    stored = [WindowProfile.from_json(p.to_json()) for p in reversed(profiles)]
    assert merge(stored) == profile_window(whole, ref)


def test_json_round_trip_and_damage() -> None:
    ref = reference()
    window = profile_window(log_rows([1.0, 500.0], ["web", None], [0.3, 0.7]), ref)
    again = WindowProfile.from_json(window.to_json())
    assert again == window
    assert again.first_scored_at is not None and again.first_scored_at.tzinfo is not None
    with pytest.raises(SchemaError, match="not JSON"):
        WindowProfile.from_json("{")
    with pytest.raises(SchemaError, match="does not parse"):
        WindowProfile.from_json('{"format": 1}')
    with pytest.raises(SchemaError, match="format 99"):
        WindowProfile.from_json(window.to_json().replace('"format":1', '"format":99'))
    # edges edited after the fact no longer match the recorded digest
    tampered = window.to_json().replace("24.75", "25.0")
    with pytest.raises(SchemaError, match="hash to"):
        WindowProfile.from_json(tampered)


def test_merge_refuses_other_bins_and_nothing() -> None:
    ref = reference()
    other = profile_from_arrow(
        pa.table(
            {
                "amount": [float(i) for i in range(50)],
                "channel": ["web"] * 50,
                "score": [0.5] * 50,
            }
        ),
        score_column="score",
        bins=4,
    )
    rows = log_rows([1.0], ["web"], [0.5])
    with pytest.raises(SchemaError, match="feature 'amount' has different bins"):
        merge([profile_window(rows, ref), profile_window(rows, other)])
    with pytest.raises(InvalidArgument, match="no window profiles"):
        merge([])


def test_a_day_of_hours_merges_without_the_rows() -> None:
    ref = reference()
    rng = np.random.default_rng(11)
    hours = []
    tables = []
    for hour in range(24):
        n = int(rng.integers(0, 200))
        table = log_rows(
            list(rng.normal(50, 40, n)),
            list(rng.choice(["web", "pos", "atm", "x"], n)),
            list(rng.random(n)),
            start=hour * 3600,
        )
        tables.append(table)
        hours.append(profile_window(table, ref).to_json())
    day = merge(WindowProfile.from_json(h) for h in hours)
    assert day == profile_window(pa.concat_tables(tables), ref)
    assert day.last_scored_at is not None and day.first_scored_at == T0


def test_fast_enough_for_every_window() -> None:
    """500k rows x 50 columns; a per-row Python step would take minutes."""
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(40)]
    train = {n: rng.normal(size=20_000) for n in names}
    train |= {f"c{i}": rng.choice(list("abcdefghij"), 20_000) for i in range(10)}
    train["score"] = rng.random(20_000)
    ref = profile_from_arrow(pa.table(train), score_column="score")
    rows = 500_000
    served = {f"feature__{n}": rng.normal(size=rows) for n in names}
    codes = pa.array(rng.integers(0, 12, rows).astype(np.int32))
    letters = pa.array(list("abcdefghijkl"))
    for i in range(10):
        served[f"feature__c{i}"] = pa.DictionaryArray.from_arrays(codes, letters)
    served["score"] = rng.random(rows)
    table = pa.table(served)
    start = time.perf_counter()
    window = profile_window(table, ref)
    elapsed = time.perf_counter() - start
    assert window.row_count == rows and sum(window.feature("f0").counts) == rows
    assert elapsed < 2.0, f"profile_window took {elapsed:.2f} s for 500k x 51 columns"
