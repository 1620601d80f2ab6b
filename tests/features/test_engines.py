"""Spark and DuckDB give identical training sets from the same definitions and the same data.

One project (the fraud example on generated data, plus hand-made events at window edges, ties
and TTL edges) and one Spark session serve the whole module: starting Spark is the slow part.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from backline.core.config import Config, load_config
from backline.core.errors import BacklineError, InvalidArgument, SchemaError
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated
from backline.data.ingest import ingest
from backline.features.definitions import Definitions
from backline.features.history import get_historical_features, write_historical_features
from backline.features.repository import apply, load_definitions

pytestmark = pytest.mark.spark

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)  # inside the generated days
US = timedelta(microseconds=1)
MIN = timedelta(minutes=1)
EDGE_CARD, EDGE_MERCHANT = "card_9000001", "m_edge01"
FLAT_CARD, FLAT_MERCHANT = "card_9000002", "m_edge02"


def _events(rows: list[tuple[int, str, str, datetime, float, str, str | None]]) -> pa.Table:
    """(id, card, merchant, time, amount, country, device) as the transactions source."""
    n = len(rows)
    return pa.table(
        {
            "transaction_id": [f"tx_{r[0]:016x}" for r in rows],
            "card_id": [r[1] for r in rows],
            "merchant_id": [r[2] for r in rows],
            "merchant_category": ["grocery"] * n,
            "amount": [r[4] for r in rows],
            "currency": ["USD"] * n,
            "country": [r[5] for r in rows],
            "channel": ["pos"] * n,
            "device_id": [r[6] for r in rows],
            "event_time": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
        }
    )


# Two events tie at T0+10m (the larger transaction id wins "latest"); two tie at T0+1h across
# batches (the later batch wins although its id is smaller); a flat card has a zero stddev.
FIRST_BATCH = [
    (0xE1, EDGE_CARD, EDGE_MERCHANT, T0, 10.0, "FR", "d1"),
    (0xE2, EDGE_CARD, EDGE_MERCHANT, T0 + 10 * MIN, 20.0, "DE", None),
    (0xE3, EDGE_CARD, EDGE_MERCHANT, T0 + 10 * MIN, 30.0, "FR", "d2"),
    (0xE6, EDGE_CARD, EDGE_MERCHANT, T0 + 60 * MIN, 40.0, "ES", "d2"),
    (0xF1, FLAT_CARD, FLAT_MERCHANT, T0, 5.0, "US", "d9"),
    (0xF2, FLAT_CARD, FLAT_MERCHANT, T0 + MIN, 5.0, "US", "d9"),
]
SECOND_BATCH = [(0xE5, EDGE_CARD, EDGE_MERCHANT, T0 + 60 * MIN, 50.0, "IT", "d3")]

EDGE_TIMES = [
    T0 - US,  # before any event of the card
    T0,  # exactly at an event
    T0 + 10 * MIN - US,
    T0 + 10 * MIN,  # at the tie; T0 is exactly 10m back: out of the 10m window
    T0 + 10 * MIN,  # the same entity row twice
    T0 + 10 * MIN + US,
    T0 + 20 * MIN,  # the tie is exactly 10m back
    T0 + 60 * MIN,
    T0 + 70 * MIN,
    T0 + timedelta(hours=24) - US,  # T0 is still inside the 24h window
    T0 + timedelta(hours=24),  # T0 is exactly 24h back: out
    T0 + 60 * MIN + timedelta(days=30),  # the latest event is exactly TTL old: still fresh
    T0 + 60 * MIN + timedelta(days=30) + US,  # one µs past the TTL: null
]


@pytest.fixture(scope="module")
def fraud(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Definitions, pa.Table]:
    """The fraud example with generated and hand-made events, and its entity rows."""
    project = init_project(tmp_path_factory.mktemp("engines") / "proj")
    cfg = load_config(project, env={})
    data = generate(GeneratorConfig(days=10, cards=200, seed=7))
    paths = write_generated(data, project / "data", fmt="parquet")
    ingest(cfg, "transactions", paths["transactions"])
    for name, rows in (("edges1", FIRST_BATCH), ("edges2", SECOND_BATCH)):
        path = project / "data" / f"{name}.parquet"
        pq.write_table(_events(rows), path)
        assert ingest(cfg, "transactions", path).rows_quarantined == 0
    defs = load_definitions(cfg)
    apply(cfg, defs)

    tx = data.transactions.slice(0, 1200)
    hand = (
        [(EDGE_CARD, EDGE_MERCHANT, t, 25.0) for t in EDGE_TIMES]
        + [(FLAT_CARD, FLAT_MERCHANT, T0 + MIN, 25.0)]
        + [("card_9999999", "m_nobody", T0, 1.0)]  # unknown card and merchant
        + [(tx["card_id"][0].as_py(), tx["merchant_id"][0].as_py(), T0 - timedelta(days=60), 7.0)]
    )
    entities = pa.table(
        {
            "card_id": pa.concat_arrays(
                [tx["card_id"].combine_chunks(), pa.array([h[0] for h in hand])]
            ),
            "merchant_id": pa.concat_arrays(
                [tx["merchant_id"].combine_chunks(), pa.array([h[1] for h in hand])]
            ),
            "amount": pa.concat_arrays(
                [tx["amount"].combine_chunks(), pa.array([h[3] for h in hand], pa.float64())]
            ),
            "event_timestamp": pa.concat_arrays(
                [
                    tx["event_time"].combine_chunks(),
                    pa.array([h[2] for h in hand], pa.timestamp("us", tz="UTC")),
                ]
            ),
        }
    )
    return cfg, defs, entities


@pytest.fixture(scope="module")
def duck_and_spark(fraud: tuple[Config, Definitions, pa.Table]) -> tuple[pa.Table, pa.Table]:
    cfg, defs, entities = fraud
    duck = get_historical_features(cfg, defs, "fraud_v1", entities, engine="duckdb")
    spark = get_historical_features(cfg, defs, "fraud_v1", entities, engine="spark")
    return duck, spark


def assert_same(duck: pa.Table, spark: pa.Table) -> None:
    """Same schema and rows; floats to a relative 1e-9 (sums run in another order), the rest exact."""
    assert spark.schema == duck.schema
    assert spark.num_rows == duck.num_rows
    for name in duck.column_names:
        a, b = duck[name], spark[name]
        if pa.types.is_floating(a.type):
            for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True)):
                same = x is None and y is None
                same = same or (
                    x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9)
                )
                assert same, f"{name} row {i}: duckdb {x!r}, spark {y!r}"
        elif not a.equals(b):
            bad = next(
                i
                for i, (x, y) in enumerate(zip(a.to_pylist(), b.to_pylist(), strict=True))
                if x != y
            )
            raise AssertionError(
                f"{name} row {bad}: duckdb {a[bad].as_py()!r}, spark {b[bad].as_py()!r}"
            )


def _rows_at(table: pa.Table, card: str) -> list[dict]:
    return [r for r in table.to_pylist() if r["card_id"] == card]


def test_spark_gives_the_duckdb_training_set(duck_and_spark: tuple[pa.Table, pa.Table]) -> None:
    duck, spark = duck_and_spark
    assert duck.num_rows == 1200 + len(EDGE_TIMES) + 3
    assert_same(duck, spark)
    # and what both give at the hand-made edges is right
    for table in (duck, spark):
        edge = _rows_at(table, EDGE_CARD)
        by = [(r["count_10m"], r["count_1h"], r["last_amount"], r["last_country"]) for r in edge]
        assert by == [
            (0, 0, None, None),
            (1, 1, 10.0, "FR"),
            (1, 1, 10.0, "FR"),
            (2, 3, 30.0, "FR"),
            (2, 3, 30.0, "FR"),
            (2, 3, 30.0, "FR"),
            (0, 3, 30.0, "FR"),
            (2, 4, 50.0, "IT"),
            (0, 2, 50.0, "IT"),
            (0, 0, 50.0, "IT"),
            (0, 0, 50.0, "IT"),
            (0, 0, 50.0, "IT"),
            (0, 0, None, None),
        ]
        assert [r["count_24h"] for r in edge[9:11]] == [5, 4]
        assert edge[3]["device_id_count_distinct_24h"] == 2  # d1, d2 and a null device
        assert edge[3]["country_count_distinct_24h"] == 2
        assert edge[7]["amount_max_7d"] == 50.0
        flat = _rows_at(table, FLAT_CARD)[0]
        assert flat["amount_stddev_7d"] == 0.0
        assert flat["amount_zscore_7d"] is None  # 20 / 0: not finite, so null
        assert flat["amount_to_mean_30d"] == 5.0
        unknown = _rows_at(table, "card_9999999")[0]
        assert (unknown["count_24h"], unknown["merchant_count_1h"]) == (0, 0)
        assert unknown["amount_mean_30d"] is None and unknown["last_country"] is None
        early = table.slice(table.num_rows - 1, 1).to_pylist()[0]
        assert (early["count_30d"], early["last_amount"]) == (0, None)


def test_rows_before_any_event_read_no_files(fraud: tuple[Config, Definitions, pa.Table]) -> None:
    """Times before the data prune every file: the source is an empty, typed relation."""
    cfg, defs, entities = fraud
    early = entities.slice(0, 5).set_column(
        3,
        "event_timestamp",
        pa.array([T0 - timedelta(days=90)] * 5, pa.timestamp("us", tz="UTC")),
    )
    duck = get_historical_features(cfg, defs, "fraud_v1", early, engine="duckdb")
    spark = get_historical_features(cfg, defs, "fraud_v1", early, engine="spark")
    assert_same(duck, spark)
    assert spark["count_30d"].to_pylist() == [0] * 5
    assert spark["last_country"].null_count == 5


def test_files_in_files_out(
    fraud: tuple[Config, Definitions, pa.Table],
    duck_and_spark: tuple[pa.Table, pa.Table],
    tmp_path: Path,
) -> None:
    cfg, defs, entities = fraud
    duck, _ = duck_and_spark
    parquet_in = tmp_path / "entities.parquet"
    pq.write_table(entities, parquet_in, row_group_size=500)  # several row groups, in order
    out = tmp_path / "train.parquet"
    rows = write_historical_features(cfg, defs, "fraud_v1", parquet_in, out, engine="spark")
    assert rows == entities.num_rows
    assert not out.with_name(out.name + ".partial").exists()
    assert_same(duck, pq.read_table(out))

    # CSV with offsets on the times: both engines read the same types and give the same rows
    csv_in = tmp_path / "entities.csv"
    pacsv.write_csv(entities.slice(1100), csv_in)
    from_duck = write_historical_features(cfg, defs, "fraud_v1", csv_in, tmp_path / "d.parquet")
    from_spark = write_historical_features(
        cfg, defs, "fraud_v1", csv_in, tmp_path / "s.parquet", engine="spark"
    )
    assert from_duck == from_spark == entities.num_rows - 1100
    assert_same(pq.read_table(tmp_path / "d.parquet"), pq.read_table(tmp_path / "s.parquet"))


def _write(path: Path, text: str | None = None, table: pa.Table | None = None) -> Path:
    if table is not None:
        pq.write_table(table, path)
    else:
        path.write_text(text or "")
    return path


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("naive.csv", SchemaError),
        ("nozone.parquet", SchemaError),
        ("no_time.parquet", SchemaError),
        ("null_time.parquet", SchemaError),
        ("entities.json", InvalidArgument),
        ("empty.parquet", SchemaError),
    ],
)
def test_bad_entities_fail_alike(
    fraud: tuple[Config, Definitions, pa.Table], tmp_path: Path, case: str, error: type
) -> None:
    cfg, defs, _ = fraud
    utc = pa.timestamp("us", tz="UTC")
    made = {
        "naive.csv": lambda p: _write(p, "card_id,merchant_id,amount,event_timestamp\n"
                                       "card_0000001,m_000001,1.5,2026-01-05 10:00:00\n"),
        "nozone.parquet": lambda p: _write(p, table=pa.table({
            "card_id": ["card_0000001"], "merchant_id": ["m_000001"], "amount": [1.5],
            "event_timestamp": pa.array([T0.replace(tzinfo=None)], pa.timestamp("us"))})),
        "no_time.parquet": lambda p: _write(p, table=pa.table({
            "card_id": ["card_0000001"], "merchant_id": ["m_000001"], "amount": [1.5],
            "ts": pa.array([T0], utc)})),
        "null_time.parquet": lambda p: _write(p, table=pa.table({
            "card_id": ["card_0000001", "card_0000002"], "merchant_id": ["m_000001"] * 2,
            "amount": [1.5, 2.5], "event_timestamp": pa.array([T0, None], utc)})),
        "entities.json": lambda p: _write(p, "{}"),
        "empty.parquet": lambda p: _write(p, table=pa.table({
            "card_id": pa.array([], pa.string()), "merchant_id": pa.array([], pa.string()),
            "amount": pa.array([], pa.float64()), "event_timestamp": pa.array([], utc)})),
    }  # fmt: skip
    path = made[case](tmp_path / case)
    messages = []
    for engine in ("duckdb", "spark"):
        with pytest.raises(BacklineError) as caught:
            write_historical_features(
                cfg, defs, "fraud_v1", path, tmp_path / f"{engine}.parquet", engine=engine
            )
        assert type(caught.value) is error
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


def test_csv_rows_keep_file_order_across_splits(
    fraud: tuple[Config, Definitions, pa.Table], tmp_path: Path
) -> None:
    """`__row` follows the file over several input splits, and ORDER BY over several outputs."""
    from backline.features.engines.spark import SparkEngine

    cfg, _, entities = fraud
    csv_in = tmp_path / "entities.csv"
    pacsv.write_csv(entities, csv_in)
    engine = SparkEngine(cfg)
    try:
        engine.spark.conf.set("spark.sql.files.maxPartitionBytes", "8192")  # many splits
        engine.spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
        relation, n, t_min, t_max = engine.entities(csv_in, "event_timestamp")
        assert engine.columns == entities.column_names
        times = entities["event_timestamp"]
        assert n == entities.num_rows
        assert (t_min, t_max) == tuple(int(t.value) for t in (pc.min(times), pc.max(times)))
        got = pa.Table.from_batches(
            list(
                engine.execute(
                    f"SELECT __row, card_id, event_timestamp FROM {relation} ORDER BY __row",
                    batch_rows=100,
                )
            )
        )
    finally:
        engine.close()
    assert got["__row"].to_pylist() == list(range(entities.num_rows))
    assert got["card_id"].equals(entities["card_id"])
    assert got["event_timestamp"].equals(entities["event_timestamp"])


def test_materialized_values_are_identical_on_both_engines(
    fraud: tuple[Config, Definitions, pa.Table], tmp_path: Path
) -> None:
    """Materialize with each engine into its own online store; every read answers the same."""
    import dataclasses

    from backline.features.materialize import materialize
    from backline.features.online import get_online_features

    cfg, defs, entities = fraud
    end = T0 + timedelta(days=2)
    answers = []
    for engine in ("duckdb", "spark"):
        variant = dataclasses.replace(
            cfg,
            features=dataclasses.replace(cfg.features, engine=engine),
            online=dataclasses.replace(cfg.online, uri=f"sqlite:///{tmp_path}/{engine}.db"),
        )
        result = materialize(variant, defs, end=end)
        assert result.entities > 0
        rows = [
            {"card_id": c, "merchant_id": m, "amount": 10.0}
            for c, m in zip(
                entities["card_id"].to_pylist()[:300],
                entities["merchant_id"].to_pylist()[:300],
                strict=True,
            )
        ]
        for at in (end, end + timedelta(minutes=30), end + timedelta(days=1)):
            answers.append(
                (engine, at, get_online_features(variant, defs, "fraud_v1", rows, at=at).to_dicts())
            )
    half = len(answers) // 2
    for (_, at, duck), (_, _, spark) in zip(answers[:half], answers[half:], strict=True):
        for a, b in zip(duck, spark, strict=True):
            for name, value in a.items():
                other = b[name]
                if isinstance(value, float) and other is not None:
                    assert math.isclose(value, other, rel_tol=1e-9), (at, name)
                else:
                    assert value == other, (at, name, value, other)
