"""Reference profiles: binned distributions of a model's inputs and scores on its training data.

Monitoring compares what a served model sees with what it was trained on. The registry keeps
the training side with each version, so a drift report needs nothing but the version.

    profile = profile_from_arrow(training_table, score_column="score")
    profile.feature("amount").counts            # (25, 25, 25, 25) for quartile bins
    profile.feature("amount").bin_counts(served) # the same bins applied to served values

Numeric columns get quantile (or uniform) bin edges; bin i holds edges[i] <= x < edges[i+1],
and the first and last bins are open-ended so a served value outside the training range still
lands in a bin. Nulls, NaN and infinities are counted as `null_count`, never binned.
Categorical columns (strings, booleans, dictionaries) keep the `max_categories` most frequent
values; the rest are summed as `other_count`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.errors import SchemaError

METHODS = ("quantile", "uniform")


@dataclass(frozen=True)
class NumericProfile:
    """Histogram of one numeric column."""

    name: str
    edges: tuple[float, ...]
    """len(counts) + 1 ascending edges; empty when the column had no finite value."""

    counts: tuple[int, ...]
    null_count: int
    """Rows that were null, NaN or infinite."""

    def bin_counts(self, values: pa.Array | pa.ChunkedArray | np.ndarray) -> tuple[int, ...]:
        """Counts of `values` in these bins (open-ended at both ends); non-finite values skipped."""
        finite = _finite(_as_float(values, self.name))
        return _assign(np.asarray(self.edges, dtype=np.float64), finite)


@dataclass(frozen=True)
class CategoricalProfile:
    """Value counts of one categorical column, most frequent first."""

    name: str
    values: tuple[str, ...]
    counts: tuple[int, ...]
    other_count: int
    """Rows holding a value beyond the kept `max_categories`."""

    null_count: int


FeatureProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True)
class ReferenceProfile:
    """Every input feature's distribution and the score histogram, on the training data."""

    row_count: int
    features: tuple[FeatureProfile, ...]
    score: NumericProfile | None = None

    def feature(self, name: str) -> FeatureProfile:
        for profile in self.features:
            if profile.name == name:
                return profile
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(profile_to_obj(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ReferenceProfile:
        return profile_from_obj(json.loads(text))


def profile_from_arrow(
    table: pa.Table,
    score_column: str | None = None,
    *,
    columns: Sequence[str] | None = None,
    bins: int = 10,
    method: str = "quantile",
    max_categories: int = 50,
) -> ReferenceProfile:
    """Profile `columns` (default: every column but the score) and the score column of `table`."""
    if bins < 1 or max_categories < 1:
        raise SchemaError(
            f"profile_from_arrow: bins = {bins} and max_categories = {max_categories} must both "
            "be at least 1."
        )
    if method not in METHODS:
        raise SchemaError(
            f"profile_from_arrow: method = {method!r}. Use one of {', '.join(METHODS)}."
        )
    names = list(table.column_names)
    for wanted in [*(columns or ()), *([score_column] if score_column else [])]:
        if wanted not in names:
            raise SchemaError(
                f"profile_from_arrow: column {wanted!r} is not in the table. Its columns: "
                f"{', '.join(names)}."
            )
    chosen = list(columns) if columns is not None else [n for n in names if n != score_column]
    features: list[FeatureProfile] = []
    for name in chosen:
        column = table.column(name)
        if _is_numeric(column.type):
            features.append(_numeric(name, column, bins, method))
        elif _is_categorical(column.type):
            features.append(_categorical(name, column, max_categories))
        else:
            raise SchemaError(
                f"profile_from_arrow: column {name!r} has type {column.type}, which is neither "
                "numeric nor categorical. Leave it out with columns=[...] or cast it first."
            )
    score = None
    if score_column is not None:
        column = table.column(score_column)
        if not _is_numeric(column.type):
            raise SchemaError(
                f"profile_from_arrow: score column {score_column!r} has type {column.type}; "
                "scores must be numeric."
            )
        score = _numeric(score_column, column, bins, method)
    return ReferenceProfile(row_count=table.num_rows, features=tuple(features), score=score)


# ---------------------------------------------------------------------------------------------
# computing


def _is_numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    )


def _is_categorical(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_dictionary(kind)
    )


def _as_float(values: pa.Array | pa.ChunkedArray | np.ndarray, name: str) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    try:
        cast = pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"column {name!r} cannot be read as numbers ({exc}).") from None
    return np.asarray(cast.to_numpy(zero_copy_only=False), dtype=np.float64)  # nulls -> NaN


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _assign(edges: np.ndarray, finite: np.ndarray) -> tuple[int, ...]:
    if edges.size < 2:
        return ()
    # Only the interior edges decide the bin, which makes both outer bins open-ended.
    index = np.searchsorted(edges[1:-1], finite, side="right")
    return tuple(int(c) for c in np.bincount(index, minlength=edges.size - 1))


def _numeric(name: str, column: pa.ChunkedArray, bins: int, method: str) -> NumericProfile:
    values = _as_float(column, name)
    finite = _finite(values)
    nulls = int(values.size - finite.size)
    if finite.size == 0:
        return NumericProfile(name, (), (), nulls)
    distinct = np.unique(finite)
    if distinct.size == 1:  # a constant column: one bin [v, v]
        edges = np.array([distinct[0], distinct[0]])
    elif distinct.size <= bins:
        # Few values (flags, counts, hours): one bin per value, edges halfway between them.
        edges = np.concatenate(([distinct[0]], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1]]))
    elif method == "quantile":
        raw = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1))
        # A value that fills more than a bin (zero-inflated amounts) collapses quantile edges;
        # an edge at the next distinct value keeps that point mass in a bin of its own.
        tied = np.unique(raw[:-1][np.diff(raw) == 0])
        after = np.searchsorted(distinct, tied, side="right")
        edges = np.unique(np.concatenate((raw, distinct[after[after < distinct.size]])))
    else:
        edges = np.unique(np.linspace(distinct[0], distinct[-1], bins + 1))
    return NumericProfile(name, tuple(float(e) for e in edges), _assign(edges, finite), nulls)


def _categorical(name: str, column: pa.ChunkedArray, max_categories: int) -> CategoricalProfile:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    nulls = column.null_count
    counted = pc.value_counts(column.drop_null())
    pairs = sorted(
        zip(
            (_category_text(v) for v in counted.field("values").to_pylist()),
            counted.field("counts").to_pylist(),
            strict=True,
        ),
        key=lambda p: (-p[1], p[0]),
    )
    kept = pairs[:max_categories]
    other = sum(c for _, c in pairs[max_categories:])
    return CategoricalProfile(
        name,
        tuple(v for v, _ in kept),
        tuple(int(c) for _, c in kept),
        int(other),
        int(nulls),
    )


def _category_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------------
# JSON form (what the registry stores)


def profile_to_obj(profile: ReferenceProfile) -> object:
    return {
        "row_count": profile.row_count,
        "features": [_feature_to_obj(f) for f in profile.features],
        "score": _feature_to_obj(profile.score) if profile.score is not None else None,
    }


def profile_from_obj(obj: Any) -> ReferenceProfile:
    """The inverse of `profile_to_obj`; a damaged value is a SchemaError."""
    try:
        score = obj["score"]
        parsed_score = _feature_from_obj(score) if score is not None else None
        if parsed_score is not None and not isinstance(parsed_score, NumericProfile):
            raise ValueError("the score profile must be numeric")
        return ReferenceProfile(
            row_count=int(obj["row_count"]),
            features=tuple(_feature_from_obj(f) for f in obj["features"]),
            score=parsed_score,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(
            f"a stored reference profile does not parse ({type(exc).__name__}: {exc}). The "
            "registry row is damaged; register the model again."
        ) from None


def _feature_to_obj(profile: FeatureProfile) -> dict[str, object]:
    if isinstance(profile, NumericProfile):
        return {
            "kind": "numeric",
            "name": profile.name,
            "edges": list(profile.edges),
            "counts": list(profile.counts),
            "null_count": profile.null_count,
        }
    return {
        "kind": "categorical",
        "name": profile.name,
        "values": list(profile.values),
        "counts": list(profile.counts),
        "other_count": profile.other_count,
        "null_count": profile.null_count,
    }


def _feature_from_obj(obj: Any) -> FeatureProfile:
    kind = obj["kind"]
    counts = tuple(int(c) for c in obj["counts"])
    if kind == "numeric":
        return NumericProfile(
            name=str(obj["name"]),
            edges=tuple(float(e) for e in obj["edges"]),
            counts=counts,
            null_count=int(obj["null_count"]),
        )
    if kind == "categorical":
        return CategoricalProfile(
            name=str(obj["name"]),
            values=tuple(str(v) for v in obj["values"]),
            counts=counts,
            other_count=int(obj["other_count"]),
            null_count=int(obj["null_count"]),
        )
    raise ValueError(f"unknown profile kind {kind!r}")
