"""Entity rows for a training set: the keys, time and request fields a service needs, taken
from a source's events.

    table = entity_rows(cfg, defs, "fraud_v1", end=parse_utc("2026-01-25"), limit=10_000)
    write_entity_rows(table, Path("entities.parquet"))   # .parquet or .csv

`backline features history --entities FILE` takes any table of join keys, an `event_timestamp`
and the request fields of the service's on-demand features. Most of the time those rows are
events a source already holds (every transaction, scored at its own time), which is what this
module selects, so nobody has to write the SQL by hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from backline.core.config import Config
from backline.core.errors import InvalidArgument, SchemaError
from backline.core.files import atomic_path
from backline.data.offline_store import OfflineStore
from backline.features.definitions import Definitions
from backline.features.history import DEFAULT_TIMESTAMP
from backline.features.repository import resolve_service


@dataclass(frozen=True)
class EntityColumns:
    """Which columns of a source make the entity rows of a service."""

    source: str
    join_keys: tuple[str, ...]
    request_fields: tuple[str, ...]
    event_time: str
    """The source's event-time column, written as `event_timestamp`."""


def entity_columns(
    cfg: Config, defs: Definitions, service: str, source: str | None = None
) -> EntityColumns:
    """The columns of `source` (default train.entity_source) that `service` needs; a clear
    error when the source lacks one."""
    plan = resolve_service(defs, service)
    spec = cfg.source(source or cfg.train.entity_source)
    keys = tuple(dict.fromkeys(k for v, _ in plan.views for k in defs.view(v).join_keys))
    fields = tuple(plan.request_fields)
    for column, why in [(k, "a join key of its views") for k in keys] + [
        (f, "a request field of its on-demand features") for f in fields
    ]:
        if column not in spec.column_names:
            raise SchemaError(
                f"service {service!r} needs {column!r} ({why}), but source {spec.name!r} has no "
                f"such column (it has {', '.join(spec.column_names)}). Pass --source with a "
                "source that has it."
            )
    return EntityColumns(spec.name, keys, fields, spec.event_time)


def entity_rows(
    cfg: Config,
    defs: Definitions,
    service: str,
    *,
    source: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int | None = None,
) -> pa.Table:
    """One row per event of `source` with event time in [start, end): the service's join keys,
    `event_timestamp` and request fields, oldest first. Rows with a null key or time are left
    out (no feature can be joined to them). `limit` keeps the first N."""
    cols = entity_columns(cfg, defs, service, source)
    if start is not None and end is not None and start >= end:
        raise InvalidArgument(f"--start {start.isoformat()} is not before --end {end.isoformat()}.")
    if limit is not None and limit <= 0:
        raise InvalidArgument(f"--limit must be positive, got {limit}.")
    store = OfflineStore.open(cfg)
    con = store.connect_duckdb([cfg.source(cols.source)])
    try:
        where = [f'"{c}" IS NOT NULL' for c in (*cols.join_keys, cols.event_time)]
        params: list[object] = []
        if start is not None:
            where.append(f'"{cols.event_time}" >= ?')
            params.append(start)
        if end is not None:
            where.append(f'"{cols.event_time}" < ?')
            params.append(end)
        select = ", ".join(
            [f'"{k}"' for k in cols.join_keys]
            + [f'"{cols.event_time}" AS {DEFAULT_TIMESTAMP}']
            + [f'"{f}"' for f in cols.request_fields if f not in cols.join_keys]
        )
        spec = cfg.source(cols.source)
        order = ", ".join(f'"{c}"' for c in (cols.event_time, *spec.primary_key))
        query = f'SELECT {select} FROM "{cols.source}" WHERE {" AND ".join(where)} ORDER BY {order}'
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        table: pa.Table = con.execute(query, params).to_arrow_table()
    finally:
        con.close()
    if table.num_rows == 0:
        span = f" between {start or 'the start'} and {end or 'the end'}" if start or end else ""
        raise SchemaError(
            f"source {cols.source!r} holds no events{span}. Ingest some first "
            f"(backline ingest {cols.source} PATH), or widen --start/--end."
        )
    return table


def write_entity_rows(table: pa.Table, out: Path) -> None:
    """Write `table` to `out`, Parquet or CSV by its extension, through a temporary file so a
    failed write leaves nothing half-written."""
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise InvalidArgument(f"--out {out} must end in .parquet or .csv.")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:
        if suffix == ".parquet":
            pq.write_table(table, partial)
        else:
            pacsv.write_csv(table, partial)
