"""Online state from offline rows: the rows of a source read once, grouped per entity, and
encoded per view (the latest row of a plain view, the recent events of an aggregate view).

Rows are read with DuckDB and ordered with numpy (`lexsort` on dictionary codes is several
times faster than an SQL ORDER BY on text keys); nothing loops over rows in Python except
the encoding of one value per entity.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.config import SourceSpec
from backline.core.hashing import U64, hash_rows, hash_values
from backline.features.engines import Engine
from backline.features.online.codec import (
    NO_SINCE,
    PlainCodec,
    Slot,
    ViewLayout,
    encode_groups,
    entity_key,
    storage_column,
)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class _Entities:
    """The rows of a source ordered by (entity, event time, ingest time, primary key): each
    entity is a run, and the last row of a run is the one a plain view keeps."""

    def __init__(self, rows: SourceRows, join_keys: tuple[str, ...]) -> None:
        table = rows.table
        columns = [_key_column(table.column(k).combine_chunks()) for k in join_keys]
        valid = np.ones(rows.n, dtype=bool)
        codes = []
        for column in columns:
            if column.null_count:
                valid &= ~column.is_null().to_numpy(zero_copy_only=False)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                column = pc.dictionary_encode(column).indices
            codes.append(pc.fill_null(column, 0).to_numpy(zero_copy_only=False).astype(np.int64))
        sort_keys = [rows.ingested, rows.times, *reversed(codes)]
        order = np.lexsort(sort_keys)
        if not valid.all():
            order = order[valid[order]]
        n = len(order)
        same = np.ones(max(n - 1, 0), dtype=bool)
        for code in codes:
            ranked = code[order]
            same &= ranked[1:] == ranked[:-1]
        starts = np.concatenate([[0], np.flatnonzero(~same) + 1]).astype(np.int64)
        if n == 0:
            starts = np.zeros(0, dtype=np.int64)
        self.times = rows.times[order]
        tied = same & (self.times[1:] == self.times[:-1])
        tied &= rows.ingested[order][1:] == rows.ingested[order][:-1]
        if tied.any():  # equal event and ingest times: the larger primary key sorts last
            _break_ties(order, tied, rows)
            self.times = rows.times[order]
        self.order = order
        self.starts = starts
        self.stops = np.concatenate([self.starts[1:], [n]]).astype(np.int64)
        self.group = np.repeat(np.arange(len(self.starts)), self.stops - self.starts)
        firsts = pa.array(order[self.starts]) if n else pa.array([], pa.int64())
        values = [c.take(firsts).to_pylist() for c in columns]
        self.keys = [_text_key(v) for v in zip(*values, strict=True)]


def _key_column(column: pa.Array) -> pa.Array:
    """A timestamp join key as int64 microseconds since the epoch (what `entity_key` writes
    for one), whatever unit and zone the engine read it in; other keys as they are."""
    if pa.types.is_timestamp(column.type):
        return pc.cast(column, pa.timestamp("us", tz="UTC")).cast(pa.int64())
    return column


def _text_key(values: tuple[Any, ...]) -> str:
    key = entity_key(values)
    assert key is not None  # rows with a null join key were left out
    return key


def _break_ties(order: npt.NDArray[np.intp], tied: npt.NDArray[np.bool_], rows: SourceRows) -> None:
    """Sort each run of tied rows (in place) by primary key, compared in its own types."""
    pks = [rows.table.column(f"__p{i}") for i in range(len(rows.pk_types))]
    edges = np.flatnonzero(np.diff(np.concatenate([[0], tied.astype(np.int8), [0]])))
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        run = order[a : b + 1]
        index = pa.array(run)
        keys = list(zip(*(p.take(index).to_pylist() for p in pks), strict=True))
        order[a : b + 1] = run[sorted(range(len(run)), key=keys.__getitem__)]


class SourceRows:
    """Source rows read once for every view over the source."""

    def __init__(self, table: pa.Table, aliases: dict[str, str], pk_types: Sequence[str]) -> None:
        self.table = table
        self.aliases = aliases
        self.pk_types = tuple(pk_types)
        self.n = table.num_rows
        self.times = table.column("__t").to_numpy()
        self.ingested = table.column("__i").to_numpy()
        self._ids: U64 | None = None
        self._slots: dict[Slot, npt.NDArray[Any]] = {}
        self._entities: dict[tuple[str, ...], _Entities] = {}

    def entities(self, join_keys: tuple[str, ...]) -> _Entities:
        if join_keys not in self._entities:
            self._entities[join_keys] = _Entities(self, join_keys)
        return self._entities[join_keys]

    def ids(self) -> U64:
        if self._ids is None:
            columns = [self.table.column(f"__p{i}") for i in range(len(self.pk_types))]
            self._ids = hash_rows(columns, self.pk_types)
        return self._ids

    def slot(self, slot: Slot) -> npt.NDArray[Any]:
        if slot not in self._slots:
            column = self.table.column(self.aliases[slot.column])
            if slot.kind == "f8":
                floats = pc.cast(column, pa.float64()).combine_chunks()
                values = pc.fill_null(floats, float("nan")).to_numpy(zero_copy_only=False)
            else:
                values = hash_values(column, slot.source_type, repeated=True)
            self._slots[slot] = values
        return self._slots[slot]


def load_rows(
    engine: Engine,
    spec: SourceSpec,
    files: Sequence[Path],
    layouts: Sequence[ViewLayout],
    lower_us: int | None,
    upper_us: int | None,
) -> SourceRows | None:
    """The rows of `files` with event time in [lower, upper], with the columns `layouts` need.

    The read goes through the feature engine (DuckDB or Spark), so materializing on Spark
    reads the offline store with Spark; what is done with the rows is the same code for both.
    """
    if not files:
        return None
    first = layouts[0]
    d = engine.dialect
    relation = engine.source(spec, list(files), (lower_us, upper_us))
    et = d.epoch_us(d.quote(first.event_time))
    where = [f"{d.quote(first.event_time)} IS NOT NULL"]
    if upper_us is not None:
        where.append(f"{et} <= {upper_us}")
    if lower_us is not None:
        where.append(f"{et} >= {lower_us}")
    columns: list[str] = []
    keys: list[str] = []
    for layout in layouts:
        keys.extend(layout.join_keys)
        columns.extend(c for _, c, _ in layout.fields)
        columns.extend(s.column for s in layout.slots)
    aliases = {c: f"__c{i}" for i, c in enumerate(dict.fromkeys(columns))}
    select = [
        *(d.quote(k) for k in dict.fromkeys(keys)),
        f"{et} AS __t",
        f"{d.epoch_us('ingested_at')} AS __i",
        *(f"{d.quote(c)} AS __p{i}" for i, c in enumerate(first.primary_key)),
        *(f"{d.quote(c)} AS {a}" for c, a in aliases.items()),
    ]
    query = f"SELECT {', '.join(select)} FROM {relation} WHERE {' AND '.join(where)}"
    batches = list(engine.execute(query))
    if not batches or sum(b.num_rows for b in batches) == 0:
        return None
    return SourceRows(pa.Table.from_batches(batches), aliases, first.pk_types)


def view_state(
    rows: SourceRows, layout: ViewLayout, lower_us: int | None
) -> dict[str, tuple[Any, bytes]]:
    """{entity key: (order, value)} of one view. `order` is what decides a plain-view upsert
    (event time, ingest time, primary key); None for aggregate views. `lower_us` is the
    earliest event time that was read (None: every row), which bounds how far back an
    aggregate view's event list is complete."""
    entities = rows.entities(layout.join_keys)
    if not layout.is_aggregate:
        return _plain_items(rows, entities, layout)
    times = entities.times
    if len(times) == 0:
        return {}
    # Each entity keeps its events within the longest window of its latest one; nothing is
    # trimmed by `upper`, so an entity quiet since before upper - window is still known (its
    # windows at times before upper need its events) and `since` stays exact per entity.
    latest = times[entities.stops - 1]
    horizon = latest - layout.max_window_us
    keep = times > horizon[entities.group]
    read_from = NO_SINCE if lower_us is None else lower_us - 1  # events >= lower were read
    trimmed = np.zeros(len(entities.starts), dtype=bool)
    np.logical_or.at(trimmed, entities.group, ~keep)
    since = np.where(trimmed, np.maximum(horizon, read_from), read_from)
    index = np.flatnonzero(keep)
    if len(index) == 0:
        return {}
    group = entities.group[index]
    starts = np.flatnonzero(np.diff(group, prepend=-1)).astype(np.int64)
    stops = np.concatenate([starts[1:], [len(index)]]).astype(np.int64)
    source_rows = entities.order[index]
    blobs = encode_groups(
        times[index],
        rows.ids()[source_rows],
        [rows.slot(s)[source_rows] for s in layout.slots],
        [s.kind for s in layout.slots],
        starts,
        stops,
        since[group[starts]].tolist(),
    )
    names = [entities.keys[g] for g in group[starts]]
    return {k: (None, b) for k, b in zip(names, blobs, strict=True)}


def _plain_items(
    rows: SourceRows, entities: _Entities, layout: ViewLayout
) -> dict[str, tuple[Any, bytes]]:
    if len(entities.times) == 0:
        return {}
    table = rows.table.take(pa.array(entities.order[entities.stops - 1]))
    codec = PlainCodec(layout)
    times = table.column("__t").to_pylist()
    ingested = table.column("__i").to_pylist()
    fields = [storage_column(table.column(rows.aliases[c]), kind) for _, c, kind in layout.fields]
    pks = [storage_column(table.column(f"__p{i}"), k) for i, k in enumerate(layout.pk_types)]
    out: dict[str, tuple[Any, bytes]] = {}
    field_rows = zip(*fields, strict=True) if fields else iter([()] * len(times))
    pk_rows = zip(*pks, strict=True)
    for key, t, i, f, p in zip(entities.keys, times, ingested, field_rows, pk_rows, strict=True):
        out[key] = ((t, i, p), codec.encode(t, i, f, p))
    return out
