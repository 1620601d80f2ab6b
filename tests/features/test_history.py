"""Point-in-time training sets: checked against a brute-force reference, edges and ties included."""

from __future__ import annotations

import math
import statistics
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backline.core.config import Config, load_config
from backline.core.errors import ConfigError, NotFoundError, SchemaError
from backline.core.workspace import init_project
from backline.data.ingest import ingest
from backline.data.offline_store import OfflineStore
from backline.features.history import get_historical_features, write_historical_features
from backline.features.repository import apply, load_definitions, plan

T0 = datetime(2026, 3, 1, tzinfo=UTC)
FEATURES = """
from backline.features import Aggregate, Entity, FeatureService, FeatureView, Field, OnDemandFeature

card = Entity("card", join_keys=["card_id"])
agg = FeatureView("agg", entities=[card], source="transactions", aggregates=[
    Aggregate("count", window="10m"),
    Aggregate("sum", "amount", window="1h"),
    Aggregate("mean", "amount", window="1h"),
    Aggregate("min", "amount", window="1h"),
    Aggregate("max", "amount", window="1h"),
    Aggregate("stddev", "amount", window="1h"),
    Aggregate("count_distinct", "country", window="1h"),
    Aggregate("count", "device_id", window="1h", name="devices_seen_1h"),
])
last = FeatureView("last", entities=[card], source="transactions",
                   fields=[Field("amount", name="last_amount"), Field("device_id", name="last_device")],
                   ttl="30m")
ratio = OnDemandFeature("ratio", inputs={"a": "request:amount", "m": "agg:amount_mean_1h"},
                        function=lambda a, m: a / m)
svc = FeatureService("svc", [agg, last, ratio])
"""


def make_project(root: Path, features: str = FEATURES) -> Config:
    project = init_project(root)
    (project / "features.py").write_text(features)
    cfg = load_config(project, env={})
    apply(cfg, load_definitions(cfg))
    return cfg


def events_table(events: list[dict]) -> pa.Table:
    n = len(events)
    return pa.table(
        {
            "transaction_id": [f"tx_{e['id']:016x}" for e in events],
            "card_id": [e["card"] for e in events],
            "merchant_id": ["m_000001"] * n,
            "merchant_category": ["grocery"] * n,
            "amount": [e["amount"] for e in events],
            "currency": ["USD"] * n,
            "country": [e["country"] for e in events],
            "channel": ["pos"] * n,
            "device_id": [e["device"] for e in events],
            "event_time": pa.array([e["t"] for e in events], pa.timestamp("us", tz="UTC")),
        }
    )


def load_events(
    cfg: Config, events: list[dict], name: str = "events", now: datetime | None = None
) -> None:
    """Ingest `events` as one batch (at `now`, or the wall clock) and record each event's
    ingest time as the offline store wrote it, for the reference's tie-break."""
    path = cfg.root / "data" / f"{name}.parquet"
    pq.write_table(events_table(events), path)
    result = ingest(cfg, "transactions", path, now=now)
    assert result.rows_quarantined == 0, result.quarantine_reasons
    batch = next(
        b for b in OfflineStore.open(cfg).batches("transactions") if b.batch_id == result.batch_id
    )
    for e in events:
        e["ingested"] = datetime.fromisoformat(batch.ingested_at)


def entity_table(rows: list[tuple[str, datetime, float]]) -> pa.Table:
    return pa.table(
        {
            "card_id": [r[0] for r in rows],
            "event_timestamp": pa.array([r[1] for r in rows], pa.timestamp("us", tz="UTC")),
            "amount": [r[2] for r in rows],
        }
    )


def reference(events: list[dict], card: str, t: datetime, amount: float) -> dict[str, object]:
    """The documented semantics, computed the slow obvious way."""
    mine = [e for e in events if e["card"] == card]

    def within(w: timedelta) -> list[dict]:
        return [e for e in mine if t - w < e["t"] <= t]

    hour = within(timedelta(hours=1))
    amounts = [e["amount"] for e in hour]
    out: dict[str, object] = {
        "count_10m": len(within(timedelta(minutes=10))),
        "amount_sum_1h": sum(amounts) if amounts else None,
        "amount_mean_1h": statistics.fmean(amounts) if amounts else None,
        "amount_min_1h": min(amounts) if amounts else None,
        "amount_max_1h": max(amounts) if amounts else None,
        "amount_stddev_1h": statistics.stdev(amounts) if len(amounts) > 1 else None,
        "country_count_distinct_1h": len({e["country"] for e in hour}),
        "devices_seen_1h": sum(e["device"] is not None for e in hour),
    }
    seen = [e for e in mine if e["t"] <= t]
    # the documented tie-break: event time, then the row ingested last, then the larger key
    latest = max(seen, key=lambda e: (e["t"], e["ingested"], e["id"])) if seen else None
    fresh = latest is not None and latest["t"] >= t - timedelta(minutes=30)
    out["last_amount"] = latest["amount"] if fresh else None
    out["last_device"] = latest["device"] if fresh else None
    mean = out["amount_mean_1h"]
    out["ratio"] = amount / mean if isinstance(mean, float) and mean != 0 else None
    return out


def assert_rows_match(
    table: pa.Table, events: list[dict], rows: list[tuple[str, datetime, float]]
) -> None:
    got = table.to_pylist()
    assert len(got) == len(rows)
    for row, (card, t, amount) in zip(got, rows, strict=True):
        assert (row["card_id"], row["event_timestamp"], row["amount"]) == (card, t, amount), (
            "input order"
        )
        want = reference(events, card, t, amount)
        for name, value in want.items():
            actual = row[name]
            if isinstance(value, float) and actual is not None:
                assert math.isclose(actual, value, rel_tol=1e-9, abs_tol=1e-9), (
                    name,
                    card,
                    t,
                    actual,
                    value,
                )
            else:
                assert actual == value, (name, card, t, actual, value)


def test_window_edges_ties_and_ttl(tmp_path: Path) -> None:
    cfg = make_project(tmp_path / "p")
    m = timedelta(minutes=1)
    events = [
        {"id": 1, "card": "card_0000001", "t": T0, "amount": 10.0, "country": "US", "device": "d1"},
        {
            "id": 2,
            "card": "card_0000001",
            "t": T0 + 10 * m,
            "amount": 20.0,
            "country": "FR",
            "device": None,
        },
        {
            "id": 3,
            "card": "card_0000001",
            "t": T0 + 10 * m,
            "amount": 30.0,
            "country": "FR",
            "device": "d2",
        },
        {
            "id": 4,
            "card": "card_0000002",
            "t": T0 + 5 * m,
            "amount": 7.0,
            "country": "GB",
            "device": "d3",
        },
    ]
    load_events(cfg, events)
    defs = load_definitions(cfg)
    rows = [
        ("card_0000001", T0 - m, 5.0),  # before any event
        ("card_0000001", T0, 5.0),  # exactly at an event: it counts
        (
            "card_0000001",
            T0 + 10 * m,
            60.0,
        ),  # tie of two events at T; T0 is exactly T - 10m: out of count_10m
        ("card_0000001", T0 + 60 * m, 1.0),  # T0 is exactly T - 1h: out of the hour
        (
            "card_0000001",
            T0 + 40 * m + timedelta(microseconds=1),
            1.0,
        ),  # latest is 30m + 1µs old: expired
        ("card_0000002", T0 + 35 * m, 14.0),  # exactly at the TTL edge: still fresh
        ("card_0000009", T0, 1.0),  # unknown card
    ]
    table = get_historical_features(cfg, defs, "svc", entity_table(rows))
    assert_rows_match(table, events, rows)
    by_time = table.to_pylist()
    assert by_time[2]["count_10m"] == 2 and by_time[2]["last_amount"] == 30.0  # tie: larger id
    assert by_time[3]["amount_sum_1h"] == 50.0
    assert by_time[4]["last_amount"] is None and by_time[5]["last_amount"] == 7.0
    assert by_time[6]["count_10m"] == 0 and by_time[6]["amount_mean_1h"] is None


minutes = st.integers(0, 150)
on_the_grid = st.integers(0, 30).map(lambda k: 5 * k)  # ties and window edges are common
INGESTED = datetime(2026, 4, 1, tzinfo=UTC)


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[list[dict], list[tuple[str, datetime, float]], list[int]]:
    """Events in up to three batches, entity rows, and each batch's ingest hour.

    Ids are a random permutation, and an event may copy an earlier one's card and time, so
    events tie across batches with ingest order and key order disagreeing (a batch ingested
    later holding the smaller id at the same time), and batches are ingested out of order.
    """
    cards = ["card_0000001", "card_0000002", "card_0000003"]
    n = draw(st.integers(1, 40))
    ids = draw(st.permutations(range(1, n + 1)))
    events: list[dict] = []
    for i in range(n):
        tie = draw(st.booleans()) and i > 0
        like = events[draw(st.integers(0, i - 1))] if tie else None
        events.append(
            {
                "id": ids[i],
                "card": like["card"] if like else draw(st.sampled_from(cards)),
                "t": like["t"]
                if like
                else T0 + timedelta(minutes=draw(st.one_of(minutes, on_the_grid))),
                "amount": draw(st.floats(0.5, 5000, allow_nan=False).map(lambda x: round(x, 2))),
                "country": draw(st.sampled_from(["US", "FR", "DE"])),
                "device": draw(st.sampled_from(["d1", "d2", None])),
                "batch": draw(st.integers(0, 2)),
            }
        )
    hours = draw(st.lists(st.integers(0, 2), min_size=3, max_size=3))  # equal or out of order
    rows = [
        (
            draw(st.sampled_from([*cards, "card_0000004"])),
            T0 + timedelta(minutes=draw(st.one_of(minutes, on_the_grid))),
            100.0,
        )
        for _ in range(draw(st.integers(1, 25)))
    ]
    rows += [(e["card"], e["t"], 100.0) for e in events if draw(st.booleans())]
    return events, rows, hours


def _tied(i: int, card: str, minute: int, batch: int) -> dict:
    return {
        "id": i,
        "card": card,
        "t": T0 + timedelta(minutes=minute),
        "amount": float(i),
        "country": "US",
        "device": f"d{i}",
        "batch": batch,
    }


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
@example(  # a later batch holds the smaller id at the same time: the row ingested last wins
    (
        [_tied(9, "card_0000001", 10, 0), _tied(3, "card_0000001", 10, 1)],
        [("card_0000001", T0 + timedelta(minutes=10), 100.0)],
        [0, 1, 2],
    )
)
@example(  # batch 1 is ingested before batch 0: ingest time decides, not commit order
    (
        [_tied(3, "card_0000002", 0, 0), _tied(9, "card_0000002", 0, 1)],
        [("card_0000002", T0 + timedelta(minutes=5), 100.0)],
        [2, 1, 0],
    )
)
@example(  # one ingest time: the larger id wins
    (
        [_tied(9, "card_0000003", 5, 0), _tied(3, "card_0000003", 5, 1)],
        [("card_0000003", T0 + timedelta(minutes=5), 100.0)],
        [1, 1, 1],
    )
)
def test_training_sets_equal_a_brute_force_reference(scenario: tuple) -> None:
    events, rows, hours = scenario
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_project(Path(tmp) / "p")
        for b in range(3):
            batch = [e for e in events if e["batch"] == b]
            if batch:
                load_events(cfg, batch, f"batch{b}", now=INGESTED + timedelta(hours=hours[b]))
        table = get_historical_features(cfg, load_definitions(cfg), "svc", entity_table(rows))
        assert_rows_match(table, events, rows)


def test_an_aggregate_window_longer_than_the_views_ttl_reads_its_whole_window(
    tmp_path: Path,
) -> None:
    """`ttl` is how old a plain view's latest row may be; an aggregate covers (T - window, T]
    whatever the view's ttl, so a training set (and the online store) must read back as far as
    the longest window, not only as far as the ttl."""
    features = """
from backline.features import Aggregate, Entity, FeatureService, FeatureView

card = Entity("card", join_keys=["card_id"])
week = FeatureView("week", entities=[card], source="transactions", ttl="1d", aggregates=[
    Aggregate("count", window="7d"),
    Aggregate("sum", "amount", window="7d"),
    Aggregate("count", window="1h"),
])
svc = FeatureService("svc", [week])
"""
    cfg = make_project(tmp_path / "p", features)
    defs = load_definitions(cfg)
    ages = [timedelta(days=8), timedelta(days=6), timedelta(days=2), timedelta(hours=20)]
    events = [
        {
            "id": i,
            "card": "card_0000001",
            "t": T0 - age,
            "amount": float(10**i),
            "country": "US",
            "device": None,
        }
        for i, age in enumerate(ages)
    ]
    load_events(cfg, events)
    times = [T0, T0 - timedelta(days=1), T0 + timedelta(days=2)]
    got = get_historical_features(
        cfg, defs, "svc", entity_table([("card_0000001", t, 1.0) for t in times])
    ).to_pylist()

    def direct(t: datetime) -> dict[str, object]:
        inside = [e for e in events if t - timedelta(days=7) < e["t"] <= t]
        return {
            "count_7d": len(inside),
            "amount_sum_7d": math.fsum(e["amount"] for e in inside) if inside else None,
            "count_1h": sum(t - timedelta(hours=1) < e["t"] <= t for e in events),
        }

    assert [{k: row[k] for k in ("count_7d", "amount_sum_7d", "count_1h")} for row in got] == [
        direct(t) for t in times
    ]
    assert got[0]["count_7d"] == 3 and got[0]["amount_sum_7d"] == 1110.0  # 6d and 2d are past ttl
    from backline.features.materialize import materialize
    from backline.features.online import get_online_features

    materialize(cfg, defs)
    online = get_online_features(
        cfg, defs, "svc", [{"card_id": "card_0000001"}], at=T0 + timedelta(days=2)
    )
    assert online.to_dicts()[0] == {"card_id": "card_0000001", **direct(T0 + timedelta(days=2))}


def test_later_events_never_leak_into_earlier_rows(tmp_path: Path) -> None:
    cfg = make_project(tmp_path / "p")
    base = [
        {
            "id": i,
            "card": "card_0000001",
            "t": T0 + timedelta(minutes=i),
            "amount": float(i),
            "country": "US",
            "device": "d1",
        }
        for i in range(1, 30)
    ]
    load_events(cfg, base, "a")
    defs = load_definitions(cfg)
    rows = [("card_0000001", T0 + timedelta(minutes=k), 1.0) for k in (5, 15, 29)]
    before = get_historical_features(cfg, defs, "svc", entity_table(rows))
    future = [
        {
            "id": 100 + i,
            "card": "card_0000001",
            "t": T0 + timedelta(minutes=30 + i),
            "amount": 999.0,
            "country": "DE",
            "device": "d9",
        }
        for i in range(10)
    ]
    load_events(cfg, future, "b")
    after = get_historical_features(cfg, defs, "svc", entity_table(rows))
    assert before.equals(after)


def test_file_to_file_streams_in_input_order(tmp_path: Path) -> None:
    cfg = make_project(tmp_path / "p")
    events = [
        {
            "id": i,
            "card": f"card_{i % 5:07d}",
            "t": T0 + timedelta(seconds=37 * i),
            "amount": 1.0 + i,
            "country": "US",
            "device": "d",
        }
        for i in range(1, 400)
    ]
    load_events(cfg, events)
    rows = [
        (f"card_{(i * 7) % 6:07d}", T0 + timedelta(seconds=(i * 911) % 15000), float(i))
        for i in range(3000)
    ]
    src = tmp_path / "entities.parquet"
    pq.write_table(entity_table(rows), src)
    out = tmp_path / "train.parquet"
    n = write_historical_features(cfg, load_definitions(cfg), "svc", src, out)
    assert n == 3000
    table = pq.read_table(out)
    assert table.column("amount").to_pylist() == [float(i) for i in range(3000)]
    assert_rows_match(table.slice(0, 200), events, rows[:200])


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    cfg = make_project(tmp_path / "p")
    defs = load_definitions(cfg)
    good = entity_table([("card_0000001", T0, 1.0)])
    with pytest.raises(NotFoundError, match=r"unknown feature service 'sv'\. Did you mean 'svc'\?"):
        get_historical_features(cfg, defs, "sv", good)
    with pytest.raises(SchemaError, match=r"entities lack join key 'card_id'"):
        get_historical_features(cfg, defs, "svc", good.drop_columns(["card_id"]))
    with pytest.raises(SchemaError, match=r"lack request field 'amount'"):
        get_historical_features(cfg, defs, "svc", good.drop_columns(["amount"]))
    naive = good.set_column(
        1, "event_timestamp", pa.array([datetime(2026, 3, 1)], pa.timestamp("us"))
    )
    with pytest.raises(SchemaError, match="not a timestamp with a timezone"):
        get_historical_features(cfg, defs, "svc", naive)
    with pytest.raises(SchemaError, match="no timestamp column 'ts'"):
        get_historical_features(cfg, defs, "svc", good, timestamp_column="ts")


def test_edited_definitions_must_be_applied_and_make_a_new_version(tmp_path: Path) -> None:
    cfg = make_project(tmp_path / "p")
    path = cfg.root / "features.py"
    path.write_text(FEATURES.replace('ttl="30m"', 'ttl="45m"'))
    defs = load_definitions(cfg)
    changes = {(c.kind, c.name): c.action for c in plan(cfg, defs)}
    assert changes[("feature_view", "last")] == "update"
    assert changes[("feature_view", "agg")] == "unchanged"
    with pytest.raises(SchemaError, match=r"feature view 'last' .* is not applied"):
        get_historical_features(cfg, defs, "svc", entity_table([("card_0000001", T0, 1.0)]))
    apply(cfg, defs)
    assert {c.action for c in plan(cfg, defs)} == {"unchanged"}


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'Aggregate("sum", "amount", window="1h")',
            'Aggregate("sum", "country", window="1h")',
            r"sum\(country\) needs a numeric column, but 'country' is string",
        ),
        (
            'Field("amount", name="last_amount")',
            'Field("amt", name="last_amount")',
            r"field 'amt' is not a column of source 'transactions'",
        ),
        ('join_keys=["card_id"]', 'join_keys=["card"]', r"join key 'card' is not a column"),
        (
            'source="transactions", aggregates',
            'source="payments", aggregates',
            r"reads source 'payments', which backline.toml does not declare",
        ),
        (
            'Field("device_id", name="last_device")',
            'Field("device_id", name="count_10m")',
            r"feature 'count_10m' is defined by both view 'agg' and view 'last'",
        ),
        ('window="10m"', 'window="soon"', r"window 'soon' is not a duration"),
        ('"agg:amount_mean_1h"', '"agg:nope"', r"reads agg:nope, which no view defines"),
        (
            "svc = FeatureService",
            "1/0\nsvc = FeatureService",
            r"failed to load \(line \d+\): ZeroDivisionError",
        ),
    ],
)
def test_bad_definitions_are_named(tmp_path: Path, old: str, new: str, message: str) -> None:
    project = init_project(tmp_path / "p")
    assert old in FEATURES
    (project / "features.py").write_text(FEATURES.replace(old, new, 1))
    cfg = load_config(project, env={})
    with pytest.raises((SchemaError, ConfigError), match=message):
        load_definitions(cfg)


def test_bucketed_staging_gives_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large jobs run per key bucket, staged on disk; force that path on small data."""
    from backline.features.engines import duckdb as engine

    cfg = make_project(tmp_path / "p")
    events = [
        {
            "id": i,
            "card": f"card_{i % 7:07d}",
            "t": T0 + timedelta(seconds=53 * i),
            "amount": 2.0 + i % 13,
            "country": ["US", "FR", "DE"][i % 3],
            "device": None if i % 5 == 0 else "d",
        }
        for i in range(1, 500)
    ]
    load_events(cfg, events)
    rows = [
        (f"card_{(i * 3) % 8:07d}", T0 + timedelta(seconds=(i * 677) % 27000), float(i))
        for i in range(700)
    ]
    defs = load_definitions(cfg)
    whole = get_historical_features(cfg, defs, "svc", entity_table(rows))
    monkeypatch.setattr(engine, "ROWS_PER_BUCKET", 150)
    staged = get_historical_features(cfg, defs, "svc", entity_table(rows))
    assert staged.schema == whole.schema
    for name in whole.column_names:
        a, b = whole.column(name).to_pylist(), staged.column(name).to_pylist()
        if pa.types.is_floating(whole.schema.field(name).type):  # summation order may differ
            assert all(
                x == y or (x is not None and y is not None and math.isclose(x, y, rel_tol=1e-9))
                for x, y in zip(a, b, strict=True)
            ), name
        else:
            assert a == b, name
    assert_rows_match(staged.slice(0, 150), events, rows[:150])


def test_nanosecond_entity_times_are_accepted(tmp_path: Path) -> None:
    """pandas writes ns timestamps; they are truncated to µs like every stored time."""
    cfg = make_project(tmp_path / "p")
    events = [
        {"id": 1, "card": "card_0000001", "t": T0, "amount": 4.0, "country": "US", "device": "d"}
    ]
    load_events(cfg, events)
    rows = [("card_0000001", T0 + timedelta(minutes=5), 2.0)]
    table = entity_table(rows)
    ns = table.set_column(
        1, "event_timestamp", table.column("event_timestamp").cast(pa.timestamp("ns", tz="UTC"))
    )
    got = get_historical_features(cfg, load_definitions(cfg), "svc", ns).to_pylist()[0]
    assert got["count_10m"] == 1 and got["ratio"] == 0.5


_BEFORE = {  # offsets before F, in the precision's unit, that must not see the row stamped F
    "s": [1, 60],
    "ms": [1, 999],
    "us": [1, 999_999],
    "ns": [1, 499, 500, 501, 999, 1000, 1001],
}


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("as_file", [False, True])
def test_entity_times_of_every_precision_never_read_a_future_row(
    tmp_path: Path, unit: str, as_file: bool
) -> None:
    """An entity at F - 1 ns (or F - 499 ns) must not get the row stamped F: entity times are
    truncated toward the past to microseconds, never rounded to the nearest one."""
    cfg = make_project(tmp_path / "p")
    f = T0 + timedelta(minutes=5)
    events = [
        {"id": 1, "card": "card_0000001", "t": T0, "amount": 4.0, "country": "US", "device": "a"},
        {"id": 2, "card": "card_0000001", "t": f, "amount": 8.0, "country": "FR", "device": "b"},
    ]
    load_events(cfg, events)
    scale = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    f_units = int(f.timestamp()) * scale
    stamps = [f_units - d for d in _BEFORE[unit]] + [f_units, f_units + 1]
    frame = pa.table(
        {
            "card_id": ["card_0000001"] * len(stamps),
            "event_timestamp": pa.array(stamps, pa.int64()).cast(pa.timestamp(unit, tz="UTC")),
            "amount": [2.0] * len(stamps),
        }
    )
    defs = load_definitions(cfg)
    if as_file:
        path = tmp_path / "entities.parquet"
        pq.write_table(frame, path)
        write_historical_features(cfg, defs, "svc", path, tmp_path / "out.parquet")
        out = pq.read_table(tmp_path / "out.parquet")
    else:
        out = get_historical_features(cfg, defs, "svc", frame)
    times = out.column("event_timestamp").cast(pa.timestamp(unit, tz="UTC")).cast(pa.int64())
    assert times.to_pylist() == stamps, "input order"
    got = out.select(["count_10m", "last_amount", "amount_sum_1h"]).to_pylist()
    before = len(_BEFORE[unit])
    for i, row in enumerate(got):
        if i < before:
            assert (row["count_10m"], row["last_amount"], row["amount_sum_1h"]) == (1, 4.0, 4.0), (
                unit,
                _BEFORE[unit][i],
                row,
            )
        else:
            assert (row["count_10m"], row["last_amount"], row["amount_sum_1h"]) == (2, 8.0, 12.0)
