"""The embedded engine: DuckDB over the offline store's Parquet, spilling to disk when needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa

from backline.core.config import Config, SourceSpec
from backline.core.errors import SchemaError, UsageError
from backline.features.compile import DUCKDB, ROW, TIME

_TIME_TYPES = ("TIMESTAMP WITH TIME ZONE",)


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

    def entities(self, rows: pa.Table | Path, timestamp_column: str) -> tuple[str, int, int, int]:
        if isinstance(rows, pa.Table):
            import numpy as np

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
                base = f"SELECT *, row_number() OVER () - 1 AS {ROW} FROM read_csv('{path}')"
            else:
                raise UsageError(
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
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW __entities AS SELECT *, epoch_us({ts}) AS {TIME} FROM ({base})"
        )
        row = self.con.execute(
            f"SELECT count(*), min({TIME}), max({TIME}), count(*) - count({TIME}) FROM __entities"
        ).fetchone()
        assert row is not None
        if row[3]:
            raise SchemaError(
                f"{row[3]} entity rows have no {timestamp_column!r}; every row needs a time."
            )
        self.columns = [c for c in types if c != ROW]
        return "__entities", int(row[0]), int(row[1] or 0), int(row[2] or 0)

    def source(self, spec: SourceSpec, files: list[Path], bounds: tuple[int, int]) -> str:
        self._n += 1
        name = f"__source_{spec.name}_{self._n}"
        if not files:
            cols = ", ".join(f'NULL::{_duck(c.type)} AS "{c.name}"' for c in spec.columns)
            self.con.execute(
                f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT {cols}, "
                "NULL::TIMESTAMPTZ AS ingested_at WHERE false"
            )
            return name
        listed = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
        low, high = bounds
        # prune whole partitions first; the exact bound is applied by the compiled query
        self.con.execute(
            f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM read_parquet({listed}, "
            "hive_partitioning = true, union_by_name = true) "
            f"WHERE event_date BETWEEN (to_timestamp({low} / 1000000) - INTERVAL 1 DAY)::DATE "
            f"AND (to_timestamp({high} / 1000000) + INTERVAL 1 DAY)::DATE"
        )
        return name

    def execute(self, sql: str, batch_rows: int = 256 * 1024) -> Iterator[pa.RecordBatch]:
        rel = self.con.sql(sql)
        reader_of = getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch
        reader = reader_of(batch_rows)
        yield from reader

    def close(self) -> None:
        self.con.close()


def _duck(kind: str) -> str:
    return {
        "string": "VARCHAR",
        "int64": "BIGINT",
        "float64": "DOUBLE",
        "bool": "BOOLEAN",
        "timestamp": "TIMESTAMPTZ",
        "date": "DATE",
    }[kind]
