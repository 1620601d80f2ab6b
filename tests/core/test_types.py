"""core/types.py: the one map from backline's type names to Arrow types."""

from __future__ import annotations

import pyarrow as pa
import pytest

from backline.core.types import ARROW_TYPES, COLUMN_TYPES, DUCKDB_TYPES, arrow_type


def test_every_column_type_has_an_arrow_and_a_duckdb_type() -> None:
    assert set(ARROW_TYPES) == set(DUCKDB_TYPES) == set(COLUMN_TYPES)
    assert ARROW_TYPES["timestamp"] == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("int", pa.int64()), ("float", pa.float64()), *ARROW_TYPES.items()],
)
def test_arrow_type_knows_column_types_and_feature_kinds(kind: str, expected: pa.DataType) -> None:
    assert arrow_type(kind) == expected


def test_an_unknown_kind_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        arrow_type("decimal")
