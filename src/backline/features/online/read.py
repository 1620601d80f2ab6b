"""Online feature reads: every feature of a service for many entities in one round trip.

    out = get_online_features(cfg, defs, "fraud_v1",
                              [{"card_id": "card_0000001", "merchant_id": "m_000001"}],
                              request_rows=[{"amount": 42.0}])
    out.to_dicts()   # [{"card_id": ..., "merchant_id": ..., "count_10m": 3, ...}]
    out.status("last_country")   # ["ok"] / ["expired"] / ["missing"]

Values are computed at the read time T (`at`, default now) from the stored state, with the
same semantics as training sets: aggregates over (T - window, T], the latest plain row unless
it is older than the view's ttl. On-demand features run the same function objects as offline.

Called as above, a read opens the online store and closes it again. A caller that reads many
times (a server, `backline.open`'s Project) opens the store once and builds each service's
`ReadPlan` once, and passes both, so a read is one round trip and no definition work:

    with open_online_store(cfg) as store:
        plan = ReadPlan(cfg, defs, "fraud_v1")
        out = get_online_features(cfg, defs, "fraud_v1", rows, store=store, plan=plan)

A read works column by column: each view is evaluated once per distinct entity, the
aggregate views of a batch all together (`batch`: a fixed number of numpy calls per read,
bit-identical to evaluating one stored value at a time, which a read of a few values still
does), and the rows are zipped from the columns at the end.

Nothing is cached at module level: two projects in one process share no state.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, compress, repeat
from typing import Any, cast, overload

import numpy as np
import pyarrow as pa

from backline.core.config import Config, _suggest
from backline.core.errors import SchemaError, UsageError
from backline.core.types import arrow_type
from backline.features.definitions import Definitions
from backline.features.online.batch import Events, Program
from backline.features.online.codec import (
    PlainCodec,
    ViewLayout,
    empty_events,
    entity_key,
    evaluate,
    from_us,
    layout_of,
    since_of,
    to_python,
    to_us,
)
from backline.features.online.factory import open_online_store
from backline.features.online.store import OnlineStore
from backline.features.repository import require_applied, resolve_service

__all__ = ["OnlineFeatures", "OnlineRangeError", "ReadPlan", "get_online_features"]

OK, EXPIRED, MISSING = "ok", "expired", "missing"
_RANK = {OK: 0, EXPIRED: 1, MISSING: 2}
_STATUS = {False: OK, True: MISSING}
"""An aggregate view's status, by whether the store has no value of the entity."""
_CONVERTED = ("timestamp", "date")
"""Source types whose stored form `to_python` converts; it returns any other value as is."""


class OnlineRangeError(UsageError):
    """A read at a time the online store cannot answer exactly (before what it holds)."""

    code = "online_range"


class _TooEarly(Exception):
    """Raised by reading a view: the stored state only answers reads from `earliest` (µs);
    `row` is the entity row it is about, where known."""

    def __init__(self, earliest: int, what: str, row: int = 0) -> None:
        self.earliest, self.what, self.row = earliest, what, row


_PLAIN_MIN = 128
"""Rows of a plain view from which they are decoded all at once (`PlainCodec.read_many`)."""

_BATCH_MIN = 32
"""Stored aggregate values (of all the aggregate views of a read together) from which their
aggregates are evaluated all at once (`batch`) instead of one value after another
(`codec.evaluate`): below it, numpy's cost per call outweighs its speed."""

_SHARED = 200
"""Rows from which equal status rows are one tuple: three tuples a row, together past 700,
would start a collection of the garbage collector's youngest generation in each read."""

Column = Sequence[Any]


@dataclass(frozen=True)
class OnlineFeatures:
    """The features of a service for a list of entities, at one time.

    `values[i][j]` is feature `columns[j]` of entity row i; `statuses[i][j]` is ok, expired
    (a plain view's row older than its ttl: value None) or missing (the store does not know
    the entity: counts 0, everything else None); `ages[i][j]` is the age in seconds of the
    stored row a plain-view feature came from, else None.
    """

    service: str
    at: datetime
    entity_columns: tuple[str, ...]
    entities: tuple[tuple[Any, ...], ...]
    columns: tuple[str, ...]
    types: tuple[str, ...]
    """Per column: int, float, string, int64, float64, bool, timestamp or date."""
    values: tuple[tuple[Any, ...], ...]
    statuses: tuple[tuple[str, ...], ...]
    ages: tuple[tuple[float | None, ...], ...]

    def __len__(self) -> int:
        return len(self.values)

    def _index(self, name: str) -> int:
        try:
            return self.columns.index(name)
        except ValueError:
            raise UsageError(
                f"feature {name!r} is not served by {self.service!r}. Columns: "
                f"{', '.join(self.columns)}."
            ) from None

    def column(self, name: str) -> list[Any]:
        j = self._index(name)
        return [row[j] for row in self.values]

    @overload
    def status(self, name: str, /) -> list[str]: ...

    @overload
    def status(self, row: int, name: str, /) -> str: ...

    def status(self, first: str | int, name: str | None = None, /) -> list[str] | str:
        """`status(feature)`: the feature's status for every entity row; `status(i, column)`:
        one row's status ("" for an entity key column)."""
        if name is None:
            j = self._index(str(first))
            return [row[j] for row in self.statuses]
        if name in self.entity_columns:
            return ""
        return self.statuses[int(first)][self._index(name)]

    def age(self, name: str) -> list[float | None]:
        j = self._index(name)
        return [row[j] for row in self.ages]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per entity row: its join keys, then the service's features in order."""
        names = self.entity_columns + self.columns
        return [
            dict(zip(names, keys + row, strict=True))
            for keys, row in zip(self.entities, self.values, strict=True)
        ]

    def to_arrow(self) -> pa.Table:
        n = len(self.values)
        keys = list(zip(*self.entities, strict=True)) if n else [()] * len(self.entity_columns)
        arrays: list[pa.Array] = [pa.array(column) for column in keys]
        columns = list(zip(*self.values, strict=True)) if n else [()] * len(self.columns)
        # the columns of one type converted by one call (pyarrow's cost is mostly per call)
        features: list[pa.Array] = [None] * len(columns)
        by_type: dict[str, list[int]] = {}
        for j, kind in enumerate(self.types):
            by_type.setdefault(kind, []).append(j)
        for kind, where in by_type.items():
            if len(where) == 1 or not n:
                for j in where:
                    features[j] = pa.array(columns[j], type=arrow_type(kind))
                continue
            joined = pa.array(
                list(chain.from_iterable(columns[j] for j in where)), type=arrow_type(kind)
            )
            for i, j in enumerate(where):
                features[j] = joined.slice(i * n, n)
        return pa.Table.from_arrays(arrays + features, names=[*self.entity_columns, *self.columns])


# -- the read plan ------------------------------------------------------------------------------


class _ViewRead:
    """How to fetch and evaluate one view's picked features."""

    def __init__(self, layout: ViewLayout, version: str, features: Sequence[str]) -> None:
        self.name = layout.name
        self.version = version
        self.join_keys = layout.join_keys
        self.key_types = layout.key_types
        self.layout = layout
        self.features = tuple(features)
        self.is_aggregate = layout.is_aggregate
        if layout.is_aggregate:
            by_name = {a.feature: a for a in layout.aggregates}
            self.specs = [by_name[f] for f in self.features]
            self.kinds = [s.kind for s in layout.slots]
            self.empty = [
                0 if s.function in ("count", "count_distinct") else None for s in self.specs
            ]
            self.reach = max(s.window_us for s in self.specs)
            self.nothing = empty_events(self.kinds)
            """The value of an entity without events."""
        else:
            self.codec = PlainCodec(layout)
            positions = {name: i for i, (name, _, _) in enumerate(layout.fields)}
            self.picks = [(f, positions[f], layout.fields[positions[f]][2]) for f in self.features]
            # None: a decoded row is the picked values as they are
            self._picks: list[tuple[int, str]] | None = [(i, kind) for _, i, kind in self.picks]
            if [i for i, _ in self._picks] == list(range(len(layout.fields))) and not any(
                kind in _CONVERTED for _, kind in self._picks
            ):
                self._picks = None

    def read_many(
        self, keys: _Keys, blobs: list[bytes | None], t_us: int, batch: _Batch | None
    ) -> tuple[dict[str, Column], Column, Column]:
        """The view's features for every entity row: per feature a column of values, and the
        rows' status and age columns (shared by the view's features). `blobs`: the stored value
        of each of `keys.unique` (or None); each entity is evaluated once however many rows
        name it. `_TooEarly.row` is the first row naming the first entity (in row order) that
        cannot be answered, as reading row after row would find. `batch`: this view's values
        evaluated with others' (see `_batch`), or None."""
        try:
            if not self.is_aggregate:
                values, status, ages = self._latest(blobs, t_us)
            elif batch is not None:
                values, status, ages = self._aggregates(blobs, t_us, batch)
            else:
                values, status, ages = self._one_by_one(blobs, t_us)
        except _TooEarly as early:
            early.row = keys.first_row(early.row)
            raise
        pick = keys.pick
        if pick is None:  # every row its own entity, in row order
            return values, status, ages
        return {f: pick(c) for f, c in values.items()}, pick(status), pick(ages)

    def _aggregates(
        self, blobs: list[bytes | None], t_us: int, batch: _Batch
    ) -> tuple[dict[str, Column], Column, Column]:
        """Per entity (`blobs`: its stored value or None), its aggregates, from `batch` (where
        an entity without a value has an empty one: the empty aggregates `_one_by_one` gives
        it); `_TooEarly.row` is an index into `blobs`."""
        events, group, results, early, status = batch
        if early is not None:  # the first entity whose windows reach before its stored events
            a, _ = events.ranges[group]
            raise _TooEarly(int(events.since[a + early]) + self.reach, "its events", early)
        return dict(zip(self.features, results, strict=True)), status, [None] * len(blobs)

    def _latest(
        self, blobs: list[bytes | None], t_us: int
    ) -> tuple[dict[str, Column], Column, Column]:
        """`_aggregates` for a plain view: each entity's latest row, decoded."""
        n = len(blobs)
        if blobs.count(None) == n:  # the store knows none of these entities
            return dict.fromkeys(self.features, [None] * n), [MISSING] * n, [None] * n
        if n < _PLAIN_MIN:
            return self._row_by_row(blobs, t_us)
        present = None
        stored = blobs
        if None in blobs:
            held = list(map(operator.is_not, blobs, repeat(None)))
            present = list(compress(range(n), held))
            stored = list(compress(blobs, held))
        decoded = self.codec.read_many(stored)  # type: ignore[arg-type]
        if decoded is None or max(decoded[0]) > t_us:
            return self._row_by_row(blobs, t_us)  # which says what is wrong, and where
        events, fields = decoded
        ages: list[float | None] = [(t_us - e) / 1e6 for e in events]
        ttl_us = self.layout.ttl_us
        oldest = None if ttl_us is None else t_us - ttl_us
        status: list[str] = [OK] * len(events)
        expired = [] if oldest is None else [i for i, e in enumerate(events) if e < oldest]
        columns: list[Column] = []
        for i, kind in self._picks or [(i, "") for i in range(len(fields))]:
            column = fields[i]
            if kind in _CONVERTED:
                column = [to_python(value, kind) for value in column]
            if expired:
                column = list(column)
                for r in expired:
                    column[r] = None
            columns.append(column)
        for r in expired:
            status[r] = EXPIRED
        if present is None:
            return dict(zip(self.features, columns, strict=True)), status, ages
        spread = _spread(present, n)  # the entities without a row: None, missing
        return (
            {f: spread([*column, None]) for f, column in zip(self.features, columns, strict=True)},
            spread([*status, MISSING]),
            spread([*ages, None]),
        )

    def _row_by_row(
        self, blobs: list[bytes | None], t_us: int
    ) -> tuple[dict[str, Column], Column, Column]:
        """`_latest` one row after another (for a few rows, and to say which row cannot be
        read, or is newer than T)."""
        n = len(blobs)
        none: list[Any] = [None] * len(self.picks)
        rows: list[list[Any]] = [none] * n
        status: list[str] = [MISSING] * n
        ages: list[float | None] = [None] * n
        ttl_us = self.layout.ttl_us
        oldest = -math.inf if ttl_us is None else t_us - ttl_us
        decoded: Iterable[tuple[int, list[Any]] | None]
        try:
            decoded = self.codec.read_rows(blobs)
        except Exception:  # a row that cannot be read: read as the loop goes, to say which
            read = self.codec.read_fields
            decoded = (None if blob is None else read(blob) for blob in blobs)
        for r, pair in enumerate(decoded):
            if pair is None:
                continue
            event_us, row = pair
            if event_us > t_us:  # the stored row is newer: what was the value at T is unknown
                raise _TooEarly(event_us, "its latest row", r)
            ages[r] = (t_us - event_us) / 1e6
            if event_us < oldest:
                status[r] = EXPIRED
            else:
                status[r] = OK
                rows[r] = row
        if self._picks is not None:  # the picked fields, converted
            picks = self._picks
            rows = [
                row if row is none else [to_python(row[i], kind) for i, kind in picks]
                for row in rows
            ]
        columns = list(zip(*rows, strict=True))
        return dict(zip(self.features, columns, strict=True)), status, ages

    def _one_by_one(
        self, blobs: list[bytes | None], t_us: int
    ) -> tuple[dict[str, Column], Column, Column]:
        """`_aggregates` one value after another (`codec.evaluate`): for a few values, and for
        values `Events.gather` refuses (`since_of` and `evaluate` say what is wrong)."""
        rows: list[Sequence[Any]] = []
        status: list[str] = []
        for r, blob in enumerate(blobs):
            if blob is None:
                rows.append(self.empty)
                status.append(MISSING)
                continue
            since, _ = since_of(blob)
            if t_us - self.reach < since:  # the window reaches before the stored events
                raise _TooEarly(since + self.reach, "its events", r)
            rows.append(evaluate(blob, t_us, self.specs, self.kinds))
            status.append(OK)
        columns = zip(*rows, strict=True) if rows else ([] for _ in self.features)
        return dict(zip(self.features, columns, strict=True)), status, [None] * len(blobs)


def _spread(present: list[int], n: int) -> Callable[[list[Any]], Column]:
    """Takes a column of the `present` entities' values followed by one more value to a column
    of all n entities (two or more), the others getting that last value."""
    where = [len(present)] * n
    for i, r in enumerate(present):
        where[r] = i
    return operator.itemgetter(*where)


_Batch = tuple[Events, int, list[list[Any]], int | None, Column]
"""A view's values evaluated together with other views' (`Events.evaluate`): the events, the
view's group in them, per aggregate its values for the view's entities, the first entity
whose windows reach before its stored events (None: none), and the entities' statuses."""


class _Keys:
    """The entity keys of every row for one set of join keys: `unique` in the order rows first
    name them (None for a row with a null key), `pick` takes a column per unique key to a
    column per row (None when every row names its own entity)."""

    def __init__(self, keys: list[str | None]) -> None:
        unique = keys if len(keys) < 2 else list(dict.fromkeys(keys))
        self.unique = unique
        self.lookup = (
            [k for k in unique if k is not None] if None in unique else cast(list[str], unique)
        )
        self.pick: Any = None
        self.rows: list[int] | None = None
        if len(unique) < len(keys):
            where = {k: i for i, k in enumerate(unique)}
            self.rows = list(map(where.__getitem__, keys))
            self.pick = operator.itemgetter(*self.rows)  # two rows or more: gives a tuple

    def align(self, values: list[bytes | None]) -> list[bytes | None]:
        """The stored values of `lookup`, as a list per `unique` key (None for a null key)."""
        if len(values) == len(self.unique):
            return values
        at = self.unique.index(None)
        return [*values[:at], None, *values[at:]]

    def first_row(self, i: int) -> int:
        return i if self.rows is None else self.rows.index(i)


@dataclass(frozen=True)
class _OnDemandRead:
    name: str
    function: Any
    inputs: tuple[tuple[str, str, str], ...]
    """(argument, "request" or "feature", field or feature name)."""


class ReadPlan:
    """How to read one service: its views at their applied versions, its on-demand features,
    its join keys and request fields. Built from the definitions once, then reused by every
    read; build it again after `apply` (it holds the versions applied when it was built)."""

    def __init__(self, cfg: Config, defs: Definitions, service: str) -> None:
        plan = resolve_service(defs, service)
        versions = require_applied(cfg, defs, [v for v, _ in plan.views])
        self.service = service
        self.views: list[_ViewRead] = []
        types: dict[str, str] = {}
        for name, features in plan.views:
            view = defs.view(name)
            layout = layout_of(view, cfg.source(view.source))
            self.views.append(_ViewRead(layout, versions[name], features))
            for f in features:
                types[f] = layout.feature_type(f)
        self.on_demand: list[_OnDemandRead] = []
        for name in plan.on_demand:
            odf = defs.on_demand[name]
            inputs = []
            for arg, ref in odf.inputs.items():
                head, _, tail = ref.partition(":")
                inputs.append((arg, "request" if head == "request" else "feature", tail))
            self.on_demand.append(_OnDemandRead(name, odf.function, tuple(inputs)))
            types[name] = "float"
        self.outputs = plan.outputs
        self.types = tuple(types[o] for o in plan.outputs)
        self._floats = {name: kind == "float" for name, kind in types.items()}
        """Per feature: whether its values are Python floats or None (mean, sum, ...)."""
        self.request_fields = plan.request_fields
        keys: list[str] = []
        for v in self.views:
            keys.extend(k for k in v.join_keys if k not in keys)
        self.entity_columns = tuple(keys)
        # for reads: each view's join keys as positions in entity_columns, and the names an
        # entity row may have (without and with the request fields)
        positions = [(tuple(keys.index(k) for k in v.join_keys), v.key_types) for v in self.views]
        self._key_sets = list(dict.fromkeys(positions))
        """Each distinct set of join keys (positions in entity_columns, their types)."""
        self._key_set_of = [self._key_sets.index(p) for p in positions]
        """Per view, its set of join keys."""
        self._keys = frozenset(keys)
        self._keys_and_fields = self._keys | frozenset(self.request_fields)
        self._fields = frozenset(self.request_fields)
        self._get_keys: Any = operator.itemgetter(*keys) if keys else None
        self._aggregates = [i for i, v in enumerate(self.views) if v.is_aggregate]
        self._programs: dict[tuple[int, ...], Program] = {}

    def _program(self, views: tuple[int, ...]) -> Program:
        """How `Events.evaluate` computes the aggregates of these views together."""
        program = self._programs.get(views)
        if program is None:
            chosen = [self.views[i] for i in views]
            program = Program([v.specs for v in chosen], [v.kinds for v in chosen])
            self._programs[views] = program
        return program


def _entities(
    plan: ReadPlan,
    entity_rows: Sequence[Mapping[str, Any]],
    request_rows: Sequence[Mapping[str, Any]] | None,
) -> list[tuple[Any, ...]]:
    """Each entity row's join-key values, once `_check_rows` would pass the rows. Rows that
    are plain dicts naming only what they may are checked all at once (at C speed); anything
    else goes through `_check_rows`, which names the first wrong row."""
    allowed = plan._keys if request_rows is not None else plan._keys_and_fields
    if (
        set(map(type, entity_rows)) <= _DICT
        and set().union(*entity_rows) <= allowed
        and (
            request_rows is None
            or (
                set(map(type, request_rows)) <= _DICT and set().union(*request_rows) <= plan._fields
            )
        )
    ):
        try:  # a dict without a join key raises KeyError
            if len(plan.entity_columns) == 1:
                return list(zip(map(plan._get_keys, entity_rows)))
            if plan.entity_columns:
                return list(map(plan._get_keys, entity_rows))
        except KeyError:
            pass
    _check_rows(plan, entity_rows, request_rows)
    return [tuple(row[c] for c in plan.entity_columns) for row in entity_rows]


_DICT = frozenset((dict,))


def _check_rows(
    plan: ReadPlan,
    entity_rows: Sequence[Mapping[str, Any]],
    request_rows: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Every entity row has the service's join keys and nothing it does not use; every
    request row only request fields. A typo must not read another entity silently."""
    keys = plan._keys
    fields = plan._fields
    allowed = keys if request_rows is not None else plan._keys_and_fields
    for i, row in enumerate(entity_rows):
        if not isinstance(row, Mapping):
            raise UsageError(
                f"entity row {i} is a {type(row).__name__}, not a mapping of join key to value "
                "such as {'card_id': 'card_0000001'}."
            )
        for name in row:
            if name not in allowed:
                raise _unknown_key(plan, str(name), i, request_rows is None)
        for name in plan.entity_columns:
            if name not in row:
                raise UsageError(
                    f"entity row {i} has no {name!r}; service {plan.service!r} needs the join "
                    f"keys {', '.join(plan.entity_columns)} for every entity."
                )
    for i, row in enumerate(request_rows or ()):
        if not isinstance(row, Mapping):
            raise UsageError(
                f"request row {i} is a {type(row).__name__}, not a mapping of request field to "
                "value such as {'amount': 12.5}."
            )
        for name in row:
            if name not in fields:
                raise _unknown_field(plan, str(name), i)


def _unknown_key(plan: ReadPlan, name: str, i: int, with_fields: bool) -> UsageError:
    options = [*plan.entity_columns, *(plan.request_fields if with_fields else ())]
    if name in plan.request_fields:
        return UsageError(
            f"entity row {i} has the request field {name!r} among its join keys; give it as a "
            f"request field (on the command line: --request {name}=VALUE)."
        )
    fields = ", ".join(plan.request_fields) or "none"
    return UsageError(
        f"entity row {i} has the key {name!r}, which service {plan.service!r} does not use."
        f"{_suggest(name, options)} Its join keys: {', '.join(plan.entity_columns)}; its "
        f"request fields: {fields}."
    )


def _unknown_field(plan: ReadPlan, name: str, i: int) -> UsageError:
    if name in plan.entity_columns:
        return UsageError(
            f"request row {i} has the join key {name!r}; give it as an entity key (on the "
            f"command line: {name}=VALUE, without --request)."
        )
    fields = ", ".join(plan.request_fields) or "none"
    return UsageError(
        f"request row {i} has the field {name!r}, which service {plan.service!r} does not use."
        f"{_suggest(name, list(plan.request_fields))} Its request fields: {fields}."
    )


def _as_float(value: Any, what: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float | np.number):
        return float(value)
    raise SchemaError(
        f"{what} is {value!r} ({type(value).__name__}); on-demand features take numbers. "
        "Pass a number or None."
    )


def get_online_features(
    cfg: Config,
    defs: Definitions,
    service: str,
    entity_rows: Sequence[Mapping[str, Any]],
    *,
    request_rows: Sequence[Mapping[str, Any]] | None = None,
    at: datetime | None = None,
    store: OnlineStore | None = None,
    plan: ReadPlan | None = None,
) -> OnlineFeatures:
    """Every feature of `service` for each entity row, read in one round trip.

    `store`: an open online store to read from (the caller closes it); without it the store
    `online.uri` names is opened for this read and closed after it. `plan`: the service's
    `ReadPlan`, built once by a caller that reads often; without it one is built here.
    """
    if at is None:
        at = datetime.now(UTC)
    elif not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise UsageError(
            f"at={at!r} is not a datetime with a time zone; pass a tz-aware datetime such as "
            "datetime(2026, 1, 1, tzinfo=UTC)."
        )
    t_us = to_us(at)
    if plan is None:
        plan = ReadPlan(cfg, defs, service)
    elif plan.service != service:
        raise UsageError(
            f"the read plan passed is for service {plan.service!r}, not {service!r}; build one "
            f"with ReadPlan(cfg, defs, {service!r})."
        )
    if store is None:
        with open_online_store(cfg) as opened:
            return _read(plan, opened, entity_rows, request_rows, at, t_us)
    return _read(plan, store, entity_rows, request_rows, at, t_us)


def _read(
    plan: ReadPlan,
    store: OnlineStore,
    entity_rows: Sequence[Mapping[str, Any]],
    request_rows: Sequence[Mapping[str, Any]] | None,
    at: datetime,
    t_us: int,
) -> OnlineFeatures:
    n = len(entity_rows)
    if request_rows is not None and len(request_rows) != n:
        raise UsageError(
            f"request_rows has {len(request_rows)} rows but entity_rows has {n}; pass one "
            "request row per entity row."
        )

    entities = _entities(plan, entity_rows, request_rows)
    key_sets = [_Keys(_entity_keys(entities, *key_set)) for key_set in plan._key_sets]
    view_keys = [key_sets[i] for i in plan._key_set_of]
    groups = [(v.name, v.version, k.lookup) for v, k in zip(plan.views, view_keys, strict=True)]
    if isinstance(store, OnlineStore):
        found = store.read_aligned(groups)
    else:  # a stand-in with `read` only (a server's, while its store is down)
        found = OnlineStore.read_aligned(store, groups)
    blobs = [k.align(values) for values, k in zip(found, view_keys, strict=True)]
    if n * len(plan._aggregates) < _BATCH_MIN:  # too few values to evaluate them together
        batches: list[_Batch | None] = [None] * len(plan.views)
    else:
        batches = _batch(plan, blobs, t_us)

    values: dict[str, Column] = {}
    status: dict[str, Column] = {}
    ages: dict[str, Column] = {}
    for v, keys, view_blobs, batch in zip(plan.views, view_keys, blobs, batches, strict=True):
        try:
            view_values, view_status, view_ages = v.read_many(keys, view_blobs, t_us, batch)
        except _TooEarly as early:
            raise _range_error(v, entities[early.row], plan, at, early) from None
        values.update(view_values)
        status.update(dict.fromkeys(v.features, view_status))
        ages.update(dict.fromkeys(v.features, view_ages))

    if plan.on_demand:
        _on_demand(plan, entity_rows, request_rows, values, status, ages)

    outputs = plan.outputs
    if outputs:
        table = _rows([values[o] for o in outputs])
        statuses = _rows([status[o] for o in outputs], share=n >= _SHARED)
        row_ages = _rows([ages[o] for o in outputs])
    else:
        table = statuses = row_ages = ((),) * n
    return OnlineFeatures(
        service=plan.service,
        at=at.astimezone(UTC),
        entity_columns=plan.entity_columns,
        entities=tuple(entities),
        columns=outputs,
        types=plan.types,
        values=table,
        statuses=statuses,
        ages=row_ages,
    )


def _batch(plan: ReadPlan, blobs: list[list[bytes | None]], t_us: int) -> list[_Batch | None]:
    """Per view, its values evaluated together with those of the service's other aggregate
    views (`Events.evaluate`), or None: a plain view, a view without stored values, every
    aggregate view when they hold too few values together to gain from it (`_BATCH_MIN`),
    and a view with a value `Events.gather` refuses (`_one_by_one` then says what is wrong
    with it, at its turn)."""
    out: list[_Batch | None] = [None] * len(plan.views)
    aggregates = plan._aggregates
    if sum(len(blobs[i]) - blobs[i].count(None) for i in aggregates) < _BATCH_MIN:
        return out
    groups: list[tuple[list[bytes], list[str]]] = []
    statuses: list[Column] = []
    missing: list[bool] = []  # of the last view with unknown entities, and their statuses:
    status: Column = []  # views of the same entities mostly share them
    for i in aggregates:
        v, view_blobs = plan.views[i], blobs[i]
        if None in view_blobs:  # an entity the store does not know: no events at all
            unknown = list(map(operator.is_, view_blobs, repeat(None)))
            if unknown != missing:
                missing, status = unknown, list(map(_STATUS.__getitem__, unknown))
            statuses.append(status)
            view_blobs = [v.nothing if blob is None else blob for blob in view_blobs]
        else:
            statuses.append([OK] * len(view_blobs))
        groups.append((view_blobs, v.kinds))  # type: ignore[arg-type]
    events = Events.gather(groups)
    if events is not None:
        results = events.evaluate(t_us, plan._program(tuple(aggregates)))
        early = _early(events, t_us, [plan.views[i].reach for i in aggregates])
        for g, i in enumerate(aggregates):
            out[i] = (events, g, results[g], early[g], statuses[g])
    elif len(groups) > 1:  # a view's values are refused: gather each view's alone
        for i, group, view_status in zip(aggregates, groups, statuses, strict=True):
            alone = Events.gather([group])
            if alone is not None:
                results = alone.evaluate(t_us, plan._program((i,)))
                late = _early(alone, t_us, [plan.views[i].reach])[0]
                out[i] = (alone, 0, results[0], late, view_status)
    return out


def _early(events: Events, t_us: int, reach: list[int]) -> list[int | None]:
    """Per group, the first value (of its group) whose since_us is after T less the group's
    longest window (its windows reach before its stored events), or None."""
    sizes = [b - a for a, b in events.ranges]
    late = events.since > t_us - np.array(reach, dtype=np.int64).repeat(sizes)
    out: list[int | None] = [None] * len(sizes)
    for r in late.nonzero()[0].tolist():
        g = next(g for g, (a, b) in enumerate(events.ranges) if a <= r < b)
        if out[g] is None:
            out[g] = r - events.ranges[g][0]
    return out


def _rows(columns: list[Column], share: bool = False) -> tuple[tuple[Any, ...], ...]:
    """The rows of `columns`; `share`: equal rows as one tuple (a few kinds of status rows
    however many rows: fewer objects for the garbage collector to count and visit)."""
    if len(columns[0]) == 1:  # (faster than zip for one row)
        return (tuple(map(_FIRST, columns)),)
    if not share:
        return tuple(zip(*columns, strict=True))
    where: dict[int, int] = {}  # a view's status column stands for each of its features
    for column in columns:
        where.setdefault(id(column), len(where))
    unique = list({id(column): column for column in columns}.values())
    spots = [where[id(column)] for column in columns]
    pick = operator.itemgetter(*spots) if len(spots) > 1 else lambda key: (key[0],)
    made: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    keys = zip(*unique, strict=True)
    return tuple([made[key] if key in made else made.setdefault(key, pick(key)) for key in keys])


_FIRST = operator.itemgetter(0)


def _entity_keys(
    entities: list[tuple[Any, ...]], positions: tuple[int, ...], types: tuple[str, ...]
) -> list[str | None]:
    """`entity_key` of each entity row's join keys at `positions`; a lone str or int key (the
    usual case) is its own text without the call."""
    if len(positions) == 1 and types[0] != "timestamp":
        column = list(map(operator.itemgetter(positions[0]), entities))
        kinds = set(map(type, column))
        if kinds <= _STR:
            return column
        if kinds <= _STR_INT:
            return [value if type(value) is str else str(value) for value in column]
        return [entity_key([value], types) for value in column]
    return [entity_key([entity[p] for p in positions], types) for entity in entities]


_STR = frozenset((str,))
_STR_INT = frozenset((str, int))


def _range_error(
    view: _ViewRead, entity: tuple[Any, ...], plan: ReadPlan, at: datetime, early: _TooEarly
) -> OnlineRangeError:
    who = ", ".join(
        f"{c}={v}" for c, v in zip(plan.entity_columns, entity, strict=True) if c in view.join_keys
    )
    when = _iso(at.astimezone(UTC))
    return OnlineRangeError(
        f"the online store cannot answer view {view.name!r} for {who} at {when}: it holds "
        f"{early.what} as materialized, which answer reads from "
        f"{_iso(from_us(early.earliest))} on. To read at {when}, materialize with --end {when}; "
        "for past times, build a training set with `backline features history`."
    )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _on_demand(
    plan: ReadPlan,
    entity_rows: Sequence[Mapping[str, Any]],
    request_rows: Sequence[Mapping[str, Any]] | None,
    values: dict[str, Column],
    status: dict[str, Column],
    ages: dict[str, Column],
) -> None:
    n = len(entity_rows)
    requests = request_rows if request_rows is not None else entity_rows
    plain = set(map(type, requests)) <= _DICT
    fields: dict[str, np.ndarray[Any, np.dtype[np.float64]] | None] = {}  # converted once

    def field(name: str) -> np.ndarray[Any, np.dtype[np.float64]] | None:
        """A request field's values as floats (a new array each time: a function may change
        its arguments), or None when they are not all plain numbers in plain dicts."""
        if name not in fields:
            given = plain and all(map(operator.methodcaller("__contains__", name), requests))
            fields[name] = (
                _floats(list(map(operator.itemgetter(name), requests))) if given else None
            )
        column = fields[name]
        return None if column is None else column.copy()

    with np.errstate(all="ignore"):
        for odf in plan.on_demand:
            args: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
            worst: Column | None = None
            for arg, where, name in odf.inputs:
                column: np.ndarray[Any, np.dtype[np.float64]] | None
                if where == "feature":
                    worst = _worse(worst, status[name])
                    given = values[name]
                    if plan._floats[name]:  # floats or None, as aggregates give them
                        column = np.array(given, dtype=np.float64)  # None becomes NaN
                    else:
                        column = _floats(given)
                else:
                    column = field(name)
                if column is None:  # not plain numbers: row by row, to name the first bad one
                    column = _column(plan, odf, where, name, requests, values)
                args[arg] = column
            result = np.asarray(odf.function(**args), dtype=np.float64)
            if result.shape != (n,):
                result = np.broadcast_to(result, (n,))
            values[odf.name] = _none_for_nan(result)
            status[odf.name] = worst or [OK] * n
            ages[odf.name] = [None] * n


def _none_for_nan(result: np.ndarray[Any, np.dtype[np.float64]]) -> list[float | None]:
    """The floats as a list, None for each NaN."""
    out: list[float | None] = result.tolist()
    nan = np.isnan(result)
    count = np.count_nonzero(nan)
    if count > 16:  # (one pass is quicker for many)
        boxed = result.astype(object)
        boxed[nan] = None
        return boxed.tolist()
    if count:
        for i in nan.nonzero()[0].tolist():
            out[i] = None
    return out


_NUMBERS = frozenset((float, int, type(None)))


def _floats(column: Column) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    """The values as float64 (None as NaN) when they are all float, int or None, as `_as_float`
    converts them; else None."""
    kinds = set(map(type, column))
    if not kinds <= _NUMBERS:
        return None
    if int in kinds:
        column = [math.nan if x is None else float(x) for x in column]
    return np.array(column, dtype=np.float64)  # None becomes NaN


def _worse(worst: Column | None, states: Column) -> Column:
    """Row by row the worse of two status columns (missing over expired over ok)."""
    if worst is None or worst is states:
        return states
    if states.count(OK) == len(states):
        return worst
    rank = _RANK
    return [a if rank[a] >= rank[b] else b for a, b in zip(worst, states, strict=True)]


def _column(
    plan: ReadPlan,
    odf: _OnDemandRead,
    where: str,
    name: str,
    requests: Sequence[Mapping[str, Any]],
    values: dict[str, Column],
) -> np.ndarray[Any, np.dtype[np.float64]]:
    column = np.empty(len(requests), dtype=np.float64)
    for i, row in enumerate(requests):
        if where == "request":
            if name not in row:
                raise UsageError(
                    f"request row {i} has no {name!r}; on-demand feature {odf.name!r} of "
                    f"{plan.service!r} needs request fields "
                    f"{', '.join(plan.request_fields)} (on the command line: --request "
                    f"{name}=VALUE)."
                )
            column[i] = _as_float(row[name], f"request field {name!r} of row {i}")
        else:
            column[i] = _as_float(values[name][i], f"feature {name!r}")
    return column
