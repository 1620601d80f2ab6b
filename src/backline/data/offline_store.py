"""The offline store: Hive-partitioned Parquet, made visible one whole batch at a time.

Layout under the store root (offline.uri):

    source=transactions/event_date=2026-01-01/part-<batch_id>-0.parquet   accepted rows
    keys/source=transactions/part-<batch_id>.npy                          their key hashes
    quarantine/source=transactions/part-<batch_id>.parquet                rejected rows, with reasons
    quarantine/files/<batch_id>/<name>                                    unreadable files, kept whole
    _staging/<batch_id>/...                                               a batch being written
    .lock                                                                 one writer at a time
    predictions/date=2026-01-01/<worker>-<seq>.parquet                    the model server's log

A SQLite catalog (offline.catalog) lists committed batches and their files. Readers see only
files the catalog lists, so a batch is all there or not there at all:

    1. write every file under _staging/<batch_id>/ and fsync it
    2. rename each file to its final place, fsync its folder and every folder above it up to
       the root (a folder made by this batch is an entry in its parent)
    3. one SQLite transaction inserts the batch, its files and its statistics  <- commit point

A writer killed before step 3 leaves files that no committed batch names; the next writer
deletes them before it starts (`recover`).

The prediction log (backline.serve.predlog) is the one writer that bypasses the catalog: each
server process appends many small files a day, each renamed into place whole, so a file is
there or not and the `predictions` view reads whatever `*.parquet` files exist when a query
runs. Its folder and core columns are defined here, below the serve layer that writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from backline.core.config import Config, SourceSpec
from backline.core.errors import StoreError
from backline.core.faults import maybe_fail
from backline.core.files import fsync_dir
from backline.core.types import DUCKDB_TYPES

PREDICTIONS_DIR = "predictions"
"""Folder of the prediction log under the offline root: `predictions/date=YYYY-MM-DD/*.parquet`."""

PREDICTIONS_PARTITION = "date"
"""The Hive partition column of the prediction log: the UTC date of `scored_at`."""

PREDICTION_COLUMNS: dict[str, pa.DataType] = {
    "request_id": pa.string(),
    "scored_at": pa.timestamp("us", tz="UTC"),
    "model": pa.string(),
    "model_version": pa.int64(),
    "score": pa.float64(),
    "latency_ms": pa.float64(),
    "queue_ms": pa.float64(),
    "batch_size": pa.int32(),
    "degraded": pa.bool_(),
}
"""Columns every prediction-log row has, and their Arrow types. Entity keys, passthrough ids,
request fields and `feature__<name>` columns follow; they vary with the model version."""

_PREDICTION_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
}

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    input TEXT NOT NULL,
    rows_in INTEGER NOT NULL,
    rows_accepted INTEGER NOT NULL,
    rows_quarantined INTEGER NOT NULL,
    quarantine_reasons TEXT NOT NULL,
    warnings TEXT NOT NULL,
    min_event_time TEXT,
    max_event_time TEXT,
    ingested_at TEXT NOT NULL,
    UNIQUE (source, content_hash)
);
CREATE TABLE IF NOT EXISTS batch_files (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    kind TEXT NOT NULL CHECK (kind IN ('data', 'quarantine', 'kept', 'keys')),
    path TEXT NOT NULL,
    rows INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS batch_files_by_batch ON batch_files(batch_id);
CREATE TABLE IF NOT EXISTS batch_stats (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    source TEXT NOT NULL,
    column_name TEXT NOT NULL,
    stats TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class BatchRecord:
    """A committed batch as the catalog holds it."""

    batch_id: str
    source: str
    content_hash: str
    input: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    warnings: tuple[str, ...]
    min_event_time: str | None
    max_event_time: str | None
    ingested_at: str


@dataclass(frozen=True)
class StagedFile:
    """A file written under _staging, and where it goes on commit (paths relative to root)."""

    staged: Path
    final: str
    kind: str
    rows: int


class OfflineStore:
    """Open the store of a project: `OfflineStore.open(cfg)`."""

    def __init__(self, root: Path, catalog: Path) -> None:
        self.root = root
        self.catalog_path = catalog

    @classmethod
    def open(cls, cfg: Config) -> OfflineStore:
        root = cfg.store_uri("offline").path
        catalog = cfg.catalog_uri.path
        assert root is not None and catalog is not None
        store = cls(root, catalog)
        try:
            root.mkdir(parents=True, exist_ok=True)
            catalog.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"offline.uri = {cfg.offline.uri!r}: cannot create {root} ({exc.strerror}). "
                "Point it at a folder you can write."
            ) from None
        with store._connect() as con:
            con.executescript(_SCHEMA)
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) < SCHEMA_VERSION:
                _migrate(con, int(row[0]))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"catalog {catalog} has schema version {row[0]}, newer than this backline "
                    f"understands ({SCHEMA_VERSION}). Upgrade backline."
                )
        return store

    # -- catalog ------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            con = sqlite3.connect(self.catalog_path, timeout=30, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open catalog {self.catalog_path} ({exc}).") from None
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            yield con
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"catalog {self.catalog_path} cannot be used ({exc}). Restore it from a backup "
                "or move it aside to start an empty store."
            ) from None
        finally:
            con.close()

    def find_batch(self, source: str, content_hash: str) -> BatchRecord | None:
        with self._connect() as con:
            row = con.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE source = ? AND content_hash = ?",
                (source, content_hash),
            ).fetchone()
        return _batch(row) if row else None

    def batches(self, source: str | None = None) -> list[BatchRecord]:
        query = f"SELECT {_BATCH_COLUMNS} FROM batches"
        args: tuple[str, ...] = ()
        if source is not None:
            query += " WHERE source = ?"
            args = (source,)
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY ingested_at, batch_id", args).fetchall()
        return [_batch(r) for r in rows]

    def files(self, kind: str, source: str | None = None) -> list[Path]:
        query = "SELECT f.path FROM batch_files f JOIN batches b USING (batch_id) WHERE f.kind = ?"
        args: tuple[str, ...] = (kind,)
        if source is not None:
            query += " AND b.source = ?"
            args = (kind, source)
        with self._connect() as con:
            rows = con.execute(query + " ORDER BY f.path", args).fetchall()
        return [self.root / r[0] for r in rows]

    def key_index(self, source: str) -> tuple[np.ndarray, list[Path]]:
        """(sorted key hashes of every committed batch that has a key file, data files of the
        batches that have none: those written before key files existed)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT f.batch_id, f.kind, f.path FROM batch_files f JOIN batches b "
                "USING (batch_id) WHERE b.source = ? AND f.kind IN ('data', 'keys')",
                (source,),
            ).fetchall()
        indexed = {batch for batch, kind, _ in rows if kind == "keys"}
        parts = [np.load(self.root / path) for _, kind, path in rows if kind == "keys"]
        unindexed = [
            self.root / path
            for batch, kind, path in rows
            if kind == "data" and batch not in indexed
        ]
        if not parts:
            hashes = np.zeros(0, dtype=np.uint64)
        else:  # each part is sorted; one part needs no work
            hashes = parts[0] if len(parts) == 1 else np.sort(np.concatenate(parts))
        return hashes, unindexed

    def sources(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT DISTINCT source FROM batches ORDER BY 1")]

    def stats_rows(self) -> list[tuple[str, str, str, str]]:
        with self._connect() as con:
            return con.execute(
                "SELECT batch_id, source, column_name, stats FROM batch_stats ORDER BY 1, 2, 3"
            ).fetchall()

    # -- writing ------------------------------------------------------------------------------

    @contextmanager
    def writer_lock(self, wait_s: float = 60.0) -> Iterator[None]:
        """Hold the store's single-writer lock; recover from a crashed writer first."""
        path = self.root / ".lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise StoreError(
                            f"another backline process is writing to {self.root} and has held "
                            f"the lock for over {wait_s:.0f} s. Wait for it or stop it."
                        ) from None
                    time.sleep(0.05)
            self.recover()
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def staging_dir(self, batch_id: str) -> Path:
        path = self.root / "_staging" / batch_id
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def discard_staging(self, batch_id: str) -> None:
        """After a write that failed with the lock still held: remove what the batch staged,
        and any file it had already moved into place (no committed batch names those)."""
        shutil.rmtree(self.root / "_staging" / batch_id, ignore_errors=True)
        with contextlib.suppress(OSError):
            (self.root / "_staging").rmdir()
        with contextlib.suppress(StoreError, OSError):  # a broken catalog: the next writer will
            self.recover()

    def recover(self) -> list[str]:
        """Delete files no committed batch owns: leftovers of a writer that died."""
        removed: list[str] = []
        staging = self.root / "_staging"
        if staging.exists():
            shutil.rmtree(staging)
            removed.append("_staging")
        with self._connect() as con:
            owned = {r[0] for r in con.execute("SELECT path FROM batch_files")}
        for folder in [*self.root.glob("source=*"), self.root / "quarantine", self.root / "keys"]:
            if not folder.exists():
                continue
            for path in folder.rglob("*"):
                if path.is_file() and str(path.relative_to(self.root)) not in owned:
                    path.unlink()
                    removed.append(str(path.relative_to(self.root)))
        return removed

    def commit(
        self,
        batch: BatchRecord,
        files: Sequence[StagedFile],
        stats: dict[str, dict[str, object]],
    ) -> None:
        """Move staged files into place, then make the batch visible in one transaction."""
        touched: set[Path] = set()
        for i, item in enumerate(files):
            target = self.root / item.final
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item.staged, target)
            # the file's folder, and every folder up to the root: a folder made by this batch
            # (or by a killed writer, never synced) is an entry in its parent
            touched.update(target.relative_to(self.root).parents)
            if i == len(files) // 2:
                maybe_fail("ingest_mid_move")
        for folder in sorted(touched, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(self.root / folder)  # deepest first
        maybe_fail("ingest_before_commit")
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute(
                f"INSERT INTO batches ({_BATCH_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                (
                    batch.batch_id,
                    batch.source,
                    batch.content_hash,
                    batch.input,
                    batch.rows_in,
                    batch.rows_accepted,
                    batch.rows_quarantined,
                    json.dumps(batch.quarantine_reasons, sort_keys=True),
                    json.dumps(list(batch.warnings)),
                    batch.min_event_time,
                    batch.max_event_time,
                    batch.ingested_at,
                ),
            )
            con.executemany(
                "INSERT INTO batch_files VALUES (?, ?, ?, ?)",
                [(batch.batch_id, f.kind, f.final, f.rows) for f in files],
            )
            con.executemany(
                "INSERT INTO batch_stats VALUES (?, ?, ?, ?)",
                [
                    (batch.batch_id, batch.source, column, json.dumps(values, default=str))
                    for column, values in stats.items()
                ],
            )
            con.execute("COMMIT")
        shutil.rmtree(self.root / "_staging" / batch.batch_id, ignore_errors=True)
        with contextlib.suppress(OSError):  # another writer's batch may be staging there
            (self.root / "_staging").rmdir()

    # -- reading ------------------------------------------------------------------------------

    def has_predictions(self) -> bool:
        """Whether the prediction log holds at least one file (stops at the first it finds)."""
        return next(self.root.glob(_PREDICTIONS_GLOB), None) is not None

    def connect_duckdb(
        self, sources: Iterable[SourceSpec], threads: int | None = None
    ) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with one view per source, plus quarantine, predictions, batches
        and batch_stats."""
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        for spec in sources:
            con.execute(f'CREATE VIEW "{spec.name}" AS {self.source_sql(spec)}')
        quarantine = self.files("quarantine")
        if quarantine:
            con.execute(
                f"CREATE VIEW quarantine AS SELECT * FROM read_parquet({_list(quarantine)}, "
                "hive_partitioning = true)"
            )
        else:
            con.execute(
                "CREATE VIEW quarantine AS SELECT NULL::VARCHAR AS batch_id, NULL::VARCHAR AS file, "
                'NULL::BIGINT AS line, NULL::VARCHAR AS reason, NULL::VARCHAR AS "column", '
                "NULL::VARCHAR AS message, NULL::VARCHAR AS raw_record, "
                "NULL::TIMESTAMPTZ AS ingested_at, NULL::VARCHAR AS source WHERE false"
            )
        con.execute(f"CREATE VIEW {PREDICTIONS_DIR} AS {self.predictions_sql()}")
        rows = [
            (
                b.batch_id,
                b.source,
                b.input,
                b.rows_in,
                b.rows_accepted,
                b.rows_quarantined,
                json.dumps(b.quarantine_reasons),
                b.min_event_time,
                b.max_event_time,
                b.ingested_at,
            )
            for b in self.batches()
        ]
        con.execute(
            "CREATE TABLE batches (batch_id VARCHAR, source VARCHAR, input VARCHAR, rows_in BIGINT, "
            "rows_accepted BIGINT, rows_quarantined BIGINT, quarantine_reasons JSON, "
            "min_event_time TIMESTAMPTZ, max_event_time TIMESTAMPTZ, ingested_at TIMESTAMPTZ)"
        )
        if rows:
            con.executemany(f"INSERT INTO batches VALUES ({', '.join('?' * 10)})", rows)
        con.execute(
            "CREATE TABLE batch_stats (batch_id VARCHAR, source VARCHAR, column_name VARCHAR, "
            "stats JSON)"
        )
        stats = self.stats_rows()
        if stats:
            con.executemany("INSERT INTO batch_stats VALUES (?, ?, ?, ?)", stats)
        return con

    def source_sql(self, spec: SourceSpec) -> str:
        """SQL that reads the committed rows of one source (typed and empty if none yet)."""
        files = self.files("data", spec.name)
        if files:
            return (
                f"SELECT * FROM read_parquet({_list(files)}, hive_partitioning = true, "
                "union_by_name = true)"
            )
        columns = [f'NULL::{DUCKDB_TYPES[c.type]} AS "{c.name}"' for c in spec.columns]
        columns += [
            "NULL::TIMESTAMPTZ AS ingested_at",
            "NULL::VARCHAR AS batch_id",
            "NULL::DATE AS event_date",
            "NULL::VARCHAR AS source",
        ]
        return f"SELECT {', '.join(columns)} WHERE false"

    def predictions_sql(self) -> str:
        """SQL that reads the prediction log. The glob is expanded each time a query runs, so
        files written later are seen; with no file yet, an empty view of the core columns
        (DuckDB fails on a glob that matches nothing). Files differ in columns when model
        versions use different features: `union_by_name` gives NULL where a file lacks one."""
        if self.has_predictions():
            pattern = str(self.root / _PREDICTIONS_GLOB).replace("'", "''")
            return (
                f"SELECT * FROM read_parquet('{pattern}', hive_partitioning = true, "
                f"hive_types = {{'{PREDICTIONS_PARTITION}': DATE}}, union_by_name = true)"
            )
        columns = [
            f'NULL::{_PREDICTION_DUCKDB_TYPES[t]} AS "{c}"' for c, t in PREDICTION_COLUMNS.items()
        ]
        columns.append(f'NULL::DATE AS "{PREDICTIONS_PARTITION}"')
        return f"SELECT {', '.join(columns)} WHERE false"


_PREDICTIONS_GLOB = f"{PREDICTIONS_DIR}/{PREDICTIONS_PARTITION}=*/*.parquet"

_BATCH_COLUMNS = (
    "batch_id, source, content_hash, input, rows_in, rows_accepted, rows_quarantined, "
    "quarantine_reasons, warnings, min_event_time, max_event_time, ingested_at"
)


def _migrate(con: sqlite3.Connection, version: int) -> None:
    """Upgrade an older catalog in one transaction, keeping every row."""
    steps = ["BEGIN IMMEDIATE;"]
    if version < 2:  # v2: primary-key index files ('keys') beside each batch's data
        steps.append(
            "CREATE TABLE batch_files_v2 ("
            " batch_id TEXT NOT NULL REFERENCES batches(batch_id),"
            " kind TEXT NOT NULL CHECK (kind IN ('data', 'quarantine', 'kept', 'keys')),"
            " path TEXT NOT NULL, rows INTEGER NOT NULL);"
            "INSERT INTO batch_files_v2 SELECT * FROM batch_files;"
            "DROP TABLE batch_files;"
            "ALTER TABLE batch_files_v2 RENAME TO batch_files;"
            "CREATE INDEX IF NOT EXISTS batch_files_by_batch ON batch_files(batch_id);"
        )
    steps.append(f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version';")
    steps.append("COMMIT;")
    con.executescript("\n".join(steps))  # one script: executescript commits around itself


def _batch(row: Sequence[object]) -> BatchRecord:
    return BatchRecord(
        batch_id=str(row[0]),
        source=str(row[1]),
        content_hash=str(row[2]),
        input=str(row[3]),
        rows_in=int(row[4]),  # type: ignore[call-overload]
        rows_accepted=int(row[5]),  # type: ignore[call-overload]
        rows_quarantined=int(row[6]),  # type: ignore[call-overload]
        quarantine_reasons=json.loads(str(row[7])),
        warnings=tuple(json.loads(str(row[8]))),
        min_event_time=None if row[9] is None else str(row[9]),
        max_event_time=None if row[10] is None else str(row[10]),
        ingested_at=str(row[11]),
    )


def _list(paths: Sequence[Path]) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"
