"""Feature views compiled to SQL for point-in-time joins, in DuckDB's and Spark's dialects.

Both engines run the same plan, which is why they give the same training sets:

1. Entity rows (keys, a time T, a row number `__row`) and source events are stacked into one
   relation per view, ordered by entity key and time in microseconds.
2. A plain view takes, for each entity row, the last event in that order (events sort before
   entity rows at the same time, later ingestion after earlier, then the larger primary key
   compared in its own type, so 10 sorts after 9), as one struct so a null value is kept
   rather than skipped; a value older than the view's TTL becomes null.
3. An aggregate view evaluates each aggregate over a RANGE frame `(T - window, T]`, written as
   `window_us - 1 PRECEDING AND CURRENT ROW`; entity rows carry nulls, so they count for
   nothing.

No ASOF join is used: Spark has none, and one plan for both engines is worth more than the
small speed-up DuckDB's ASOF would give on plain views.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from backline.core.config import SourceSpec
from backline.features.definitions import Aggregate, FeatureView

ROW = "__row"
TIME = "__t"
KIND = "__kind"  # 0 = source event, 1 = entity row


@dataclass(frozen=True)
class Dialect:
    """The few places where DuckDB and Spark SQL differ."""

    name: str

    def epoch_us(self, expr: str) -> str:
        return f"epoch_us({expr})" if self.name == "duckdb" else f"unix_micros({expr})"

    def struct(self, fields: dict[str, str]) -> str:
        if self.name == "duckdb":
            return "struct_pack(" + ", ".join(f"{k} := {v}" for k, v in fields.items()) + ")"
        return "named_struct(" + ", ".join(f"'{k}', {v}" for k, v in fields.items()) + ")"

    def field(self, struct: str, name: str) -> str:
        return (
            f"struct_extract({struct}, '{name}')" if self.name == "duckdb" else f"{struct}.{name}"
        )

    def last_non_null(self, expr: str) -> str:
        return (
            f"last_value({expr} IGNORE NULLS)" if self.name == "duckdb" else f"last({expr}, true)"
        )

    def count_distinct(self, expr: str, over: str) -> str:
        # Spark has no DISTINCT window aggregate; the window must wrap collect_set, not size()
        if self.name == "duckdb":
            return f"count(DISTINCT {expr}) {over}"
        return f"CAST(size(collect_set({expr}) {over}) AS BIGINT)"

    def quote(self, name: str) -> str:
        return f'"{name}"' if self.name == "duckdb" else f"`{name}`"

    def sql_type(self, kind: str) -> str:
        if kind == "timestamp":
            return "TIMESTAMPTZ" if self.name == "duckdb" else "TIMESTAMP"
        return _SQL_TYPES[kind]


DUCKDB = Dialect("duckdb")
SPARK = Dialect("spark")

_SQL_TYPES = {
    "string": "STRING",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMP",
    "date": "DATE",
}


@dataclass(frozen=True)
class _Job:
    """One view's point-in-time query: what every plan below needs."""

    dialect: Dialect
    view: FeatureView
    features: tuple[str, ...]
    source: SourceSpec
    entities: str
    events: str
    t: str
    """The source's event time in µs, as SQL."""
    low: int | None
    high: int
    key_cols: str
    """The view's join keys, quoted and comma-separated."""


def view_sql(
    dialect: Dialect,
    view: FeatureView,
    features: tuple[str, ...],
    source: SourceSpec,
    *,
    entities: str,
    events: str,
    event_bounds: tuple[int | None, int],
) -> str:
    """SELECT `__row` and the chosen features of `view` for every row of `entities`.

    `entities` names a relation with the join keys, `__row` and `__t` (µs); `events` names the
    view's source relation. Only events with time in `event_bounds` (µs, inclusive; a None low
    bound is open) are read.
    """
    q = dialect.quote
    low, high = event_bounds
    job = _Job(
        dialect,
        view,
        features,
        source,
        entities,
        events,
        t=dialect.epoch_us(q(source.event_time)),
        low=low,
        high=high,
        key_cols=", ".join(q(k) for k in view.join_keys),
    )
    if view.is_aggregate:
        return _aggregate_sql(job)
    if dialect.name == "duckdb":
        return _plain_asof_sql(job)
    return _plain_sql(job)


def _aggregate_sql(job: _Job) -> str:
    dialect, view, features, source = job.dialect, job.view, job.features, job.source
    entities, events, t, low, high = job.entities, job.events, job.t, job.low, job.high
    key_cols = job.key_cols
    q = dialect.quote
    chosen = [a for a in view.aggregates if a.feature in features]
    columns = sorted({a.column for a in chosen if a.column is not None})
    types = {c.name: c.type for c in source.columns}

    def value_type(col: str) -> str:
        return dialect.sql_type(types[col])

    entity_values = ", ".join(f"CAST(NULL AS {value_type(c)}) AS {q('v_' + c)}" for c in columns)
    event_values = ", ".join(f"{q(c)} AS {q('v_' + c)}" for c in columns)
    sep_e = ", " if entity_values else ""
    sep_v = ", " if event_values else ""
    stacked = (
        f"SELECT {key_cols}, {TIME}, 1 AS {KIND}, {ROW}{sep_e}{entity_values} FROM {entities} "
        f"UNION ALL "
        f"SELECT {key_cols}, {t} AS {TIME}, 0 AS {KIND}, CAST(NULL AS BIGINT) AS {ROW}"
        f"{sep_v}{event_values} FROM {events} WHERE {within(t, low, high)}"
    )
    partition = f"PARTITION BY {key_cols} ORDER BY {TIME}"
    selects = []
    for agg in chosen:
        frame = (
            f"OVER ({partition} RANGE BETWEEN "
            f"{int(agg.window_delta.total_seconds() * 1_000_000) - 1} PRECEDING AND CURRENT ROW)"
        )
        selects.append(f"{_aggregate(dialect, agg, frame)} AS {q(agg.feature)}")
    return (
        f"SELECT {ROW}, {', '.join(selects)} FROM ({stacked}) __s_{view.name} QUALIFY {KIND} = 1"
        if dialect.name == "duckdb"
        else f"SELECT {ROW}, {', '.join(q(a.feature) for a in chosen)} FROM ("
        f"SELECT {KIND}, {ROW}, {', '.join(selects)} FROM ({stacked}) __s_{view.name}"
        f") __w_{view.name} WHERE {KIND} = 1"
    )


def _aggregate(dialect: Dialect, agg: Aggregate, over: str) -> str:
    q = dialect.quote
    if agg.column is None:
        return f"count(CASE WHEN {KIND} = 0 THEN 1 END) {over}"
    v = q("v_" + agg.column)
    if agg.function == "count_distinct":
        return dialect.count_distinct(v, over)
    as_double = f"CAST({v} AS DOUBLE)"
    windowed = {
        "count": f"count({v})",
        "sum": f"sum({as_double})",
        "mean": f"avg({as_double})",
        "min": f"min({as_double})",
        "max": f"max({as_double})",
        "stddev": f"stddev_samp({as_double})",
    }[agg.function]
    return f"{windowed} {over}"


def _plain_sql(job: _Job) -> str:
    dialect, view, features, source = job.dialect, job.view, job.features, job.source
    entities, events, t, low, high = job.entities, job.events, job.t, job.low, job.high
    key_cols = job.key_cols
    q = dialect.quote
    chosen = [f for f in view.fields if f.feature in features]
    types = {c.name: c.type for c in source.columns}
    packed = {"t": TIME, **{f"f{i}": q("v_" + f.feature) for i, f in enumerate(chosen)}}
    entity_values = ", ".join(
        f"CAST(NULL AS {dialect.sql_type(types[f.column])}) AS {q('v_' + f.feature)}"
        for f in chosen
    )
    event_values = ", ".join(f"{q(f.column)} AS {q('v_' + f.feature)}" for f in chosen)
    ingested = dialect.epoch_us("ingested_at")
    stacked = (
        f"SELECT {key_cols}, {TIME}, 1 AS {KIND}, {ROW}, CAST(NULL AS BIGINT) AS __ing, "
        + ", ".join(
            f"CAST(NULL AS {dialect.sql_type(types[k])}) AS {q('__pk' + str(i))}"
            for i, k in enumerate(source.primary_key)
        )
        + f", {entity_values} FROM {entities} UNION ALL "
        f"SELECT {key_cols}, {t} AS {TIME}, 0 AS {KIND}, CAST(NULL AS BIGINT) AS {ROW}, "
        f"{ingested} AS __ing, "
        + ", ".join(f"{q(k)} AS {q('__pk' + str(i))}" for i, k in enumerate(source.primary_key))
        + f", {event_values} FROM {events} WHERE {within(t, low, high)}"
    )
    order = ", ".join(
        [TIME, KIND, "__ing", *(q("__pk" + str(i)) for i in range(len(source.primary_key)))]
    )
    latest = (
        f"{dialect.last_non_null(f'CASE WHEN {KIND} = 0 THEN {dialect.struct(packed)} END')} "
        f"OVER (PARTITION BY {key_cols} ORDER BY {order} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
    )
    fresh = (
        "TRUE"
        if view.ttl_delta is None
        else f"{dialect.field('__last', 't')} >= {TIME} - {_us(view.ttl_delta)}"
    )
    outputs = ", ".join(
        f"CASE WHEN {fresh} THEN {dialect.field('__last', f'f{i}')} END AS {q(f.feature)}"
        for i, f in enumerate(chosen)
    )
    return (
        f"SELECT {ROW}, {outputs} FROM ("
        f"SELECT {KIND}, {ROW}, {TIME}, {latest} AS __last FROM ({stacked}) __s_{view.name}"
        f") __w_{view.name} WHERE {KIND} = 1"
    )


def _plain_asof_sql(job: _Job) -> str:
    """DuckDB's ASOF join for latest values: the same answer as the window plan, faster.

    1. Narrow: events are reduced to one per (key, time), the one ingested last (then the
       larger primary key), which is the window plan's tie-break, keeping only the key, the
       time and where the row lives (file, row number).
    2. ASOF takes, for each entity row, the last such event at or before its time.
    3. The feature values of the matched rows are fetched by (file, row number) in one pass
       over the events, so the wide columns are never sorted or buffered.
    Spark, which has no ASOF join, keeps the window plan, and a test holds the two to the
    same answers.
    """
    dialect, view, features, source = job.dialect, job.view, job.features, job.source
    entities, events, t, low, high = job.entities, job.events, job.t, job.low, job.high
    q = dialect.quote
    chosen = [f for f in view.fields if f.feature in features]
    keys = view.join_keys
    key_cols = job.key_cols
    tie = ", ".join(f"{q(k)} DESC" for k in source.primary_key)
    winners = (
        f"SELECT {key_cols}, {t} AS {TIME}, __file, __file_row FROM {events} "
        f"WHERE {within(t, low, high)} "
        f"QUALIFY row_number() OVER (PARTITION BY {key_cols}, {t} "
        f"ORDER BY {dialect.epoch_us('ingested_at')} DESC, {tie}) = 1"
    )
    on = " AND ".join(f"__e.{q(k)} = __w.{q(k)}" for k in keys)
    fresh = (
        "TRUE" if view.ttl_delta is None else f"__w.{TIME} >= __e.{TIME} - {_us(view.ttl_delta)}"
    )
    matched = (
        f"SELECT __e.{ROW}, __w.__file, __w.__file_row, "
        f"{fresh} AS __fresh FROM {entities} __e "
        f"ASOF LEFT JOIN ({winners}) __w ON {on} AND __e.{TIME} >= __w.{TIME}"
    )
    outputs = ", ".join(
        f"CASE WHEN __m.__fresh THEN __v.{q(f.column)} END AS {q(f.feature)}" for f in chosen
    )
    return (
        f"SELECT __m.{ROW}, {outputs} FROM ({matched}) __m LEFT JOIN {events} __v "
        f"ON __v.__file = __m.__file AND __v.__file_row = __m.__file_row"
    )


def event_bounds(view: FeatureView, t_min: int, t_max: int) -> tuple[int | None, int]:
    """The event times (µs, inclusive) that can affect entity rows with times in [t_min, t_max];
    no low bound for a plain view whose values never expire."""
    reach = view.max_window if view.is_aggregate else view.ttl_delta
    return (None if reach is None else t_min - _us(reach)), t_max


def within(t: str, low: int | None, high: int) -> str:
    """SQL: the time expression `t` (µs) is in [low, high]; a None low bound is open."""
    return f"{t} <= {high}" if low is None else f"{t} BETWEEN {low} AND {high}"


def _us(delta: timedelta) -> int:
    return int(delta.total_seconds()) * 1_000_000
