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

Nothing is cached at module level: two projects in one process share no state.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, overload

import numpy as np
import pyarrow as pa

from backline.core.config import Config, _suggest
from backline.core.errors import SchemaError, UsageError
from backline.core.types import arrow_type
from backline.features.definitions import Definitions
from backline.features.online.codec import (
    PlainCodec,
    ViewLayout,
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


class OnlineRangeError(UsageError):
    """A read at a time the online store cannot answer exactly (before what it holds)."""

    code = "online_range"


class _TooEarly(Exception):
    """Raised by a view's fill: the stored state only answers reads from `earliest` (µs)."""

    def __init__(self, earliest: int, what: str) -> None:
        self.earliest, self.what = earliest, what


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
        arrays: dict[str, pa.Array] = {}
        for j, name in enumerate(self.entity_columns):
            arrays[name] = pa.array([keys[j] for keys in self.entities])
        for j, (name, kind) in enumerate(zip(self.columns, self.types, strict=True)):
            arrays[name] = pa.array([row[j] for row in self.values], type=arrow_type(kind))
        return pa.table(arrays)


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
        if layout.is_aggregate:
            by_name = {a.feature: a for a in layout.aggregates}
            self.specs = [by_name[f] for f in self.features]
            self.kinds = [s.kind for s in layout.slots]
            self.empty = [
                0 if s.function in ("count", "count_distinct") else None for s in self.specs
            ]
            self.reach = max(s.window_us for s in self.specs)
        else:
            self.codec = PlainCodec(layout)
            positions = {name: i for i, (name, _, _) in enumerate(layout.fields)}
            self.picks = [(f, positions[f], layout.fields[positions[f]][2]) for f in self.features]

    def fill(
        self,
        blob: bytes | None,
        t_us: int,
        values: dict[str, Any],
        status: dict[str, tuple[str, float | None]],
    ) -> None:
        if self.layout.is_aggregate:
            if blob is None:
                for f, empty in zip(self.features, self.empty, strict=True):
                    values[f] = empty
                    status[f] = (MISSING, None)
                return
            since, _ = since_of(blob)
            if t_us - self.reach < since:  # the window reaches before the stored events
                raise _TooEarly(since + self.reach, "its events")
            results = evaluate(blob, t_us, self.specs, self.kinds)
            for f, value in zip(self.features, results, strict=True):
                values[f] = value
                status[f] = (OK, None)
            return
        if blob is not None:
            event_us, _, row = self.codec.decode_fields(blob)
            if event_us > t_us:  # the stored row is newer: what was the value at T is unknown
                raise _TooEarly(event_us, "its latest row")
            age = (t_us - event_us) / 1e6
            ttl_us = self.layout.ttl_us
            if ttl_us is not None and event_us < t_us - ttl_us:
                for f, _, _ in self.picks:
                    values[f] = None
                    status[f] = (EXPIRED, age)
                return
            for f, i, kind in self.picks:
                values[f] = to_python(row[i], kind)
                status[f] = (OK, age)
            return
        for f, _, _ in self.picks:  # the store knows no row of this entity
            values[f] = None
            status[f] = (MISSING, None)


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
        self.request_fields = plan.request_fields
        keys: list[str] = []
        for v in self.views:
            keys.extend(k for k in v.join_keys if k not in keys)
        self.entity_columns = tuple(keys)


def _check_rows(
    plan: ReadPlan,
    entity_rows: Sequence[Mapping[str, Any]],
    request_rows: Sequence[Mapping[str, Any]] | None,
) -> None:
    """Every entity row has the service's join keys and nothing it does not use; every
    request row only request fields. A typo must not read another entity silently."""
    keys = set(plan.entity_columns)
    fields = set(plan.request_fields)
    allowed = keys if request_rows is not None else keys | fields
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

    _check_rows(plan, entity_rows, request_rows)
    entities = [tuple(row[c] for c in plan.entity_columns) for row in entity_rows]
    column_of = {c: j for j, c in enumerate(plan.entity_columns)}
    groups: list[tuple[str, str, list[str]]] = []
    row_keys: list[list[str | None]] = []
    for v in plan.views:
        positions = [column_of[k] for k in v.join_keys]
        keys = [entity_key([keys[p] for p in positions], v.key_types) for keys in entities]
        row_keys.append(keys)
        groups.append((v.name, v.version, list(dict.fromkeys(k for k in keys if k is not None))))
    found = store.read(groups)

    values: list[dict[str, Any]] = [{} for _ in range(n)]
    status: list[dict[str, tuple[str, float | None]]] = [{} for _ in range(n)]
    for v, keys, blobs in zip(plan.views, row_keys, found, strict=True):
        for i, key in enumerate(keys):
            try:
                v.fill(None if key is None else blobs.get(key), t_us, values[i], status[i])
            except _TooEarly as early:
                raise _range_error(v, entities[i], plan, at, early) from None

    if plan.on_demand:
        _on_demand(plan, entity_rows, request_rows, values, status)

    outputs = plan.outputs
    return OnlineFeatures(
        service=plan.service,
        at=at.astimezone(UTC),
        entity_columns=plan.entity_columns,
        entities=tuple(entities),
        columns=outputs,
        types=plan.types,
        values=tuple(tuple(vals[o] for o in outputs) for vals in values),
        statuses=tuple(tuple(st[o][0] for o in outputs) for st in status),
        ages=tuple(tuple(st[o][1] for o in outputs) for st in status),
    )


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
    values: list[dict[str, Any]],
    status: list[dict[str, tuple[str, float | None]]],
) -> None:
    n = len(values)
    requests = request_rows if request_rows is not None else entity_rows
    for odf in plan.on_demand:
        args: dict[str, np.ndarray[Any, np.dtype[np.float64]]] = {}
        worst = [OK] * n
        for arg, where, name in odf.inputs:
            column = np.empty(n, dtype=np.float64)
            for i in range(n):
                if where == "request":
                    row = requests[i]
                    if name not in row:
                        raise UsageError(
                            f"request row {i} has no {name!r}; on-demand feature {odf.name!r} of "
                            f"{plan.service!r} needs request fields "
                            f"{', '.join(plan.request_fields)} (on the command line: --request "
                            f"{name}=VALUE)."
                        )
                    column[i] = _as_float(row[name], f"request field {name!r} of row {i}")
                else:
                    column[i] = _as_float(values[i][name], f"feature {name!r}")
                    state = status[i][name][0]
                    if _RANK[state] > _RANK[worst[i]]:
                        worst[i] = state
            args[arg] = column
        with np.errstate(all="ignore"):
            result = np.asarray(odf.function(**args), dtype=np.float64)
        result = np.broadcast_to(result, (n,))
        for i in range(n):
            x = float(result[i])
            values[i][odf.name] = None if math.isnan(x) else x
            status[i][odf.name] = (worst[i], None)
