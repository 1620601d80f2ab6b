"""Point-in-time training sets: features as of each example's event time, labels as of the cutoff.

    ts = build_training_set(cfg)                       # train.service, train.cutoff from config
    ts.train, ts.holdout                               # Arrow tables, oldest example first
    ts.numeric_features, ts.categorical_features       # by Arrow type of each service output
    ts.digest                                          # sha256 of the content: same data, same digest

An example is a row of `train.entity_source` whose event time is before the cutoff. Its features
come from `get_historical_features` at that event time; its label is the one in
`train.label_source` (joined on the entity source's primary key) that had *arrived* by the cutoff
(`train.label_time` <= cutoff). A label that arrived later does not exist for this training set,
even though it is in the store now: that is what "no time travel" means for labels. When a key
has several labels (revisions), the latest one to arrive by the cutoff counts.

The split is by event time: the holdout is the labelled examples in the last `train.holdout`
before the latest labelled example's event time, (last - holdout, last]; the rest train.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.config import Config, SourceSpec
from backline.core.durations import format_duration, parse_utc
from backline.core.errors import NotFoundError, SchemaError
from backline.data.offline_store import OfflineStore
from backline.features.definitions import Definitions
from backline.features.history import DEFAULT_TIMESTAMP, get_historical_features
from backline.features.repository import load_definitions, require_applied, resolve_service

DIGEST_FORMAT = b"backline.training-set/1"


@dataclass(frozen=True)
class TrainingSet:
    """A point-in-time training set, split by event time. Tables hold, in order: the entity
    source's primary key, `event_timestamp`, the service's features, then the label (bool)."""

    service: str
    train: pa.Table
    """Examples with event time <= holdout_start, ordered by (event time, primary key)."""
    holdout: pa.Table
    """Examples with event time in (holdout_start, event_time_range[1]]."""
    numeric_features: tuple[str, ...]
    """Features of integer, floating or boolean Arrow type, in service order."""
    categorical_features: tuple[str, ...]
    """Features of string type, in service order."""
    label: str
    """Name of the label column (train.label_column)."""
    primary_key: tuple[str, ...]
    cutoff: datetime
    """Labels count only if they arrived at or before this (UTC); examples are before it."""
    event_time_range: tuple[datetime, datetime]
    """Event times of the earliest and latest labelled example."""
    holdout_start: datetime
    """Examples after this event time are held out."""
    feature_views: Mapping[str, str]
    """The applied version (content hash) of every feature view the service reads."""
    unlabelled: int
    """Examples before the cutoff whose label had not arrived by then (left out)."""
    digest: str
    """sha256 of the content (columns, types, values of both splits, cutoff)."""

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric_features + self.categorical_features

    def labels(self, split: str) -> np.ndarray:
        """The label column of 'train' or 'holdout' as float32 0/1, shape [N]."""
        table = self.train if split == "train" else self.holdout
        return np.asarray(table.column(self.label).to_numpy(), dtype=np.float32)


def build_training_set(
    cfg: Config,
    *,
    service: str | None = None,
    cutoff: datetime | str | None = None,
    defs: Definitions | None = None,
) -> TrainingSet:
    """Build the training set of `service` (default train.service) as known at `cutoff`
    (default train.cutoff, or the latest label arrival in the store)."""
    t = cfg.train
    name = service or t.service
    defs = load_definitions(cfg) if defs is None else defs
    plan = resolve_service(defs, name)
    versions = require_applied(cfg, defs, [v for v, _ in plan.views])
    entity = cfg.source(t.entity_source)
    labels = cfg.source(t.label_source)
    _check_label_source(cfg, entity, labels)
    join_keys = list(dict.fromkeys(k for v, _ in plan.views for k in defs.view(v).join_keys))
    for column, why in [(k, "a join key of the service's views") for k in join_keys] + [
        (f, "a request field of its on-demand features") for f in plan.request_fields
    ]:
        if column not in entity.column_names:
            raise SchemaError(
                f"service {name!r} needs {column!r} ({why}), but train.entity_source = "
                f"{entity.name!r} has no such column. Point train.entity_source at a source "
                "that has it."
            )
    label_name = t.label_column
    clash = set(entity.primary_key) | {DEFAULT_TIMESTAMP}
    if label_name in plan.outputs or label_name in clash:
        raise SchemaError(
            f"train.label_column = {label_name!r} is also a feature or key of service {name!r}. "
            "Rename the feature (Field(..., name=...)) so the label cannot leak into the inputs."
        )

    store = OfflineStore.open(cfg)
    con = store.connect_duckdb([entity, labels])
    try:
        when = _resolve_cutoff(con, cfg, labels, cutoff)
        examples, unlabelled = _labelled_examples(
            con, cfg, entity, labels, when, join_keys, plan.request_fields
        )
    finally:
        con.close()

    inputs = [*join_keys, DEFAULT_TIMESTAMP, *plan.request_fields]
    # One DuckDB thread: with several, windowed avg/stddev differ in the last bit from run to
    # run (rows tied on time are summed in a different order), which would change the digest
    # and with it the run id that `--resume auto` looks for.
    single = replace(cfg, features=replace(cfg.features, threads=1))
    feats = get_historical_features(single, defs, name, examples.select(inputs))
    numeric, categorical = _feature_kinds(feats, plan.outputs)
    columns: dict[str, pa.ChunkedArray | pa.Array] = {
        k: examples.column(k) for k in entity.primary_key
    }
    columns[DEFAULT_TIMESTAMP] = examples.column(DEFAULT_TIMESTAMP)
    for f in plan.outputs:
        col = feats.column(f)
        columns[f] = col.cast(pa.string()) if f in categorical else col
    columns[label_name] = examples.column("__label")
    table = pa.table(columns)

    times = table.column(DEFAULT_TIMESTAMP)
    first, last = (pc.min(times).as_py().astimezone(UTC), pc.max(times).as_py().astimezone(UTC))
    holdout_start = last - t.holdout
    in_holdout = pc.greater(times, pa.scalar(holdout_start, times.type))
    train, holdout = table.filter(pc.invert(in_holdout)), table.filter(in_holdout)
    _check_split(train, holdout, label_name, holdout_start, cfg)
    digest = training_set_digest(name, when, label_name, train, holdout)
    return TrainingSet(
        service=name,
        train=train,
        holdout=holdout,
        numeric_features=numeric,
        categorical_features=categorical,
        label=label_name,
        primary_key=tuple(entity.primary_key),
        cutoff=when,
        event_time_range=(first, last),
        holdout_start=holdout_start,
        feature_views=dict(sorted(versions.items())),
        unlabelled=unlabelled,
        digest=digest,
    )


def _check_label_source(cfg: Config, entity: SourceSpec, labels: SourceSpec) -> None:
    t = cfg.train
    for key, column, kind in (
        ("label_column", t.label_column, "bool"),
        ("label_time", t.label_time, "timestamp"),
    ):
        if column not in labels.column_names:
            raise SchemaError(
                f"train.{key} = {column!r} is not a column of train.label_source = "
                f"{labels.name!r} (columns: {', '.join(labels.column_names)}). Fix train.{key}."
            )
        if labels.column(column).type != kind:
            raise SchemaError(
                f"train.{key} = {column!r} has type {labels.column(column).type}; it must be "
                f"{kind}. Declare it as type = {kind!r} or pick another column."
            )
    missing = [k for k in entity.primary_key if k not in labels.column_names]
    if missing:
        raise SchemaError(
            f"labels are joined on the primary key of {entity.name!r} "
            f"({', '.join(entity.primary_key)}), but source {labels.name!r} lacks "
            f"{', '.join(missing)}. Add the column to the label source."
        )


def _resolve_cutoff(
    con: duckdb.DuckDBPyConnection, cfg: Config, labels: SourceSpec, cutoff: datetime | str | None
) -> datetime:
    raw = cfg.train.cutoff if cutoff is None else cutoff
    if raw not in ("", None):
        return parse_utc(raw, what="train.cutoff")
    latest = _scalar(con, f'SELECT max("{cfg.train.label_time}") FROM "{labels.name}"', {})
    if latest is None:
        raise NotFoundError(
            f"source {labels.name!r} holds no labels, so there is nothing to train on. Ingest "
            f"them first: backline ingest {labels.name} FILE."
        )
    return parse_utc(latest, what="latest label arrival")


def _labelled_examples(
    con: duckdb.DuckDBPyConnection,
    cfg: Config,
    entity: SourceSpec,
    labels: SourceSpec,
    cutoff: datetime,
    join_keys: Sequence[str],
    request_fields: Sequence[str],
) -> tuple[pa.Table, int]:
    """Entity rows before the cutoff with the label known at the cutoff; and how many had none."""
    t = cfg.train
    pk = [f'"{k}"' for k in entity.primary_key]
    wanted = list(dict.fromkeys([*entity.primary_key, *join_keys, *request_fields]))
    known = (
        f'SELECT {", ".join(pk)}, "{t.label_column}" AS __label FROM "{labels.name}" '
        f'WHERE "{t.label_time}" <= $cutoff AND "{t.label_column}" IS NOT NULL '
        f"QUALIFY row_number() OVER (PARTITION BY {', '.join(pk)} "
        f'ORDER BY "{t.label_time}" DESC, ingested_at DESC) = 1'
    )
    before = f'SELECT * FROM "{entity.name}" WHERE "{entity.event_time}" < $cutoff'
    total = _scalar(con, f"SELECT count(*) FROM ({before})", {"cutoff": cutoff})
    if total == 0:
        raise SchemaError(
            f"empty training set: source {entity.name!r} has no rows with event time before the "
            f"cutoff {cutoff.isoformat()}. Ingest {entity.name} or set train.cutoff later."
        )
    select = ", ".join(f'e."{c}"' for c in wanted)
    query = (
        f'SELECT {select}, e."{entity.event_time}" AS {DEFAULT_TIMESTAMP}, l.__label '
        f"FROM ({before}) e JOIN ({known}) l USING ({', '.join(pk)}) "
        f'ORDER BY e."{entity.event_time}", {", ".join("e." + k for k in pk)}'
    )
    table: pa.Table = con.sql(query, params={"cutoff": cutoff}).to_arrow_table()
    if table.num_rows == 0:
        first = _scalar(con, f'SELECT min("{t.label_time}") FROM "{labels.name}"', {})
        arrived = f"the first arrived at {first}" if first is not None else "there are none"
        raise SchemaError(
            f"no labels by the cutoff: none of the {total} {entity.name} rows before "
            f"{cutoff.isoformat()} has a label in {labels.name!r} that arrived by then "
            f"({arrived}). Set train.cutoff later, or ingest the labels."
        )
    ts = table.column(DEFAULT_TIMESTAMP)
    table = table.set_column(
        table.schema.get_field_index(DEFAULT_TIMESTAMP),
        DEFAULT_TIMESTAMP,
        ts.cast(pa.timestamp("us", tz="UTC")),
    )
    return table, int(total) - table.num_rows


def _scalar(con: duckdb.DuckDBPyConnection, query: str, params: dict[str, object]) -> Any:
    row = con.sql(query, params=params).fetchall()
    return row[0][0] if row else None


def _feature_kinds(
    table: pa.Table, outputs: Sequence[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    numeric: list[str] = []
    categorical: list[str] = []
    for name in outputs:
        kind = table.schema.field(name).type
        if pa.types.is_dictionary(kind):
            kind = kind.value_type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            categorical.append(name)
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            numeric.append(name)
        else:
            raise SchemaError(
                f"feature {name!r} has type {kind}; the model takes numbers, booleans and "
                "strings. Derive a number from it in features.py (e.g. an age in seconds)."
            )
    return tuple(numeric), tuple(categorical)


def _check_split(
    train: pa.Table, holdout: pa.Table, label: str, holdout_start: datetime, cfg: Config
) -> None:
    for split, table, fix in (
        ("training", train, "shorten train.holdout or set train.cutoff later"),
        ("holdout", holdout, "lengthen train.holdout"),
    ):
        if table.num_rows == 0:
            raise SchemaError(
                f"the {split} split is empty (holdout starts after {holdout_start.isoformat()}, "
                f"train.holdout = {format_duration(cfg.train.holdout)!r}); {fix}."
            )
        positives = int(pc.sum(table.column(label).cast(pa.int64())).as_py() or 0)
        if positives in (0, table.num_rows):
            only = "true" if positives else "false"
            raise SchemaError(
                f"the {split} split has a single class: all {table.num_rows} labels are {only}. "
                f"A classifier needs both; {fix}, or ingest more labels."
            )


def training_set_digest(
    service: str, cutoff: datetime, label: str, train: pa.Table, holdout: pa.Table
) -> str:
    """sha256 over the content, independent of chunking, ingest time and Arrow's IPC bytes."""
    h = hashlib.sha256(DIGEST_FORMAT)
    h.update(f"\0{service}\0{cutoff.isoformat()}\0{label}\0".encode())
    for split, table in (("train", train), ("holdout", holdout)):
        h.update(f"{split}\0{table.num_rows}\0".encode())
        for name in table.column_names:
            column = table.column(name)
            h.update(f"{name}\0{column.type}\0".encode())
            _hash_column(h, column)
    return h.hexdigest()


def _hash_column(h: hashlib._Hash, column: pa.ChunkedArray) -> None:
    arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = arr.type
    valid = np.asarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    h.update(np.packbits(valid).tobytes())
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        # fixed-width UTF-32 of every value: canonical for the same strings, no Python loop
        values = np.asarray(arr.fill_null("").to_numpy(zero_copy_only=False), dtype=str)
        h.update(f"U{values.dtype.itemsize}\0".encode())
        h.update(values.tobytes())
        return
    if pa.types.is_timestamp(kind):
        arr = arr.cast(pa.int64())
    elif pa.types.is_boolean(kind):
        arr = arr.cast(pa.int8())
    filled = arr.fill_null(0).to_numpy(zero_copy_only=False)
    dtype = "<f8" if pa.types.is_floating(arr.type) else "<i8"
    h.update(np.ascontiguousarray(filled, dtype=dtype).tobytes())
