"""Engines that run compiled feature SQL: DuckDB (embedded, default) and Spark.

An engine turns the entity rows and a source's committed files into named relations, runs one
query, and streams Arrow record batches back. `open_engine(cfg)` picks one by
`features.engine`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from backline.core.config import Config, SourceSpec
from backline.features.compile import Dialect


class Engine(Protocol):
    dialect: Dialect

    def entities(self, rows: pa.Table | Path, timestamp_column: str) -> tuple[str, int, int, int]:
        """Register entity rows with `__row` and `__t`; (relation, rows, t_min µs, t_max µs)."""
        ...

    def source(
        self, spec: SourceSpec, files: list[Path], bounds: tuple[int | None, int | None]
    ) -> str:
        """A relation over a source's committed files, pruned to the event-time bounds (µs).

        A None bound is open. Pruning drops whole date partitions; exact bounds are the
        query's job."""
        ...

    def execute(self, sql: str, batch_rows: int = 256 * 1024) -> Iterator[pa.RecordBatch]:
        """Run a query and stream its result."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class StagingEngine(Engine, Protocol):
    """An engine that bounds memory by staging per-bucket results on disk (DuckDB)."""

    def needs_staging(self, entity_rows: int, events: list[str]) -> bool: ...

    def count_rows(self, events: str, spec: SourceSpec, bounds: tuple[int | None, int]) -> int: ...

    def bucket_count(self, rows: int) -> int: ...

    def bucket_filter(self, keys: tuple[str, ...], bucket: int, buckets: int) -> str: ...

    def stage(self, sql: str, name: str) -> Path: ...

    def stage_sorted(self, parts: list[Path], name: str, order_by: str) -> Path: ...

    def stream(self, path: Path) -> Any: ...

    def stream_entities(self) -> Iterator[pa.RecordBatch]: ...


def open_engine(cfg: Config, name: str | None = None) -> Engine:
    chosen = name or cfg.features.engine
    if chosen == "spark":
        from backline.features.engines.spark import SparkEngine

        return SparkEngine(cfg)
    from backline.features.engines.duckdb import DuckDBEngine

    return DuckDBEngine(cfg)
