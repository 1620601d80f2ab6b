"""The embedded online store: one SQLite file (WAL), one row per (view, version, entity).

A read of many entities and views is one statement (a UNION ALL of primary-key lookups, one
arm per view). A materialization step is one `BEGIN IMMEDIATE` transaction holding the values
and the batches it applied, so a crash leaves the old state or the new one.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from operator import itemgetter
from pathlib import Path

from backline.core.errors import StoreError
from backline.core.faults import maybe_fail
from backline.features.online.store import OnlineStore, OnlineTransaction, T

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS online_features (
    view TEXT NOT NULL,
    version TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (view, version, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS applied_batches (
    view TEXT NOT NULL,
    version TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (view, version, batch_id)
) WITHOUT ROWID;
"""
_MAX_PARAMS = 30_000
_FETCH = 256
_CHUNK = 5_000


Arms = tuple[tuple[int, int, int, int], ...]
"""Per group with keys: its index, the parameter number of its view (its version is the next),
of its first key, and its number of keys. Groups with the same key list share its parameters
(`?NNN`), so each key is bound once however many views look it up."""


def _arms(groups: Sequence[tuple[str, str, Sequence[str]]]) -> tuple[Arms, list[str]]:
    params: list[str] = []
    arms: list[tuple[int, int, int, int]] = []
    bound: dict[int, int] = {}  # id of a key list -> the number of its first parameter
    for i, (view, version, keys) in enumerate(groups):
        if not keys:
            continue
        at = len(params) + 1
        params.append(view)
        params.append(version)
        first = bound.get(id(keys))
        if first is None:
            first = bound[id(keys)] = len(params) + 1
            params.extend(keys)
        arms.append((i, at, first, len(keys)))
    return tuple(arms), params


@lru_cache(maxsize=512)
def _read_sql(arms: Arms) -> str:
    """One SELECT for all groups (see `Arms`): (group, key, value) of the stored keys."""
    return " UNION ALL ".join(
        f"SELECT {i}, key, value FROM online_features WHERE view = ?{v} AND version = ?{v + 1} "
        f"AND key IN ({','.join(f'?{k}' for k in range(first, first + n))})"
        for i, v, first, n in arms
    )


@lru_cache(maxsize=512)
def _aligned_sql(arms: Arms) -> tuple[str, tuple[int, ...]]:
    """One SELECT for all groups (see `Arms`): (value or NULL, position) of every key, group
    after group, each in its keys' order: the keys are a VALUES list left-joined to the table
    (SQLite scans the left side of a LEFT JOIN in the outer loop, in order). The positions
    it returns must be 0, 1, 2, ... (the second item), or the order is not trusted."""
    starts = [0]
    for _, _, _, n in arms:
        starts.append(starts[-1] + n)
    sql = " UNION ALL ".join(
        f"SELECT o.value, k.column1 FROM (VALUES "
        f"{','.join(f'({at + j}, ?{first + j})' for j in range(n))}) AS k "
        f"LEFT JOIN online_features AS o "
        f"ON o.view = ?{v} AND o.version = ?{v + 1} AND o.key = k.column2"
        for (_, v, first, n), at in zip(arms, starts, strict=False)
    )
    return sql, tuple(range(starts[-1]))


@lru_cache(maxsize=512)
def _single_sql(looked: tuple[int, ...]) -> str:
    """One SELECT of (group, value) for one key of each of the groups `looked`."""
    return " UNION ALL ".join(
        f"SELECT {i}, value FROM online_features WHERE view = ? AND version = ? AND key = ?"
        for i in looked
    )


_VALUE = itemgetter(0)
_POSITION = itemgetter(1)


class SQLiteOnlineStore(OnlineStore):
    kind = "sqlite"

    def __init__(self, path: Path, uri: str) -> None:
        self.path = path
        self.uri = uri
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"online.uri = {uri!r}: cannot create {path.parent} ({exc.strerror}). Point "
                "online.uri (or BACKLINE_ONLINE_URI) at a folder you can write."
            ) from None
        con = self._con()
        try:
            con.executescript(_SCHEMA)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"online store {path} has schema version {row[0]}, newer than this backline "
                    f"understands ({SCHEMA_VERSION}). Upgrade backline."
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"online.uri = {uri!r}: {path} cannot be used as an online store ({exc}). Move it "
                "aside and run `backline features materialize` again."
            ) from None

    def _con(self) -> sqlite3.Connection:
        con: sqlite3.Connection | None = getattr(self._local, "con", None)
        if con is None:
            try:
                con = sqlite3.connect(
                    self.path,
                    timeout=30,
                    isolation_level=None,
                    check_same_thread=False,
                    cached_statements=512,
                )
                con.execute("PRAGMA page_size=16384")  # only takes effect on a new file
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=NORMAL")
                con.execute("PRAGMA mmap_size=1073741824")
            except sqlite3.Error as exc:
                raise StoreError(
                    f"online.uri = {self.uri!r}: cannot open {self.path} ({exc})."
                ) from None
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def read(self, groups: Sequence[tuple[str, str, Sequence[str]]]) -> list[dict[str, bytes]]:
        out: list[dict[str, bytes]] = [{} for _ in groups]
        arms, params = _arms(groups)
        if not arms:
            return out
        con = self._con()
        try:
            if len(params) <= _MAX_PARAMS:
                for i, key, value in con.execute(_read_sql(arms), params):
                    out[i][key] = value
                return out
            con.execute("BEGIN")  # one snapshot across the chunks
            try:
                for i, (view, version, keys) in enumerate(groups):
                    out[i].update(_select(con, view, version, keys))
            finally:
                con.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"online store {self.path}: read failed ({exc}).") from None
        return out

    def read_aligned(
        self, groups: Sequence[tuple[str, str, Sequence[str]]]
    ) -> list[list[bytes | None]]:
        out: list[list[bytes | None]] = [[None] * len(keys) for _, _, keys in groups]
        if all(len(keys) < 2 for _, _, keys in groups):  # a key per group (a read of one row)
            looked = tuple(i for i, (_, _, keys) in enumerate(groups) if keys)
            if not looked:
                return out
            params = [x for i in looked for x in (groups[i][0], groups[i][1], groups[i][2][0])]
            try:
                for i, value in self._con().execute(_single_sql(looked), params):
                    out[i][0] = value
            except sqlite3.Error as exc:
                raise StoreError(f"online store {self.path}: read failed ({exc}).") from None
            return out
        arms, params = _arms(groups)
        if len(params) > _MAX_PARAMS:
            return super().read_aligned(groups)
        sql, positions = _aligned_sql(arms)
        values: list[bytes | None] = []
        try:
            cursor = self._con().execute(sql, params)
            # in chunks: fewer row tuples alive at once (each one counts towards a collection
            # of the garbage collector's youngest generation, every 700)
            while rows := cursor.fetchmany(_FETCH):
                at = len(values)
                if tuple(map(_POSITION, rows)) != positions[at : at + len(rows)]:
                    cursor.close()  # not in the keys' order after all
                    return super().read_aligned(groups)
                values.extend(map(_VALUE, rows))
        except sqlite3.Error as exc:
            raise StoreError(f"online store {self.path}: read failed ({exc}).") from None
        if len(values) != len(positions):
            return super().read_aligned(groups)
        at = 0
        for i, _, _, n in arms:
            out[i] = values[at : at + n]
            at += n
        return out

    def transact(self, view: str, version: str, work: Callable[[OnlineTransaction], T]) -> T:
        con = self._con()
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StoreError(
                f"online store {self.path} is locked by another writer ({exc}). Wait for it to "
                "finish and run again."
            ) from None
        try:
            result = work(_Transaction(con, view, version))
            maybe_fail("online_before_commit")  # crash tests SIGKILL here
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return result

    def applied_batches(self, view: str, version: str) -> set[str]:
        rows = self._con().execute(
            "SELECT batch_id FROM applied_batches WHERE view = ? AND version = ?", (view, version)
        )
        return {r[0] for r in rows}

    def entity_keys(self, view: str, version: str) -> list[str]:
        rows = self._con().execute(
            "SELECT key FROM online_features WHERE view = ? AND version = ? ORDER BY key",
            (view, version),
        )
        return [r[0] for r in rows]

    def clear(self) -> None:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        con.execute("DELETE FROM online_features")
        con.execute("DELETE FROM applied_batches")
        con.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                con.close()
            self._all.clear()
        self._local = threading.local()


def _select(
    con: sqlite3.Connection, view: str, version: str, keys: Sequence[str]
) -> Iterator[tuple[str, bytes]]:
    for start in range(0, len(keys), _CHUNK):
        chunk = list(keys[start : start + _CHUNK])
        sql = (
            "SELECT key, value FROM online_features WHERE view = ? AND version = ? AND key IN "
            f"({','.join('?' * len(chunk))})"
        )
        yield from con.execute(sql, [view, version, *chunk])


class _Transaction(OnlineTransaction):
    def __init__(self, con: sqlite3.Connection, view: str, version: str) -> None:
        self.con, self.view, self.version = con, view, version

    def get(self, keys: Sequence[str]) -> dict[str, bytes]:
        return dict(_select(self.con, self.view, self.version, keys))

    def put(self, items: Sequence[tuple[str, bytes]]) -> None:
        view, version = self.view, self.version
        self.con.executemany(  # in key order: B-tree pages fill in sequence, 2-4x faster
            "INSERT OR REPLACE INTO online_features VALUES (?, ?, ?, ?)",
            ((view, version, key, value) for key, value in sorted(items)),
        )

    def applied(self) -> set[str]:
        rows = self.con.execute(
            "SELECT batch_id FROM applied_batches WHERE view = ? AND version = ?",
            (self.view, self.version),
        )
        return {r[0] for r in rows}

    def mark_applied(self, batch_ids: Sequence[str]) -> None:
        now = datetime.now(UTC).isoformat()
        self.con.executemany(
            "INSERT OR IGNORE INTO applied_batches VALUES (?, ?, ?, ?)",
            ((self.view, self.version, b, now) for b in batch_ids),
        )

    def clear_applied(self) -> None:
        self.con.execute(
            "DELETE FROM applied_batches WHERE view = ? AND version = ?", (self.view, self.version)
        )
