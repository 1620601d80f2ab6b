"""`backline.open(path)`: one handle on a project, for Python users, servers and schedulers.

    import backline

    with backline.open("fraud-project") as project:
        project.ingest("transactions", "data/transactions.csv")
        project.apply()
        train = project.historical_features(entities, "fraud_v1")
        project.materialize(end=cutoff)
        row = project.online_features("fraud_v1", {"card_id": "card_0000001", "merchant_id": "m_000001"},
                                      request={"amount": 42.0}, at=cutoff).to_dicts()[0]
        scores = project.model("fraud@champion").score(train)

The handle finds the project the way the command line does, and owns what a long-lived
process must not open per call: the online store and the services' read plans, the registry's
database engine, and a DuckDB connection for `sql`. Each is opened on first use and released by
`close()` (or the end of a `with` block); a method called after that raises `InvalidArgument`.
Every method calls the library function that does the work, with the handle's config,
definitions and connections; the handle holds no logic of its own. Nothing is shared between
handles, so two projects open in one process never see each other's state.

One handle may be used from several threads: the online store gives each thread its own
connection, and the DuckDB connection is used under a lock.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from backline.core.config import Config, find_project, load_config
from backline.core.errors import InvalidArgument

if TYPE_CHECKING:
    import duckdb

    from backline.data.ingest import IngestResult
    from backline.features.definitions import Definitions
    from backline.features.materialize import MaterializeResult, Progress, PushResult
    from backline.features.online import OnlineFeatures, OnlineStore, ReadPlan
    from backline.features.repository import Change
    from backline.package import Scorer
    from backline.pipeline.executor import Clock, OnStep, RunResult
    from backline.pipeline.history import RunRecord
    from backline.pipeline.train import Registered
    from backline.registry import Registry

__all__ = ["Project", "open"]

Rows = Mapping[str, Any] | Sequence[Mapping[str, Any]]
"""One entity (a mapping of join key to value) or a list of them."""


def open(path: str | PathLike[str] | None = None) -> Project:
    """The project at `path` or the nearest folder above it holding backline.toml (default: the
    current folder), with its config loaded and checked. Use it in a `with` block, or call
    `close()` when done."""
    root = find_project(None if path is None else Path(path))
    return Project(load_config(root))


class Project:
    """An open project: its config, its definitions, and the connections it owns."""

    def __init__(self, config: Config) -> None:
        self.config = config
        """The project's backline.toml, typed (environment overrides applied)."""
        self._lock = threading.RLock()
        self._closed = False
        self._definitions: Definitions | None = None
        self._plans: dict[str, ReadPlan] = {}
        self._online: OnlineStore | None = None
        self._registry: Registry | None = None
        self._duckdb: duckdb.DuckDBPyConnection | None = None
        self._duckdb_batches: tuple[str, ...] = ()
        self._duckdb_predictions = False

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The project folder."""
        return self.config.root

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the online store, the registry's engine and the DuckDB connection. Calling it
        again does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            online, registry, con = self._online, self._registry, self._duckdb
            self._online = self._registry = self._duckdb = None
            self._plans.clear()
            self._definitions = None
        try:
            if online is not None:
                online.close()
        finally:
            try:
                if registry is not None:
                    registry.close()
            finally:
                if con is not None:
                    con.close()

    def __enter__(self) -> Project:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<backline.Project {str(self.root)!r} ({state})>"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(
                f"the project handle on {self.root} is closed; open it again with "
                f"backline.open({str(self.root)!r})."
            )

    # -- what it holds --------------------------------------------------------------------------

    @property
    def definitions(self) -> Definitions:
        """The feature definitions of features.py, loaded on first use (`apply` and `refresh`
        load them again)."""
        with self._lock:
            self._check_open()
            if self._definitions is None:
                from backline.features.repository import load_definitions

                self._definitions = load_definitions(self.config)
            return self._definitions

    @property
    def registry(self) -> Registry:
        """The model registry, connected on first use and closed with the project."""
        with self._lock:
            self._check_open()
            if self._registry is None:
                from backline.registry import open_registry

                self._registry = open_registry(self.config)
            return self._registry

    def _online_store(self) -> OnlineStore:
        with self._lock:
            self._check_open()
            if self._online is None:
                from backline.features.online import open_online_store

                self._online = open_online_store(self.config)
            return self._online

    def _plan(self, service: str) -> ReadPlan:
        plan = self._plans.get(service)
        if plan is None:
            from backline.features.online import ReadPlan

            plan = ReadPlan(self.config, self.definitions, service)
            with self._lock:
                self._check_open()
                self._plans[service] = plan
        return plan

    def online_store(self) -> OnlineStore:
        """The open online store (`online.uri`), connected on first use and closed with the
        project. For a server's hot path; everyone else reads through `online_features`."""
        return self._online_store()

    def reset_online_store(self) -> None:
        """Close the online store's connection, so the next read connects again (a server
        calls it after the store failed, to recover when it is back)."""
        with self._lock:
            store, self._online = self._online, None
        if store is not None:
            with contextlib.suppress(Exception):
                store.close()

    def read_plan(self, service: str) -> ReadPlan:
        """How `service` is read (built once per service and kept until `refresh`)."""
        return self._plan(service)

    def refresh(self) -> None:
        """Forget the loaded definitions and the read plans built from them, so the next call
        sees features.py and the applied versions as they are now (say, after `backline
        features apply` ran in another process)."""
        with self._lock:
            self._check_open()
            self._definitions = None
            self._plans.clear()

    # -- ingestion and the offline store ---------------------------------------------------------

    def ingest(
        self, source: str, path: str | PathLike[str], *, progress: Progress | None = None
    ) -> IngestResult:
        """Validate a file or folder into `source`: see `backline.data.ingest.ingest`.
        `progress(stage, fraction_done)` is called as it goes."""
        from backline.data.ingest import ingest

        self._check_open()
        return ingest(self.config, source, Path(path), progress=progress)

    def sql(self, query: str) -> pa.Table:
        """Run a DuckDB query over the offline store (a view per source, and quarantine,
        batches and batch_stats), as `backline sql` does; the result as an Arrow table."""
        import duckdb

        with self._lock:
            con = self._connection()
            try:
                rel = con.sql(query)
                return pa.table({}) if rel is None else rel.to_arrow_table()
            except duckdb.Error as exc:
                raise self._query_failed(exc, tables=True) from None

    def sql_rows(
        self, query: str, *, limit: int | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Like `sql`, but the column names and at most `limit` rows as Python values the way
        DuckDB gives them (a HUGEINT sum is an int, an INTERVAL a timedelta): what `backline
        sql` prints. A statement that returns no result gives ([], [])."""
        import duckdb

        with self._lock:
            con = self._connection()
            try:
                rel = con.sql(query)
            except duckdb.Error as exc:
                raise self._query_failed(exc, tables=True) from None
            if rel is None:
                return [], []
            try:
                rows = (rel if limit is None else rel.limit(limit)).fetchall()
            except duckdb.Error as exc:  # found while running it: the tables are not the matter
                raise self._query_failed(exc, tables=False) from None
            return list(rel.columns), rows

    def _query_failed(self, exc: Exception, *, tables: bool) -> InvalidArgument:
        message = f"query failed: {str(exc).splitlines()[0]}"
        if tables:
            names = [*self.config.sources, "quarantine", "predictions", "batches", "batch_stats"]
            message += f". Tables: {', '.join(names)}."
        return InvalidArgument(message)

    def _connection(self) -> duckdb.DuckDBPyConnection:
        """The DuckDB connection, made again when a batch was committed since it was made (its
        views name the files of the batches that existed then), or when the prediction log got
        its first file or lost its last (the `predictions` view is an empty stand-in without
        files, and a glob over files otherwise)."""
        from backline.data.offline_store import OfflineStore

        self._check_open()
        store = OfflineStore.open(self.config)
        batches = tuple(b.batch_id for b in store.batches())
        predictions = store.has_predictions()
        if (
            self._duckdb is None
            or batches != self._duckdb_batches
            or predictions != self._duckdb_predictions
        ):
            if self._duckdb is not None:
                self._duckdb.close()
                self._duckdb = None
            self._duckdb = store.connect_duckdb(self.config.sources.values())
            self._duckdb_batches = batches
            self._duckdb_predictions = predictions
        return self._duckdb

    # -- features ----------------------------------------------------------------------------

    def apply(self) -> list[Change]:
        """Load features.py afresh and record its new or changed definitions as versions: see
        `backline.features.repository.apply`."""
        from backline.features.repository import apply

        self.refresh()
        return apply(self.config, self.definitions)

    def historical_features(
        self,
        entities: pa.Table | str | PathLike[str] | Any,
        service: str,
        *,
        timestamp_column: str = "event_timestamp",
        engine: str | None = None,
    ) -> pa.Table:
        """Every feature of `service` as of each entity row's time (a point-in-time join).

        `entities`: a pyarrow Table, a pandas DataFrame, or the path of a .parquet or .csv
        file, with the service's join keys and `timestamp_column`. Rows come back in input
        order, input columns first.
        """
        from backline.features.history import get_historical_features

        self._check_open()
        rows = _entity_input(entities)
        return get_historical_features(
            self.config,
            self.definitions,
            service,
            rows,  # a Path is read by the engine itself
            timestamp_column=timestamp_column,
            engine=engine,
        )

    def materialize(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        incremental: bool = False,
        views: Sequence[str] | None = None,
        progress: Progress | None = None,
    ) -> MaterializeResult:
        """Write online state from the offline store: see
        `backline.features.materialize.materialize`."""
        from backline.features.materialize import materialize

        return materialize(
            self.config,
            self.definitions,
            start=start,
            end=end,
            incremental=incremental,
            views=views,
            progress=progress,
            store=self._online_store(),
        )

    def push(self, source: str, rows: Any, *, now: datetime | None = None) -> PushResult:
        """Ingest fresh rows into `source` and apply them to the online store at once: see
        `backline.features.materialize.push`. `rows`: a pyarrow Table, a pandas DataFrame or
        a list of dicts."""
        from backline.features.materialize import push

        table = _table(rows, "rows")
        return push(
            self.config, self.definitions, source, table, now=now, store=self._online_store()
        )

    def online_features(
        self,
        service: str,
        entities: Rows,
        request: Rows | None = None,
        at: datetime | None = None,
    ) -> OnlineFeatures:
        """Every feature of `service` for one entity (a mapping of join key to value) or a
        list of them, at time `at` (default now), in one round trip to the online store.
        `request`: the on-demand features' request fields, one mapping per entity."""
        from backline.features.online import get_online_features

        entity_rows = _rows(entities, "entities")
        request_rows = None if request is None else _rows(request, "request")
        plan = self._plan(service)  # an unknown service fails before the store is opened
        return get_online_features(
            self.config,
            self.definitions,
            service,
            entity_rows,
            request_rows=request_rows,
            at=at,
            store=self._online_store(),
            plan=plan,
        )

    # -- models ------------------------------------------------------------------------------

    def train(self, **options: Any) -> Registered:
        """Train, package and register a model version: see
        `backline.pipeline.train.train_and_register` for the options (model_name, service,
        max_steps, resume, nproc, device, actor, progress, on_progress). No progress display
        unless `progress=True`."""
        from backline.pipeline.train import train_and_register

        self._check_open()
        options.setdefault("progress", False)
        return train_and_register(self.config, **options)

    def run(
        self,
        *,
        logical_time: datetime | None = None,
        until: str | None = None,
        clock: Clock | None = None,
        on_step: OnStep | None = None,
    ) -> RunResult:
        """Run the pipeline once for the key (project name, `logical_time`; default now, to
        the minute): ingest what landed, then every stale step up to `until`. See
        `backline.pipeline.executor.run_pipeline`; the same key again does no work twice."""
        from backline.pipeline.executor import run_pipeline, utc_now

        self._check_open()
        return run_pipeline(
            self.config,
            logical_time=logical_time,
            until=until,
            clock=clock or utc_now,
            on_step=on_step,
        )

    def runs(self, *, limit: int = 10) -> list[RunRecord]:
        """The pipeline's newest runs first, each with its steps as recorded."""
        from backline.pipeline.history import RunHistory
        from backline.registry.db import Database

        self._check_open()
        history = RunHistory(Database(self.config.store_uri("registry")))
        try:
            history.prepare()
            return history.recent(self.config.project.name, limit=limit)
        finally:
            history.dispose()

    def model(
        self,
        spec: str,
        variant: str = "served",
        *,
        device: str = "cpu",
        buckets: Sequence[int] | None = None,
    ) -> Scorer:
        """A Scorer for a registered version: "fraud@champion" (an alias), "fraud@3" or
        "fraud:3" (a version number), "fraud@latest", or "fraud" (the champion). Its package
        is copied out of the registry and every file is checked against its sha256 before it
        is loaded. The Scorer holds the model in memory and keeps working after `close()`.
        `device` ("cpu", "cuda") and `buckets` (padded batch sizes, CUDA graphs on a GPU): see
        `backline.package.load_package`."""
        from backline.package import load_package
        from backline.pipeline.gate import fetch_package
        from backline.registry import CHAMPION
        from backline.registry.records import parse_model_spec

        name, ref = parse_model_spec(spec)
        registry = self.registry
        version = registry.get(name, ref or CHAMPION)
        with tempfile.TemporaryDirectory(prefix="backline-model-") as tmp:
            folder = fetch_package(registry, name, version.version, Path(tmp) / "package")
            return load_package(folder, variant, verify=True, device=device, buckets=buckets)


def _is_pandas(value: object) -> bool:
    """A pandas DataFrame, without importing pandas when the caller has not."""
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(value, pandas.DataFrame)


def _from_pandas(frame: Any) -> pa.Table:
    return pa.Table.from_pandas(frame, preserve_index=False)


def _entity_input(entities: object) -> pa.Table | Path:
    if isinstance(entities, pa.Table):
        return entities
    if _is_pandas(entities):
        return _from_pandas(entities)
    if isinstance(entities, str | PathLike):
        path = Path(entities)
        if path.suffix.lower() not in (".parquet", ".csv"):
            raise InvalidArgument(
                f"entities file {path} must be .parquet or .csv (with join keys and a "
                "timestamp column)."
            )
        if not path.is_file():
            raise InvalidArgument(f"entities file {path} does not exist.")
        return path
    raise InvalidArgument(
        f"entities is a {type(entities).__name__}; pass a pyarrow Table, a pandas DataFrame, or "
        "the path of a .parquet or .csv file."
    )


def _table(rows: object, what: str) -> pa.Table:
    if isinstance(rows, pa.Table):
        return rows
    if _is_pandas(rows):
        return _from_pandas(rows)
    if isinstance(rows, list | tuple) and all(isinstance(r, Mapping) for r in rows):
        return pa.Table.from_pylist(list(rows))
    raise InvalidArgument(
        f"{what} is a {type(rows).__name__}; pass a pyarrow Table, a pandas DataFrame or a "
        "list of dicts."
    )


def _rows(rows: Rows, what: str) -> Sequence[Mapping[str, Any]]:
    if isinstance(rows, Mapping):
        return [rows]
    if isinstance(rows, pa.Table):
        return rows.to_pylist()
    if isinstance(rows, str | bytes) or not isinstance(rows, Sequence):
        raise InvalidArgument(
            f"{what} is a {type(rows).__name__}; pass a dict such as {{'card_id': "
            "'card_0000001'}, or a list of them."
        )
    return rows
