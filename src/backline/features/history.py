"""Point-in-time training sets: every feature as it was known at each entity row's time.

    table = get_historical_features(cfg, defs, "fraud_v1", entities)   # Arrow in, Arrow out
    write_historical_features(cfg, defs, "fraud_v1", Path("entities.parquet"), Path("train.parquet"))

Rows come back in input order with the input columns first, then the service's features. The
file-to-file form streams through the engine and a Parquet writer, so ten million entity rows
never sit in memory at once; DuckDB spills past `features.memory_limit`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backline.core.config import Config, SourceSpec
from backline.core.errors import SchemaError
from backline.core.files import atomic_path
from backline.data.offline_store import OfflineStore
from backline.features.compile import ROW, TIME, event_bounds, view_sql
from backline.features.definitions import Definitions, FeatureView
from backline.features.engines import Engine, StagingEngine, open_engine
from backline.features.repository import ServicePlan, require_applied, resolve_service

DEFAULT_TIMESTAMP = "event_timestamp"
# (view, features, source spec, event bounds in µs, events relation)
_ViewJob = tuple[FeatureView, tuple[str, ...], SourceSpec, tuple[int | None, int], str]


def get_historical_features(
    cfg: Config,
    defs: Definitions,
    service: str,
    entities: pa.Table,
    *,
    timestamp_column: str = DEFAULT_TIMESTAMP,
    engine: str | None = None,
) -> pa.Table:
    """The entity rows with every feature of `service` as of each row's timestamp."""
    batches = list(_run(cfg, defs, service, entities, timestamp_column, engine))
    if not batches:
        raise SchemaError("no entity rows were given; pass at least one (keys, timestamp) row.")
    table = pa.Table.from_batches(batches)
    # __row is 0..n-1: put each row in its place with one take, no sort
    rows = table.column(ROW).to_numpy()
    order = np.empty(len(rows), dtype=np.int64)
    order[rows] = np.arange(len(rows), dtype=np.int64)
    return table.drop_columns([ROW]).take(order)


def write_historical_features(
    cfg: Config,
    defs: Definitions,
    service: str,
    entities: Path,
    out: Path,
    *,
    timestamp_column: str = DEFAULT_TIMESTAMP,
    engine: str | None = None,
) -> int:
    """Stream a training set from an entities file (.parquet or .csv) into a Parquet file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with atomic_path(out) as partial:
        writer: pq.ParquetWriter | None = None
        try:
            for batch in _run(cfg, defs, service, entities, timestamp_column, engine, ordered=True):
                batch = batch.drop_columns([ROW]) if ROW in batch.schema.names else batch
                if writer is None:
                    writer = pq.ParquetWriter(partial, batch.schema)
                writer.write_batch(batch)
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise SchemaError(f"{entities} holds no entity rows.")
    return rows


def _run(
    cfg: Config,
    defs: Definitions,
    service: str,
    entities: pa.Table | Path,
    timestamp_column: str,
    engine_name: str | None,
    *,
    ordered: bool = False,
) -> Iterator[pa.RecordBatch]:
    plan = resolve_service(defs, service)
    require_applied(cfg, defs, [v for v, _ in plan.views])
    if isinstance(entities, pa.Table):
        _check_entity_table(entities, timestamp_column)
    store = OfflineStore.open(cfg)
    engine = open_engine(cfg, engine_name)
    try:
        relation, n, t_min, t_max = engine.entities(entities, timestamp_column)
        columns = [c for c in getattr(engine, "columns", []) if c not in (ROW, TIME)]
        _check_entity_columns(defs, plan, columns)
        if n == 0:
            return
        views = []
        for view_name, features in plan.views:
            view = defs.view(view_name)
            spec = cfg.source(view.source)
            bounds = event_bounds(view, t_min, t_max)
            events = engine.source(spec, store.files("data", spec.name), bounds)
            views.append((view, features, spec, bounds, events))
        if isinstance(engine, StagingEngine) and engine.needs_staging(n, [v[4] for v in views]):
            batches = _staged(engine, views, relation, n)
        else:
            batches = _one_query(engine, views, relation, columns, ordered)
        for batch in batches:
            yield _finish(batch, defs, plan, columns)
    finally:
        engine.close()


def _one_query(
    engine: Engine, views: list[_ViewJob], relation: str, columns: list[str], ordered: bool
) -> Iterator[pa.RecordBatch]:
    """Every view joined to the entity rows in one query (engines that spill on their own)."""
    q = engine.dialect.quote
    joins: list[str] = []
    outputs: list[str] = []
    for i, (view, features, spec, bounds, events) in enumerate(views):
        sql = view_sql(
            engine.dialect,
            view,
            features,
            spec,
            entities=relation,
            events=events,
            event_bounds=bounds,
        )
        joins.append(f"LEFT JOIN ({sql}) __v{i} ON __e.{ROW} = __v{i}.{ROW}")
        outputs.extend(f"__v{i}.{q(f)}" for f in features)
    inputs = ", ".join(f"__e.{q(c)}" for c in columns)
    query = (
        f"SELECT {inputs}, __e.{ROW}, {', '.join(outputs)} FROM {relation} __e "
        + " ".join(joins)
        + (f" ORDER BY __e.{ROW}" if ordered else "")
    )
    yield from engine.execute(query)


def _staged(
    engine: StagingEngine, views: list[_ViewJob], relation: str, n: int
) -> Iterator[pa.RecordBatch]:
    """Bounded memory: each view in key buckets, staged to Parquet sorted by row, then zipped.

    A window needs all of one key's rows at once, so rows are split by a hash of the view's
    join keys: every bucket is complete for its keys. Each view's staged result has exactly
    one row per entity row, sorted by `__row`, so the final step only zips the streams.
    """
    staged: list[Path] = []
    for i, (view, features, spec, bounds, events) in enumerate(views):
        buckets = engine.bucket_count(n + engine.count_rows(events, spec, bounds))
        parts = []
        for b in range(buckets):
            where = engine.bucket_filter(view.join_keys, b, buckets)
            sql = view_sql(
                engine.dialect,
                view,
                features,
                spec,
                entities=f"(SELECT * FROM {relation}{where})",
                events=f"(SELECT * FROM {events}{where})",
                event_bounds=bounds,
            )
            parts.append(engine.stage(sql, f"view{i}_part{b}"))
        staged.append(engine.stage_sorted(parts, f"view{i}", ROW))
    streams = [_BatchStream(engine.stream(path)) for path in staged]
    for batch in engine.stream_entities():
        arrays = {name: batch.column(name) for name in batch.schema.names}
        for stream in streams:
            part = stream.take(batch.num_rows)
            if not part.column(ROW).equals(batch.column(ROW)):
                raise AssertionError("staged feature rows are out of step with the entity rows")
            for name in part.schema.names:
                if name != ROW:
                    arrays[name] = part.column(name)
        yield pa.RecordBatch.from_arrays(list(arrays.values()), names=list(arrays))


class _BatchStream:
    """Re-chunks an iterator of record batches into pieces of requested sizes."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._pending: list[pa.RecordBatch] = []
        self._available = 0

    def take(self, rows: int) -> pa.RecordBatch:
        while self._available < rows:
            nxt = next(self._batches)
            self._pending.append(nxt)
            self._available += nxt.num_rows
        table = pa.Table.from_batches(self._pending)
        rest = table.slice(rows)
        self._pending = rest.to_batches()
        self._available = rest.num_rows
        return table.slice(0, rows).combine_chunks().to_batches()[0]


def _finish(
    batch: pa.RecordBatch, defs: Definitions, plan: ServicePlan, inputs: list[str]
) -> pa.RecordBatch:
    """Add on-demand features and keep the input columns, __row and the service's outputs."""
    columns = {name: batch.column(name) for name in batch.schema.names}
    for name in plan.on_demand:
        odf = defs.on_demand[name]
        args = {}
        for arg, ref in odf.inputs.items():
            source = ref.split(":")[1]
            args[arg] = _floats(columns[source])
        with np.errstate(all="ignore"):
            result = np.asarray(odf.function(**args), dtype=np.float64)
        columns[name] = pa.array(result, mask=~np.isfinite(result))
    keep = [*inputs, ROW, *(o for o in plan.outputs if o not in inputs)]
    return pa.RecordBatch.from_arrays([columns[k] for k in keep], names=keep)


def _floats(values: pa.Array) -> np.ndarray:
    return np.asarray(values.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _check_entity_table(table: pa.Table, timestamp_column: str) -> None:
    if timestamp_column not in table.column_names:
        raise SchemaError(
            f"entities have no timestamp column {timestamp_column!r} (columns: "
            f"{', '.join(table.column_names)}). Pass timestamp_column=NAME."
        )
    kind = table.schema.field(timestamp_column).type
    if not pa.types.is_timestamp(kind) or kind.tz is None:
        raise SchemaError(
            f"entity column {timestamp_column!r} is {kind}, not a timestamp with a timezone. "
            "Make it UTC-aware (e.g. pa.timestamp('us', tz='UTC')); backline never guesses a zone."
        )


def _check_entity_columns(defs: Definitions, plan: ServicePlan, columns: list[str]) -> None:
    for view_name, _ in plan.views:
        for key in defs.view(view_name).join_keys:
            if key not in columns:
                raise SchemaError(
                    f"entities lack join key {key!r}, which view {view_name!r} needs (columns: "
                    f"{', '.join(columns)}). Add it to the entities."
                )
    for field_name in plan.request_fields:
        if field_name not in columns:
            raise SchemaError(
                f"entities lack request field {field_name!r}, which on-demand features of "
                f"{plan.name!r} need. Add the column (e.g. the amount being scored)."
            )
