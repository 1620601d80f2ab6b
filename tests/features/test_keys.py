"""Integer, timestamp and composite keys (entity join keys and source primary keys): online
reads equal the point-in-time training set, ties on event time included, on both engines.

The documented tie-break is: the row ingested last, then the larger primary key compared in
its own type. With int64 keys 9 and 10 at the same event time in one batch, 10 wins (as text,
"9" would).
"""

from __future__ import annotations

import itertools
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backline.core.config import Config, load_config
from backline.core.errors import SchemaError
from backline.core.workspace import init_project
from backline.data.ingest import ingest
from backline.features.definitions import Definitions
from backline.features.history import get_historical_features
from backline.features.materialize import materialize
from backline.features.online import OnlineRangeError, get_online_features
from backline.features.repository import apply, load_definitions

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
INGESTED = datetime(2026, 3, 1, tzinfo=UTC)

SOURCE = """
[sources.ev]
primary_key = {pk}
event_time = "t"

[sources.ev.columns.user]
type = "int64"
required = true

[sources.ev.columns.shop]
type = "string"
required = true

[sources.ev.columns.id]
type = "int64"
required = true

[sources.ev.columns.stamp]
type = "timestamp"
required = true

[sources.ev.columns.opened]
type = "timestamp"
required = true

[sources.ev.columns.t]
type = "timestamp"
required = true

[sources.ev.columns.v]
type = "float64"
required = true
"""

FEATURES = """
from backline.features import Aggregate, Entity, FeatureService, FeatureView, Field

who = Entity("who", join_keys={keys})
last = FeatureView("last", entities=[who], source="ev", fields=[Field("v", name="last_v")],
                   ttl="1d")
win = FeatureView("win", entities=[who], source="ev", aggregates=[
    Aggregate("count", window="10m", name="n_10m"), Aggregate("sum", "v", window="1h", name="s_1h"),
])
svc = FeatureService("svc", [last, win])
"""

SHAPES = {
    # join keys, primary key
    "int": (["user"], ["id"]),
    "timestamp": (["user", "shop"], ["stamp"]),
    "composite": (["user", "shop"], ["shop", "id"]),
    "timestamp key": (["opened"], ["id"]),
    "timestamp and string key": (["opened", "shop"], ["id"]),
}
_batch = itertools.count()
OPENED = {u: T0 - timedelta(days=u, microseconds=u) for u in (1, 2, 9, 10)}


def make(root: Path, shape: str) -> tuple[Config, Definitions]:
    keys, pk = SHAPES[shape]
    project = init_project(root)
    with (project / "backline.toml").open("a") as f:
        f.write(SOURCE.format(pk=repr(pk).replace("'", '"')))
    (project / "features.py").write_text(FEATURES.format(keys=keys))
    cfg = load_config(project, env={})
    defs = load_definitions(cfg)
    apply(cfg, defs)
    return cfg, defs


def load(cfg: Config, rows: list[dict[str, Any]], now: datetime) -> None:
    path = cfg.root / "data" / f"ev-{next(_batch)}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            ("user", pa.int64()),
            ("shop", pa.string()),
            ("id", pa.int64()),
            ("stamp", pa.timestamp("us", tz="UTC")),
            ("opened", pa.timestamp("us", tz="UTC")),
            ("t", pa.timestamp("us", tz="UTC")),
            ("v", pa.float64()),
        ]
    )
    for r in rows:  # a timestamp join key: when the user's account was opened
        r.setdefault("opened", OPENED[r["user"]])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    result = ingest(cfg, "ev", path, now=now)
    assert result.rows_quarantined == 0, result.quarantine_reasons
    for r in rows:
        r["_ingested"] = now


def expected_last(
    rows: list[dict[str, Any]], shape: str, entity: dict[str, Any], at: datetime
) -> float | None:
    keys, pk = SHAPES[shape]
    mine = [r for r in rows if all(r[k] == entity[k] for k in keys) and r["t"] <= at]
    best = max(mine, key=lambda r: (r["t"], r["_ingested"], *(r[k] for k in pk)), default=None)
    return None if best is None or best["t"] < at - timedelta(days=1) else best["v"]


def check(
    cfg: Config,
    defs: Definitions,
    rows: list[dict[str, Any]],
    shape: str,
    engine: str = "duckdb",
) -> None:
    """At every event time and after the last: training set == reference, and online ==
    training set wherever the online store answers (it refuses a read before a stored row)."""
    keys, _ = SHAPES[shape]
    entities = [dict(e) for e in {tuple((k, r[k]) for k in keys) for r in rows}]
    entities.sort(key=lambda e: tuple(e.values()))
    times = sorted({r["t"] for r in rows} | {max(r["t"] for r in rows) + timedelta(minutes=5)})
    pairs = [(e, t) for e in entities for t in times]
    frame = pa.table(
        {
            **{k: [e[k] for e, _ in pairs] for k in keys},
            "event_timestamp": pa.array([t for _, t in pairs], pa.timestamp("us", tz="UTC")),
        }
    )
    history = get_historical_features(cfg, defs, "svc", frame, engine=engine).to_pylist()
    answered = 0
    for (entity, at), h in zip(pairs, history, strict=True):
        assert h["last_v"] == expected_last(rows, shape, entity, at), (shape, entity, at, h)
        try:
            got = get_online_features(cfg, defs, "svc", [entity], at=at).to_dicts()[0]
        except OnlineRangeError:
            assert any(r["t"] > at for r in rows if all(r[k] == entity[k] for k in keys))
            continue
        answered += 1
        assert got == {k: h[k] for k in got}, (shape, entity, at)
    assert answered >= len(entities)  # every entity at least after its latest event


@pytest.mark.parametrize("shape", list(SHAPES))
def test_tied_rows_go_to_the_larger_key_in_its_own_type(tmp_path: Path, shape: str) -> None:
    """Keys 9 and 10 (or stamps 9 and 10 seconds) at the same event time in one batch: 10 wins
    in the training set and in online reads, after a full and an incremental run."""
    cfg, defs = make(tmp_path / "p", shape)
    rows = [
        {"user": 10, "shop": "b", "id": i, "stamp": T0 + timedelta(seconds=i), "t": T0, "v": v}
        for i, v in ((9, 9.0), (10, 10.0), (2, 2.0))
    ]
    load(cfg, rows, INGESTED)
    for incremental in (False, True):
        materialize(cfg, defs, incremental=incremental)
        entity = {"user": 10, "shop": "b", "opened": OPENED[10]}
        want = {k: entity[k] for k in SHAPES[shape][0]}
        got = get_online_features(cfg, defs, "svc", [want], at=T0).to_dicts()[0]
        assert got["last_v"] == 10.0, (shape, got)
        check(cfg, defs, rows, shape)


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(list(SHAPES)),
    drawn=st.lists(
        st.tuples(
            st.sampled_from([1, 9, 10]),  # user
            st.sampled_from(["a", "b"]),  # shop
            st.sampled_from([0, 0, 5, 10, 60]),  # minute: many ties
            st.integers(0, 2),  # batch
        ),
        min_size=1,
        max_size=12,
    ),
    ids=st.permutations(list(range(1, 25))),
    ingest_after=st.tuples(
        st.sampled_from([timedelta(hours=1), timedelta(microseconds=1)]),
        st.lists(st.integers(0, 2), min_size=3, max_size=3),
    ).map(lambda d: [d[0] * k for k in d[1]]),
    incremental=st.booleans(),
)
@example(  # a later batch holds the smaller id at the same time: the row ingested last wins
    shape="timestamp key",
    drawn=[(9, "a", 0, 0), (9, "a", 0, 1)],
    ids=[9, 3, *range(10, 32)],
    ingest_after=[timedelta(0), timedelta(hours=1), timedelta(0)],
    incremental=False,
)
@example(  # the same, merged into the stored row by an incremental run
    shape="timestamp and string key",
    drawn=[(9, "a", 0, 0), (9, "a", 0, 1)],
    ids=[9, 3, *range(10, 32)],
    ingest_after=[timedelta(0), timedelta(microseconds=1), timedelta(0)],
    incremental=True,
)
def test_online_equals_offline_with_typed_keys(
    shape: str,
    drawn: list[tuple[int, str, int, int]],
    ids: list[int],
    ingest_after: list[timedelta],
    incremental: bool,
) -> None:
    """Ties on event time within and across batches (ids are a permutation, so a later batch
    often holds the smaller key), batches ingested out of order or within one second."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg, defs = make(Path(tmp) / "p", shape)
        rows: list[dict[str, Any]] = []
        for b in (0, 1, 2):
            batch = [
                {
                    "user": user,
                    "shop": shop,
                    "id": ids[i],
                    "stamp": T0 + timedelta(seconds=ids[i]),
                    "t": T0 + timedelta(minutes=minute),
                    "v": float(ids[i]),
                }
                for i, (user, shop, minute, in_batch) in enumerate(drawn)
                if in_batch == b
            ]
            if not batch:
                continue
            load(cfg, batch, INGESTED + ingest_after[b])
            rows += batch
            if incremental:
                materialize(cfg, defs, incremental=True)
        if not incremental:
            materialize(cfg, defs)
        check(cfg, defs, rows, shape)


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SHAPES))
def test_spark_breaks_ties_like_duckdb_and_the_online_store(tmp_path: Path, shape: str) -> None:
    cfg, defs = make(tmp_path / "p", shape)
    rows = [
        {"user": u, "shop": s, "id": i, "stamp": T0 + timedelta(seconds=i), "t": T0 + dt, "v": v}
        for u, s, i, dt, v in (
            (10, "b", 9, timedelta(0), 9.0),
            (10, "b", 10, timedelta(0), 10.0),
            (9, "a", 100, timedelta(minutes=5), 1.0),
            (9, "a", 99, timedelta(minutes=5), 2.0),
            (1, "a", 3, timedelta(minutes=1), 3.0),
        )
    ]
    load(cfg, rows, INGESTED)
    materialize(cfg, defs)
    check(cfg, defs, rows, shape, engine="spark")


def test_a_timestamp_key_reads_alike_from_a_datetime_or_iso_text(tmp_path: Path) -> None:
    """A timestamp join key is one instant however it is spelt (the command line passes text);
    a value without a zone is a one-line error naming it and the fix."""
    cfg, defs = make(tmp_path / "p", "timestamp and string key")
    rows = [{"user": 9, "shop": "a", "id": 1, "stamp": T0, "t": T0, "v": 4.0}]
    load(cfg, rows, INGESTED)
    materialize(cfg, defs)
    opened = OPENED[9]
    spellings = [
        opened,
        opened.astimezone(timezone(timedelta(hours=-5))),
        opened.isoformat(),
        opened.isoformat().replace("+00:00", "Z"),
    ]
    for spelt in spellings:
        got = get_online_features(cfg, defs, "svc", [{"opened": spelt, "shop": "a"}], at=T0)
        assert got.to_dicts()[0]["last_v"] == 4.0, spelt
        assert got.to_dicts()[0]["n_10m"] == 1, spelt
    for bad in (opened.replace(tzinfo=None), "2026-01-01T11:59:59", "yesterday", 1.5):
        with pytest.raises(SchemaError, match=r"timestamp join-key value .* tz-aware datetime"):
            get_online_features(cfg, defs, "svc", [{"opened": bad, "shop": "a"}], at=T0)
