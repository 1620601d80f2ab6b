"""Online reads: exact values at hand-computed times, statuses, types, errors, one round trip.

Every test runs on the embedded SQLite store and on the real Redis (db 15, a key prefix of its
own, deleted afterwards).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from backline.core.config import Config
from backline.core.errors import NotFoundError, SchemaError, StoreError, UsageError
from backline.core.hashing import hash_values
from backline.features.definitions import Definitions
from backline.features.materialize import materialize
from backline.features.online import ReadPlan, get_online_features, open_online_store
from backline.features.repository import load_definitions, require_applied
from tests.features.online_support import (
    T0,
    assert_matches,
    cleaned,
    ingest_rows,
    make_project,
    minutes,
    reference,
    tx,
)

STORES = [pytest.param(False, id="sqlite"), pytest.param(True, id="redis", marks=pytest.mark.redis)]
CARD, OTHER, UNKNOWN = "card_0000001", "card_0000002", "card_0009999"


def _rows() -> list[dict[str, Any]]:
    """Card 1's history around T0; the window edges fall exactly on events."""
    return [
        tx(CARD, T0 - minutes(60), 100.0, device="dev_1", country="US"),  # exactly T0 - 1h
        tx(CARD, T0 - minutes(50), 20.0, device=None, country="FR"),
        tx(CARD, T0 - minutes(10), 30.0, device="dev_2", country="US"),  # exactly T0 - 10m
        tx(CARD, T0 - minutes(5), 40.0, device="dev_1", country="US"),
        tx(CARD, T0, 50.0, device="dev_2", country="DE"),  # exactly T0
        tx(OTHER, T0 - minutes(3), 7.5, merchant="m_000002"),
    ]


@pytest.fixture(params=STORES)
def loaded(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Config, Definitions, list[dict[str, Any]]]]:
    cfg, defs = make_project(tmp_path / "p", redis=request.param)
    rows = _rows()
    with cleaned(cfg):
        ingest_rows(cfg, rows)
        materialize(cfg, defs)
        yield cfg, defs, rows


def _read(
    cfg: Config, defs: Definitions, at: datetime, card: str = CARD, amount: float = 70.0
) -> dict[str, Any]:
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [{"card_id": card, "merchant_id": "m_000001"}],
        request_rows=[{"amount": amount}],
        at=at,
    )
    return out.to_dicts()[0]


def test_every_aggregate_at_t0_with_window_edges(loaded: Any) -> None:
    cfg, defs, rows = loaded
    got = _read(cfg, defs, T0)
    want = {
        "n_10m": 2,  # T0 - 10m is out, T0 is in
        "n_1h": 4,  # T0 - 1h is out
        "devices_seen_1h": 3,  # the null device is not counted
        "sum_1h": 140.0,
        "mean_1h": 35.0,
        "min_1h": 20.0,
        "max_10m": 50.0,
        "std_1h": math.sqrt(500 / 3),
        "distinct_devices_1h": 2,
        "distinct_countries_1d": 3,
        "last_country": "DE",
        "last_amount": 50.0,
        "last_device": "dev_2",
        "last_seen": T0,
        "m_n_1h": 4,
        "m_sum_1h": 140.0,
        "amount_ratio": 2.0,
    }
    assert_matches(got, want)
    assert_matches(got, reference(defs, "test_v1", rows, got, T0, {"amount": 70.0}))


def test_windows_slide_with_the_read_time(loaded: Any) -> None:
    cfg, defs, rows = loaded
    got = _read(cfg, defs, T0 + minutes(10))
    assert_matches(
        got,
        {
            "n_10m": 0,
            "n_1h": 3,  # T0 - 50m is now exactly on the edge: out
            "sum_1h": 120.0,
            "min_1h": 30.0,
            "max_10m": None,
            "std_1h": 10.0,
            "distinct_devices_1h": 2,
            "last_country": "DE",
        },
    )
    for at in (T0 + minutes(1), T0 + minutes(59), T0 + minutes(61), T0 + timedelta(days=1)):
        entity = {"card_id": CARD, "merchant_id": "m_000001"}
        assert_matches(
            _read(cfg, defs, at),
            reference(defs, "test_v1", rows, entity, at, {"amount": 70.0}),
            str(at),
        )


def test_single_row_stddev_is_null_and_empty_windows_are_zero_or_null(loaded: Any) -> None:
    cfg, defs, _ = loaded
    got = _read(cfg, defs, T0 + minutes(2), card=OTHER)
    assert got["n_1h"] == 1 and got["std_1h"] is None and got["mean_1h"] == 7.5
    later = _read(cfg, defs, T0 + timedelta(days=2), card=OTHER)
    assert later["n_1h"] == 0 and later["distinct_devices_1h"] == 0
    assert later["sum_1h"] is None and later["std_1h"] is None and later["amount_ratio"] is None


def test_ttl_expiry_has_a_status_and_an_age(loaded: Any) -> None:
    cfg, defs, _ = loaded
    at_edge = T0 + timedelta(hours=2)  # exactly ttl old: still served
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [{"card_id": CARD, "merchant_id": "m_000001"}],
        at=at_edge,
        request_rows=[{"amount": 1.0}],
    )
    assert out.column("last_country") == ["DE"]
    assert out.status("last_country") == ["ok"] and out.age("last_country") == [7200.0]
    late = at_edge + timedelta(seconds=1)
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [{"card_id": CARD, "merchant_id": "m_000001"}],
        at=late,
        request_rows=[{"amount": 1.0}],
    )
    assert out.column("last_country") == [None] and out.column("last_seen") == [None]
    assert out.status("last_country") == ["expired"] and out.age("last_country") == [7201.0]
    assert out.status("n_1h") == ["ok"] and out.column("n_1h") == [0]


def test_missing_entities_give_zero_counts_and_nulls(loaded: Any) -> None:
    cfg, defs, _ = loaded
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [
            {"card_id": UNKNOWN, "merchant_id": "m_000001"},
            {"card_id": None, "merchant_id": "m_404"},
        ],
        request_rows=[{"amount": 5.0}, {"amount": 5.0}],
        at=T0,
    )
    first, second = out.to_dicts()
    assert first["n_10m"] == 0 and first["distinct_devices_1h"] == 0
    assert first["sum_1h"] is None and first["last_country"] is None
    assert first["m_n_1h"] == 4  # the merchant is known
    assert first["amount_ratio"] is None
    statuses = dict(zip(out.columns, out.statuses[0], strict=True))
    assert statuses["n_10m"] == "missing" and statuses["last_country"] == "missing"
    assert statuses["m_n_1h"] == "ok" and statuses["amount_ratio"] == "missing"
    assert second["m_n_1h"] == 0 and set(out.statuses[1]) == {"missing"}


def test_values_are_typed(loaded: Any) -> None:
    cfg, defs, _ = loaded
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [{"card_id": CARD, "merchant_id": "m_000001"}],
        request_rows=[{"amount": 70}],
        at=T0,
    )
    row = out.to_dicts()[0]
    assert type(row["n_10m"]) is int and type(row["distinct_countries_1d"]) is int
    assert type(row["sum_1h"]) is float and type(row["amount_ratio"]) is float
    assert type(row["last_country"]) is str
    assert row["last_seen"] == T0 and row["last_seen"].tzinfo is not None
    assert list(row)[:2] == ["card_id", "merchant_id"]
    assert out.columns == tuple(list(row)[2:])
    arrow = out.to_arrow()
    assert arrow.schema.field("n_10m").type == pa.int64()
    assert arrow.schema.field("sum_1h").type == pa.float64()
    assert arrow.schema.field("last_seen").type == pa.timestamp("us", tz="UTC")
    assert arrow.column("last_seen").to_pylist() == [T0]


def test_many_entities_in_input_order_with_duplicates(loaded: Any) -> None:
    cfg, defs, rows = loaded
    cards = [CARD, UNKNOWN, OTHER, CARD]
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [{"card_id": c, "merchant_id": "m_000002"} for c in cards],
        request_rows=[{"amount": 10.0}] * 4,
        at=T0,
    )
    assert [d["card_id"] for d in out.to_dicts()] == cards
    for d in out.to_dicts():
        assert_matches(d, reference(defs, "test_v1", rows, d, T0, {"amount": 10.0}), d["card_id"])
    assert len(out) == 4 and out.values[0] == out.values[3]


def test_on_demand_runs_the_same_function_with_nan_for_missing(loaded: Any) -> None:
    cfg, defs, _ = loaded
    out = get_online_features(
        cfg,
        defs,
        "test_v1",
        [{"card_id": CARD, "merchant_id": "m_000001"}] * 2,
        request_rows=[{"amount": 35.0}, {"amount": None}],
        at=T0,
    )
    assert out.column("amount_ratio") == [1.0, None]
    # request fields may also travel in the entity rows
    out = get_online_features(
        cfg, defs, "test_v1", [{"card_id": CARD, "merchant_id": "m_000001", "amount": 17.5}], at=T0
    )
    assert out.column("amount_ratio") == [0.5]


def test_fraud_example_service_reads_every_feature(
    tmp_path: Path, project: Path, cfg: Config
) -> None:
    defs = load_definitions(cfg)
    from backline.features.repository import apply

    apply(cfg, defs)
    rows = [
        tx("card_0000001", T0 - minutes(30), 10.0),
        tx("card_0000001", T0 - minutes(1), 30.0, country="FR", device="dev_9"),
    ]
    ingest_rows(cfg, rows)
    materialize(cfg, defs)
    entity = {"card_id": "card_0000001", "merchant_id": "m_000001"}
    out = get_online_features(
        cfg, defs, "fraud_v1", [entity], request_rows=[{"amount": 40.0}], at=T0
    )
    got = out.to_dicts()[0]
    assert len(out.columns) == 20
    assert_matches(got, reference(defs, "fraud_v1", rows, entity, T0, {"amount": 40.0}))
    assert got["count_10m"] == 1 and got["amount_sum_1h"] == 40.0 and got["last_country"] == "FR"
    assert got["amount_to_mean_30d"] == 2.0


def test_clear_empties_the_store_and_materializing_again_refills_it(loaded: Any) -> None:
    cfg, defs, rows = loaded
    versions = require_applied(cfg, defs, list(defs.views))
    entity = {"card_id": CARD, "merchant_id": "m_000001"}
    with open_online_store(cfg) as store:
        assert all(store.entity_keys(v, ver) for v, ver in versions.items())
        assert all(store.applied_batches(v, ver) for v, ver in versions.items())
        store.clear()
        assert all(not store.entity_keys(v, ver) for v, ver in versions.items())
        assert all(not store.applied_batches(v, ver) for v, ver in versions.items())
    out = get_online_features(
        cfg, defs, "test_v1", [entity], request_rows=[{"amount": 70.0}], at=T0
    )
    assert set(out.statuses[0]) == {"missing"}
    assert out.column("n_1h") == [0] and out.column("last_country") == [None]
    # the watermark went too: an incremental run reads every batch again
    assert [v.batches for v in materialize(cfg, defs, incremental=True).views] == [1, 1, 1]
    assert_matches(
        _read(cfg, defs, T0), reference(defs, "test_v1", rows, entity, T0, {"amount": 70.0})
    )


def test_the_result_carries_its_read_time_in_utc(loaded: Any) -> None:
    cfg, defs, _ = loaded
    entity = [{"card_id": CARD, "merchant_id": "m_000001"}]
    amount = [{"amount": 1.0}]
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    out = get_online_features(cfg, defs, "test_v1", entity, request_rows=amount, at=plus_two)
    assert out.at == T0 and out.at.utcoffset() == timedelta(0)
    before = datetime.now(UTC)
    now = get_online_features(cfg, defs, "test_v1", entity, request_rows=amount)
    after = datetime.now(UTC)
    assert now.at.tzinfo is not None and before <= now.at <= after


# -- errors -----------------------------------------------------------------------------------


def test_clear_errors(loaded: Any) -> None:
    cfg, defs, _ = loaded
    entity = [{"card_id": CARD, "merchant_id": "m_000001"}]
    with pytest.raises(NotFoundError, match=r"test_v2.*Did you mean 'test_v1'"):
        get_online_features(cfg, defs, "test_v2", entity, at=T0)
    with pytest.raises(UsageError, match="entity row 0 has no 'merchant_id'"):
        get_online_features(
            cfg, defs, "test_v1", [{"card_id": CARD}], request_rows=[{"amount": 1}], at=T0
        )
    with pytest.raises(UsageError, match="not a datetime with a time zone"):
        get_online_features(
            cfg, defs, "test_v1", entity, request_rows=[{"amount": 1}], at=datetime(2026, 1, 1)
        )
    with pytest.raises(UsageError, match="request row 0 has no 'amount'"):
        get_online_features(cfg, defs, "test_v1", entity, request_rows=[{}], at=T0)
    with pytest.raises(UsageError, match="request_rows has 2 rows but entity_rows has 1"):
        get_online_features(cfg, defs, "test_v1", entity, request_rows=[{}, {}], at=T0)
    with pytest.raises(SchemaError, match="take numbers"):
        get_online_features(cfg, defs, "test_v1", entity, request_rows=[{"amount": "12"}], at=T0)
    with pytest.raises(SchemaError, match="pass join keys as str, int or bool"):
        get_online_features(
            cfg,
            defs,
            "test_v1",
            [{"card_id": 1.5, "merchant_id": "m"}],
            request_rows=[{"amount": 1}],
            at=T0,
        )


def test_unknown_keys_and_fields_are_named_with_a_suggestion(loaded: Any) -> None:
    """A typo in a join key or a request field must not be ignored (it would read another
    entity, or NaN, silently)."""
    cfg, defs, _ = loaded
    entity = {"card_id": CARD, "merchant_id": "m_000001"}
    amount = [{"amount": 1.0}]
    with pytest.raises(
        UsageError,
        match=r"key 'card_idd', which service 'test_v1' does not use\. Did you mean 'card_id'\? "
        r"Its join keys: card_id, merchant_id; its request fields: amount\.",
    ):
        get_online_features(
            cfg, defs, "test_v1", [{**entity, "card_idd": OTHER}], request_rows=amount, at=T0
        )
    with pytest.raises(UsageError, match=r"field 'amout'.*Did you mean 'amount'\?"):
        get_online_features(
            cfg, defs, "test_v1", [entity], request_rows=[{"amount": 1.0, "amout": 2}], at=T0
        )
    with pytest.raises(UsageError, match=r"request field 'amount' among its join keys.*--request"):
        get_online_features(
            cfg, defs, "test_v1", [{**entity, "amount": 1.0}], request_rows=[{}], at=T0
        )
    with pytest.raises(UsageError, match=r"join key 'card_id'.*without --request"):
        get_online_features(
            cfg, defs, "test_v1", [entity], request_rows=[{"amount": 1.0, "card_id": CARD}], at=T0
        )
    with pytest.raises(UsageError, match=r"entity row 0 has no 'card_id'.*card_id, merchant_id"):
        get_online_features(
            cfg, defs, "test_v1", [{"merchant_id": "m_000001"}], request_rows=amount, at=T0
        )
    with pytest.raises(UsageError, match=r"--request amount=VALUE") as missing:
        get_online_features(cfg, defs, "test_v1", [entity], request_rows=[{}], at=T0)
    assert "request_rows" not in str(missing.value)
    # without request_rows, request fields ride in the entity rows; still no unknown key
    got = get_online_features(cfg, defs, "test_v1", [{**entity, "amount": 70.0}], at=T0)
    assert got.status(0, "amount_ratio") == "ok"
    with pytest.raises(UsageError, match=r"'amont'.*Did you mean 'amount'"):
        get_online_features(cfg, defs, "test_v1", [{**entity, "amont": 70.0}], at=T0)


def test_unapplied_definitions_are_refused(tmp_path: Path) -> None:
    cfg, _ = make_project(tmp_path / "p")
    features = cfg.root / "features.py"
    features.write_text(
        features.read_text().replace('window="10m", name="n_10m"', 'window="15m", name="n_10m"')
    )
    defs = load_definitions(cfg)
    with pytest.raises(SchemaError, match=r"'card_stats' .* not applied"):
        get_online_features(cfg, defs, "test_v1", [{"card_id": CARD, "merchant_id": "m"}], at=T0)


def test_unreachable_redis_is_a_store_error_naming_the_fix(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p")
    from backline.core.config import load_config

    down = load_config(cfg.root, env={"BACKLINE_ONLINE_URI": "redis://127.0.0.1:1/0"})
    with pytest.raises(
        StoreError, match=r"redis://127.0.0.1:1/0.*not answering.*BACKLINE_ONLINE_URI"
    ):
        open_online_store(down)
    with pytest.raises(StoreError, match="BACKLINE_ONLINE_URI"):
        get_online_features(down, defs, "test_v1", [{"card_id": CARD, "merchant_id": "m"}], at=T0)


def test_an_online_uri_under_a_file_is_a_store_error_naming_the_fix(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p")
    from backline.core.config import load_config

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uri = f"sqlite:///{blocker}/online.db"
    blocked = load_config(cfg.root, env={"BACKLINE_ONLINE_URI": uri})
    fix = r"cannot create .*a-file.*Point online\.uri \(or BACKLINE_ONLINE_URI\) at a folder"
    with pytest.raises(
        StoreError, match=rf"^online\.uri = '{re.escape(uri)}': {fix} you can write\.$"
    ):
        open_online_store(blocked)
    with pytest.raises(StoreError, match=fix):
        get_online_features(
            blocked, defs, "test_v1", [{"card_id": CARD, "merchant_id": "m"}], at=T0
        )


# -- one round trip ---------------------------------------------------------------------------


def test_sqlite_read_is_one_statement(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p")
    ingest_rows(cfg, _rows())
    materialize(cfg, defs)
    entities = [{"card_id": c, "merchant_id": "m_000001"} for c in (CARD, OTHER, UNKNOWN)]
    with open_online_store(cfg) as store:  # held open, with the plan, as a server holds them
        plan = ReadPlan(cfg, defs, "test_v1")
        kwargs: dict[str, Any] = {"at": T0, "store": store, "plan": plan}
        get_online_features(
            cfg, defs, "test_v1", entities, request_rows=[{"amount": 1}] * 3, **kwargs
        )
        statements: list[str] = []
        store._con().set_trace_callback(statements.append)  # type: ignore[attr-defined]
        try:
            out = get_online_features(
                cfg, defs, "test_v1", entities, request_rows=[{"amount": 1}] * 3, **kwargs
            )
        finally:
            store._con().set_trace_callback(None)  # type: ignore[attr-defined]
    assert len(statements) == 1 and statements[0].startswith("SELECT"), statements
    assert out.column("n_1h") == [4, 1, 0]


@pytest.mark.redis
def test_redis_read_is_one_mget(tmp_path: Path) -> None:
    cfg, defs = make_project(tmp_path / "p", redis=True)
    with cleaned(cfg), open_online_store(cfg) as store:
        ingest_rows(cfg, _rows())
        materialize(cfg, defs)
        entities = [{"card_id": c, "merchant_id": "m_000001"} for c in (CARD, OTHER, UNKNOWN)]
        plan = ReadPlan(cfg, defs, "test_v1")
        kwargs: dict[str, Any] = {"at": T0, "store": store, "plan": plan}
        get_online_features(
            cfg, defs, "test_v1", entities, request_rows=[{"amount": 1}] * 3, **kwargs
        )
        client = store.client  # type: ignore[attr-defined]

        def calls() -> dict[str, int]:
            stats = client.info("commandstats")
            return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}

        before = calls()
        out = get_online_features(
            cfg, defs, "test_v1", entities, request_rows=[{"amount": 1}] * 3, **kwargs
        )
        after = calls()
        changed = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        assert changed == {"cmdstat_mget": 1}, changed
        assert out.column("n_1h") == [4, 1, 0]


# -- the codec --------------------------------------------------------------------------------


def test_value_hashes_are_stable_and_distinguish_values() -> None:
    values = pa.array(["a", "b", "ab", "ba", "", None, "é", "x" * 300, "x" * 299 + "y"])
    hashed = hash_values(values, "string")
    assert hashed[5] == 0 and len(set(hashed.tolist())) == len(values)
    assert (hash_values(values, "string", repeated=True) == hashed).all()
    ints = hash_values(pa.array([1, 2, None, 1]), "int64")
    assert ints[0] == ints[3] and ints[2] == 0 and ints[0] != ints[1]
    # pinned: stored hashes are compared with later runs' hashes, so they must never change
    assert int(hash_values(pa.array(["card_0000001"]), "string")[0]) == 8050357487719795827
    assert int(hash_values(pa.array(["x" * 300]), "string")[0]) == 12454906083609682020
    assert int(hash_values(pa.array([42]), "int64")[0]) == 11809445795878985862
