"""Shared by the online-store tests: a small feature set, row builders, and a brute-force
reference of the feature semantics (the definitions module docstring) written independently
of the implementation."""

from __future__ import annotations

import itertools
import math
import statistics
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backline.core.config import Config, load_config
from backline.core.workspace import init_project
from backline.data.generator import TRANSACTIONS_SCHEMA
from backline.data.ingest import IngestResult, ingest
from backline.features.definitions import Definitions
from backline.features.online import open_online_store
from backline.features.repository import apply, load_definitions, resolve_service
from tests.conftest import REDIS_URL

T0 = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
INGESTED = datetime(2026, 3, 1, tzinfo=UTC)

FEATURES = """
from backline.features import Aggregate, Entity, FeatureService, FeatureView, Field, OnDemandFeature

card = Entity("card", join_keys=["card_id"])
merchant = Entity("merchant", join_keys=["merchant_id"])

card_stats = FeatureView(
    "card_stats",
    entities=[card],
    source="transactions",
    aggregates=[
        Aggregate("count", window="10m", name="n_10m"),
        Aggregate("count", window="1h", name="n_1h"),
        Aggregate("count", "device_id", window="1h", name="devices_seen_1h"),
        Aggregate("sum", "amount", window="1h", name="sum_1h"),
        Aggregate("mean", "amount", window="1h", name="mean_1h"),
        Aggregate("min", "amount", window="1h", name="min_1h"),
        Aggregate("max", "amount", window="10m", name="max_10m"),
        Aggregate("stddev", "amount", window="1h", name="std_1h"),
        Aggregate("count_distinct", "device_id", window="1h", name="distinct_devices_1h"),
        Aggregate("count_distinct", "country", window="1d", name="distinct_countries_1d"),
    ],
)
card_last = FeatureView(
    "card_last",
    entities=[card],
    source="transactions",
    fields=[
        Field("country", name="last_country"),
        Field("amount", name="last_amount"),
        Field("device_id", name="last_device"),
        Field("event_time", name="last_seen"),
    ],
    ttl="2h",
)
merchant_stats = FeatureView(
    "merchant_stats",
    entities=[merchant],
    source="transactions",
    aggregates=[
        Aggregate("count", window="1h", name="m_n_1h"),
        Aggregate("sum", "amount", window="1h", name="m_sum_1h"),
    ],
)
amount_ratio = OnDemandFeature(
    "amount_ratio",
    inputs={"amount": "request:amount", "mean": "card_stats:mean_1h"},
    function=lambda amount, mean: amount / mean,
)
test_v1 = FeatureService("test_v1", [card_stats, card_last, merchant_stats, amount_ratio])
windows_v1 = FeatureService("windows_v1", [card_stats, merchant_stats])
"""

_counter = itertools.count(1)


def make_project(root: Path, redis: bool = False) -> tuple[Config, Definitions]:
    """A project with FEATURES applied; with `redis`, online state in the test Redis under a
    project name (key prefix) of its own."""
    project = init_project(root)
    (project / "features.py").write_text(FEATURES)
    env = {}
    if redis:
        env = {
            "BACKLINE_ONLINE_URI": REDIS_URL,
            "BACKLINE_PROJECT_NAME": f"test-{uuid.uuid4().hex[:12]}",
        }
    cfg = load_config(project, env=env)
    defs = load_definitions(cfg)
    apply(cfg, defs)
    return cfg, defs


@contextmanager
def cleaned(cfg: Config) -> Iterator[None]:
    """Delete the project's keys from Redis (or rows from SQLite) afterwards."""
    try:
        yield
    finally:
        with open_online_store(cfg) as store:
            store.clear()


def tx(
    card: str,
    at: datetime,
    amount: float | None = 10.0,
    *,
    merchant: str = "m_000001",
    country: str = "US",
    device: str | None = "dev_1",
    n: int | None = None,
) -> dict[str, Any]:
    number = next(_counter) if n is None else n
    return {
        "transaction_id": f"tx_{number:016x}",
        "card_id": card,
        "merchant_id": merchant,
        "merchant_category": "grocery",
        "amount": amount,
        "currency": "USD",
        "country": country,
        "channel": "pos",
        "device_id": device,
        "event_time": at,
    }


SCHEMA = TRANSACTIONS_SCHEMA  # the source the fraud example declares


def table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist([dict(r) for r in rows], schema=SCHEMA)


def ingest_rows(
    cfg: Config, rows: Sequence[dict[str, Any]], now: datetime = INGESTED
) -> IngestResult:
    """Ingest rows as one batch at `now`, and remember `now` as each row's ingest time."""
    folder = cfg.root / "data" / f"batch-{next(_counter)}"
    folder.mkdir(parents=True)
    path = folder / "rows.parquet"
    pq.write_table(table(rows), path)
    result = ingest(cfg, "transactions", path, now=now)
    assert result.rows_quarantined == 0, result.quarantine_reasons
    for r in rows:
        r["_ingested"] = now
    return result


# -- brute-force reference ------------------------------------------------------------------


def reference(
    defs: Definitions,
    service: str,
    rows: Sequence[Mapping[str, Any]],
    entity: Mapping[str, Any],
    at: datetime,
    request: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every output of `service` for one entity at `at`, by the definitions' semantics."""
    plan = resolve_service(defs, service)
    values: dict[str, Any] = {}
    for name, features in plan.views:
        view = defs.view(name)
        mine = [r for r in rows if all(r[k] == entity[k] for k in view.join_keys)]
        if view.is_aggregate:
            for agg in view.aggregates:
                if agg.feature not in features:
                    continue
                inside = [r for r in mine if at - agg.window_delta < r["event_time"] <= at]
                if agg.column is None:
                    values[agg.feature] = len(inside)
                    continue
                seen = [r[agg.column] for r in inside if r[agg.column] is not None]
                values[agg.feature] = _reduce(agg.function, seen)
        else:
            known = [r for r in mine if r["event_time"] <= at]
            best = max(
                known,
                key=lambda r: (r["event_time"], r["_ingested"], r["transaction_id"]),
                default=None,
            )
            ttl = view.ttl_delta
            fresh = best is not None and (ttl is None or best["event_time"] >= at - ttl)
            for f in view.fields:
                if f.feature in features:
                    values[f.feature] = best[f.column] if fresh and best else None
    for name in plan.on_demand:
        odf = defs.on_demand[name]
        args = {}
        for arg, ref in odf.inputs.items():
            head, _, tail = ref.partition(":")
            raw = (request or {}).get(tail) if head == "request" else values[tail]
            args[arg] = np.array([math.nan if raw is None else float(raw)])
        with np.errstate(all="ignore"):
            result = float(np.asarray(odf.function(**args), dtype=float)[0])
        values[name] = None if math.isnan(result) else result
    return {o: values[o] for o in plan.outputs}


def _reduce(function: str, seen: list[Any]) -> Any:
    if function == "count":
        return len(seen)
    if function == "count_distinct":
        return len(set(seen))
    if not seen:
        return None
    if function == "sum":
        return math.fsum(seen)
    if function == "mean":
        return math.fsum(seen) / len(seen)
    if function == "min":
        return min(seen)
    if function == "max":
        return max(seen)
    return statistics.stdev(seen) if len(seen) > 1 else None


def same(a: Any, b: Any) -> bool:
    """Equal, floats within a relative 1e-9 (absolute 1e-9 around zero)."""
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is None and b is None
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b) and type(a) is type(b)


def assert_matches(got: Mapping[str, Any], want: Mapping[str, Any], where: str = "") -> None:
    bad = {k: (got.get(k), want[k]) for k in want if not same(got.get(k), want[k])}
    assert not bad, f"{where} (got, want): {bad}"


def minutes(n: float) -> timedelta:
    return timedelta(minutes=n)
