"""Materialization and push: idempotent incremental runs, crash safety, upsert order, ranges,
and a property test that online reads equal point-in-time training values."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from backline.core.config import Config, load_config
from backline.core.errors import NotFoundError, SchemaError, StoreError, UsageError
from backline.core.faults import FAULT_ENV
from backline.data.offline_store import OfflineStore
from backline.features.definitions import Definitions
from backline.features.history import get_historical_features
from backline.features.materialize import materialize, push
from backline.features.online import (
    OnlineRangeError,
    get_online_features,
    open_online_store,
    redis_store,
    sqlite_store,
)
from backline.features.online.codec import PlainCodec, layout_of, to_us
from backline.features.online.state import SourceRows, view_state
from backline.features.repository import load_definitions, require_applied
from tests.features.online_support import (
    INGESTED,
    T0,
    assert_matches,
    cleaned,
    ingest_rows,
    make_project,
    minutes,
    reference,
    table,
    tx,
)

STORES = [pytest.param(False, id="sqlite"), pytest.param(True, id="redis", marks=pytest.mark.redis)]
CARD, OTHER = "card_0000001", "card_0000002"
VIEWS = ("card_stats", "card_last", "merchant_stats")


@pytest.fixture(params=STORES)
def proj(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Config, Definitions]]:
    cfg, defs = make_project(tmp_path / "p", redis=request.param)
    with cleaned(cfg):
        yield cfg, defs


def dump(cfg: Config, defs: Definitions) -> dict[str, Any]:
    """Everything the online store holds for the project's views, and their watermarks."""
    versions = require_applied(cfg, defs, list(defs.views))
    out: dict[str, Any] = {}
    with open_online_store(cfg) as store:
        for view, version in versions.items():
            keys = store.entity_keys(view, version)
            out[view] = (
                store.read([(view, version, keys)])[0],
                store.applied_batches(view, version),
            )
    return out


def read(cfg: Config, defs: Definitions, cards: list[str], at: datetime) -> list[dict[str, Any]]:
    entities = [{"card_id": c, "merchant_id": "m_000001"} for c in cards]
    out = get_online_features(
        cfg, defs, "test_v1", entities, request_rows=[{"amount": 9.0}] * len(cards), at=at
    )
    return out.to_dicts()


def check(
    cfg: Config, defs: Definitions, rows: list[dict[str, Any]], cards: list[str], at: datetime
) -> None:
    for got in read(cfg, defs, cards, at):
        assert_matches(
            got,
            reference(defs, "test_v1", rows, got, at, {"amount": 9.0}),
            f"{got['card_id']} at {at}",
        )


def test_incremental_is_idempotent_and_equals_a_full_run(proj: tuple[Config, Definitions]) -> None:
    cfg, defs = proj
    rows = [tx(CARD, T0 - minutes(30), 10.0), tx(OTHER, T0 - minutes(20), 5.0)]
    ingest_rows(cfg, rows)
    first = materialize(cfg, defs, incremental=True)
    assert [(v.view, v.mode, v.batches, v.rows, v.entities) for v in first.views] == [
        ("card_stats", "incremental", 1, 2, 2),
        ("card_last", "incremental", 1, 2, 2),
        ("merchant_stats", "incremental", 1, 2, 1),
    ]
    snapshot = dump(cfg, defs)
    again = materialize(cfg, defs, incremental=True)
    assert [(v.batches, v.rows, v.entities) for v in again.views] == [(0, 0, 0)] * 3
    assert dump(cfg, defs) == snapshot

    later = [tx(CARD, T0 - minutes(5), 30.0, country="FR"), tx(CARD, T0 - minutes(50), 7.0)]
    ingest_rows(cfg, later, now=INGESTED + timedelta(hours=1))
    step = materialize(cfg, defs, incremental=True)
    assert [v.batches for v in step.views] == [1, 1, 1]
    rows += later
    for at in (T0, T0 + minutes(30), T0 + timedelta(hours=3)):
        check(cfg, defs, rows, [CARD, OTHER], at)
    incremental = [read(cfg, defs, [CARD, OTHER], at) for at in (T0, T0 + minutes(30))]
    full = materialize(cfg, defs)
    assert [v.mode for v in full.views] == ["full"] * 3 and full.views[0].batches == 2
    assert [read(cfg, defs, [CARD, OTHER], at) for at in (T0, T0 + minutes(30))] == incremental
    assert [v.batches for v in materialize(cfg, defs, incremental=True).views] == [0, 0, 0]


def test_plain_rows_are_replaced_only_by_newer_ones(proj: tuple[Config, Definitions]) -> None:
    cfg, defs = proj
    first = [
        tx(CARD, T0, country="US", n=0x20),
        tx(OTHER, T0, country="US", n=0x30),
        tx(OTHER, T0, country="FR", n=0x31),  # same batch, same time: the larger key wins
    ]
    ingest_rows(cfg, first, now=INGESTED)
    materialize(cfg, defs, incremental=True)
    assert [r["last_country"] for r in read(cfg, defs, [CARD, OTHER], T0)] == ["US", "FR"]
    second = [
        tx(CARD, T0, country="DE", n=0x10),  # same time, ingested later: wins over a larger key
        tx(CARD, T0 - minutes(1), country="JP", n=0x50),  # late and older: does not replace
        tx(OTHER, T0, country="IT", n=0x40),  # same time, same ingest time: larger key wins
    ]
    ingest_rows(cfg, second[:2], now=INGESTED + timedelta(hours=1))
    ingest_rows(cfg, second[2:], now=INGESTED)
    materialize(cfg, defs, incremental=True)
    rows = first + second
    assert [r["last_country"] for r in read(cfg, defs, [CARD, OTHER], T0)] == ["DE", "IT"]
    check(cfg, defs, rows, [CARD, OTHER], T0)
    materialize(cfg, defs)
    check(cfg, defs, rows, [CARD, OTHER], T0)


def test_the_state_of_a_plain_view_ignores_the_order_rows_are_read_in(tmp_path: Path) -> None:
    """Files are read in no set order (and batch ids sort by ingest second, then by digest), so
    the latest row per entity must come from (event time, ingest time, primary key) alone:
    rows here are read with the later-ingested one first, and ties on both with the larger
    key first."""
    cfg, defs = make_project(tmp_path / "p")
    layout = layout_of(defs.view("card_last"), cfg.source("transactions"))
    t = to_us(T0)
    us = timedelta(microseconds=1)
    read = [  # (card, ingested after INGESTED, transaction id, country); all at T0
        (CARD, 2 * us, "tx_a", "FR"),  # ingested last: wins over larger keys
        (CARD, 1 * us, "tx_z", "US"),
        (CARD, 0 * us, "tx_y", "DE"),
        (OTHER, us, "tx_b", "JP"),  # one ingest time: the larger key wins
        (OTHER, us, "tx_a", "IT"),
    ]
    aliases = {column: f"__c{i}" for i, (_, column, _) in enumerate(layout.fields)}
    values = {
        "country": [r[3] for r in read],
        "amount": [1.0] * len(read),
        "device_id": [None] * len(read),
        "event_time": pa.array([T0] * len(read), pa.timestamp("us", tz="UTC")),
    }
    rows = SourceRows(
        pa.table(
            {
                "card_id": [r[0] for r in read],
                "__t": [t] * len(read),
                "__i": [to_us(INGESTED + r[1]) for r in read],
                "__p0": [r[2] for r in read],
                **{aliases[c]: values[c] for c in aliases},
            }
        ),
        aliases,
        layout.pk_types,
    )
    state = view_state(rows, layout, None)
    codec = PlainCodec(layout)
    got = {key: codec.decode_fields(blob)[2][0] for key, (_, blob) in state.items()}
    assert got == {CARD: "FR", OTHER: "JP"}
    assert state[CARD][0] == (t, to_us(INGESTED + 2 * us), ("tx_a",))


def test_a_range_recomputes_state_as_of_end(proj: tuple[Config, Definitions]) -> None:
    cfg, defs = proj
    rows = [tx(CARD, T0 - minutes(m), float(m)) for m in (90, 55, 40, 35, 20, 1)]
    ingest_rows(cfg, rows)
    end = T0 - minutes(30)
    result = materialize(cfg, defs, end=end)
    assert {v.mode for v in result.views} == {"range"} and {v.batches for v in result.views} == {0}
    assert result.views[0].rows == 4  # events after end are not read
    check(cfg, defs, rows, [CARD], end)
    check(cfg, defs, [r for r in rows if r["event_time"] <= end], [CARD], end + minutes(20))
    assert all(not applied for _, applied in dump(cfg, defs).values())  # watermark reset
    materialize(cfg, defs, incremental=True)  # brings every entity forward
    check(cfg, defs, rows, [CARD], T0)
    windowed = materialize(cfg, defs, start=T0 - minutes(45), end=end)
    assert windowed.views[0].rows == 2
    # the event at T0 - 55m, before start, was not read: a window that reaches before start
    # is refused instead of being answered from the two events that were (n_1h = 2)
    with pytest.raises(OnlineRangeError, match=r"'card_stats' for card_id=card_0000001 at "):
        read(cfg, defs, [CARD], end)
    covering = materialize(cfg, defs, end=T0 + minutes(1))  # leaves nothing out: a watermark
    assert {v.batches for v in covering.views} == {1}
    assert {v.batches for v in materialize(cfg, defs, incremental=True).views} == {0}
    check(cfg, defs, rows, [CARD], T0 + minutes(1))


def test_a_read_before_the_materialized_end_is_exact_or_refused(
    proj: tuple[Config, Definitions],
) -> None:
    """Materialized up to END, a read at an earlier time is the training-set value or an
    OnlineRangeError naming the time range and the fix, never a silently wrong 0/missing."""
    cfg, defs = proj
    end = T0 + timedelta(days=3)
    busy = [tx(CARD, T0 + timedelta(hours=h), h + 1.0) for h in range(0, 72, 6)]  # 3 days
    quiet = [tx(OTHER, T0 + minutes(m), 5.0, merchant="m_000002") for m in (60, 90)]
    rows = busy + quiet
    ingest_rows(cfg, rows)
    materialize(cfg, defs, end=end)
    early = T0 + timedelta(hours=40)
    # the quiet card's whole history is stored: its windows are answered at any time
    entity = {"card_id": OTHER, "merchant_id": "m_000002"}
    for at in (T0, T0 + minutes(90), early, end):
        got = get_online_features(cfg, defs, "windows_v1", [entity], at=at).to_dicts()[0]
        assert_matches(got, reference(defs, "windows_v1", rows, entity, at), f"{at}")
    assert got["n_1h"] == 0 and got["m_n_1h"] == 0  # not "missing": both events were read
    # the busy card's events older than a day before its latest were dropped: refused
    busy_entity = {"card_id": CARD, "merchant_id": "m_000001"}
    with pytest.raises(OnlineRangeError) as refused:
        get_online_features(cfg, defs, "windows_v1", [busy_entity], at=early)
    message = str(refused.value)
    assert "'card_stats' for card_id=card_0000001 at 2026-01-12T04:00:00Z" in message
    assert "it holds its events as materialized" in message
    assert "reads from 2026-01-13T06:00:00Z on" in message  # latest event (66h) - 1d + 1d
    assert "materialize with --end 2026-01-12T04:00:00Z" in message
    assert "backline features history" in message
    # a plain view's stored row is newer than `at`: refused, though its windows would not be
    with pytest.raises(
        OnlineRangeError, match=r"'card_last' for card_id=card_0000002.*holds its latest row as"
    ):
        get_online_features(cfg, defs, "test_v1", [entity], request_rows=[{"amount": 1.0}], at=T0)
    # doing what the message says makes the read exact
    materialize(cfg, defs, end=early)
    got = get_online_features(
        cfg, defs, "test_v1", [busy_entity], request_rows=[{"amount": 9.0}], at=early
    ).to_dicts()[0]
    assert_matches(got, reference(defs, "test_v1", rows, busy_entity, early, {"amount": 9.0}))
    assert got["n_1h"] == 0 and got["sum_1h"] is None and got["distinct_countries_1d"] == 1


def test_ttl_none_never_expires_and_an_omitted_ttl_is_30_days(tmp_path: Path) -> None:
    """`ttl=None` (as Feast users write it) means a value never expires, in training sets,
    materialization and online reads alike; leaving ttl out keeps the 30-day default."""
    from backline.features.definitions import Entity, FeatureView, Field

    card = Entity("card", join_keys=["card_id"])
    omitted = FeatureView("v", entities=[card], source="transactions", fields=[Field("amount")])
    assert omitted.ttl_delta == timedelta(days=30)
    never = FeatureView(
        "v", entities=[card], source="transactions", fields=[Field("amount")], ttl=None
    )
    assert never.ttl_delta is None and never.spec()["ttl_s"] is None
    assert omitted.spec()["ttl_s"] == 30 * 86400
    cfg, defs = make_project(tmp_path / "p")
    features = cfg.root / "features.py"
    features.write_text(features.read_text().replace('ttl="2h"', "ttl=None"))
    defs = load_definitions(cfg)
    from backline.features.repository import apply

    apply(cfg, defs)
    rows = [tx(CARD, T0 - timedelta(days=400), 12.5, country="FR"), tx(OTHER, T0, 1.0)]
    ingest_rows(cfg, rows)
    at = T0 + timedelta(days=1)
    entity = {"card_id": CARD, "merchant_id": "m_000001"}
    frame = pa.table(
        {
            "card_id": [CARD],
            "merchant_id": ["m_000001"],
            "event_timestamp": pa.array([at], pa.timestamp("us", tz="UTC")),
            "amount": [1.0],
        }
    )
    history = get_historical_features(cfg, defs, "test_v1", frame).to_pylist()[0]
    assert (history["last_amount"], history["last_country"]) == (12.5, "FR")
    for incremental in (False, True):
        materialize(cfg, defs, incremental=incremental)
        got = get_online_features(
            cfg, defs, "test_v1", [entity], request_rows=[{"amount": 1.0}], at=at
        )
        assert got.to_dicts()[0]["last_amount"] == 12.5
        assert got.status(0, "last_country") == "ok"
        assert got.age("last_amount")[0] == pytest.approx(401 * 86400)
    assert_matches(got.to_dicts()[0], reference(defs, "test_v1", rows, entity, at, {"amount": 1.0}))


def test_push_makes_a_new_event_visible_in_the_next_read(proj: tuple[Config, Definitions]) -> None:
    cfg, defs = proj
    ingest_rows(cfg, [tx(CARD, T0 - minutes(5), 10.0)])
    materialize(cfg, defs)
    assert read(cfg, defs, [CARD], T0 + minutes(1))[0]["n_10m"] == 1
    fresh = table([tx(CARD, T0, 25.0, country="BR")])
    result = push(cfg, defs, "transactions", fresh)
    assert result.status == "committed" and result.rows_accepted == 1
    assert {v.view for v in result.views} == set(VIEWS) and result.skipped_views == ()
    got = read(cfg, defs, [CARD], T0 + minutes(1))[0]
    assert (got["n_10m"], got["sum_1h"], got["last_country"]) == (2, 35.0, "BR")
    snapshot = dump(cfg, defs)
    again = push(cfg, defs, "transactions", fresh)
    assert again.status == "already_ingested" and again.views == ()
    bad = push(cfg, defs, "transactions", table([tx(CARD, T0, -5.0)]))
    assert bad.rows_quarantined == 1 and bad.rows_accepted == 0 and bad.quarantine_reasons
    assert read(cfg, defs, [CARD], T0 + minutes(1))[0]["n_10m"] == 2
    assert {v: d[0] for v, d in dump(cfg, defs).items()} == {v: d[0] for v, d in snapshot.items()}
    assert [v.batches for v in materialize(cfg, defs, incremental=True).views] == [0, 0, 0]


def test_crash_before_commit_leaves_the_old_state_and_a_rerun_resumes(
    proj: tuple[Config, Definitions],
) -> None:
    cfg, defs = proj
    rows = [tx(CARD, T0 - minutes(10), 10.0)]
    ingest_rows(cfg, rows)
    materialize(cfg, defs, incremental=True)
    before = dump(cfg, defs)
    later = [tx(CARD, T0 - minutes(2), 20.0, country="FR")]
    ingest_rows(cfg, later, now=INGESTED + timedelta(hours=1))
    env = {
        **os.environ,
        FAULT_ENV: "online_before_commit",
        "BACKLINE_ONLINE_URI": cfg.online.uri,
        "BACKLINE_PROJECT_NAME": cfg.project.name,
    }
    script = (
        "import sys; from pathlib import Path; from backline.core.config import load_config; "
        "from backline.features.repository import load_definitions; "
        "from backline.features.materialize import materialize; "
        "cfg = load_config(Path(sys.argv[1])); materialize(cfg, load_definitions(cfg), incremental=True)"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(cfg.root)], env=env, capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert dump(cfg, defs) == before
    resumed = materialize(cfg, defs, incremental=True)
    assert [v.batches for v in resumed.views] == [1, 1, 1]
    check(cfg, defs, rows + later, [CARD], T0)


def test_a_failure_mid_run_keeps_finished_views_and_the_rerun_does_the_rest(
    proj: tuple[Config, Definitions], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, defs = proj
    rows = [tx(CARD, T0 - minutes(10), 10.0), tx(OTHER, T0 - minutes(1), 3.0)]
    ingest_rows(cfg, rows)
    calls = []

    def fail_third(name: str) -> None:
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("injected failure before commit")

    monkeypatch.setattr(sqlite_store, "maybe_fail", fail_third)
    monkeypatch.setattr(redis_store, "maybe_fail", fail_third)
    with pytest.raises(RuntimeError, match="injected"):
        materialize(cfg, defs, incremental=True)
    state = dump(cfg, defs)
    assert [bool(state[v][1]) for v in VIEWS] == [True, True, False]
    assert state["merchant_stats"][0] == {}
    monkeypatch.undo()
    rerun = materialize(cfg, defs, incremental=True)
    assert [v.batches for v in rerun.views] == [0, 0, 1]
    check(cfg, defs, rows, [CARD, OTHER], T0)


def test_unreachable_redis_fails_before_anything_is_written(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p")
    ingest_rows(cfg, [tx(CARD, T0, 1.0)])
    down = load_config(cfg.root, env={"BACKLINE_ONLINE_URI": "redis://127.0.0.1:1/0"})
    batches = OfflineStore.open(cfg).batches()
    with pytest.raises(StoreError, match=r"'redis://127.0.0.1:1/0'.*BACKLINE_ONLINE_URI"):
        materialize(down, defs)
    with pytest.raises(StoreError, match="BACKLINE_ONLINE_URI"):
        push(down, defs, "transactions", table([tx(CARD, T0, 2.0)]))
    assert OfflineStore.open(cfg).batches() == batches  # push wrote no batch either
    assert not (cfg.root / ".backline" / "online.db").exists()


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p")
    with pytest.raises(UsageError, match="takes no start/end"):
        materialize(cfg, defs, incremental=True, end=T0)
    with pytest.raises(UsageError, match="no time zone"):
        materialize(cfg, defs, end=datetime(2026, 1, 1))
    with pytest.raises(UsageError, match="not before end"):
        materialize(cfg, defs, start=T0, end=T0)
    with pytest.raises(NotFoundError, match=r"card_stat.*Did you mean 'card_stats'"):
        materialize(cfg, defs, views=["card_stat"])
    with pytest.raises(UsageError, match="pyarrow Table"):
        push(cfg, defs, "transactions", [{"card_id": CARD}])
    features = cfg.root / "features.py"
    features.write_text(features.read_text().replace('"1h", name="m_n_1h"', '"2h", name="m_n_1h"'))
    with pytest.raises(SchemaError, match=r"'merchant_stats' .* not applied"):
        materialize(cfg, load_definitions(cfg))
    edited = load_definitions(cfg)
    result = push(cfg, edited, "transactions", table([tx(CARD, T0, 2.0)]))
    assert result.skipped_views == ("merchant_stats",) and len(result.views) == 2


# -- property: online at T equals the point-in-time value at T ---------------------------------

CARDS = ["card_0000001", "card_0000002", "card_0000003"]
MERCHANTS = ["m_000001", "m_000002"]
events = st.lists(
    st.fixed_dictionaries(
        {
            "card": st.sampled_from(CARDS),
            "merchant": st.sampled_from(MERCHANTS),
            "minute": st.integers(0, 24).map(lambda k: 5 * k),  # on the windows' edges often
            "amount": st.sampled_from([0.01, 1.5, 10.0, 10.0, 99.99, 1234.5, 1e6]),
            "device": st.sampled_from([None, "dev_1", "dev_2"]),
            "country": st.sampled_from(["US", "FR"]),
            "batch": st.integers(0, 2),
            "day": st.sampled_from([0, 0, 0, 1]),  # a day later: older events leave the state
            "tie": st.one_of(st.none(), st.integers(0, 19)),  # copy an earlier event's time
        }
    ),
    min_size=1,
    max_size=20,
)
INGEST_AFTER = st.tuples(
    st.sampled_from([timedelta(hours=1), timedelta(microseconds=1)]),
    st.lists(st.integers(0, 2), min_size=3, max_size=3),
).map(lambda drawn: [drawn[0] * k for k in drawn[1]])
"""Each batch's ingest time after INGESTED: equal, in commit order or out of it, hours apart or
within one second (where batch ids, and so file order, no longer follow ingest time)."""


def _tied(drawn: list[dict[str, Any]], ids: list[int]) -> list[dict[str, Any]]:
    """The drawn events with primary keys from `ids` (a permutation, so a later batch often
    holds the smaller key), and with card and time copied from an earlier event where `tie`
    says so: ties on event time across batches, where ingest order and key order disagree."""
    out: list[dict[str, Any]] = []
    for i, e in enumerate(drawn):
        e = {**e, "n": ids[i]}
        if e.get("tie") is not None and i > 0:
            like = out[e["tie"] % i]
            e.update(card=like["card"], minute=like["minute"], day=like["day"])
        out.append(e)
    return out


def _property(
    tmp: Path,
    redis: bool,
    drawn: list[dict[str, Any]],
    ingest_after: list[timedelta],
    incremental: bool,
    offset: int,
    before: int = 0,
    ids: list[int] | None = None,
) -> None:
    cfg, defs = make_project(Path(tempfile.mkdtemp(dir=tmp)) / "p", redis=redis)
    rows: list[dict[str, Any]] = []
    drawn = _tied(drawn, ids or list(range(1, len(drawn) + 1)))
    with cleaned(cfg):
        for b in range(3):
            batch = [
                tx(
                    e["card"],
                    T0 + timedelta(days=e["day"]) + minutes(e["minute"]),
                    e["amount"],
                    merchant=e["merchant"],
                    device=e["device"],
                    country=e["country"],
                    n=e["n"],
                )
                for e in drawn
                if e["batch"] == b
            ]
            if batch:
                ingest_rows(cfg, batch, now=INGESTED + ingest_after[b])
                rows += batch
                if incremental:
                    materialize(cfg, defs, incremental=True)
        if not incremental:
            materialize(cfg, defs)
        at = max(r["event_time"] for r in rows) + minutes(offset)
        entities = [
            {"card_id": c, "merchant_id": MERCHANTS[i % 2]}
            for i, c in enumerate([*CARDS, "card_0000404"])
        ]
        got = get_online_features(
            cfg, defs, "test_v1", entities, request_rows=[{"amount": 50.0}] * len(entities), at=at
        ).to_dicts()
        for g, entity in zip(got, entities, strict=True):
            assert_matches(
                g,
                reference(defs, "test_v1", rows, entity, at, {"amount": 50.0}),
                f"reference, {entity} at {at}",
            )
        frame = pa.table(
            {
                "card_id": [e["card_id"] for e in entities],
                "merchant_id": [e["merchant_id"] for e in entities],
                "event_timestamp": pa.array([at] * len(entities), pa.timestamp("us", tz="UTC")),
                "amount": [50.0] * len(entities),
            }
        )
        history = get_historical_features(cfg, defs, "test_v1", frame).to_pylist()
        for g, h in zip(got, history, strict=True):
            assert_matches(
                g,
                {k: h[k] for k in g},  # every output, and the entity keys
                f"history, {g['card_id']} at {at}",
            )
        if before:
            _read_before_the_latest_event(cfg, defs, rows, entities, at - minutes(before))


def _read_before_the_latest_event(
    cfg: Config,
    defs: Definitions,
    rows: list[dict[str, Any]],
    entities: list[dict[str, str]],
    at: datetime,
) -> None:
    """A read at a time before the latest stored event is the training-set value at that time,
    or an OnlineRangeError: never a silently wrong value. Windows of entities whose events all
    stayed in the state must be answered; a plain view refuses exactly when the entity has a
    row after `at` (the row stored is newer than what was known at `at`)."""
    latest = max(r["event_time"] for r in rows)
    for service in ("windows_v1", "test_v1"):
        frame = pa.table(
            {
                "card_id": [e["card_id"] for e in entities],
                "merchant_id": [e["merchant_id"] for e in entities],
                "event_timestamp": pa.array([at] * len(entities), pa.timestamp("us", tz="UTC")),
                "amount": [50.0] * len(entities),
            }
        )
        history = get_historical_features(cfg, defs, service, frame).to_pylist()
        for entity, h in zip(entities, history, strict=True):
            card = [r for r in rows if r["card_id"] == entity["card_id"]]
            merchant = [r for r in rows if r["merchant_id"] == entity["merchant_id"]]
            trimmed = any(  # an event older than the view's longest window before its latest
                r["event_time"] <= max(x["event_time"] for x in group) - window
                for group, window in ((card, timedelta(days=1)), (merchant, timedelta(hours=1)))
                for r in group
            )
            newer_row = any(r["event_time"] > at for r in card)
            request = [{"amount": 50.0}] if service == "test_v1" else None
            try:
                got = get_online_features(
                    cfg, defs, service, [entity], request_rows=request, at=at
                ).to_dicts()[0]
            except OnlineRangeError as refused:
                where = f"{service}, {entity} at {at} (latest event {latest})"
                assert trimmed or (service == "test_v1" and newer_row), f"{where}: {refused}"
                assert "materialize with --end" in str(refused)
                continue
            assert not (service == "test_v1" and newer_row), f"{entity} at {at} was answered"
            assert_matches(got, {k: h[k] for k in got}, f"history, {service} {entity} at {at}")
            want = reference(defs, service, rows, entity, at, {"amount": 50.0})
            assert_matches(got, want, f"reference, {service} {entity} at {at}")


OFFSETS = st.sampled_from([0, 5, 10, 55, 60, 119, 120, 121, 24 * 60, 24 * 60 + 5])
BEFORE = st.sampled_from([1, 5, 10, 30, 60, 61, 24 * 60 - 5, 24 * 60, 24 * 60 + 30])
"""Minutes before the latest event at which the state is read a second time."""
PROPERTY = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _event(batch: int, amount: float, minute: int = 30) -> dict[str, Any]:
    return {
        "card": CARDS[0],
        "merchant": MERCHANTS[0],
        "minute": minute,
        "amount": amount,
        "device": "dev_1",
        "country": "US" if batch else "FR",
        "batch": batch,
        "day": 0,
        "tie": None,
    }


# A later batch holds the smaller key at the same event time (the row ingested last wins);
# then batches ingested out of commit order (ingest time decides, not the order of files).
_ACROSS = [_event(0, 1.5), _event(1, 99.99)]
_OUT_OF_ORDER = [_event(0, 1.5, 0), _event(1, 99.99, 0), _event(2, 10.0, 0)]


def _hours(*hours: int) -> list[timedelta]:
    return [timedelta(hours=h) for h in hours]


EXAMPLES = [
    example(
        drawn=_ACROSS, ids=[9, 3], ingest_after=_hours(0, 1, 2), incremental=inc, offset=0, before=1
    )
    for inc in (False, True)
] + [
    example(
        drawn=_OUT_OF_ORDER,
        ids=[3, 9, 5],
        ingest_after=_hours(2, 0, 1),
        incremental=inc,
        offset=5,
        before=60,
    )
    for inc in (False, True)
]


def _examples(test: Any) -> Any:
    for e in reversed(EXAMPLES):
        test = e.via("ties across batches")(test)
    return test


@pytest.mark.slow
@_examples
@PROPERTY
@given(
    drawn=events,
    ids=st.permutations(list(range(1, 21))),
    ingest_after=INGEST_AFTER,
    incremental=st.booleans(),
    offset=OFFSETS,
    before=BEFORE,
)
def test_online_equals_point_in_time_sqlite(
    tmp_path_factory: pytest.TempPathFactory,
    drawn: list[dict[str, Any]],
    ids: list[int],
    ingest_after: list[timedelta],
    incremental: bool,
    offset: int,
    before: int,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    _property(tmp, False, drawn, ingest_after, incremental, offset, before, ids)


@pytest.mark.redis
@pytest.mark.slow
@_examples
@PROPERTY
@given(
    drawn=events,
    ids=st.permutations(list(range(1, 21))),
    ingest_after=INGEST_AFTER,
    incremental=st.booleans(),
    offset=OFFSETS,
    before=BEFORE,
)
def test_online_equals_point_in_time_redis(
    tmp_path_factory: pytest.TempPathFactory,
    drawn: list[dict[str, Any]],
    ids: list[int],
    ingest_after: list[timedelta],
    incremental: bool,
    offset: int,
    before: int,
) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    _property(tmp, True, drawn, ingest_after, incremental, offset, before, ids)
