"""Feature definitions, written in a project's `features.py` the way Feast users expect.

    from backline.features import Aggregate, Entity, FeatureService, FeatureView, Field, OnDemandFeature

    card = Entity("card", join_keys=["card_id"])
    velocity = FeatureView(
        "card_velocity", entities=[card], source="transactions",
        aggregates=[Aggregate("count", window="10m"), Aggregate("mean", "amount", window="7d")],
    )
    last = FeatureView("card_last", entities=[card], source="transactions",
                       fields=[Field("country", name="last_country")], ttl="30d")
    ratio = OnDemandFeature("amount_to_mean_7d", inputs={"amount": "request:amount",
                            "mean": "card_velocity:amount_mean_7d"}, function=lambda amount, mean: amount / mean)
    fraud = FeatureService("fraud", [velocity, last, ratio])

Semantics, the same offline and online:
- A plain view (`fields`) takes, for an entity at time T, the latest source row with event time
  at or before T; ties on event time go to the row ingested last, then to the larger primary
  key. Older than `ttl`: null. `ttl` left out means 30 days for a plain view (an aggregate
  view's longest window for an aggregate view); `ttl=None` means a value never expires.
- An aggregate view computes each aggregate over the entity's source rows with event time in
  the window (T - window, T]. With no rows, count and count_distinct are 0, the rest null;
  stddev is the sample standard deviation (null for one row).
- An on-demand feature is a vectorised function of request fields and stored features; the same
  function runs on the training set and on each request.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from backline.core.durations import format_duration, parse_duration
from backline.core.errors import SchemaError
from backline.core.suggest import did_you_mean

AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev", "count_distinct")
NUMERIC_AGGREGATES = ("sum", "mean", "min", "max", "stddev")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise SchemaError(
            f"{kind} name {name!r} must be lower-case letters, digits and _, starting with a "
            "letter. Rename it."
        )


class _DefaultTTL:
    """The `ttl` of a FeatureView that does not give one (None means "never expires")."""

    def __repr__(self) -> str:
        return "DEFAULT_TTL"


DEFAULT_TTL: Any = _DefaultTTL()
PLAIN_TTL = timedelta(days=30)
"""The ttl of a plain view that gives none."""


def _duration(value: str | timedelta, what: str) -> timedelta:
    if isinstance(value, timedelta):
        delta = value
    else:
        try:
            delta = parse_duration(value, what=what)
        except Exception as exc:
            raise SchemaError(str(exc)) from None
    if delta.total_seconds() <= 0 or delta.total_seconds() != int(delta.total_seconds()):
        raise SchemaError(f"{what} {value!r} must be a positive whole number of seconds.")
    return delta


@dataclass(frozen=True)
class Entity:
    """What features describe, identified by its join keys (columns of the sources)."""

    name: str
    join_keys: Sequence[str]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("entity", self.name)
        keys = tuple([self.join_keys] if isinstance(self.join_keys, str) else self.join_keys)
        if not keys:
            raise SchemaError(f"entity {self.name!r} needs at least one join key.")
        object.__setattr__(self, "join_keys", keys)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "join_keys": list(self.join_keys)}


@dataclass(frozen=True)
class Field:
    """A source column served as it is: the latest value at or before the entity's time."""

    column: str
    name: str | None = None

    @property
    def feature(self) -> str:
        return self.name or self.column


@dataclass(frozen=True)
class Aggregate:
    """An aggregation of a source column over a sliding window ending at the entity's time."""

    function: str
    column: str | None = None
    window: str | timedelta = "1h"
    name: str | None = None

    def __post_init__(self) -> None:
        if self.function not in AGGREGATES:
            raise SchemaError(
                f"aggregate function {self.function!r} is not supported. Use one of "
                f"{', '.join(AGGREGATES)}."
            )
        if self.column is None and self.function != "count":
            raise SchemaError(
                f"aggregate {self.function!r} needs a column, e.g. Aggregate({self.function!r}, "
                "'amount', window='7d')."
            )
        label = (
            self.window.strip() if isinstance(self.window, str) else format_duration(self.window)
        )
        object.__setattr__(self, "window", _duration(self.window, "aggregate window"))
        if self.name is None:  # named after the window as the user wrote it: 24h stays 24h
            default = f"{self.column}_{self.function}_{label}" if self.column else f"count_{label}"
            object.__setattr__(self, "name", default)

    @property
    def window_delta(self) -> timedelta:
        assert isinstance(self.window, timedelta)
        return self.window

    @property
    def feature(self) -> str:
        assert self.name is not None
        return self.name


@dataclass(frozen=True)
class FeatureView:
    """Features of one entity (or a tuple of entities) computed from one offline source."""

    name: str
    entities: Sequence[Entity]
    source: str
    fields: Sequence[Field] = ()
    aggregates: Sequence[Aggregate] = ()
    ttl: str | timedelta | None = DEFAULT_TTL
    """How old a plain view's latest row may be; left out: 30 days (an aggregate view: its
    longest window). None: never expires."""
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature view", self.name)
        entities = tuple([self.entities] if isinstance(self.entities, Entity) else self.entities)
        if not entities or not all(isinstance(e, Entity) for e in entities):
            raise SchemaError(f"feature view {self.name!r} needs entities=[Entity(...), ...].")
        object.__setattr__(self, "entities", entities)
        object.__setattr__(self, "fields", tuple(self.fields))
        object.__setattr__(self, "aggregates", tuple(self.aggregates))
        if bool(self.fields) == bool(self.aggregates):
            raise SchemaError(
                f"feature view {self.name!r} must have either fields (latest values) or "
                "aggregates (windows), not both and not neither; split it into two views."
            )
        ttl: timedelta | None
        if self.ttl is DEFAULT_TTL:
            ttl = max((a.window_delta for a in self.aggregates), default=PLAIN_TTL)
        elif self.ttl is None:
            ttl = None
        else:
            ttl = _duration(self.ttl, f"feature view {self.name!r} ttl")
        object.__setattr__(self, "ttl", ttl)
        names = self.feature_names
        for feature in names:
            _check_name(f"feature (in view {self.name!r})", feature)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise SchemaError(f"feature view {self.name!r} defines {repeated[0]!r} twice.")

    @property
    def ttl_delta(self) -> timedelta | None:
        """The ttl; None when values never expire."""
        assert self.ttl is None or isinstance(self.ttl, timedelta)
        return self.ttl

    @property
    def is_aggregate(self) -> bool:
        return bool(self.aggregates)

    @property
    def join_keys(self) -> tuple[str, ...]:
        return tuple(k for e in self.entities for k in e.join_keys)

    @property
    def feature_names(self) -> list[str]:
        return [f.feature for f in self.fields] + [a.feature for a in self.aggregates]

    @property
    def max_window(self) -> timedelta:
        """The longest window of an aggregate view (0 for a plain view)."""
        return max((a.window_delta for a in self.aggregates), default=timedelta(0))

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "entities": [e.spec() for e in self.entities],
            "source": self.source,
            "fields": [{"column": f.column, "name": f.feature} for f in self.fields],
            "aggregates": [
                {
                    "function": a.function,
                    "column": a.column,
                    "window_s": int(a.window_delta.total_seconds()),
                    "name": a.feature,
                }
                for a in self.aggregates
            ],
            "ttl_s": None if self.ttl_delta is None else int(self.ttl_delta.total_seconds()),
        }


@dataclass(frozen=True)
class OnDemandFeature:
    """A feature computed at request time from request fields and stored features.

    `inputs` maps each argument of `function` to "request:FIELD" or "VIEW:FEATURE". The
    function receives numpy float arrays (NaN for missing) and returns one array.
    """

    name: str
    inputs: Mapping[str, str]
    function: Callable[..., Any]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("on-demand feature", self.name)
        if not self.inputs:
            raise SchemaError(
                f"on-demand feature {self.name!r} needs inputs={{arg: 'view:feature'}}."
            )
        for arg, ref in self.inputs.items():
            if not isinstance(ref, str) or ref.count(":") != 1:
                raise SchemaError(
                    f"on-demand feature {self.name!r}: input {arg}={ref!r} must be 'request:FIELD' "
                    "or 'VIEW:FEATURE'."
                )
        object.__setattr__(self, "inputs", dict(self.inputs))

    @property
    def request_fields(self) -> list[str]:
        return [ref.split(":")[1] for ref in self.inputs.values() if ref.startswith("request:")]

    @property
    def stored_inputs(self) -> list[tuple[str, str]]:
        return [
            (ref.split(":")[0], ref.split(":")[1])
            for ref in self.inputs.values()
            if not ref.startswith("request:")
        ]

    def spec(self) -> dict[str, Any]:
        try:
            source = textwrap.dedent(inspect.getsource(self.function)).strip()
        except (OSError, TypeError):
            source = repr(self.function)
        return {"name": self.name, "inputs": dict(self.inputs), "function": source}


@dataclass(frozen=True)
class FeatureService:
    """The named set of features a model consumes: whole views, 'view:feature' picks, on-demand."""

    name: str
    features: Sequence[FeatureView | OnDemandFeature | str]
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("feature service", self.name)
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise SchemaError(f"feature service {self.name!r} lists no features.")

    def spec(self) -> dict[str, Any]:
        items: list[str] = []
        for item in self.features:
            if isinstance(item, FeatureView):
                items.append(f"view:{item.name}")
            elif isinstance(item, OnDemandFeature):
                items.append(f"on_demand:{item.name}")
            else:
                items.append(str(item))
        return {"name": self.name, "features": items}


@dataclass(frozen=True)
class Definitions:
    """Everything a project's features.py declares, checked for consistency."""

    entities: Mapping[str, Entity] = field(default_factory=dict)
    views: Mapping[str, FeatureView] = field(default_factory=dict)
    on_demand: Mapping[str, OnDemandFeature] = field(default_factory=dict)
    services: Mapping[str, FeatureService] = field(default_factory=dict)

    def service(self, name: str) -> FeatureService:
        if name not in self.services:
            raise _unknown("feature service", name, self.services)
        return self.services[name]

    def view(self, name: str) -> FeatureView:
        if name not in self.views:
            raise _unknown("feature view", name, self.views)
        return self.views[name]

    def specs(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(kind, name) -> canonical spec of every definition; what gets versioned."""
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for e in self.entities.values():
            out[("entity", e.name)] = e.spec()
        for v in self.views.values():
            out[("feature_view", v.name)] = v.spec()
        for o in self.on_demand.values():
            out[("on_demand_feature", o.name)] = o.spec()
        for s in self.services.values():
            out[("feature_service", s.name)] = s.spec()
        return out


def version_of(spec: Mapping[str, Any]) -> str:
    """Content hash of a definition: same spec, same version."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def collect(objects: Iterable[object]) -> Definitions:
    """Gather definitions from module globals, checking names and references."""
    entities: dict[str, Entity] = {}
    views: dict[str, FeatureView] = {}
    on_demand: dict[str, OnDemandFeature] = {}
    services: dict[str, FeatureService] = {}
    for obj in objects:
        if isinstance(obj, FeatureView):
            for entity in obj.entities:
                _add(entities, entity.name, entity, "entity")
            _add(views, obj.name, obj, "feature view")
        elif isinstance(obj, Entity):
            _add(entities, obj.name, obj, "entity")
        elif isinstance(obj, OnDemandFeature):
            _add(on_demand, obj.name, obj, "on-demand feature")
        elif isinstance(obj, FeatureService):
            _add(services, obj.name, obj, "feature service")
            for item in obj.features:
                if isinstance(item, FeatureView):
                    _add(views, item.name, item, "feature view")
                elif isinstance(item, OnDemandFeature):
                    _add(on_demand, item.name, item, "on-demand feature")
    owners: dict[str, str] = {}
    for view in views.values():
        for feature in view.feature_names:
            if feature in owners:
                raise SchemaError(
                    f"feature {feature!r} is defined by both view {owners[feature]!r} and view "
                    f"{view.name!r}. Feature names are global; rename one (name=...)."
                )
            owners[feature] = view.name
    for odf in on_demand.values():
        if odf.name in owners:
            raise SchemaError(
                f"on-demand feature {odf.name!r} has the name of a feature of view "
                f"{owners[odf.name]!r}. Rename one."
            )
        for view_name, feature in odf.stored_inputs:
            target = views.get(view_name)
            if target is None or feature not in target.feature_names:
                raise SchemaError(
                    f"on-demand feature {odf.name!r} reads {view_name}:{feature}, which no view "
                    "defines. Check the view and feature names."
                )
    for service in services.values():
        for item in service.features:
            if isinstance(item, str):
                view_name, _, feature = item.partition(":")
                picked = views.get(view_name)
                if picked is None or feature not in picked.feature_names:
                    raise SchemaError(
                        f"feature service {service.name!r} lists {item!r}, which no view defines. "
                        "Write 'view:feature' with names from features.py."
                    )
    return Definitions(entities, views, on_demand, services)


def _add(table: dict[str, Any], name: str, obj: object, kind: str) -> None:
    existing = table.get(name)
    if existing is not None and existing is not obj and existing != obj:
        raise SchemaError(f"two different {kind} definitions are named {name!r}. Rename one.")
    table[name] = obj


def _unknown(kind: str, name: str, known: Mapping[str, Any]) -> Exception:
    from backline.core.errors import NotFoundError

    hint = did_you_mean(name, known)
    return NotFoundError(
        f"unknown {kind} {name!r}.{hint} Defined in features.py: {', '.join(known) or '(none)'}."
    )
