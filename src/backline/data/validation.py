"""Declared schema and expectations, checked column by column with Arrow compute kernels.

Each declared column is cast to its declared type and run through its checks. A row's first
failing check, in column order, is its quarantine reason; a row with no failing check is
accepted. The kernels run on the Arrow buffers the reader produced, without copies, which is
what makes validation cheap next to reading. When Arrow's strict cast refuses a column (one
bad value fails the whole cast), that one column is cast again value by value with DuckDB's
TRY_CAST, so a bad value costs its row and nothing more.

Reason codes are stable, since dashboards and alerts count them:

    malformed_row               the record could not be split into the header's columns
    malformed_header            the header itself is broken (a repeated column name)
    invalid_encoding            the record's bytes are not in the source's encoding
    unreadable_file             a Parquet file without a readable footer (kept whole)
    missing_column              a required column is not in the file at all
    unexpected_column           an undeclared column, when extra_columns = "reject"
    missing_value               a required value is null or empty
    type_mismatch               the value does not parse as the declared type (or is NaN/inf)
    out_of_range                below min or above max
    not_allowed                 not one of the allowed values
    pattern_mismatch            does not match the declared pattern
    too_long                    longer than max_length, or bigger than ingest.max_value_bytes
    timestamp_without_timezone  a timestamp with no offset: backline never guesses a zone
    timestamp_in_future         later than ingest time + ingest.max_future
    timestamp_too_old           earlier than the column's not_before
    duplicate_key_in_batch      the primary key repeats within this batch (first one wins)
    duplicate_key               the primary key was accepted by an earlier batch
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.config import ColumnSpec, SourceSpec
from backline.core.types import ARROW_TYPES, DUCKDB_TYPES
from backline.data.readers import LINE, RAW, FileRead

REASONS = (
    "malformed_row",
    "malformed_header",
    "invalid_encoding",
    "unreadable_file",
    "missing_column",
    "unexpected_column",
    "missing_value",
    "type_mismatch",
    "out_of_range",
    "not_allowed",
    "pattern_mismatch",
    "too_long",
    "timestamp_without_timezone",
    "timestamp_in_future",
    "timestamp_too_old",
    "duplicate_key_in_batch",
    "duplicate_key",
)
FILE = "__file"

# A time of day followed by an explicit offset or Z; '2026-01-01' alone has no zone.
_HAS_ZONE = r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?\s*([zZ]|[+-]\d{2}(:?\d{2})?)$"

Message = Callable[[str], str]  # the offending value, as text -> the message


def arrow_schema(spec: SourceSpec) -> pa.Schema:
    """The schema accepted rows have in the offline store (before lineage columns)."""
    return pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in spec.columns])


def quarantine_schema() -> pa.Schema:
    return pa.schema(
        [
            ("file", pa.string()),
            ("line", pa.int64()),
            ("reason", pa.string()),
            ("column", pa.string()),
            ("message", pa.string()),
            ("raw_record", pa.string()),
        ]
    )


@dataclass(frozen=True)
class Checked:
    """One file after validation: typed accepted rows and quarantined rows."""

    accepted: pa.Table
    """Declared columns with their declared types, plus __line and __file (the file's index)."""

    quarantined: pa.Table
    """Rows of quarantine_schema()."""


@dataclass(frozen=True)
class _Failure:
    reason: str
    column: str | None
    message: Message


def validate(
    read: FileRead,
    spec: SourceSpec,
    *,
    now: datetime,
    max_future: timedelta,
    max_value_bytes: int | None = None,
    file_index: int = 0,
) -> Checked:
    """Type and check every parsed row of `read`; rejects from the reader join the quarantine.

    `max_value_bytes` bounds the size of one value of any declared column (None: no bound);
    a bigger value is `too_long`, whatever the input format.
    """
    table = read.table
    n = table.num_rows
    failed = np.zeros(n, dtype=np.int16)  # 0 = passes, k = failures[k - 1] is its first failure
    failures: list[_Failure] = []

    def record(mask: np.ndarray, failure: _Failure) -> None:
        hit = mask & (failed == 0)
        if hit.any():
            failures.append(failure)
            failed[hit] = len(failures)

    typed: dict[str, pa.Array] = {}
    if read.whole_file_reason is not None:
        reason, whole_file_message = read.whole_file_reason

        def same_for_every_row(_value: str) -> str:
            return whole_file_message

        record(np.ones(n, dtype=bool), _Failure(reason, None, same_for_every_row))
        typed = {c.name: pa.nulls(n, ARROW_TYPES[c.type]) for c in spec.columns}
    else:
        for col in spec.columns:
            if col.name in (*spec.primary_key, spec.event_time):  # keys and event time must exist
                col = dataclasses.replace(col, required=True)
            values, checks = _check_column(
                col, table.column(col.name).combine_chunks(), now, max_future, max_value_bytes
            )
            typed[col.name] = values
            for mask, failure in checks:
                record(mask, failure)

    good = failed == 0
    accepted = pa.table({**typed, LINE: table.column(LINE)})
    if not good.all():  # filtering copies every column; skip it for a clean file
        accepted = accepted.filter(pa.array(good))
    accepted = accepted.append_column(
        FILE, pa.array(np.full(accepted.num_rows, file_index, dtype=np.int32))
    )
    quarantined = _quarantine_rows(read, spec, np.flatnonzero(~good), failed, failures)
    if read.rejects:
        quarantined = pa.concat_tables([quarantined, rejects_table(read)]).sort_by("line")
    return Checked(accepted, quarantined)


def _quarantine_rows(
    read: FileRead,
    spec: SourceSpec,
    rows: np.ndarray,
    failed: np.ndarray,
    failures: list[_Failure],
) -> pa.Table:
    if len(rows) == 0:
        return quarantine_schema().empty_table()
    bad = read.table.take(pa.array(rows))
    raw_values = {c.name: _as_text(bad.column(c.name)) for c in spec.columns}
    raw_lines = bad.column(RAW).to_pylist()
    which = [failures[k - 1] for k in failed[rows]]
    messages, raws = [], []
    for i, failure in enumerate(which):
        value = raw_values[failure.column][i] if failure.column else None
        messages.append(failure.message("null" if value is None else _clip(value)))
        if raw_lines[i] is not None:
            raws.append(raw_lines[i])
        else:
            raws.append(json.dumps({name: vals[i] for name, vals in raw_values.items()}))
    return pa.table(
        {
            "file": [read.path.name] * len(rows),
            "line": bad.column(LINE),
            "reason": [f.reason for f in which],
            "column": [f.column for f in which],
            "message": messages,
            "raw_record": raws,
        },
        schema=quarantine_schema(),
    )


def rejects_table(read: FileRead) -> pa.Table:
    rejects = read.rejects
    return pa.table(
        {
            "file": [read.path.name] * len(rejects),
            "line": [r.line for r in rejects],
            "reason": [r.reason for r in rejects],
            "column": [r.column for r in rejects],
            "message": [r.message for r in rejects],
            "raw_record": [r.raw for r in rejects],
        },
        schema=quarantine_schema(),
    )


# ---------------------------------------------------------------------------------------------
# one column


def _check_column(
    col: ColumnSpec,
    values: pa.Array,
    now: datetime,
    max_future: timedelta,
    max_value_bytes: int | None = None,
) -> tuple[pa.Array, list[tuple[np.ndarray, _Failure]]]:
    """(typed values, [(rows failing, why)] in check order) for one declared column."""
    name = col.name
    target = ARROW_TYPES[col.type]
    checks: list[tuple[np.ndarray, _Failure]] = []

    def fail(mask: pa.Array | np.ndarray, reason: str, message: Message) -> None:
        if isinstance(mask, pa.Array | pa.ChunkedArray):
            mask = _np(mask)
        checks.append((mask, _Failure(reason, name, message)))

    values, unreadable = _readable(col, values)
    if unreadable is not None:
        bad, why = unreadable
        fail(bad, "type_mismatch", lambda _v: why)
    text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
    if text and max_value_bytes is not None:
        over = _np(pc.greater(pc.binary_length(values), max_value_bytes))
        if over.any():  # keep a huge value out of every later kernel
            fail(
                over,
                "too_long",
                lambda _v: (
                    f"{name} is bigger than ingest.max_value_bytes = {max_value_bytes:,} bytes; "
                    "fix the value, or raise ingest.max_value_bytes"
                ),
            )
            values = pc.if_else(pa.array(over), pa.scalar(None, values.type), values)

    if text:
        missing = _np(pc.or_kleene(pc.is_null(values), pc.equal(pc.utf8_length(values), 0)))
        present = values
        if missing.any():  # empty text means null; if_else copies, so only when needed
            present = pc.if_else(pa.array(missing), pa.scalar(None, values.type), values)
    else:
        missing = _np(pc.is_null(values))
        present = values
    if col.required:
        fail(missing, "missing_value", lambda _v: f"{name} is empty; it is required")

    if col.type == "timestamp":
        if text:
            zoned = pc.fill_null(pc.match_substring_regex(present, _HAS_ZONE), False)
            fail(
                ~missing & ~_np(zoned),
                "timestamp_without_timezone",
                lambda v: f"{name} = {v} has no timezone; add an offset such as Z or +00:00",
            )
            typed = _try_cast(pc.if_else(zoned, present, pa.scalar(None, present.type)), target)
            fail(
                _np(zoned) & _np(pc.is_null(typed)),
                "type_mismatch",
                lambda v: f"{name} = {v} is not a valid timestamp",
            )
        elif pa.types.is_timestamp(values.type) and values.type.tz is not None:
            ticks = pc.cast(values, pa.int64())
            first_tick, last_tick = _TICKS[values.type.unit]
            outside = _np(pc.or_kleene(pc.less(ticks, first_tick), pc.greater(ticks, last_tick)))
            fail(outside, "type_mismatch", lambda v: f"{name} = {v} is outside years 1-9999")
            if outside.any():  # a coarse unit would overflow microseconds
                values = pc.if_else(pa.array(outside), pa.scalar(None, values.type), values)
            typed = pc.cast(values, target, safe=False)  # ns -> us truncates; the instant is kept
        else:
            kind = str(values.type)
            fail(
                ~missing,
                "timestamp_without_timezone"
                if pa.types.is_timestamp(values.type)
                else "type_mismatch",
                lambda _v: (
                    f"{name} is stored as {kind} without a timezone; write UTC-aware timestamps"
                ),
            )
            typed = pa.nulls(len(values), target)
    elif col.type == "string":
        typed = present if text else pc.cast(present, pa.string())
    else:
        typed = _try_cast(present, target)
        fail(
            ~missing & _np(pc.is_null(typed)),
            "type_mismatch",
            lambda v: f"{name} = {v} is not a valid {col.type}",
        )
    typed = typed.cast(target) if typed.type != target else typed
    if col.type in ("timestamp", "date"):  # beyond these, Python (and the statistics) cannot go
        first, last = _YEARS[col.type]
        fail(
            pc.or_kleene(pc.less(typed, first), pc.greater(typed, last)),
            "type_mismatch",
            lambda v: f"{name} = {v} is outside years 1-9999",
        )

    if col.type == "float64":
        fail(
            pc.or_kleene(pc.is_nan(typed), pc.is_inf(typed)),
            "type_mismatch",
            lambda v: f"{name} = {v} is not a finite number",
        )
    if col.min is not None:
        low = col.min
        fail(pc.less(typed, low), "out_of_range", lambda v: f"{name} = {v} is below min {low:g}")
    if col.max is not None:
        high = col.max
        fail(
            pc.greater(typed, high), "out_of_range", lambda v: f"{name} = {v} is above max {high:g}"
        )
    if col.allowed is not None:
        options = col.allowed
        preview = ", ".join(options[:8]) + (", ..." if len(options) > 8 else "")
        fail(
            pc.invert(pc.is_in(typed, value_set=pa.array(options, pa.string()))),
            "not_allowed",
            lambda v: f"{name} = {v} is not one of {preview}",
        )
    if col.pattern is not None:
        pattern = col.pattern
        fail(
            pc.invert(pc.match_substring_regex(typed, f"^(?:{pattern})$")),
            "pattern_mismatch",
            lambda v: f"{name} = {v} does not match {pattern}",
        )
    if col.max_length is not None:
        longest = col.max_length
        fail(
            pc.greater(pc.utf8_length(typed), longest),
            "too_long",
            lambda _v: f"{name} is longer than {longest} characters",
        )
    if col.type == "timestamp":
        limit = now + max_future
        fail(
            pc.greater(typed, pa.scalar(limit, target)),
            "timestamp_in_future",
            lambda v: (
                f"{name} = {v} is after {limit.isoformat()} (ingest time + ingest.max_future)"
            ),
        )
        if col.not_before is not None:
            floor = col.not_before
            fail(
                pc.less(typed, pa.scalar(floor, target)),
                "timestamp_too_old",
                lambda v: f"{name} = {v} is before not_before {floor.isoformat()}",
            )
    return typed, checks


_US = 10**6
_FIRST = datetime(1, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
_YEARS = {
    "timestamp": (
        pa.scalar(_FIRST, pa.timestamp("us", tz="UTC")),
        pa.scalar(_LAST, pa.timestamp("us", tz="UTC")),
    ),
    "date": (pa.scalar(_FIRST.date(), pa.date32()), pa.scalar(_LAST.date(), pa.date32())),
}
_EPOCH_US = (-62135596800 * _US, 253402300799 * _US + 999999)  # years 1 and 9999, microseconds
_TICKS = {  # the same bounds in each timestamp unit (ns always fits)
    "s": (_EPOCH_US[0] // _US, _EPOCH_US[1] // _US),
    "ms": (_EPOCH_US[0] // 1000, _EPOCH_US[1] // 1000),
    "us": _EPOCH_US,
    "ns": (-(2**63), 2**63 - 1),
}
_NESTED = (
    pa.types.is_list,
    pa.types.is_large_list,
    pa.types.is_fixed_size_list,
    pa.types.is_struct,
    pa.types.is_map,
    pa.types.is_union,
)


def _readable(col: ColumnSpec, values: pa.Array) -> tuple[pa.Array, tuple[np.ndarray, str] | None]:
    """Values as stored (Parquet) in a form the checks take, and the rows that cannot be read.

    Text stays text. A nested value, bytes that are not UTF-8, or a type with no conversion to
    the declared one is a type_mismatch of its row, never an error of the whole file. A value
    that Arrow cannot convert exactly is judged by its text, as it would be in a CSV file.
    """
    name = col.name
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return values, None
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string()), None
    present = _np(pc.is_valid(values))
    if any(test(kind) for test in _NESTED) or getattr(pa.types, "is_list_view", _no)(kind):
        why = f"{name} holds a nested value ({kind}), not a {col.type}; flatten it in the file"
        return pa.nulls(len(values), pa.string()), (present, why)
    if (
        pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or (pa.types.is_fixed_size_binary(kind))
    ):
        try:
            return pc.cast(values, pa.string()), None
        except pa.ArrowInvalid:  # some values are not UTF-8: those rows, not the file
            decoded, bad = [], np.zeros(len(values), dtype=bool)
            for i, raw in enumerate(values.to_pylist()):
                try:
                    decoded.append(None if raw is None else raw.decode("utf-8"))
                except UnicodeDecodeError:
                    decoded.append(None)
                    bad[i] = True
            why = f"{name} holds bytes that are not UTF-8 text"
            return pa.array(decoded, pa.string()), (bad, why)
    if col.type == "timestamp" and pa.types.is_timestamp(kind):
        return values, None  # zone or not, the timestamp checks judge it
    target = ARROW_TYPES[col.type]
    if col.type != "string" and col.type != "timestamp":
        try:
            pc.cast(values, target)
            return values, None
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if col.type == "timestamp":
        return values, None  # stored without a zone: the timestamp checks say so
    try:
        return pc.cast(values, pa.string()), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        why = f"{name} is stored as {kind}, which cannot be read as {col.type}"
        return pa.nulls(len(values), pa.string()), (present, why)


def _no(_kind: pa.DataType) -> bool:
    return False


def _try_cast(values: pa.Array, target: pa.DataType) -> pa.Array:
    """Arrow's strict cast when every value converts; otherwise DuckDB's TRY_CAST per value."""
    try:
        return pc.cast(values, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET threads = 1")
        con.register("__column", pa.table({"v": values}))
        duck_type = next(d for k, d in DUCKDB_TYPES.items() if ARROW_TYPES[k] == target)
        cast = f"TRY_CAST(v AS {duck_type})"
        if pa.types.is_integer(target):
            # TRY_CAST rounds ('1.5' -> 2): keep only values that are whole numbers exactly
            cast = f"CASE WHEN TRY_CAST(v AS DECIMAL(38, 18)) = {cast} THEN {cast} END"
        result = fetch_arrow(con.sql(f"SELECT {cast} AS v FROM __column"))
    finally:
        con.close()
    return result.column("v").combine_chunks().cast(target)


def _np(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as numpy, null meaning 'this check does not apply'."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _as_text(values: pa.ChunkedArray) -> list[str | None]:
    """Each value as text for the quarantine's raw record, whatever its stored type."""
    if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
        return values.to_pylist()
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    if not any(test(values.type) for test in _NESTED):
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return pc.cast(values, pa.string()).to_pylist()  # no Python objects: any range
    out: list[str | None] = []
    for scalar in values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values:
        if not scalar.is_valid:
            out.append(None)
            continue
        try:
            out.append(json.dumps(scalar.as_py(), default=str))
        except (ValueError, OverflowError, TypeError):
            out.append(str(scalar))
    return out


def _clip(value: str, limit: int = 80) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def fetch_arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    """A relation's result as an Arrow table, across DuckDB versions."""
    fetch = getattr(rel, "to_arrow_table", None) or rel.fetch_arrow_table
    return fetch()
