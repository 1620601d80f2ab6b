"""Prediction-log rows gathered over several batches and turned into Arrow all at once.

    rows = LogRows()
    rows.add(segment)                  # per scored group: plain Python lists, no Arrow
    tables, dropped = rows.take()      # one table per block of same-shaped segments

Building an Arrow array costs mostly per call, not per value: converting the ~30 columns of
a batch of 20 rows took longer than scoring it. So the engine keeps each scored group's
columns as Python lists (a transpose and a few list extends per group) and converts them
once a few hundred rows have gathered, or as soon as the queue is empty (a quiet server logs
each batch at once). The rows wait here at most `LogRows.max_rows` rows or `max_age`
seconds; like the log's own buffer, a crash loses them, and nothing else.

A segment whose values Arrow cannot hold together with the others (one client sent an id as
text, another as a number) makes its block fail to convert; the block is then converted
segment by segment and only the segments that fail on their own are dropped (and counted),
as when each group was converted alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from backline.core.types import arrow_type
from backline.data.offline_store import PREDICTION_COLUMNS

__all__ = ["LogRows", "Segment"]


@dataclass
class Segment:
    """The log rows of one scored group, column by column (every list has `rows` values)."""

    rows: int
    scored_at: datetime
    model: str
    version: int
    batch_size: int
    degraded: bool
    request_ids: list[str]
    scores: list[float]
    latency_ms: list[float]
    queue_ms: list[float]
    entity_columns: tuple[str, ...]
    entities: Sequence[Sequence[Any]]
    """Per entity column, its values (the transpose of an online read's key tuples)."""
    features: dict[str, Sequence[Any]]
    """`feature__<name>` -> values."""
    feature_types: dict[str, str]
    """`feature__<name>` -> backline type name (string, int64, float64, ...)."""
    extra: dict[str, list[Any]] = field(default_factory=dict)
    """Passthrough ids and request fields by name (types inferred by Arrow)."""


class _Block:
    """Segments of the same model version, appended column by column."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.columns: dict[str, list[Any]] = {}
        self.types: dict[str, pa.DataType] = {}
        self.rows = 0
        self.segments: list[Segment] = []

    def add(self, s: Segment) -> None:
        n = s.rows
        base: dict[str, list[Any]] = {
            "request_id": s.request_ids,
            "scored_at": [s.scored_at] * n,
            "model": [s.model] * n,
            "model_version": [s.version] * n,
            "score": s.scores,
            "latency_ms": s.latency_ms,
            "queue_ms": s.queue_ms,
            "batch_size": [s.batch_size] * n,
            "degraded": [s.degraded] * n,
        }
        seen = set(base)
        for name, values in base.items():
            self._extend(name, values, n)
        for name, keys in zip(s.entity_columns, s.entities, strict=True):
            if name not in seen:
                seen.add(name)
                self._extend(name, keys, n)
        for name, given in s.extra.items():
            if name not in seen:
                seen.add(name)
                self._extend(name, given, n)
        for name, feature in s.features.items():
            seen.add(name)
            self.types.setdefault(name, arrow_type(s.feature_types[name]))
            self._extend(name, feature, n)
        for name, column in self.columns.items():  # columns this segment does not have
            if name not in seen:
                column.extend([None] * n)
        self.rows += n
        self.segments.append(s)

    def _extend(self, name: str, values: Sequence[Any], n: int) -> None:
        column = self.columns.get(name)
        if column is None:
            column = self.columns[name] = [None] * self.rows
        column.extend(values)

    def table(self) -> pa.Table:
        arrays = []
        for name, values in self.columns.items():
            kind = PREDICTION_COLUMNS.get(name) or self.types.get(name)
            arrays.append(pa.array(values, type=kind))
        return pa.Table.from_arrays(arrays, names=list(self.columns))


class LogRows:
    """Log rows waiting to be converted: at most `max_rows`, at most `max_age` seconds old
    (`due` says when to `take`)."""

    def __init__(self, max_rows: int = 512, max_age: float = 0.25) -> None:
        self.max_rows = max_rows
        self.max_age = max_age
        self._blocks: list[_Block] = []
        self._rows = 0
        self._since: float | None = None

    @property
    def rows(self) -> int:
        return self._rows

    def add(self, segment: Segment) -> None:
        if segment.rows == 0:
            return
        if not self._blocks or self._blocks[-1].version != segment.version:
            self._blocks.append(_Block(segment.version))
        self._blocks[-1].add(segment)
        self._rows += segment.rows
        if self._since is None:
            self._since = time.monotonic()

    def due(self) -> bool:
        """Whether enough rows, or rows old enough, wait to be worth converting now."""
        return self._rows >= self.max_rows or (
            self._since is not None and time.monotonic() - self._since >= self.max_age
        )

    def take(self) -> tuple[list[pa.Table], int]:
        """The waiting rows as tables, and how many rows could not be converted (dropped)."""
        blocks, self._blocks, self._rows, self._since = self._blocks, [], 0, None
        tables: list[pa.Table] = []
        dropped = 0
        for block in blocks:
            try:
                tables.append(block.table())
                continue
            except (pa.ArrowException, TypeError, ValueError, OverflowError):
                pass
            for segment in block.segments:  # find the segments that cannot be converted
                alone = _Block(block.version)
                try:
                    alone.add(segment)
                    tables.append(alone.table())
                except (pa.ArrowException, TypeError, ValueError, OverflowError):
                    dropped += segment.rows
        return tables, dropped
