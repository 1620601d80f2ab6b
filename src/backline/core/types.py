"""The column types a source can declare, and what each is called in Arrow and in DuckDB."""

from __future__ import annotations

import pyarrow as pa

COLUMN_TYPES = ("string", "int64", "float64", "bool", "timestamp", "date")

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}

FEATURE_KINDS: dict[str, str] = {"int": "int64", "float": "float64"}
"""The value kinds of computed features (aggregates, on-demand outputs) and the column type each
is stored as."""


def arrow_type(kind: str) -> pa.DataType:
    """The Arrow type of a column type (`COLUMN_TYPES`) or a feature value kind (int, float)."""
    return ARROW_TYPES[FEATURE_KINDS.get(kind, kind)]


DUCKDB_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "int64": "BIGINT",
    "float64": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "date": "DATE",
}
