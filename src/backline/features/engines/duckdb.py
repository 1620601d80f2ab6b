"""The embedded engine: DuckDB over the offline store's Parquet, spilling to disk when needed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from backline.core.config import Config, SourceSpec
from backline.core.errors import InvalidArgument, SchemaError
from backline.core.types import DUCKDB_TYPES
from backline.features.compile import DUCKDB, ROW, TIME, within

_TIME_TYPES = ("TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ_NS")
# Rows (entity rows + events) per bucket of a view: about 1 GB of DuckDB memory at peak.
ROWS_PER_BUCKET = 3_000_000


class DuckDBEngine:
    dialect = DUCKDB

    def __init__(self, cfg: Config) -> None:
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")
        self.con.execute(f"SET memory_limit = '{cfg.features.memory_limit}'")
        if cfg.features.threads:
            self.con.execute(f"SET threads = {cfg.features.threads}")
        spill = cfg.root / ".backline" / "tmp"
        spill.mkdir(parents=True, exist_ok=True)
        self.con.execute(f"SET temp_directory = '{spill}'")
        self.con.execute("SET preserve_insertion_order = false")
        self._n = 0
        self._scratch_dir = tempfile.TemporaryDirectory(prefix="history-", dir=spill)
        self.scratch = Path(self._scratch_dir.name)
        self._entity_input: pa.Table | Path | None = None

    def entities(self, rows: pa.Table | Path, timestamp_column: str) -> tuple[str, int, int, int]:
        if isinstance(rows, pa.Table):
            table = rows.append_column(ROW, pa.array(np.arange(rows.num_rows, dtype=np.int64)))
            self.con.register("__entity_input", table)
            base = "SELECT * FROM __entity_input"
        else:
            path = str(rows).replace("'", "''")
            suffix = Path(rows).suffix.lower()
            if suffix == ".parquet":
                base = (
                    f"SELECT * EXCLUDE (file_row_number), file_row_number AS {ROW} "
                    f"FROM read_parquet('{path}', file_row_number = true)"
                )
            elif suffix == ".csv":
                # one ordered pass to Parquet, so rows keep their file order from here on
                converted = self.scratch / "entities.parquet"
                self.con.execute("SET preserve_insertion_order = true")
                self.con.execute(
                    f"COPY (SELECT * FROM read_csv('{path}')) TO '{converted}' (FORMAT parquet)"
                )
                self.con.execute("SET preserve_insertion_order = false")
                rows = converted
                base = (
                    f"SELECT * EXCLUDE (file_row_number), file_row_number AS {ROW} "
                    f"FROM read_parquet('{converted}', file_row_number = true)"
                )
            else:
                raise InvalidArgument(
                    f"entities file {rows} must be .parquet or .csv (with join keys and a "
                    "timestamp column)."
                )
        described = self.con.sql(f"DESCRIBE {base}").fetchall()
        types = {str(r[0]): str(r[1]) for r in described}
        if timestamp_column not in types:
            raise SchemaError(
                f"entities have no timestamp column {timestamp_column!r} (columns: "
                f"{', '.join(c for c in types if c != ROW)}). Pass --timestamp-column NAME."
            )
        if types[timestamp_column] not in _TIME_TYPES:
            raise SchemaError(
                f"entity column {timestamp_column!r} is {types[timestamp_column]}, not a timestamp "
                "with a timezone. Write times with an offset (2026-01-05T10:00:00Z) or as UTC-aware "
                "timestamps; backline never guesses a zone."
            )
        ts = f'"{timestamp_column}"'
        micros = floor_us(ts) if types[timestamp_column] == "TIMESTAMPTZ_NS" else f"epoch_us({ts})"
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW __entities AS SELECT *, {micros} AS {TIME} FROM ({base})"
        )
        row = _first(
            self.con.execute(
                f"SELECT count(*), min({TIME}), max({TIME}), count(*) - count({TIME}) FROM __entities"
            ).fetchall()
        )
        assert row is not None
        if row[3]:
            raise SchemaError(
                f"{row[3]} entity rows have no {timestamp_column!r}; every row needs a time."
            )
        self.columns = [c for c in types if c != ROW]
        self._entity_input = rows
        return "__entities", int(row[0]), int(row[1] or 0), int(row[2] or 0)

    def source(
        self, spec: SourceSpec, files: list[Path], bounds: tuple[int | None, int | None]
    ) -> str:
        self._n += 1
        name = f"__source_{spec.name}_{self._n}"
        if not files:
            cols = ", ".join(f'NULL::{DUCKDB_TYPES[c.type]} AS "{c.name}"' for c in spec.columns)
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols}, "
                "NULL::TIMESTAMPTZ AS ingested_at, NULL::UBIGINT AS __file, "
                "NULL::BIGINT AS __file_row WHERE false"
            )
            return name
        listed = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
        low, high = bounds
        # prune whole partitions first; the exact bound is applied by the compiled query
        prune = []
        if low is not None:
            prune.append(f"event_date >= (to_timestamp({low} / 1000000) - INTERVAL 1 DAY)::DATE")
        if high is not None:
            prune.append(f"event_date <= (to_timestamp({high} / 1000000) + INTERVAL 1 DAY)::DATE")
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * EXCLUDE (filename, file_row_number), "
            "hash(filename) AS __file, file_row_number AS __file_row FROM read_parquet("
            f"{listed}, hive_partitioning = true, union_by_name = true, filename = true, "
            "file_row_number = true)" + (f" WHERE {' AND '.join(prune)}" if prune else "")
        )
        return name

    def execute(self, sql: str, batch_rows: int = 256 * 1024) -> Iterator[pa.RecordBatch]:
        rel = self.con.sql(sql)
        reader_of = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch
        reader = reader_of(batch_rows)
        yield from reader

    # -- staging: bounded memory for any number of entity rows -----------------------------

    def needs_staging(self, entity_rows: int, events: list[str]) -> bool:
        """Small jobs run as one query; large ones in buckets staged on disk."""
        if entity_rows > ROWS_PER_BUCKET:
            return True
        for relation in events:
            row = _first(self.con.execute(f"SELECT count(*) FROM {relation}").fetchall())
            if row and entity_rows + int(row[0]) > ROWS_PER_BUCKET:
                return True
        return False

    def count_rows(self, events: str, spec: SourceSpec, bounds: tuple[int | None, int]) -> int:
        low, high = bounds
        t = f'epoch_us("{spec.event_time}")'
        row = _first(
            self.con.execute(
                f"SELECT count(*) FROM {events} WHERE {within(t, low, high)}"
            ).fetchall()
        )
        return int(row[0]) if row else 0

    def bucket_count(self, rows: int) -> int:
        return max(1, -(-rows // ROWS_PER_BUCKET))

    def bucket_filter(self, keys: tuple[str, ...], bucket: int, buckets: int) -> str:
        if buckets == 1:
            return ""
        hashed = "hash(" + ", ".join(f'"{k}"' for k in keys) + ")"
        return f" WHERE {hashed} % {buckets} = {bucket}"

    def stage(self, sql: str, name: str) -> Path:
        path = self.scratch / f"{name}.parquet"
        self.con.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
        return path

    def stage_sorted(self, parts: list[Path], name: str, order_by: str) -> Path:
        path = self.scratch / f"{name}.parquet"
        listed = "[" + ", ".join(f"'{p}'" for p in parts) + "]"
        self.con.execute("SET preserve_insertion_order = true")
        self.con.execute(
            f"COPY (SELECT * FROM read_parquet({listed}) ORDER BY {order_by}) TO '{path}' "
            "(FORMAT parquet)"
        )
        self.con.execute("SET preserve_insertion_order = false")
        for part in parts:
            part.unlink(missing_ok=True)
        return path

    def stream(self, path: Path) -> Iterator[pa.RecordBatch]:
        yield from pq.ParquetFile(path).iter_batches(batch_size=64 * 1024)

    def stream_entities(self) -> Iterator[pa.RecordBatch]:
        """The entity rows in input order, with __row, exactly as the user gave them."""
        source = self._entity_input
        if isinstance(source, pa.Table):
            table = source.append_column(ROW, pa.array(np.arange(source.num_rows, dtype=np.int64)))
            yield from table.to_batches(max_chunksize=64 * 1024)
            return
        assert source is not None
        offset = 0
        for batch in pq.ParquetFile(source).iter_batches(batch_size=64 * 1024):
            rows = np.arange(offset, offset + batch.num_rows, dtype=np.int64)
            offset += batch.num_rows
            yield pa.RecordBatch.from_arrays(
                [*batch.columns, pa.array(rows)], names=[*batch.schema.names, ROW]
            )

    def close(self) -> None:
        self.con.close()
        self._scratch_dir.cleanup()


def floor_us(ts: str) -> str:
    """Microseconds of a TIMESTAMPTZ_NS expression, truncated toward the past.

    A cast to TIMESTAMPTZ rounds to the nearest microsecond, which would let an entity at
    F - 1 ns read a row stamped F; `//` truncates toward zero, so the remainder is taken
    off first (it is made non-negative for times before 1970)."""
    ns = f"epoch_ns({ts})"
    return f"(({ns} - (({ns} % 1000) + 1000) % 1000) // 1000)"


def _first(rows: list[tuple]) -> tuple | None:
    """The first row of a fully fetched result (DuckDB wants results finished before reuse)."""
    return rows[0] if rows else None
