"""Load a project's features.py, check it against the sources, and version what is applied.

    defs = load_definitions(cfg)            # imports ROOT/features.py, checks it
    changes = plan(cfg, defs)               # what `apply` would record
    apply(cfg, defs)                        # record new versions (content hashes)
    require_applied(cfg, defs, ["card_velocity"])  # history/materialize refuse unapplied edits

A changed definition is a new version, never an overwrite: every version stays in the catalog.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import traceback
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from backline.core.config import Config
from backline.core.errors import BacklineError, ConfigError, SchemaError, StoreError
from backline.features.definitions import NUMERIC_AGGREGATES, Definitions, collect, version_of

FEATURES_FILE = "features.py"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_versions (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    spec TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (kind, name, version)
);
CREATE TABLE IF NOT EXISTS feature_current (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT,
    PRIMARY KEY (kind, name)
);
"""


@dataclass(frozen=True)
class Change:
    """One line of `backline features plan`."""

    action: str
    """create, update, delete or unchanged."""
    kind: str
    name: str
    old_version: str | None
    new_version: str | None


def load_definitions(cfg: Config) -> Definitions:
    """Import ROOT/features.py and check every definition against the declared sources."""
    path = cfg.root / FEATURES_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist. Define entities, feature views and services there "
            "(`backline init` writes an example)."
        )
    name = f"_backline_features_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except BacklineError as exc:
        raise SchemaError(f"{FEATURES_FILE}: {exc}") from None
    except Exception as exc:
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
        where = f" (line {frames[-1].lineno})" if frames else ""
        raise ConfigError(
            f"{FEATURES_FILE} failed to load{where}: {type(exc).__name__}: {exc}. Fix the file."
        ) from None
    finally:
        sys.modules.pop(name, None)
    try:
        defs = collect(vars(module).values())
    except BacklineError as exc:
        raise SchemaError(f"{FEATURES_FILE}: {exc}") from None
    check_against_sources(defs, cfg)
    return defs


def check_against_sources(defs: Definitions, cfg: Config) -> None:
    """Every view reads a declared source, its keys and columns exist, types fit the function."""
    for view in defs.views.values():
        where = f"{FEATURES_FILE}: feature view {view.name!r}"
        if view.source not in cfg.sources:
            raise SchemaError(
                f"{where} reads source {view.source!r}, which backline.toml does not declare. "
                f"Sources: {', '.join(cfg.sources) or '(none)'}."
            )
        source = cfg.sources[view.source]
        columns = {c.name: c for c in source.columns}
        for key in view.join_keys:
            if key not in columns:
                raise SchemaError(
                    f"{where}: join key {key!r} is not a column of source {view.source!r} "
                    f"(columns: {', '.join(columns)})."
                )
        for f in view.fields:
            if f.column not in columns:
                raise SchemaError(
                    f"{where}: field {f.column!r} is not a column of source {view.source!r} "
                    f"(columns: {', '.join(columns)})."
                )
        for a in view.aggregates:
            if a.column is None:
                continue
            if a.column not in columns:
                raise SchemaError(
                    f"{where}: aggregate {a.feature!r} reads {a.column!r}, which is not a column of "
                    f"source {view.source!r} (columns: {', '.join(columns)})."
                )
            kind = columns[a.column].type
            if a.function in NUMERIC_AGGREGATES and kind not in ("int64", "float64"):
                raise SchemaError(
                    f"{where}: {a.function}({a.column}) needs a numeric column, but {a.column!r} is "
                    f"{kind}. Use count or count_distinct, or another column."
                )


@contextmanager
def _catalog(cfg: Config) -> Iterator[sqlite3.Connection]:
    path = cfg.catalog_uri.path
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = sqlite3.connect(path, timeout=30, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open catalog {path} ({exc}).") from None
    try:
        con.executescript(_SCHEMA)
        yield con
    finally:
        con.close()


def applied_versions(cfg: Config) -> dict[tuple[str, str], str]:
    with _catalog(cfg) as con:
        rows = con.execute(
            "SELECT kind, name, version FROM feature_current WHERE version IS NOT NULL"
        )
        return {(k, n): v for k, n, v in rows}


def plan(cfg: Config, defs: Definitions) -> list[Change]:
    current = applied_versions(cfg)
    wanted = {key: version_of(spec) for key, spec in defs.specs().items()}
    changes = []
    for key in sorted(set(current) | set(wanted)):
        old, new = current.get(key), wanted.get(key)
        if old is None:
            action = "create"
        elif new is None:
            action = "delete"
        elif old != new:
            action = "update"
        else:
            action = "unchanged"
        changes.append(Change(action, key[0], key[1], old, new))
    return changes


def apply(cfg: Config, defs: Definitions) -> list[Change]:
    """Record every new or changed definition as a new version, in one transaction."""
    changes = plan(cfg, defs)
    specs = defs.specs()
    now = datetime.now(UTC).isoformat()
    with _catalog(cfg) as con:
        con.execute("BEGIN IMMEDIATE")
        for change in changes:
            if change.action in ("create", "update"):
                spec = specs[(change.kind, change.name)]
                con.execute(
                    "INSERT OR IGNORE INTO feature_versions VALUES (?, ?, ?, ?, ?)",
                    (
                        change.kind,
                        change.name,
                        change.new_version,
                        json.dumps(spec, default=str),
                        now,
                    ),
                )
            if change.action != "unchanged":
                con.execute(
                    "INSERT OR REPLACE INTO feature_current VALUES (?, ?, ?)",
                    (change.kind, change.name, change.new_version),
                )
        con.execute("COMMIT")
    return changes


def require_applied(cfg: Config, defs: Definitions, views: Iterable[str]) -> dict[str, str]:
    """The applied version of each view; an edited-but-unapplied view is an error."""
    current = applied_versions(cfg)
    specs = defs.specs()
    out = {}
    for name in views:
        version = version_of(specs[("feature_view", name)])
        if current.get(("feature_view", name)) != version:
            raise SchemaError(
                f"feature view {name!r} in {FEATURES_FILE} is not applied (its definition differs "
                "from the recorded version). Run `backline features plan`, then "
                "`backline features apply`."
            )
        out[name] = version
    return out


def view_versions(cfg: Config, name: str) -> list[tuple[str, str]]:
    """(version, applied_at) of every recorded version of a view, oldest first."""
    with _catalog(cfg) as con:
        rows = con.execute(
            "SELECT version, applied_at FROM feature_versions WHERE kind = 'feature_view' AND name = ? "
            "ORDER BY applied_at",
            (name,),
        ).fetchall()
    return [(str(v), str(a)) for v, a in rows]


@dataclass(frozen=True)
class ServicePlan:
    """What serving or training a feature service needs."""

    name: str
    views: tuple[tuple[str, tuple[str, ...]], ...]
    """(view, features to compute) in service order; includes inputs of on-demand features."""
    on_demand: tuple[str, ...]
    outputs: tuple[str, ...]
    """The service's own features, in order: the columns a model sees."""
    request_fields: tuple[str, ...]
    """Fields the caller must send (on-demand inputs from the request)."""


def resolve_service(defs: Definitions, service: str) -> ServicePlan:
    from backline.features.definitions import FeatureView, OnDemandFeature

    svc = defs.service(service)
    picks: dict[str, list[str]] = {}
    on_demand: list[str] = []
    outputs: list[str] = []

    def pick(view: str, feature: str) -> None:
        chosen = picks.setdefault(view, [])
        if feature not in chosen:
            chosen.append(feature)

    for item in svc.features:
        if isinstance(item, FeatureView):
            for f in item.feature_names:
                pick(item.name, f)
                outputs.append(f)
        elif isinstance(item, OnDemandFeature):
            on_demand.append(item.name)
            outputs.append(item.name)
        else:
            view, _, feature = item.partition(":")
            pick(view, feature)
            outputs.append(feature)
    request: list[str] = []
    for name in on_demand:
        for view, feature in defs.on_demand[name].stored_inputs:
            pick(view, feature)
        for field_name in defs.on_demand[name].request_fields:
            if field_name not in request:
                request.append(field_name)
    return ServicePlan(
        name=service,
        views=tuple((v, tuple(fs)) for v, fs in picks.items()),
        on_demand=tuple(on_demand),
        outputs=tuple(dict.fromkeys(outputs)),
        request_fields=tuple(request),
    )
