"""Realistic predict requests for the load generator, drawn from a project's own data.

    with backline.open("fraud-project") as project:
        made = build_requests(project, count=4096, instances=1, skew=1.0, seed=0)
    made.bodies[0]   # b'{"instances":[{"card_id":"card_0001234","merchant_id":"m_000042",
                     #   "amount":17.5,"transaction_id":"tx_..."}],"at":"2026-01-24T23:59:41Z"}'

Every name comes from the project, none is written here: the join keys and request fields of
the model's feature service (`train.service`), and the entity source (`train.entity_source`)
with its primary key and event time.

- Entity keys: the key combinations the entity source holds, ranked by how often they occur,
  drawn with Zipf-like weights 1/rank**skew. Skew 0 draws every entity alike; 1 (the default)
  gives the head of the ranking most of the traffic, as real card traffic does, so caches and
  hot rows of the online store are exercised the way production exercises them.
- Request fields (such as the amount), and the primary key passed through as an id: copied from
  the held-out rows, the last `train.holdout` of the entity source, so the values are the
  recent real ones a model sees after training.
- `at`: with `at="auto"`, the latest event time of the entity source when that is more than a
  day old (a historical data set, whose features read "now" would all have expired), else none
  (live data, scored as of the time the server receives it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from backline.core.errors import InvalidArgument, NotFoundError

if TYPE_CHECKING:
    from backline.project import Project

__all__ = ["LIVE_WITHIN", "RequestSet", "build_requests", "format_at", "parse_at", "zipf_weights"]

#: Data whose latest event is newer than this is live: requests carry no `at`.
LIVE_WITHIN = timedelta(days=1)


@dataclass(frozen=True)
class RequestSet:
    """Encoded request bodies and where their values came from."""

    bodies: list[bytes]
    """JSON bodies for POST /v1/models/{name}:predict, each with `instances` and maybe `at`."""
    at: str | None
    """The `at` every body carries (UTC ISO time), or None when the bodies carry none."""
    service: str
    entity_columns: tuple[str, ...]
    request_fields: tuple[str, ...]
    id_columns: tuple[str, ...]
    """The entity source's primary key, passed through in each instance."""
    entities: int
    """Distinct entity key combinations the keys were drawn from."""
    holdout_rows: int
    """Held-out rows the request fields were drawn from."""
    latest_event: datetime


def zipf_weights(n: int, skew: float) -> np.ndarray:
    """Probabilities of ranks 1..n proportional to 1/rank**skew (skew 0: all alike)."""
    if not skew >= 0:
        raise InvalidArgument(f"skew must be 0 or more, got {skew!r}; 0 draws entities uniformly.")
    weights = np.arange(1, n + 1, dtype=np.float64) ** -float(skew)
    return weights / weights.sum()


def parse_at(text: str | datetime) -> datetime:
    """An ISO time as an aware UTC datetime; a time without a zone is taken as UTC."""
    if isinstance(text, datetime):
        when = text
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidArgument(
                f"at={text!r} is not an ISO time; write e.g. 2026-03-01T12:00:00Z."
            ) from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def format_at(when: datetime) -> str:
    """2026-03-01T12:00:00Z (with microseconds only when there are some)."""
    return parse_at(when).isoformat().replace("+00:00", "Z")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_at(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def build_requests(
    project: Project,
    *,
    count: int = 4096,
    instances: int = 1,
    skew: float = 1.0,
    at: str | datetime | None = "auto",
    seed: int = 0,
    service: str | None = None,
    now: datetime | None = None,
) -> RequestSet:
    """`count` request bodies of `instances` instances each, from the project's data (see the
    module docstring). `at` is "auto", None (no `at`), or a time. `service` defaults to
    `train.service`; `now` (for tests) decides whether the data is live."""
    from backline.features.online import ReadPlan

    if count < 1 or instances < 1:
        raise InvalidArgument(
            f"count and instances must be at least 1, got count={count}, instances={instances}."
        )
    zipf_weights(1, skew)  # checks skew
    cfg = project.config
    service = service or cfg.train.service
    plan = ReadPlan(cfg, project.definitions, service)
    source = cfg.source(cfg.train.entity_source)
    keys, fields = tuple(plan.entity_columns), tuple(plan.request_fields)
    ids = tuple(k for k in source.primary_key if k not in keys and k not in fields)
    missing = [c for c in (*keys, *fields) if c not in source.column_names]
    if missing:
        raise InvalidArgument(
            f"the entity source {source.name!r} (train.entity_source) has no column "
            f"{', '.join(map(repr, missing))}, which service {service!r} needs as a join key or "
            f"request field; its columns are {', '.join(source.column_names)}. Point "
            "train.entity_source at the source the model scores."
        )
    table, when = _ident(source.name), _ident(source.event_time)
    latest = project.sql(f"SELECT max({when}) AS latest FROM {table}").column(0)[0].as_py()
    if latest is None:
        raise NotFoundError(
            f"source {source.name!r} holds no rows to build requests from; ingest some first: "
            f"backline ingest {source.name} FILE."
        )
    latest = parse_at(latest)
    key_list = ", ".join(map(_ident, keys))
    not_null = " AND ".join(f"{_ident(k)} IS NOT NULL" for k in keys) or "TRUE"
    ranked = project.sql(
        f"SELECT {key_list}, count(*) AS _n FROM {table} WHERE {not_null} "
        f"GROUP BY {key_list} ORDER BY _n DESC, {key_list}"
    )
    start = latest - cfg.train.holdout
    picked = ", ".join(map(_ident, (*fields, *ids))) or "1 AS _none"
    order = ", ".join(map(_ident, source.primary_key))
    holdout = project.sql(
        f"SELECT {picked} FROM {table} WHERE {when} > TIMESTAMPTZ '{start.isoformat()}' "
        f"ORDER BY {when}, {order}"
    )
    if ranked.num_rows == 0 or holdout.num_rows == 0:
        raise NotFoundError(
            f"source {source.name!r} has no rows with all of {', '.join(keys)} set, or none in "
            f"the held-out window after {format_at(start)} (train.holdout); ingest more data."
        )

    rng = np.random.default_rng(seed)
    n = count * instances
    entity_rows = rng.choice(ranked.num_rows, size=n, p=zipf_weights(ranked.num_rows, skew))
    holdout_rows = rng.integers(0, holdout.num_rows, size=n)
    key_values = {k: ranked.column(k).to_pylist() for k in keys}
    field_values = {c: holdout.column(c).to_pylist() for c in (*fields, *ids)}

    if at == "auto":
        stale = latest < (now or datetime.now(UTC)) - LIVE_WITHIN
        at_text = format_at(latest) if stale else None
    else:
        at_text = None if at is None else format_at(parse_at(at))
    bodies = []
    for b in range(count):
        batch = []
        for j in range(b * instances, (b + 1) * instances):
            e, h = int(entity_rows[j]), int(holdout_rows[j])
            row = {k: _jsonable(v[e]) for k, v in key_values.items()}
            row.update({c: _jsonable(v[h]) for c, v in field_values.items()})
            batch.append(row)
        body: dict[str, Any] = {"instances": batch}
        if at_text is not None:
            body["at"] = at_text
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return RequestSet(
        bodies=bodies,
        at=at_text,
        service=service,
        entity_columns=keys,
        request_fields=fields,
        id_columns=ids,
        entities=ranked.num_rows,
        holdout_rows=holdout.num_rows,
        latest_event=latest,
    )


def instances_of(bodies: Sequence[bytes]) -> list[dict[str, Any]]:
    """Every instance of every body, decoded (for tests and for looking at a request set)."""
    return [row for body in bodies for row in json.loads(body)["instances"]]
