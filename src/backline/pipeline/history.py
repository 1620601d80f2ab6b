"""Run history: every pipeline run and each of its steps, in the registry's database.

    history = RunHistory(Database(cfg.store_uri("registry")))
    run = history.claim("fraud", logical_time, owner="host:123", now=now)   # new, or the same key's
    history.step_started(run.id, "ingest", digests, now=now)
    history.step_ended(run.id, "ingest", "succeeded", outputs={...}, now=now)
    history.last_success("fraud", "ingest")                                  # its digests, outputs

Tables (own schema version, next to the registry's `registry_*` tables):

    pipeline_schema_version  one row per schema version applied
    pipeline_runs            (pipeline, logical_time) unique: the run key; state, owner, times
    pipeline_steps           (run_id, step): state, attempts, times, input digests, outputs,
                             the error, whether it may be retried

A run is `running`, `succeeded` or `failed`; a step `pending`, `running`, `succeeded`,
`failed` or `skipped`. SQLite and PostgreSQL through SQLAlchemy Core, like the registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    select,
    update,
)

from backline import __version__
from backline.core.errors import StoreError
from backline.registry.db import Database
from backline.registry.schema import UTCDateTime

SCHEMA_VERSION = 1
_ADVISORY_KEY = 0x706970656C696E65  # "pipeline": serializes schema creation on PostgreSQL

RunState = Literal["running", "succeeded", "failed"]
StepState = Literal["pending", "running", "succeeded", "failed", "skipped"]
STEP_STATES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "skipped")

metadata = MetaData()

schema_version = Table(
    "pipeline_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
    Column("backline_version", String(32), nullable=False),
)

runs = Table(
    "pipeline_runs",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("pipeline", String(128), nullable=False),
    Column("logical_time", UTCDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("owner", String(255), nullable=False),  # host:pid that runs (or last ran) it
    Column("triggers", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    UniqueConstraint("pipeline", "logical_time", name="pipeline_runs_key"),
)

steps = Table(
    "pipeline_steps",
    metadata,
    Column("run_id", Integer, ForeignKey("pipeline_runs.id"), primary_key=True),
    Column("step", String(64), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("ended_at", UTCDateTime, nullable=True),
    # Text holding JSON: compared as text when looking up a step's last success
    Column("input_digests", Text, nullable=False),
    Column("outputs", Text, nullable=False),
    Column("error", Text, nullable=True),
    Column("error_code", String(64), nullable=True),
    Column("retryable", Boolean, nullable=True),
)


@dataclass(frozen=True)
class StepRecord:
    """One step of one run, as recorded."""

    step: str
    state: StepState
    reason: str
    """Why it was planned ("never ran", "inputs changed: ...") or skipped ("fresh")."""
    attempts: int
    """Times it started in this run."""
    started_at: datetime | None
    ended_at: datetime | None
    input_digests: Mapping[str, str]
    outputs: Mapping[str, Any]
    """What it produced (JSON): batch ids, a training-set digest, a model version."""
    error: str | None
    error_code: str | None
    """The BacklineError code, or the exception class name for any other error."""
    retryable: bool | None
    """On failure: whether running it again may succeed without a change (a store that was
    down, a disk error), as opposed to a user error that needs a fix first."""

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()


@dataclass(frozen=True)
class RunRecord:
    """One run: its key, state and steps (in graph order)."""

    id: int
    pipeline: str
    logical_time: datetime
    state: RunState
    owner: str
    triggers: int
    """Times this key was triggered (1 for a run that never failed or resumed)."""
    created_at: datetime
    updated_at: datetime
    steps: tuple[StepRecord, ...] = ()

    def step(self, name: str) -> StepRecord | None:
        return next((s for s in self.steps if s.step == name), None)

    @property
    def retryable(self) -> bool:
        """A failed run whose failed step may succeed when simply run again."""
        return self.state == "failed" and any(
            s.state == "failed" and bool(s.retryable) for s in self.steps
        )


class RunHistory:
    """Read and write run records; `prepare()` creates or checks the tables."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def dispose(self) -> None:
        """Close the database connections."""
        self._db.dispose()

    def prepare(self) -> None:
        """Create the tables on first use; refuse a schema newer than this backline's."""
        with self._db.read() as conn:
            found = _installed(conn)
        if found == SCHEMA_VERSION:
            return
        if found is not None and found > SCHEMA_VERSION:
            raise self._newer(found)
        with self._db.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_KEY)))
            found = _installed(conn)
            if found is None:
                metadata.create_all(conn)
                conn.execute(
                    schema_version.insert().values(
                        version=SCHEMA_VERSION,
                        applied_at=datetime.now(UTC),
                        backline_version=__version__,
                    )
                )
            elif found > SCHEMA_VERSION:
                raise self._newer(found)

    def _newer(self, found: int) -> StoreError:
        return StoreError(
            f"{self._db.where()}: run history has schema version {found}, newer than this "
            f"backline understands ({SCHEMA_VERSION}). Upgrade backline."
        )

    # -- runs --------------------------------------------------------------------------------

    def claim(
        self, pipeline: str, logical_time: datetime, *, owner: str, now: datetime
    ) -> tuple[RunRecord, bool]:
        """The run of this key, made `running` by `owner`: (run, created). A run that another
        live process holds is refused (StoreError, retryable). The caller decides beforehand
        whether a succeeded run needs anything at all."""
        with self._db.write() as conn:
            row = conn.execute(
                _locked(
                    conn,
                    select(runs).where(
                        runs.c.pipeline == pipeline, runs.c.logical_time == logical_time
                    ),
                )
            ).first()
            if row is None:
                conn.execute(
                    runs.insert().values(
                        pipeline=pipeline,
                        logical_time=logical_time,
                        state="running",
                        owner=owner,
                        triggers=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                created = True
            else:
                if row.state == "running" and row.owner != owner and _alive(row.owner):
                    raise StoreError(
                        f"pipeline run {pipeline} @ {logical_time.isoformat()} is running in "
                        f"process {row.owner} since {row.updated_at.isoformat()}. Wait for it "
                        "to end, then trigger the same key again to see its result."
                    )
                conn.execute(
                    update(runs)
                    .where(runs.c.id == row.id)
                    .values(state="running", owner=owner, triggers=row.triggers + 1, updated_at=now)
                )
                created = False
            found = conn.execute(
                select(runs.c.id).where(
                    runs.c.pipeline == pipeline, runs.c.logical_time == logical_time
                )
            ).scalar_one()
            return self._run(conn, found), created

    def finish(self, run_id: int, state: RunState, *, now: datetime) -> None:
        with self._db.write() as conn:
            conn.execute(
                update(runs).where(runs.c.id == run_id).values(state=state, updated_at=now)
            )

    def get(self, run_id: int) -> RunRecord:
        with self._db.read() as conn:
            return self._run(conn, run_id)

    def find(self, pipeline: str, logical_time: datetime) -> RunRecord | None:
        with self._db.read() as conn:
            found = conn.execute(
                select(runs.c.id).where(
                    runs.c.pipeline == pipeline, runs.c.logical_time == logical_time
                )
            ).scalar()
            return None if found is None else self._run(conn, int(found))

    def recent(self, pipeline: str | None = None, *, limit: int = 10) -> list[RunRecord]:
        """The newest runs first (by logical time, then creation)."""
        query = select(runs.c.id).order_by(runs.c.logical_time.desc(), runs.c.id.desc())
        if pipeline is not None:
            query = query.where(runs.c.pipeline == pipeline)
        with self._db.read() as conn:
            ids = [int(i) for i in conn.execute(query.limit(limit)).scalars()]
            return [self._run(conn, i) for i in ids]

    def _run(self, conn: Connection, run_id: int) -> RunRecord:
        row = conn.execute(select(runs).where(runs.c.id == run_id)).one()
        found = conn.execute(
            select(steps).where(steps.c.run_id == run_id).order_by(steps.c.position)
        ).all()
        return RunRecord(
            id=int(row.id),
            pipeline=row.pipeline,
            logical_time=row.logical_time,
            state=row.state,
            owner=row.owner,
            triggers=int(row.triggers),
            created_at=row.created_at,
            updated_at=row.updated_at,
            steps=tuple(_step(s) for s in found),
        )

    # -- steps -------------------------------------------------------------------------------

    def set_step(
        self,
        run_id: int,
        step: str,
        position: int,
        state: StepState,
        *,
        reason: str,
        digests: Mapping[str, str] | None = None,
        now: datetime | None = None,
        started: bool = False,
        outputs: Mapping[str, Any] | None = None,
        error: BaseException | None = None,
        retryable: bool | None = None,
    ) -> None:
        """Write one step's record (inserted the first time). `started` counts an attempt and
        stamps started_at; a final state (succeeded, failed, skipped) stamps ended_at."""
        values: dict[str, Any] = {"state": state, "reason": reason, "position": position}
        if digests is not None:
            values["input_digests"] = _dumps(digests)
        if outputs is not None:
            values["outputs"] = _dumps(outputs)
        if started:
            values.update(started_at=now, ended_at=None, error=None, error_code=None)
            values["retryable"] = None
        if state in ("succeeded", "failed", "skipped"):
            values["ended_at"] = now
        if error is not None:
            values.update(
                error=str(error) or type(error).__name__,
                error_code=getattr(error, "code", type(error).__name__),
                retryable=retryable,
            )
        with self._db.write() as conn:
            key = (steps.c.run_id == run_id) & (steps.c.step == step)
            row = conn.execute(_locked(conn, select(steps.c.attempts).where(key))).first()
            if row is None:
                conn.execute(
                    steps.insert().values(
                        run_id=run_id,
                        step=step,
                        attempts=1 if started else 0,
                        input_digests=values.pop("input_digests", "{}"),
                        outputs=values.pop("outputs", "{}"),
                        **values,
                    )
                )
            else:
                if started:
                    values["attempts"] = int(row.attempts) + 1
                conn.execute(update(steps).where(key).values(**values))

    def last_success(self, pipeline: str, step: str) -> StepRecord | None:
        """The step's most recent successful run in any run of `pipeline`."""
        with self._db.read() as conn:
            row = conn.execute(
                select(steps)
                .join(runs, runs.c.id == steps.c.run_id)
                .where(
                    runs.c.pipeline == pipeline,
                    steps.c.step == step,
                    steps.c.state == "succeeded",
                )
                .order_by(steps.c.ended_at.desc(), steps.c.run_id.desc())
                .limit(1)
            ).first()
        return None if row is None else _step(row)


def _installed(conn: Connection) -> int | None:
    if not inspect(conn).has_table(schema_version.name):
        return None
    top = conn.execute(select(func.max(schema_version.c.version))).scalar()
    return None if top is None else int(top)


def _locked(conn: Connection, query: Any) -> Any:
    """PostgreSQL: lock the rows read until the transaction ends (SQLite's BEGIN IMMEDIATE
    already holds the whole database)."""
    return query.with_for_update() if conn.dialect.name == "postgresql" else query


def _alive(owner: str) -> bool:
    """Whether the process named host:pid may still be running. Another host's process is
    taken to be alive: only its own host could tell."""
    import os
    import socket

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dumps(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _step(row: Any) -> StepRecord:
    return StepRecord(
        step=row.step,
        state=row.state,
        reason=row.reason,
        attempts=int(row.attempts),
        started_at=row.started_at,
        ended_at=row.ended_at,
        input_digests=json.loads(row.input_digests),
        outputs=json.loads(row.outputs),
        error=row.error,
        error_code=row.error_code,
        retryable=row.retryable,
    )
