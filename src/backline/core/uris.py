"""Store locations as URIs, and a reachability check for each kind.

file://.backline/offline        a folder, relative to the project folder
file:///var/lib/backline        an absolute folder
sqlite:///.backline/online.db   a SQLite file, relative (three slashes, as SQLAlchemy)
sqlite:////var/lib/online.db    an absolute SQLite file (four slashes)
redis://127.0.0.1:6379/0        a Redis database
postgresql://user@host:5432/db  a PostgreSQL database
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from backline.core.errors import ConfigError, StoreError

SCHEMES = ("file", "sqlite", "redis", "postgresql")


@dataclass(frozen=True)
class StoreURI:
    raw: str
    """The URI as written."""

    key: str
    """The config key it came from, for error messages."""

    scheme: str
    """file, sqlite, redis or postgresql."""

    path: Path | None = None
    """Resolved local path (file and sqlite only)."""

    host: str | None = None
    port: int | None = None
    database: str | None = None

    def __str__(self) -> str:
        return self.raw


def parse_uri(
    value: str, *, base: Path, key: str, schemes: tuple[str, ...] | None = None
) -> StoreURI:
    """Parse a store URI; relative file and sqlite paths resolve against `base`.

    `schemes` are those the store behind `key` accepts: an unknown scheme's error lists only
    them (default: every scheme backline knows)."""
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(
            f"{key} = {value!r} is not a URI. Write it as scheme://location, for example "
            "file://.backline/offline or sqlite:///.backline/online.db."
        )
    scheme, rest = value.split("://", 1)
    scheme = scheme.lower()
    if scheme in ("postgres", "postgresql+psycopg"):
        scheme = "postgresql"
    if scheme not in SCHEMES:
        accepted = schemes or SCHEMES
        raise ConfigError(
            f"{key} = {value!r} has unknown scheme {scheme!r}. Use "
            f"{' or '.join(s + '://' for s in accepted)}."
        )
    if scheme in ("file", "sqlite"):
        if scheme == "sqlite":
            if not rest.startswith("/"):
                raise ConfigError(
                    f"{key} = {value!r}: a SQLite URI needs three slashes for a relative path "
                    "(sqlite:///data/x.db) or four for an absolute one (sqlite:////tmp/x.db)."
                )
            rest = rest[1:]
        if not rest:
            raise ConfigError(f"{key} = {value!r} names no path. Add one after {scheme}://.")
        path = Path(rest)
        return StoreURI(value, key, scheme, path=path if path.is_absolute() else base / path)
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"{key} = {value!r} has a port that is not a number.") from None
    if not parts.hostname:
        raise ConfigError(f"{key} = {value!r} names no host. Write {scheme}://HOST:PORT/...")
    return StoreURI(
        value,
        key,
        scheme,
        host=parts.hostname,
        port=port or {"redis": 6379, "postgresql": 5432}[scheme],
        database=parts.path.lstrip("/") or None,
    )


def check_reachable(uri: StoreURI, timeout: float = 2.0) -> str:
    """Prove a store can be used; return a short description, or raise StoreError with the fix."""
    if uri.scheme == "file":
        assert uri.path is not None
        folder = uri.path
        probe = folder if folder.exists() else _nearest_existing(folder)
        if probe.exists() and not probe.is_dir():
            raise StoreError(f"{uri.key} = {uri.raw!r}: {probe} is a file, not a folder.")
        if not os.access(probe, os.W_OK):
            raise StoreError(
                f"{uri.key} = {uri.raw!r}: {probe} is not writable. Choose a folder you can write "
                "or fix its permissions."
            )
        return f"folder {folder}"
    if uri.scheme == "sqlite":
        assert uri.path is not None
        probe = _nearest_existing(uri.path.parent)
        if not os.access(probe, os.W_OK):
            raise StoreError(f"{uri.key} = {uri.raw!r}: cannot create files under {probe}.")
        if uri.path.exists():
            try:
                with sqlite3.connect(f"file:{uri.path}?mode=ro", uri=True) as con:
                    con.execute("PRAGMA schema_version").fetchone()
            except sqlite3.DatabaseError as exc:
                raise StoreError(
                    f"{uri.key} = {uri.raw!r}: {uri.path} is not a SQLite database ({exc})."
                ) from None
        return f"sqlite file {uri.path}"
    if uri.scheme == "redis":
        return _check_redis(uri, timeout)
    return _check_postgres(uri, timeout)


def _check_redis(uri: StoreURI, timeout: float) -> str:
    try:
        import redis
    except ImportError:
        raise StoreError(
            f"{uri.key} = {uri.raw!r} needs the Redis client: pip install 'backline[redis]'."
        ) from None
    try:
        client = redis.Redis.from_url(
            uri.raw, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        client.ping()
        version = client.info("server").get("redis_version", "?")
        client.close()
    except (redis.RedisError, OSError) as exc:
        raise StoreError(
            f"{uri.key} = {uri.raw!r}: Redis is not answering ({_short(exc)}). Start it, or point "
            f"{uri.key} (or BACKLINE_{uri.key.replace('.', '_').upper()}) at a running server."
        ) from None
    return f"redis {version} at {uri.host}:{uri.port}"


def _check_postgres(uri: StoreURI, timeout: float) -> str:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            f"{uri.key} = {uri.raw!r} needs the PostgreSQL driver: pip install 'backline[postgres]'."
        ) from None
    try:
        with psycopg.connect(uri.raw, connect_timeout=max(1, int(timeout))) as con:
            row = con.execute("SHOW server_version").fetchone()
    except (psycopg.Error, OSError) as exc:
        raise _postgres_error(uri, exc) from None
    return f"postgresql {row[0] if row else '?'} at {uri.host}:{uri.port}"


def _postgres_error(uri: StoreURI, exc: BaseException) -> StoreError:
    """Tell a server that is down from one that answers but cannot give us the database."""
    text = str(exc)
    where = f"{uri.key} = {uri.raw!r}"
    env = f"BACKLINE_{uri.key.replace('.', '_').upper()}"
    missing = re.search(r'database "([^"]+)" does not exist', text)
    if missing:
        name = missing.group(1)
        return StoreError(
            f"{where}: PostgreSQL at {uri.host}:{uri.port} is running, but database {name!r} "
            f"does not exist. Create it with `createdb -h {uri.host} -p {uri.port} {name}`, or "
            f"fix the database name in {uri.key} (or {env})."
        )
    refused = re.search(r"FATAL:\s*(.+)", text)
    if refused:
        return StoreError(
            f"{where}: PostgreSQL at {uri.host}:{uri.port} is running, but refused the "
            f"connection ({refused.group(1).strip()}). Fix the user, password or database in "
            f"{uri.key} (or {env})."
        )
    return StoreError(
        f"{where}: PostgreSQL is not answering ({_short(exc)}). Start it, or point {uri.key} "
        f"(or {env}) at a running server."
    )


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path("/")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
