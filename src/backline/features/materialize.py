"""Materialization: compute online state from the offline store, and push fresh events.

    materialize(cfg, defs)                                  # every view, from all rows
    materialize(cfg, defs, end=t)                           # state as of t (a backfill)
    materialize(cfg, defs, incremental=True)                # apply batches not applied yet
    push(cfg, defs, "transactions", table)                  # ingest rows, apply them now

Each call opens the online store `online.uri` names and closes it, unless it is given an open
`store` (as `backline.open`'s Project does), which it then leaves open.

Stored state merges idempotently: a plain view keeps the newest row (event time, then ingest
time, then primary key), an aggregate view keeps a set of events keyed by a hash of their
primary key. Applying a batch twice changes nothing, so a crashed or concurrent run is safe.
The set of applied batches (the watermark) lives in the online store and is written in the
same transaction as the values it covers.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from backline.core.config import Config
from backline.core.errors import UsageError
from backline.data.ingest import ingest
from backline.data.offline_store import BatchRecord, OfflineStore
from backline.features.definitions import Definitions, version_of
from backline.features.engines import Engine, open_engine
from backline.features.online.codec import PlainCodec, ViewLayout, layout_of, merge_events, to_us
from backline.features.online.factory import open_online_store
from backline.features.online.state import load_rows, view_state
from backline.features.online.store import OnlineStore, OnlineTransaction
from backline.features.repository import applied_versions, require_applied

Progress = Callable[[str, float], None]
_ROWS_PER_STEP = 4_000_000
"""Incremental runs apply pending batches in steps of about this many rows, one transaction
each, so a long backlog neither needs unbounded memory nor holds the write lock for long."""


@dataclass(frozen=True)
class ViewMaterialization:
    """What one view version received."""

    view: str
    version: str
    mode: str
    """full (all rows), range (--start/--end) or incremental."""
    rows: int
    """Source rows read."""
    entities: int
    """Entities written."""
    batches: int
    """Batches newly marked applied."""
    seconds: float


@dataclass(frozen=True)
class MaterializeResult:
    views: tuple[ViewMaterialization, ...]
    start: datetime | None
    end: datetime | None
    incremental: bool
    seconds: float

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views)

    @property
    def entities(self) -> int:
        return sum(v.entities for v in self.views)

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PushResult:
    """What `push` did: the batch it ingested and the views that received it."""

    source: str
    batch_id: str
    status: str
    """committed, or already_ingested when the same rows were pushed before."""
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    views: tuple[ViewMaterialization, ...]
    skipped_views: tuple[str, ...]
    """Views over the source whose definition in features.py is not applied: not updated."""
    seconds: float

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def _check_time(value: datetime | None, name: str) -> None:
    if value is not None and (not isinstance(value, datetime) or value.utcoffset() is None):
        raise UsageError(
            f"{name}={value!r} has no time zone; pass a tz-aware time such as 2026-01-31T00:00:00Z."
        )


def materialize(
    cfg: Config,
    defs: Definitions,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    incremental: bool = False,
    views: Sequence[str] | None = None,
    progress: Progress | None = None,
    store: OnlineStore | None = None,
) -> MaterializeResult:
    """Write online state for `views` (default: every view) of the applied definitions.

    Without arguments every entity's state is recomputed from all committed rows. With
    `start`/`end` the state as of `end` is recomputed from rows with event time in
    [start, end] (aggregate views read only their longest window before `end`), overwriting
    the entities those rows touch. The watermark then holds the batches read when nothing in
    them was left out (no `start`, no event after `end`), and is emptied otherwise, so a later
    incremental run re-applies every batch (merging is idempotent) and brings all entities
    forward. `incremental` applies every committed batch not yet applied, in commit order.
    Reads at times T at or after an entity's latest stored event are exact. `store`: an open
    online store to write to, left open; by default the configured one, closed afterwards.
    """
    started = time.perf_counter()
    _check_time(start, "start")
    _check_time(end, "end")
    if incremental and (start is not None or end is not None):
        raise UsageError(
            "incremental materialization applies new batches and takes no start/end; drop "
            "--incremental to recompute a time range."
        )
    if start is not None and end is not None and start >= end:
        raise UsageError(
            f"start {start.isoformat()} is not before end {end.isoformat()}; swap them."
        )
    names = list(dict.fromkeys(views)) if views is not None else list(defs.views)
    for name in names:
        defs.view(name)  # NotFoundError with a suggestion
    versions = require_applied(cfg, defs, names)
    layouts = {n: layout_of(defs.view(n), cfg.source(defs.view(n).source)) for n in names}
    tick = progress or (lambda stage, done: None)
    with _online(cfg, store) as online:  # an unreachable store fails here, before any write
        done = _materialize(
            online, cfg, [layouts[n] for n in names], versions, incremental, start, end, tick
        )
    return MaterializeResult(
        views=tuple(done[n] for n in names),
        start=start,
        end=end,
        incremental=incremental,
        seconds=round(time.perf_counter() - started, 3),
    )


def _materialize(
    store: OnlineStore,
    cfg: Config,
    layouts: list[ViewLayout],
    versions: dict[str, str],
    incremental: bool,
    start: datetime | None,
    end: datetime | None,
    tick: Progress,
) -> dict[str, ViewMaterialization]:
    offline = OfflineStore.open(cfg)
    done: dict[str, ViewMaterialization] = {}
    groups = _groups(layouts)
    with _engine(cfg, None) as engine:
        for g, members in enumerate(groups):
            tick(f"materializing {', '.join(m.name for m in members)}", g / len(groups))
            batches = offline.batches(members[0].source)
            if not incremental:
                for r in _recompute(
                    store, offline, engine, cfg, members, versions, batches, start, end
                ):
                    done[r.view] = r
                continue
            buckets: dict[tuple[str, ...], list[ViewLayout]] = {}
            for layout in members:
                applied = store.applied_batches(layout.name, versions[layout.name])
                pending = tuple(b.batch_id for b in batches if b.batch_id not in applied)
                buckets.setdefault(pending, []).append(layout)
            for pending, bucket in buckets.items():
                chosen = [b for b in batches if b.batch_id in set(pending)]
                for r in _apply_batches(store, offline, engine, cfg, bucket, versions, chosen):
                    done[r.view] = r
        tick("done", 1.0)
    return done


def push(
    cfg: Config,
    defs: Definitions,
    source: str,
    table: pa.Table,
    *,
    now: datetime | None = None,
    store: OnlineStore | None = None,
) -> PushResult:
    """Append rows to `source` as a validated batch, then apply it to every applied view
    over that source, so the next online read sees them. Quarantined rows are reported.
    `store` as in `materialize`."""
    started = time.perf_counter()
    cfg.source(source)  # NotFoundError for an unknown source
    if not isinstance(table, pa.Table):
        raise UsageError(
            f"push takes a pyarrow Table, not {type(table).__name__}; build one with "
            "pa.table({...}) or pa.Table.from_pylist(rows)."
        )
    current = applied_versions(cfg)
    specs = defs.specs()
    over = [v for v in defs.views.values() if v.source == source]
    ready = [
        v.name
        for v in over
        if current.get(("feature_view", v.name)) == version_of(specs[("feature_view", v.name)])
    ]
    skipped = tuple(v.name for v in over if v.name not in ready)
    versions = require_applied(cfg, defs, ready)
    results: list[ViewMaterialization] = []
    with _online(cfg, store) as store:  # unreachable: StoreError before the batch is written
        with tempfile.TemporaryDirectory(prefix="backline-push-") as tmp:
            path = Path(tmp) / "push.parquet"  # fixed name: the same rows twice are one batch
            pq.write_table(table, path)
            ingested = ingest(cfg, source, path, now=now)
        offline = OfflineStore.open(cfg)
        batch = next(b for b in offline.batches(source) if b.batch_id == ingested.batch_id)
        todo = [
            layout_of(defs.view(name), cfg.source(source))
            for name in ready
            if batch.batch_id not in store.applied_batches(name, versions[name])
        ]
        with _engine(cfg, "duckdb") as engine:  # one small batch: the embedded engine reads it
            for members in _groups(todo):
                results.extend(
                    _apply_batches(store, offline, engine, cfg, members, versions, [batch])
                )
    return PushResult(
        source=source,
        batch_id=ingested.batch_id,
        status=ingested.status,
        rows_in=ingested.rows_in,
        rows_accepted=ingested.rows_accepted,
        rows_quarantined=ingested.rows_quarantined,
        quarantine_reasons=dict(ingested.quarantine_reasons),
        views=tuple(results),
        skipped_views=skipped,
        seconds=round(time.perf_counter() - started, 3),
    )


# -- steps --------------------------------------------------------------------------------------


@contextmanager
def _online(cfg: Config, store: OnlineStore | None) -> Iterator[OnlineStore]:
    """The caller's open store, left open; or the configured one, opened and closed here."""
    if store is not None:
        yield store
        return
    with open_online_store(cfg) as opened:
        yield opened


class _engine:
    """The feature engine for the offline reads of one materialization, closed afterwards."""

    def __init__(self, cfg: Config, name: str | None) -> None:
        self.cfg, self.name = cfg, name

    def __enter__(self) -> Engine:
        self.engine = open_engine(self.cfg, self.name)
        return self.engine

    def __exit__(self, *exc: object) -> None:
        self.engine.close()


def _groups(layouts: Sequence[ViewLayout]) -> list[list[ViewLayout]]:
    """Views over the same source share one read of it."""
    groups: dict[str, list[ViewLayout]] = {}
    for layout in layouts:
        groups.setdefault(layout.source, []).append(layout)
    return list(groups.values())


def _recompute(
    store: OnlineStore,
    offline: OfflineStore,
    engine: Engine,
    cfg: Config,
    layouts: Sequence[ViewLayout],
    versions: dict[str, str],
    batches: Sequence[BatchRecord],
    start: datetime | None,
    end: datetime | None,
) -> list[ViewMaterialization]:
    began = time.perf_counter()
    ids = [b.batch_id for b in batches]
    upper_us = None if end is None else to_us(end)
    lower_us = None if start is None else to_us(start)
    spec = cfg.source(layouts[0].source)
    rows = load_rows(engine, spec, _files(offline, spec.name, ids), layouts, lower_us, upper_us)
    shared = (time.perf_counter() - began) / len(layouts)
    # Every row read, or every row left out was older than what a read at or after `end` can
    # see: then the state is complete and those batches count as applied.
    everything = start is None and (
        end is None
        or all(
            b.max_event_time is None or datetime.fromisoformat(b.max_event_time) <= end
            for b in batches
        )
    )
    out = []
    for layout in layouts:
        began = time.perf_counter()
        items = {} if rows is None else view_state(rows, layout, lower_us)

        def work(txn: OnlineTransaction, items: dict[str, tuple[Any, bytes]] = items) -> None:
            txn.put([(k, v) for k, (_, v) in items.items()])
            txn.clear_applied()
            if everything:
                txn.mark_applied(ids)

        store.transact(layout.name, versions[layout.name], work)
        out.append(
            ViewMaterialization(
                view=layout.name,
                version=versions[layout.name],
                mode="full" if start is None and end is None else "range",
                rows=0 if rows is None else rows.n,
                entities=len(items),
                batches=len(ids) if everything else 0,
                seconds=round(shared + time.perf_counter() - began, 3),
            )
        )
    return out


def _apply_batches(
    store: OnlineStore,
    offline: OfflineStore,
    engine: Engine,
    cfg: Config,
    layouts: Sequence[ViewLayout],
    versions: dict[str, str],
    pending: Sequence[BatchRecord],
) -> list[ViewMaterialization]:
    """Merge the rows of `pending` batches into each view's stored state, in commit order."""
    rows_total = 0
    entities = dict.fromkeys((layout.name for layout in layouts), 0)
    seconds = dict.fromkeys((layout.name for layout in layouts), 0.0)
    steps: list[list[BatchRecord]] = []
    size = 0
    for batch in pending:
        if not steps or size + batch.rows_accepted > _ROWS_PER_STEP:
            steps.append([])
            size = 0
        steps[-1].append(batch)
        size += batch.rows_accepted
    for step in steps:
        began = time.perf_counter()
        ids = [b.batch_id for b in step]
        spec = cfg.source(layouts[0].source)
        rows = load_rows(engine, spec, _files(offline, spec.name, ids), layouts, None, None)
        rows_total += 0 if rows is None else rows.n
        shared = (time.perf_counter() - began) / len(layouts)
        for layout in layouts:
            began = time.perf_counter()
            delta = {} if rows is None else view_state(rows, layout, None)
            work = _merger(layout, delta, ids)
            entities[layout.name] += store.transact(layout.name, versions[layout.name], work)
            seconds[layout.name] += shared + time.perf_counter() - began
    return [
        ViewMaterialization(
            view=layout.name,
            version=versions[layout.name],
            mode="incremental",
            rows=rows_total,
            entities=entities[layout.name],
            batches=len(pending),
            seconds=round(seconds[layout.name], 3),
        )
        for layout in layouts
    ]


def _merger(
    layout: ViewLayout, delta: dict[str, tuple[Any, bytes]], batch_ids: list[str]
) -> Callable[[OnlineTransaction], int]:
    """The transaction body that merges `delta` into stored state and marks the batches."""
    codec = None if layout.is_aggregate else PlainCodec(layout)
    kinds = [s.kind for s in layout.slots]

    def work(txn: OnlineTransaction) -> int:
        existing = txn.get(list(delta)) if delta else {}
        out = []
        for key, (order, blob) in delta.items():
            old = existing.get(key)
            if old is None:
                out.append((key, blob))
            elif codec is not None:
                if order > codec.order(old):  # only a newer row replaces the stored one
                    out.append((key, blob))
            else:
                merged = merge_events(old, blob, kinds, layout.max_window_us)
                if merged != old:
                    out.append((key, merged))
        txn.put(out)
        txn.mark_applied(batch_ids)
        return len(out)

    return work


def _files(offline: OfflineStore, source: str, batch_ids: Sequence[str]) -> list[Path]:
    marks = tuple(f"part-{b}-" for b in batch_ids)
    return [f for f in offline.files("data", source) if f.name.startswith(marks)] if marks else []
