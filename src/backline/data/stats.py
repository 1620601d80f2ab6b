"""Per-batch column statistics: the baselines drift monitoring compares against.

    stats = batch_stats(table, spec)
    stats["amount"]["quantiles"]["0.5"]     # median amount of the batch
    stats["channel"]["categories"]          # {"online": 1234, "pos": ...}

Arrow kernels compute what they can on the batch's own buffers; DuckDB adds the one thing
Arrow lacks, a HyperLogLog distinct count for high-cardinality strings.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.config import SourceSpec

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_CATEGORIES = 100  # per column; the rest are summed under "__other__"


def batch_stats(table: pa.Table, spec: SourceSpec) -> dict[str, dict[str, object]]:
    """Statistics of every declared column of `table` (accepted rows of one batch)."""
    count = table.num_rows
    out: dict[str, dict[str, object]] = {}
    distinct_later: list[str] = []
    for col in spec.columns:
        values = table.column(col.name)
        nulls = values.null_count
        entry: dict[str, object] = {
            "type": col.type,
            "count": count,
            "null_count": nulls,
            "null_rate": nulls / count if count else 0.0,
        }
        present = count > nulls
        if col.type in ("int64", "float64") and present:
            bounds = pc.min_max(values)
            entry.update(
                min=bounds["min"].as_py(),
                max=bounds["max"].as_py(),
                mean=pc.mean(values).as_py(),
                std=pc.stddev(values, ddof=1).as_py() if count - nulls > 1 else None,
            )
            qs = pc.quantile(values, q=list(QUANTILES), interpolation="linear").to_pylist()
            entry["quantiles"] = {str(p): v for p, v in zip(QUANTILES, qs, strict=True)}
        elif col.type in ("timestamp", "date") and present:
            bounds = pc.min_max(values)
            entry.update(
                min=bounds["min"].as_py().isoformat(), max=bounds["max"].as_py().isoformat()
            )
        elif col.type == "bool":
            entry["true_count"] = int(pc.sum(pc.cast(values, pa.int64())).as_py() or 0)
        elif col.type == "string" and (col.categorical or col.allowed is not None):
            counts = pc.value_counts(values.drop_null()) if present else None
            categories = _top(counts) if counts is not None else {}
            entry["distinct_approx"] = len(counts) if counts is not None else 0
            entry["categories"] = categories
        elif col.type == "string":
            distinct_later.append(col.name)
        out[col.name] = entry
    if distinct_later:
        for name, value in zip(
            distinct_later, _approx_distinct(table, distinct_later), strict=True
        ):
            out[name]["distinct_approx"] = value
    return out


def _approx_distinct(table: pa.Table, columns: list[str]) -> list[int]:
    con = duckdb.connect()
    try:
        con.execute("SET threads = 1")
        con.register("__batch", table.select(columns))
        selects = ", ".join(f'approx_count_distinct("{c}")' for c in columns)
        row = con.execute(f"SELECT {selects} FROM __batch").fetchone()
    finally:
        con.close()
    return [int(v) for v in row] if row else [0] * len(columns)


def _top(counts: pa.StructArray) -> dict[str, int]:
    pairs = zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    ranked = sorted(pairs, key=lambda kv: (-kv[1], str(kv[0])))
    top = {str(k): int(v) for k, v in ranked[:MAX_CATEGORIES]}
    rest = sum(int(v) for _, v in ranked[MAX_CATEGORIES:])
    if rest:
        top["__other__"] = rest
    return top
