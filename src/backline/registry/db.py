"""The registry's database connection: SQLite or PostgreSQL, with errors a user can act on.

    db = Database(cfg.store_uri("registry"))
    with db.write() as conn:      # SQLite: BEGIN IMMEDIATE; PostgreSQL: an ordinary transaction
        ...
    with db.read() as conn:       # a consistent snapshot for multi-query reads
        ...

Driver errors leave here as StoreErrors that name the URI (password masked) and the fix.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, OperationalError

from backline.core.errors import ConfigError, StoreError
from backline.core.uris import StoreURI

#: Seconds to wait for PostgreSQL to accept a connection, and for a SQLite write lock.
CONNECT_TIMEOUT_S = 5
SQLITE_LOCK_TIMEOUT_S = 30


class Database:
    def __init__(self, uri: StoreURI) -> None:
        self.uri = uri
        self.engine = _engine(uri)

    @property
    def dialect(self) -> str:
        """'sqlite' or 'postgresql'."""
        return self.engine.dialect.name

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self) -> Iterator[Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except DBAPIError as exc:
            raise self.error(exc) from None

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A transaction that holds the SQLite write lock from its first statement."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(backline_write=True)
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            raise self.error(exc) from None

    def where(self) -> str:
        """`registry.uri = '...'` for the start of an error message."""
        return f"{self.uri.key} = {masked(self.uri.raw)!r}"

    def error(self, exc: DBAPIError) -> StoreError:
        first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        env = "BACKLINE_" + self.uri.key.replace(".", "_").upper()
        if isinstance(exc, OperationalError) and self.dialect == "postgresql":
            return StoreError(
                f"{self.where()}: PostgreSQL is not answering ({first}). Start it, or point "
                f"{self.uri.key} (or {env}) at a running server."
            )
        if isinstance(exc, OperationalError):
            return StoreError(
                f"{self.where()}: the SQLite registry cannot be used ({first}). If another "
                "process holds it, retry when it is done; otherwise check the file's permissions."
            )
        return StoreError(
            f"{self.where()}: the registry database refused an operation ({first}). If it is "
            "not a backline registry, point registry.uri at another database."
        )


def _engine(uri: StoreURI) -> Engine:
    if uri.scheme == "sqlite":
        assert uri.path is not None
        try:
            uri.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"{uri.key} = {uri.raw!r}: cannot create {uri.path.parent} ({exc.strerror})."
            ) from None
        engine = create_engine(
            URL.create("sqlite+pysqlite", database=str(uri.path)),
            connect_args={"timeout": SQLITE_LOCK_TIMEOUT_S, "check_same_thread": False},
        )
        _sqlite_transactions(engine)
        return engine
    if uri.scheme == "postgresql":
        url = make_url("postgresql+psycopg://" + uri.raw.split("://", 1)[1])
        return create_engine(
            url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}, pool_pre_ping=True
        )
    # load_config already refuses other schemes for registry.uri
    raise ConfigError(f"{uri.key} = {uri.raw!r}: use sqlite:///PATH or postgresql://...")


def _sqlite_transactions(engine: Engine) -> None:
    """Let SQLAlchemy, not pysqlite, begin transactions, so writers can BEGIN IMMEDIATE."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        _wal(cursor)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writing = conn.get_execution_options().get("backline_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def _wal(cursor: Any) -> None:
    """Put the database in WAL mode, once. Switching modes needs the file to itself, and
    SQLite answers "database is locked" at once, without its busy timeout, while another
    connection (say, a second process creating the same new registry) has it open; so wait
    here, up to the lock timeout, as a writer would."""
    deadline = time.monotonic() + SQLITE_LOCK_TIMEOUT_S
    pause = 0.01
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.25)


def masked(raw: str) -> str:
    """The URI with any password replaced by ***."""
    parts = urlsplit(raw)
    if not parts.password:
        return raw
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
