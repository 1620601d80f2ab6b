"""The model registry: immutable versions with lineage, content-addressed files, gated aliases.

    registry = open_registry(cfg)
    mv = registry.register("fraud", {"model.pt": pt, "preprocess.json": spec}, lineage,
                           actor="trainer")
    registry.record_gate("fraud", mv.version, gate_record)
    registry.promote("fraud", mv.version, actor="ci", reason="weekly retrain")
    registry.artifact_path("fraud", "champion", "model.pt")   # verified against its sha256

SQLite (default) or PostgreSQL through SQLAlchemy Core. Each write is one database
transaction; SQLite writers take the write lock when they begin (BEGIN IMMEDIATE), and
PostgreSQL writers lock the model's row, so versions are numbered without gaps or races and
every alias move is logged with the pointer it replaced.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, CursorResult, Row, func, select
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect

from backline.core.config import Config
from backline.core.errors import GateFailed, InvalidArgument, NotFoundError, SchemaError, StoreError
from backline.core.faults import maybe_fail
from backline.registry import schema as s
from backline.registry.artifacts import ArtifactStore
from backline.registry.db import Database
from backline.registry.diff import diff_versions
from backline.registry.lineage import Lineage
from backline.registry.records import (
    AliasEvent,
    AliasInfo,
    ArtifactInfo,
    GateRecord,
    ModelSummary,
    ModelVersion,
    VersionDiff,
    check_alias,
    check_from_obj,
    check_model_name,
    check_to_obj,
    required_text,
)

CHAMPION = "champion"
_ADVISORY_KEY = 0x6261636B6C696E65  # "backline": serializes schema creation on PostgreSQL

VersionRef = int | str
"""A version number (3 or "3"), an alias ("champion"), or "latest"."""


def open_registry(cfg: Config, *, artifact_root: Path | None = None) -> Registry:
    """Connect to `registry.uri`, create or upgrade its schema, and return the registry.

    Artifacts go under `artifact_root` (default PROJECT/.backline/artifacts). An unreachable
    database, or one written by a newer backline, is a StoreError before anything is written.
    """
    db = Database(cfg.store_uri("registry"))
    root = artifact_root if artifact_root is not None else cfg.root / ".backline" / "artifacts"
    registry = Registry(db, root)
    try:
        registry.prepare_schema()
    except BaseException:
        db.dispose()
        raise
    return registry


@dataclass(frozen=True)
class GcResult:
    """What `Registry.gc` removed."""

    orphan_files: int
    """Files at an address no blob row names (left by a writer that died before commit)."""

    temp_files: int
    """Stale partial copies from the temp folder."""


class Registry:
    """Versions, aliases, audit log and gate records of every model in one database."""

    def __init__(self, db: Database, artifact_root: Path) -> None:
        self._db = db
        self._engine = db.engine  # for tests and tools that need raw SQL
        self.store = ArtifactStore(artifact_root)

    # -- lifecycle -------------------------------------------------------------------------

    def close(self) -> None:
        self._db.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self._engine.dialect.name

    def prepare_schema(self) -> None:
        """Create the schema on an empty database, upgrade an older one, refuse a newer one."""
        with self._db.read() as conn:
            found = s.installed_version(conn)
        if found is not None and found > s.SCHEMA_VERSION:
            raise self._newer(found)
        if found == s.SCHEMA_VERSION:
            return
        with self._db.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(select(func.pg_advisory_xact_lock(_ADVISORY_KEY)))
            found = s.installed_version(conn)  # again, under the lock
            if found is None:
                strays = s.foreign_tables(conn)
                if strays:
                    raise StoreError(
                        f"{self._db.where()}: the database has registry tables "
                        f"({', '.join(strays)}) but no registry_schema_version. It was not "
                        "written by backline; point registry.uri at another database."
                    )
                s.create(conn)
            elif found > s.SCHEMA_VERSION:
                raise self._newer(found)
            elif found < s.SCHEMA_VERSION:
                s.migrate(conn, found)

    def schema_version(self) -> int:
        with self._db.read() as conn:
            found = s.installed_version(conn)
        assert found is not None
        return found

    # -- writing versions ------------------------------------------------------------------

    def register(
        self,
        model: str,
        files: Mapping[str, Path],
        lineage: Lineage,
        *,
        actor: str,
        description: str = "",
    ) -> ModelVersion:
        """Store `files` and record a new version (the model's next number), all or nothing."""
        check_model_name(model)
        actor = required_text(actor, "actor", "who registers it, e.g. actor='trainer'")
        if not isinstance(lineage, Lineage):
            raise SchemaError(
                f"register({model!r}): lineage must be a Lineage, not {type(lineage).__name__}."
            )
        staged = self.store.stage(files)
        created: list[str] = []
        now = datetime.now(UTC)
        try:
            with self._db.write() as conn:
                try:
                    model_id = self._ensure_model(conn, model, now)
                    latest = conn.scalar(
                        select(func.max(s.versions.c.version)).where(
                            s.versions.c.model_id == model_id
                        )
                    )
                    number = int(latest or 0) + 1
                    digest = s.content_digest((f.name, f.sha256) for f in staged)
                    inserted = conn.execute(
                        s.versions.insert().values(
                            model_id=model_id,
                            version=number,
                            created_at=now,
                            actor=actor,
                            description=description,
                            content_digest=digest,
                            **lineage.columns(),
                        )
                    )
                    version_id = _new_id(inserted)
                    for item in staged:
                        owner = self._claim_blob(conn, item.sha256, item.size, now)
                        if self.store.place(item, owner=owner):
                            created.append(item.sha256)
                        conn.execute(
                            s.artifacts.insert().values(
                                version_id=version_id,
                                name=item.name,
                                sha256=item.sha256,
                                size=item.size,
                            )
                        )
                    maybe_fail("registry_before_commit")
                except BaseException:
                    # Still inside the transaction: nobody else can have claimed these blobs yet.
                    for sha in created:
                        self.store.remove(sha)
                    raise
        finally:
            self.store.discard(staged)
        return self.get(model, number)

    def _ensure_model(self, conn: Connection, model: str, now: datetime) -> int:
        conn.execute(
            self._insert(s.models)
            .values(name=model, created_at=now)
            .on_conflict_do_nothing(index_elements=["name"])
        )
        return int(
            conn.execute(
                select(s.models.c.id).where(s.models.c.name == model).with_for_update()
            ).scalar_one()
        )

    def _claim_blob(self, conn: Connection, sha256: str, size: int, now: datetime) -> bool:
        """Insert the blob row; True when this transaction created it (and so owns the file)."""
        inserted = conn.execute(
            self._insert(s.blobs)
            .values(sha256=sha256, size=size, created_at=now)
            .on_conflict_do_nothing(index_elements=["sha256"])
            .returning(s.blobs.c.sha256)  # a row only when inserted (rowcount is -1 on psycopg)
        ).first()
        return inserted is not None

    def _insert(self, table: Any) -> Any:
        module = pg_dialect if self.dialect == "postgresql" else sqlite_dialect
        return module.insert(table)

    # -- reading versions ------------------------------------------------------------------

    def get(self, model: str, ref: VersionRef = "latest") -> ModelVersion:
        """A version by number, alias, or "latest"."""
        with self._db.read() as conn:
            model_id = self._model_id(conn, model)
            version_id, _ = self._resolve(conn, model, model_id, ref)
            return self._versions(conn, model, s.versions.c.id == version_id)[0]

    def list_versions(self, model: str) -> list[ModelVersion]:
        """Every version of `model`, oldest first."""
        with self._db.read() as conn:
            model_id = self._model_id(conn, model)
            return self._versions(conn, model, s.versions.c.model_id == model_id)

    def list_models(self) -> list[ModelSummary]:
        with self._db.read() as conn:
            counts = conn.execute(
                select(
                    s.models.c.id,
                    s.models.c.name,
                    s.models.c.created_at,
                    func.count(s.versions.c.id),
                    func.max(s.versions.c.version),
                )
                .join(s.versions, s.versions.c.model_id == s.models.c.id)
                .group_by(s.models.c.id, s.models.c.name, s.models.c.created_at)
                .order_by(s.models.c.name)
            ).all()
            pointers = self._alias_rows(conn, None)
        return [
            ModelSummary(name, created, int(n), int(latest), tuple(pointers.get(model_id, ())))
            for model_id, name, created, n, latest in counts
        ]

    def aliases(self, model: str) -> list[AliasInfo]:
        """Where each alias of `model` points now, by alias name."""
        with self._db.read() as conn:
            model_id = self._model_id(conn, model)
            return list(self._alias_rows(conn, model_id).get(model_id, ()))

    def diff(self, model: str, a: VersionRef, b: VersionRef) -> VersionDiff:
        return diff_versions(self.get(model, a), self.get(model, b))

    def artifact_path(self, model: str, ref: VersionRef, name: str) -> Path:
        """The stored file of one artifact, after verifying its sha256. Treat it as read-only."""
        mv = self.get(model, ref)
        info = mv.artifact(name)
        return self.store.verified(
            info.sha256, info.size, f"artifact {name!r} of {model} v{mv.version}"
        )

    def _versions(self, conn: Connection, model: str, where: Any) -> list[ModelVersion]:
        rows = conn.execute(select(s.versions).where(where).order_by(s.versions.c.version)).all()
        files: dict[int, list[ArtifactInfo]] = defaultdict(list)
        for version_id, name, sha, size in conn.execute(
            select(
                s.artifacts.c.version_id,
                s.artifacts.c.name,
                s.artifacts.c.sha256,
                s.artifacts.c.size,
            )
            .join(s.versions, s.versions.c.id == s.artifacts.c.version_id)
            .where(where)
            .order_by(s.artifacts.c.name)
        ):
            files[int(version_id)].append(ArtifactInfo(name, sha, int(size)))
        return [_version(model, row, files[row.id]) for row in rows]

    def _alias_rows(self, conn: Connection, model_id: int | None) -> dict[int, list[AliasInfo]]:
        query = (
            select(
                s.aliases.c.model_id,
                s.aliases.c.alias,
                s.versions.c.version,
                s.aliases.c.updated_at,
                s.aliases.c.actor,
            )
            .join(s.versions, s.versions.c.id == s.aliases.c.version_id)
            .order_by(s.aliases.c.alias)
        )
        if model_id is not None:
            query = query.where(s.aliases.c.model_id == model_id)
        found: dict[int, list[AliasInfo]] = defaultdict(list)
        for mid, alias, version, at, actor in conn.execute(query):
            found[int(mid)].append(AliasInfo(alias, int(version), at, actor))
        return found

    # -- aliases ---------------------------------------------------------------------------

    def set_alias(
        self, model: str, alias: str, version: VersionRef, *, actor: str, reason: str = ""
    ) -> AliasEvent:
        """Point `alias` at a version (not `champion`: that moves by promote and rollback)."""
        check_alias(alias)
        if alias == CHAMPION:
            raise InvalidArgument(
                f"the {CHAMPION!r} alias moves only through promote (which checks the gate) and "
                "rollback. Use `backline models promote` instead."
            )
        actor = required_text(actor, "actor", "who moves it")
        with self._db.write() as conn:
            model_id = self._model_id(conn, model, lock=True)
            _, number = self._resolve(conn, model, model_id, version)
            return self._move(conn, model, model_id, alias, number, "set", actor, reason)

    def promote(
        self,
        model: str,
        version: VersionRef,
        *,
        actor: str,
        reason: str = "",
        force: bool = False,
    ) -> AliasEvent:
        """Make a version the champion. Its latest gate record must have passed, against the
        current champion, unless `force` is given together with a reason."""
        actor = required_text(actor, "actor", "who promotes it")
        reason = (reason or "").strip()
        if force and not reason:
            raise InvalidArgument(
                "promote with force needs a reason: say why the gate is bypassed "
                "(--reason TEXT). It is kept in the audit log."
            )
        with self._db.write() as conn:
            model_id = self._model_id(conn, model, lock=True)
            version_id, number = self._resolve(conn, model, model_id, version)
            champion = self._pointer(conn, model_id, CHAMPION)
            if champion == number:
                raise InvalidArgument(f"{model} v{number} is already the champion; nothing to do.")
            gate = self._latest_gate(conn, version_id)
            problem = _gate_problem(model, number, gate, champion)
            if problem and not force:
                raise GateFailed(
                    f"refusing to promote {model} v{number}: {problem}. Run the gate for it, or "
                    "pass force with a reason (--force --reason TEXT)."
                )
            action = "force-promote" if problem else "promote"
            return self._move(conn, model, model_id, CHAMPION, number, action, actor, reason)

    def rollback(self, model: str, *, actor: str, reason: str) -> AliasEvent:
        """Move the champion back to the one before it, as the audit log tells."""
        actor = required_text(actor, "actor", "who rolls back")
        reason = required_text(reason, "reason", "why the champion is rolled back (--reason)")
        with self._db.write() as conn:
            model_id = self._model_id(conn, model, lock=True)
            history: list[int] = []  # champions in force, oldest first; a rollback pops one
            for e in self._events(conn, model, model_id, CHAMPION):
                if e.action == "rollback":
                    if history:
                        history.pop()
                elif e.new_version is not None:
                    history.append(e.new_version)
            if len(history) < 2:
                current = f"v{history[-1]}" if history else "none"
                raise InvalidArgument(
                    f"{model} has no earlier champion to roll back to (champion: {current}). "
                    "Promote a version instead."
                )
            return self._move(
                conn, model, model_id, CHAMPION, history[-2], "rollback", actor, reason
            )

    def audit(self, model: str, alias: str | None = None) -> list[AliasEvent]:
        """Every alias move of `model` (or of one alias), oldest first."""
        with self._db.read() as conn:
            model_id = self._model_id(conn, model)
            return self._events(conn, model, model_id, alias)

    def _move(
        self,
        conn: Connection,
        model: str,
        model_id: int,
        alias: str,
        number: int,
        action: str,
        actor: str,
        reason: str,
    ) -> AliasEvent:
        old = self._pointer(conn, model_id, alias)
        if old == number:
            raise InvalidArgument(f"alias {alias!r} of {model} already points at v{number}.")
        version_id = self._version_id(conn, model, model_id, number)
        now = datetime.now(UTC)
        values = {"version_id": version_id, "updated_at": now, "actor": actor}
        if old is None:
            conn.execute(s.aliases.insert().values(model_id=model_id, alias=alias, **values))
        else:
            conn.execute(
                s.aliases.update()
                .where(s.aliases.c.model_id == model_id, s.aliases.c.alias == alias)
                .values(**values)
            )
        seq = _new_id(
            conn.execute(
                s.alias_events.insert().values(
                    model_id=model_id,
                    alias=alias,
                    action=action,
                    old_version=old,
                    new_version=number,
                    actor=actor,
                    reason=reason,
                    at=now,
                )
            )
        )
        return AliasEvent(seq, model, alias, action, old, number, actor, reason, now)

    def _pointer(self, conn: Connection, model_id: int, alias: str) -> int | None:
        found = conn.scalar(
            select(s.versions.c.version)
            .join(s.aliases, s.aliases.c.version_id == s.versions.c.id)
            .where(s.aliases.c.model_id == model_id, s.aliases.c.alias == alias)
        )
        return None if found is None else int(found)

    def _events(
        self, conn: Connection, model: str, model_id: int, alias: str | None
    ) -> list[AliasEvent]:
        query = select(s.alias_events).where(s.alias_events.c.model_id == model_id)
        if alias is not None:
            query = query.where(s.alias_events.c.alias == alias)
        return [
            AliasEvent(
                int(r.seq),
                model,
                r.alias,
                r.action,
                r.old_version,
                r.new_version,
                r.actor,
                r.reason,
                r.at,
            )
            for r in conn.execute(query.order_by(s.alias_events.c.seq))
        ]

    # -- gate records ----------------------------------------------------------------------

    def record_gate(self, model: str, version: VersionRef, record: GateRecord) -> None:
        """Append a gate outcome for a version; the latest one is what `promote` checks."""
        if not isinstance(record, GateRecord):
            raise SchemaError(f"record_gate needs a GateRecord, not {type(record).__name__}.")
        with self._db.write() as conn:
            model_id = self._model_id(conn, model)
            version_id, _ = self._resolve(conn, model, model_id, version)
            if record.champion_version is not None:
                self._version_id(conn, model, model_id, record.champion_version)
            conn.execute(
                s.gate_records.insert().values(
                    version_id=version_id,
                    passed=record.passed,
                    checks=[check_to_obj(c) for c in record.checks],
                    evaluated_at=record.evaluated_at,
                    eval_set_digest=record.eval_set_digest,
                    champion_version=record.champion_version,
                    recorded_at=datetime.now(UTC),
                )
            )

    def gate_of(self, model: str, version: VersionRef) -> GateRecord | None:
        """The latest gate record of a version, or None when it was never evaluated."""
        with self._db.read() as conn:
            model_id = self._model_id(conn, model)
            version_id, _ = self._resolve(conn, model, model_id, version)
            return self._latest_gate(conn, version_id)

    def _latest_gate(self, conn: Connection, version_id: int) -> GateRecord | None:
        row = conn.execute(
            select(s.gate_records)
            .where(s.gate_records.c.version_id == version_id)
            .order_by(s.gate_records.c.id.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        return GateRecord(
            passed=bool(row.passed),
            checks=tuple(check_from_obj(c) for c in row.checks),
            evaluated_at=row.evaluated_at,
            eval_set_digest=row.eval_set_digest,
            champion_version=row.champion_version,
        )

    # -- housekeeping ----------------------------------------------------------------------

    def gc(self, *, temp_older_than_s: float = 3600.0) -> GcResult:
        """Delete files no version can reach: orphans of writers killed before their commit."""
        with self._db.write() as conn:
            if conn.dialect.name == "postgresql":
                # Blocks new blob rows until we finish; waits for writers in flight.
                conn.exec_driver_sql("LOCK TABLE registry_blobs IN SHARE ROW EXCLUSIVE MODE")
            known = set(conn.scalars(select(s.blobs.c.sha256)))
            orphans = 0
            for sha, path in list(self.store.stored()):
                if sha not in known:
                    path.unlink(missing_ok=True)
                    orphans += 1
        temps = 0
        for path in list(self.store.stale_temp_files(temp_older_than_s)):
            path.unlink(missing_ok=True)
            temps += 1
        return GcResult(orphans, temps)

    # -- lookups ---------------------------------------------------------------------------

    def _model_id(self, conn: Connection, model: str, *, lock: bool = False) -> int:
        query = select(s.models.c.id).where(s.models.c.name == model)
        found = conn.scalar(query.with_for_update() if lock else query)
        if found is None:
            names = list(conn.scalars(select(s.models.c.name).order_by(s.models.c.name)))
            known = ", ".join(names) if names else "none yet"
            raise NotFoundError(
                f"no model {model!r} in the registry (models: {known}). Check the name, or "
                "register a version first."
            )
        return int(found)

    def _resolve(
        self, conn: Connection, model: str, model_id: int, ref: VersionRef
    ) -> tuple[int, int]:
        """(version row id, version number) of a version number, alias or "latest"."""
        if isinstance(ref, bool):
            raise InvalidArgument(f"version {ref!r} of {model}: give a number or an alias.")
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            number = int(ref)
            return self._version_id(conn, model, model_id, number), number
        if ref == "latest":
            newest = conn.execute(
                select(s.versions.c.id, s.versions.c.version)
                .where(s.versions.c.model_id == model_id)
                .order_by(s.versions.c.version.desc())
                .limit(1)
            ).one()
            return int(newest[0]), int(newest[1])
        row = conn.execute(
            select(s.aliases.c.version_id, s.versions.c.version)
            .join(s.versions, s.versions.c.id == s.aliases.c.version_id)
            .where(s.aliases.c.model_id == model_id, s.aliases.c.alias == ref)
        ).first()
        if row is None:
            names = [a.alias for a in self._alias_rows(conn, model_id).get(model_id, ())]
            raise NotFoundError(
                f"{model} has no version or alias {ref!r} (aliases: "
                f"{', '.join(names) or 'none'}). Give a version number, an alias, or 'latest'."
            )
        return int(row[0]), int(row[1])

    def _version_id(self, conn: Connection, model: str, model_id: int, number: int) -> int:
        found = conn.scalar(
            select(s.versions.c.id).where(
                s.versions.c.model_id == model_id, s.versions.c.version == number
            )
        )
        if found is None:
            top = conn.scalar(
                select(func.max(s.versions.c.version)).where(s.versions.c.model_id == model_id)
            )
            raise NotFoundError(
                f"{model} has no version {number}; its versions are 1 to {top}. "
                f"`backline models show {model}` lists them."
            )
        return int(found)

    def _newer(self, found: int) -> StoreError:
        return StoreError(
            f"{self._db.where()}: the registry schema is version {found}, written by a newer "
            f"backline (this one knows up to {s.SCHEMA_VERSION}); upgrade backline "
            "(pip install -U backline) to use it."
        )


# ---------------------------------------------------------------------------------------------
# helpers


def _gate_problem(model: str, number: int, gate: GateRecord | None, champion: int | None) -> str:
    if gate is None:
        return f"v{number} has no gate record"
    if not gate.passed:
        failed = ", ".join(c.name for c in gate.checks if not c.passed)
        return f"v{number} failed its gate ({failed})"
    if gate.champion_version != champion:
        then = f"v{gate.champion_version}" if gate.champion_version else "no champion"
        now = f"v{champion}" if champion else "none"
        return f"the gate compared v{number} with {then}, but the champion is now {now}"
    return ""


def _new_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _version(model: str, row: Row[Any], files: list[ArtifactInfo]) -> ModelVersion:
    return ModelVersion(
        model=model,
        version=int(row.version),
        created_at=row.created_at,
        actor=row.actor,
        description=row.description,
        content_digest=row.content_digest,
        artifacts=tuple(files),
        lineage=Lineage.from_columns(row._mapping),
    )
