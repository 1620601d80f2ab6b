"""The registry's tables, its schema version, and the migrations between versions.

    registry_schema_version  one row per schema version applied (version, applied_at, by)
    registry_models          id, name
    registry_versions        (model_id, version) unique; lineage as columns and JSON; immutable
    registry_blobs           sha256 -> size: one row per stored file content
    registry_artifacts       (version_id, name) -> sha256; immutable
    registry_aliases         (model_id, alias) -> version_id: the only mutable pointers
    registry_alias_events    append-only audit log of every alias move
    registry_gate_records    append-only gate outcomes per version (added in schema 2)

Every table name starts with `registry_` because the same database also holds run history.
Immutable tables carry triggers that refuse UPDATE and DELETE, so even a hand-written SQL
statement cannot rewrite history. A migration that must rewrite rows drops them first; the last
step of every migration reinstalls them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from backline import __version__

#: The schema this backline writes. Bump it with a new entry in MIGRATIONS.
SCHEMA_VERSION = 2


class UTCDateTime(TypeDecorator[datetime]):
    """Tz-aware UTC in, tz-aware UTC out, whatever the database keeps."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the registry; use UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json() -> Any:
    return JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


metadata = MetaData()

schema_version = Table(
    "registry_schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", UTCDateTime, nullable=False),
    Column("backline_version", String(32), nullable=False),
)

models = Table(
    "registry_models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
)

versions = Table(
    "registry_versions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("registry_models.id"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("description", Text, nullable=False),
    # lineage
    Column("training_set_digest", String(128), nullable=False),
    Column("feature_versions", _json(), nullable=False),
    Column("data_start", UTCDateTime, nullable=True),
    Column("data_end", UTCDateTime, nullable=True),
    Column("code_commit", String(64), nullable=True),
    Column("config_hash", String(128), nullable=False),
    Column("library_versions", _json(), nullable=False),
    Column("metrics", _json(), nullable=False),
    Column("checkpoint_id", String(255), nullable=True),
    Column("reference_profile", _json(), nullable=True),
    # schema 2; the default only exists so that ADD COLUMN works on old rows
    Column("content_digest", String(64), nullable=False, server_default=""),
    UniqueConstraint("model_id", "version", name="registry_versions_model_version"),
)

blobs = Table(
    "registry_blobs",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

artifacts = Table(
    "registry_artifacts",
    metadata,
    Column("version_id", Integer, ForeignKey("registry_versions.id"), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("sha256", String(64), ForeignKey("registry_blobs.sha256"), nullable=False),
    Column("size", BigInteger, nullable=False),
)

aliases = Table(
    "registry_aliases",
    metadata,
    Column("model_id", Integer, ForeignKey("registry_models.id"), primary_key=True),
    Column("alias", String(64), primary_key=True),
    Column("version_id", Integer, ForeignKey("registry_versions.id"), nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("actor", String(200), nullable=False),
)

alias_events = Table(
    "registry_alias_events",
    metadata,
    Column("seq", Integer, primary_key=True),
    Column("model_id", Integer, ForeignKey("registry_models.id"), nullable=False),
    Column("alias", String(64), nullable=False),
    Column("action", String(16), nullable=False),
    Column("old_version", Integer, nullable=True),
    Column("new_version", Integer, nullable=True),
    Column("actor", String(200), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Index("registry_alias_events_model", "model_id", "seq"),
)

gate_records = Table(
    "registry_gate_records",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version_id", Integer, ForeignKey("registry_versions.id"), nullable=False),
    Column("passed", Boolean, nullable=False),
    Column("checks", _json(), nullable=False),
    Column("evaluated_at", UTCDateTime, nullable=False),
    Column("eval_set_digest", String(128), nullable=False),
    Column("champion_version", Integer, nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),
    Index("registry_gate_records_version", "version_id", "id"),
)

#: Tables whose rows are never updated or deleted once written.
IMMUTABLE = (
    "registry_versions",
    "registry_artifacts",
    "registry_alias_events",
    "registry_gate_records",
)


def content_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 over sorted "name NUL sha256 LF" lines: the identity of a version's files."""
    h = hashlib.sha256()
    for name, sha in sorted(pairs):
        h.update(f"{name}\0{sha}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# create, read, migrate (each called inside one write transaction by the store)


def installed_version(conn: Connection) -> int | None:
    """The schema version of the database, or None when it holds no registry at all."""
    if not inspect(conn).has_table(schema_version.name):
        return None
    found = conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc()))
    top = found.first()
    return int(top[0]) if top else None


def foreign_tables(conn: Connection) -> list[str]:
    """registry_* tables present without a schema version: someone else's, or a broken create."""
    return sorted(t for t in inspect(conn).get_table_names() if t.startswith("registry_"))


def create(conn: Connection) -> None:
    metadata.create_all(conn)
    install_triggers(conn, IMMUTABLE)
    _stamp(conn, SCHEMA_VERSION)


def migrate(conn: Connection, found: int) -> list[int]:
    """Upgrade from schema `found` to SCHEMA_VERSION, one step at a time; returns the steps."""
    done = []
    for step in range(found, SCHEMA_VERSION):
        MIGRATIONS[step](conn)
        _stamp(conn, step + 1)
        done.append(step + 1)
    return done


def _stamp(conn: Connection, version: int) -> None:
    conn.execute(
        schema_version.insert().values(
            version=version, applied_at=datetime.now(UTC), backline_version=__version__
        )
    )


def _v1_to_v2(conn: Connection) -> None:
    """Schema 2 records each version's content digest and adds gate records.

    The digest of an existing version is computed from its artifact rows, so old versions can
    be compared and deduplicated like new ones. Immutability triggers arrive with this schema.
    """
    conn.exec_driver_sql(
        "ALTER TABLE registry_versions ADD COLUMN content_digest VARCHAR(64) NOT NULL DEFAULT ''"
    )
    files: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for version_id, name, sha in conn.execute(
        select(artifacts.c.version_id, artifacts.c.name, artifacts.c.sha256)
    ):
        files[int(version_id)].append((name, sha))
    for version_id, pairs in files.items():
        conn.execute(
            update(versions)
            .where(versions.c.id == version_id)
            .values(content_digest=content_digest(pairs))
        )
    gate_records.create(conn)
    install_triggers(conn, IMMUTABLE)


#: MIGRATIONS[n] upgrades schema n to n + 1, inside the caller's transaction.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2}


def install_triggers(conn: Connection, tables: Iterable[str]) -> None:
    """(Re)create the triggers that make `tables` append-only."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION registry_refuse_change() RETURNS trigger "
            "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION USING MESSAGE = "
            "'backline registry: rows of ' || TG_TABLE_NAME || ' are immutable'; END $$"
        )
    for table in tables:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_immutable ON {table}")
            conn.exec_driver_sql(
                f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION registry_refuse_change()"
            )
        else:
            for event in ("UPDATE", "DELETE"):
                name = f"{table}_no_{event.lower()}"
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
                conn.exec_driver_sql(
                    f"CREATE TRIGGER {name} BEFORE {event} ON {table} BEGIN "
                    f"SELECT RAISE(ABORT, 'backline registry: rows of {table} are immutable'); "
                    "END"
                )
