"""Prediction-log rows gathered over batches (backline.serve.logrows): converted together, with
the same rows and types as converting each group alone, and a bad group costs only its rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.serve.logrows import LogRows, Segment

AT = datetime(2026, 1, 5, 12, tzinfo=UTC)


def segment(
    n: int, *, version: int = 1, prefix: str = "r", cards: list[Any] | None = None, **extra: Any
) -> Segment:
    cards = cards if cards is not None else [f"c{i}" for i in range(n)]
    return Segment(
        rows=n,
        scored_at=AT,
        model="fraud",
        version=version,
        batch_size=n,
        degraded=False,
        request_ids=[f"{prefix}{i}" for i in range(n)],
        scores=[i / 10 for i in range(n)],
        latency_ms=[1.0] * n,
        queue_ms=[0.5] * n,
        entity_columns=("card_id",),
        entities=[cards],
        features={"feature__count_1h": list(range(n))},
        feature_types={"feature__count_1h": "int64"},
        extra={name: list(values) for name, values in extra.items()},
    )


def test_segments_become_one_table_with_the_log_types() -> None:
    rows = LogRows()
    rows.add(segment(2, prefix="a", amount=[1.5, 2.0]))
    rows.add(segment(3, prefix="b", amount=[3.0, 4.0, 5.0]))
    tables, dropped = rows.take()
    assert dropped == 0 and len(tables) == 1
    [table] = tables
    assert table.column("request_id").to_pylist() == ["a0", "a1", "b0", "b1", "b2"]
    assert table.schema.field("scored_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("batch_size").type == pa.int32()
    assert table.schema.field("feature__count_1h").type == pa.int64()
    assert table.column("amount").to_pylist() == [1.5, 2.0, 3.0, 4.0, 5.0]
    assert rows.rows == 0 and rows.take() == ([], 0)


def test_a_column_only_some_segments_have_is_null_elsewhere() -> None:
    rows = LogRows()
    rows.add(segment(2, prefix="a"))
    rows.add(segment(1, prefix="b", transaction_id=["tx1"]))
    rows.add(segment(1, prefix="c"))
    [table], _ = rows.take()
    assert table.column("transaction_id").to_pylist() == [None, None, "tx1", None]
    assert table.num_rows == 4


def test_a_segment_arrow_cannot_join_costs_only_its_own_rows() -> None:
    rows = LogRows()
    rows.add(segment(2, prefix="a"))
    rows.add(segment(3, prefix="bad", cards=["c1", 7, "c3"]))  # text and a number in one column
    rows.add(segment(1, prefix="b", cards=[5]))  # numbers: fine alone
    tables, dropped = rows.take()
    assert dropped == 3
    ids = [i for t in tables for i in t.column("request_id").to_pylist()]
    assert ids == ["a0", "a1", "b0"]


def test_another_model_version_starts_another_table() -> None:
    rows = LogRows()
    rows.add(segment(2, version=1))
    rows.add(segment(2, version=2))
    tables, _ = rows.take()
    assert [t.column("model_version").to_pylist() for t in tables] == [[1, 1], [2, 2]]


def test_due_after_enough_rows_or_enough_time() -> None:
    rows = LogRows(max_rows=4, max_age=3600)
    assert not rows.due()
    rows.add(segment(3))
    assert not rows.due()
    rows.add(segment(1))
    assert rows.due()
    old = LogRows(max_rows=10**6, max_age=0.0)
    old.add(segment(1))
    assert old.due()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=8))
def test_together_equals_each_alone(parts: list[tuple[int, bool]]) -> None:
    """Gathering segments changes nothing in the rows the log gets: concatenated, they are the
    rows of each segment converted on its own (missing columns as nulls)."""
    together = LogRows()
    alone: list[pa.Table] = []
    for k, (n, with_id) in enumerate(parts):
        extra = {"transaction_id": [f"t{k}-{i}" for i in range(n)]} if with_id else {}
        together.add(segment(n, prefix=f"s{k}-", **extra))
        one = LogRows()
        one.add(segment(n, prefix=f"s{k}-", **extra))
        alone += one.take()[0]
    [table], dropped = together.take()
    expected = pa.concat_tables(alone, promote_options="default")
    assert dropped == 0
    for name in expected.column_names:
        assert table.column(name).to_pylist() == expected.column(name).to_pylist(), name
