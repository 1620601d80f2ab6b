"""Turn input files into Arrow tables without losing a single record.

Every record of an input ends up in exactly one of two places: a row of the returned table, or
a `Reject` that keeps its raw text and says why it could not be parsed. Blank lines are not
records. Column values from text formats stay strings here; typing and checks happen in
`validation`, where the failures become quarantine rows too.

CSV has two paths. The fast one hands the bytes to Arrow's C++ reader when the file is valid
UTF-8; its result is kept only if every record turned out to be exactly one line, so that line
numbers are exact. Anything else (a value spanning lines, an unclosed quote, undecodable bytes,
a repeated header name) takes the careful path: one record at a time, a quoted value may span
lines when they form a valid record, and an unclosed quote (one the following lines do not
close into a valid record) rejects only the line it starts on.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from backline.core.config import SourceSpec
from backline.core.errors import InputError

EXTENSIONS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
LINE = "__line"  # physical line where the record starts (1 = header line); row ordinal for Parquet
RAW = "__raw"  # original text of the record when the reader has it (JSON Lines), else null
_BLOCK = 1 << 24  # Arrow's CSV block: a record must fit in one (a bigger one is retried whole)
_MAX_BLOCK = (1 << 31) - 1
_MAX_QUOTED_LINES = 64  # a quoted value may span at most this many lines before we call it broken


@dataclass(frozen=True)
class Reject:
    """A record that could not be parsed into columns, with its raw text."""

    line: int
    reason: str
    message: str
    raw: str
    column: str | None = None


@dataclass
class FileRead:
    """One input file, read: parsed rows, rejected records, and what we noticed."""

    path: Path
    format: str
    table: pa.Table
    """Declared columns only (strings for text formats, as stored for Parquet) + LINE, RAW."""
    rejects: list[Reject] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    whole_file_reason: tuple[str, str] | None = None
    """(reason, message) that applies to every parsed row, e.g. a required column is missing."""

    @property
    def rows_in(self) -> int:
        return self.table.num_rows + len(self.rejects)


def list_inputs(path: Path, fmt: str) -> list[tuple[Path, str]]:
    """The files to ingest under `path` (a file or a folder), each with its format."""
    if not path.exists():
        raise InputError(f"input {path} does not exist. Check the path.")
    if path.is_file():
        files = [path]
    else:
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not p.name.startswith((".", "_")) and p.suffix.lower() in EXTENSIONS
        )
        if not files:
            raise InputError(
                f"folder {path} holds no .csv, .jsonl, .ndjson, .json or .parquet files. "
                "Point ingest at a file or a folder of data files."
            )
    out = []
    for f in files:
        detected = EXTENSIONS.get(f.suffix.lower())
        chosen = fmt if fmt != "auto" else detected
        if chosen is None:
            raise InputError(
                f"cannot tell the format of {f.name} from its extension {f.suffix!r}. "
                "Rename it to .csv, .jsonl or .parquet, or set format in the source's config."
            )
        out.append((f, chosen))
    return out


def content_hash(files: Iterable[Path], root: Path) -> str:
    """sha256 over each file's name (relative to `root`) and bytes: re-ingest detection."""
    digest = hashlib.sha256()
    for path in files:
        name = path.name if path == root else str(path.relative_to(root))
        digest.update(name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with path.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def read_file(
    path: Path, fmt: str, data: bytes, spec: SourceSpec, *, max_value_bytes: int | None = None
) -> FileRead:
    """Read one file. `max_value_bytes` is the biggest value validation will accept: the CSV
    reader makes sure values up to it (and beyond) are read whole, so the verdict on a big
    value is `too_long` from validation, never a parse failure."""
    if fmt == "csv":
        return _read_csv(path, data, spec, max_value_bytes or 0)
    if fmt == "jsonl":
        return _read_jsonl(path, data, spec)
    return _read_parquet(path, data, spec)


# --------------------------------------------------------------------------------------------
# CSV


def _read_csv(path: Path, data: bytes, spec: SourceSpec, max_value_bytes: int = 0) -> FileRead:
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    if spec.encoding.lower().replace("-", "") not in ("utf8",):
        # if it does not decode, the careful path rejects the lines that do not
        with contextlib.suppress(UnicodeDecodeError):
            data = data.decode(spec.encoding).encode("utf-8")
    header_end = data.find(b"\n")
    header_bytes = data if header_end < 0 else data[:header_end]
    if not header_bytes.strip():
        empty = _empty_table(spec)
        result = FileRead(path, "csv", empty)
        if data.strip():
            result.warnings.append(f"{path.name}: the first line is blank; expected a header")
            return _read_csv_careful(path, data, spec)
        return result
    try:
        header = next(
            csv.reader([header_bytes.decode("utf-8").rstrip("\r")], delimiter=spec.delimiter)
        )
    except (UnicodeDecodeError, csv.Error):
        header = []
    if not (header and len(set(header)) == len(header) and _is_utf8(data)):
        return _read_csv_careful(path, data, spec)

    if header_end < 0 or not data[header_end + 1 :].strip(b"\r\n"):  # a header and nothing else
        only_header = pa.table({name: pa.array([], pa.string()) for name in header})
        only_header = only_header.append_column(LINE, pa.array([], pa.int64()))
        return _conform(path, "csv", only_header, [], spec)
    invalid: list[Reject] = []
    width = len(header)

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(
            Reject(
                line=int(row.number or 0),
                reason="malformed_row",
                message=f"expected {width} fields, found {row.actual_columns}",
                raw=row.text,
            )
        )
        return "skip"

    def parse(block_size: int) -> pa.Table:
        invalid.clear()
        return pacsv.read_csv(
            io.BytesIO(data),
            read_options=pacsv.ReadOptions(use_threads=False, block_size=block_size),
            parse_options=pacsv.ParseOptions(
                delimiter=spec.delimiter,
                quote_char='"' if b'"' in data else False,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )

    block = min(max(_BLOCK, max_value_bytes + (1 << 16)), _MAX_BLOCK)
    try:
        try:
            table = parse(block)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc) or len(data) < block:
                raise
            # a record bigger than a block: read the file as one block (it is in memory anyway)
            table = parse(min(len(data) + 1, _MAX_BLOCK))
    except pa.ArrowInvalid:
        return _read_csv_careful(path, data, spec)
    # Arrow numbers rows by non-blank line (header = 1). That maps to physical lines only when
    # every record is one line; a value spanning lines (legal or an unclosed quote) means the
    # careful path must decide where records end.
    nonblank = _nonblank_lines(data)
    if len(nonblank) - 1 != table.num_rows + len(invalid) or any("\n" in r.raw for r in invalid):
        return _read_csv_careful(path, data, spec)
    invalid = [dataclasses.replace(r, line=int(nonblank[r.line - 1])) for r in invalid]
    skipped = np.array(sorted({r.line for r in invalid}), dtype=np.int64)
    lines = nonblank[1:]
    if len(skipped):
        lines = lines[~np.isin(lines, skipped)]
    table = table.append_column(LINE, pa.array(lines, pa.int64()))
    return _conform(path, "csv", table, invalid, spec)


def _nonblank_lines(data: bytes) -> np.ndarray:
    """1-based numbers of the lines that hold something other than a line ending."""
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], ends + 1))
    stops = np.concatenate((ends, [len(buf)]))
    lengths = stops - starts
    cr_only = (lengths == 1) & (buf[np.minimum(starts, max(len(buf) - 1, 0))] == 13)
    return (np.flatnonzero((lengths > 0) & ~cr_only) + 1).astype(np.int64)


def _read_csv_careful(path: Path, data: bytes, spec: SourceSpec) -> FileRead:
    # Python's csv module refuses fields over its own limit (131072 characters by default);
    # the size of a value is for validation to judge (ingest.max_value_bytes), so lift it.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, min(len(data) + 1, sys.maxsize)))
    try:
        return _read_csv_records(path, data, spec)
    finally:
        csv.field_size_limit(limit)


def _decode_line(
    raw: bytes, number: int, spec: SourceSpec, rejects: list[Reject], fix: str = ""
) -> str | None:
    """The line as text, or None after adding an invalid_encoding reject (message + `fix`)."""
    try:
        return raw.decode(spec.encoding)
    except UnicodeDecodeError as exc:
        rejects.append(
            Reject(
                number,
                "invalid_encoding",
                f"bytes at position {exc.start} are not {spec.encoding}{fix}",
                raw.decode(spec.encoding, errors="backslashreplace"),
            )
        )
        return None


def _read_csv_records(path: Path, data: bytes, spec: SourceSpec) -> FileRead:
    raw_lines = data.split(b"\n")
    rejects: list[Reject] = []
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    header: list[str] | None = None
    header_problem: str | None = None
    i = 0
    while i < len(raw_lines):
        raw = raw_lines[i].rstrip(b"\r")
        number = i + 1
        i += 1
        if not raw:  # blank, as Arrow's reader sees it
            continue
        text = _decode_line(
            raw, number, spec, rejects, "; re-encode the file or set the source's encoding"
        )
        if text is None:
            continue
        if text.count('"') % 2 == 1:
            # A quoted value may span lines, but only into a valid record: a quote that the
            # following lines do not close into one rejects its own line alone, so the lines
            # after it (perhaps with open quotes of their own) are still records of their own.
            joined, used = _join_quoted(text, raw_lines, i, spec.encoding)
            record = None if joined is None else _parse_record(joined, spec.delimiter, header)
            if record is None:
                rejects.append(
                    Reject(number, "malformed_row", "a quoted value is never closed", text)
                )
                continue
            fields, text, i = record, str(joined), i + used
        else:
            try:
                fields = next(csv.reader([text], delimiter=spec.delimiter, strict=True))
            except (csv.Error, StopIteration) as exc:
                rejects.append(Reject(number, "malformed_row", f"not valid CSV ({exc})", text))
                continue
        if header is None:
            header = fields
            if len(set(header)) != len(header):
                dupes = sorted({h for h in header if header.count(h) > 1})
                header_problem = f"the header repeats column {dupes[0]!r}; rename one of them"
            continue
        if header_problem is not None:
            rejects.append(Reject(number, "malformed_header", header_problem, text))
            continue
        if len(fields) != len(header):
            rejects.append(
                Reject(
                    number,
                    "malformed_row",
                    f"expected {len(header)} fields, found {len(fields)}",
                    text,
                )
            )
            continue
        rows.append(fields)
        line_numbers.append(number)
    if header is None:
        return FileRead(path, "csv", _empty_table(spec), rejects)
    if header_problem is not None:  # every record was rejected above
        table = _empty_table(spec).drop_columns([LINE, RAW])
    else:
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in header]
        table = pa.table(
            {name: pa.array(col, pa.string()) for name, col in zip(header, columns, strict=True)}
        )
    table = table.append_column(LINE, pa.array(line_numbers, pa.int64()))
    return _conform(path, "csv", table, rejects, spec)


def _parse_record(text: str, delimiter: str, header: list[str] | None) -> list[str] | None:
    """The fields of a record that spans lines, or None unless it is valid CSV with the
    header's number of fields (any number for the header itself)."""
    try:
        fields = next(csv.reader([text], delimiter=delimiter, strict=True))
    except (csv.Error, StopIteration):
        return None
    return fields if header is None or len(fields) == len(header) else None


def _join_quoted(
    first: str, raw_lines: list[bytes], start: int, encoding: str
) -> tuple[str | None, int]:
    """Join lines while a quoted value is open; (None, 0) if it never closes."""
    parts = [first]
    quotes = first.count('"')
    for used, raw in enumerate(raw_lines[start : start + _MAX_QUOTED_LINES], start=1):
        try:
            text = raw.rstrip(b"\r").decode(encoding)
        except UnicodeDecodeError:
            return None, 0
        parts.append(text)
        quotes += text.count('"')
        if quotes % 2 == 0:
            return "\n".join(parts), used
    return None, 0


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# JSON Lines


def _read_jsonl(path: Path, data: bytes, spec: SourceSpec) -> FileRead:
    declared = set(spec.column_names)
    values: dict[str, list[str | None]] = {name: [] for name in spec.column_names}
    extra: set[str] = set()
    lines: list[int] = []
    raws: list[str] = []
    rejects: list[Reject] = []
    for index, raw in enumerate(data.split(b"\n")):
        number = index + 1
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        text = _decode_line(raw, number, spec, rejects)
        if text is None:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            rejects.append(Reject(number, "malformed_row", f"not valid JSON ({exc.msg})", text))
            continue
        if not isinstance(obj, dict):
            rejects.append(
                Reject(
                    number,
                    "malformed_row",
                    f"expected a JSON object, found {type(obj).__name__}",
                    text,
                )
            )
            continue
        nested = next(
            (k for k, v in obj.items() if k in declared and isinstance(v, dict | list)), None
        )
        if nested is not None:
            rejects.append(
                Reject(
                    number, "type_mismatch", f"{nested} holds a nested value", text, column=nested
                )
            )
            continue
        extra.update(k for k in obj if k not in declared)
        for name in spec.column_names:
            values[name].append(_json_scalar(obj.get(name)))
        lines.append(number)
        raws.append(text)
    table = pa.table({name: pa.array(col, pa.string()) for name, col in values.items()})
    table = table.append_column(LINE, pa.array(lines, pa.int64()))
    table = table.append_column(RAW, pa.array(raws, pa.string()))
    result = FileRead(path, "jsonl", table, rejects)
    _apply_extra_columns(result, sorted(extra), spec)
    return result


def _json_scalar(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value)


# --------------------------------------------------------------------------------------------
# Parquet


def _read_parquet(path: Path, data: bytes, spec: SourceSpec) -> FileRead:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as exc:
        # No footer, no rows we could trust: keep the whole file as one quarantined record.
        reject = Reject(
            1,
            "unreadable_file",
            f"not a readable Parquet file ({str(exc).splitlines()[0]}); the file is kept in the "
            "quarantine folder",
            str(path),
        )
        return FileRead(path, "parquet", _empty_table(spec), [reject])
    names = table.column_names
    dupes = sorted({n for n in names if names.count(n) > 1})
    ours = [i for i, n in enumerate(names) if n in (LINE, RAW) or n in dupes]
    if ours:  # columns no declaration can name, or names that say nothing about which is which
        table = _without(table, ours)
    table = table.append_column(LINE, pa.array(np.arange(1, table.num_rows + 1), pa.int64()))
    result = _conform(path, "parquet", table, [], spec)
    if dupes:
        result.whole_file_reason = (
            "malformed_header",
            f"{path.name} repeats column {dupes[0]!r}; rename one of them",
        )
    return result


def _without(table: pa.Table, positions: list[int]) -> pa.Table:
    for i in sorted(positions, reverse=True):
        table = table.remove_column(i)
    return table


# --------------------------------------------------------------------------------------------
# shared


def _empty_table(spec: SourceSpec) -> pa.Table:
    cols = {name: pa.array([], pa.string()) for name in spec.column_names}
    cols[LINE] = pa.array([], pa.int64())
    cols[RAW] = pa.array([], pa.string())
    return pa.table(cols)


def _conform(
    path: Path, fmt: str, table: pa.Table, rejects: list[Reject], spec: SourceSpec
) -> FileRead:
    """Project a parsed table onto the declared columns; note missing and extra ones."""
    present = set(table.column_names) - {LINE, RAW}
    declared = spec.column_names
    extra = sorted(present - set(declared))
    missing = [c for c in declared if c not in present]
    n = table.num_rows
    for name in missing:
        table = table.append_column(name, pa.nulls(n, pa.string()))
    if RAW not in table.column_names:
        table = table.append_column(RAW, pa.nulls(n, pa.string()))
    table = table.select([*declared, LINE, RAW])
    result = FileRead(path, fmt, table, rejects)
    required_missing = [c for c in missing if spec.column(c).required]
    if required_missing:
        found = ", ".join(sorted(present)) or "(none)"
        hint = ""
        if len(present) == 1 and spec.delimiter not in next(iter(present)):
            hint = (
                f"; the header is one column, so the delimiter is probably not {spec.delimiter!r}"
            )
        result.whole_file_reason = (
            "missing_column",
            f"required column {required_missing[0]!r} is not in {path.name} (found: {found}){hint}",
        )
    elif missing:
        result.warnings.append(
            f"{path.name}: optional columns absent, stored as null: {', '.join(missing)}"
        )
    _apply_extra_columns(result, extra, spec)
    return result


def _apply_extra_columns(result: FileRead, extra: list[str], spec: SourceSpec) -> None:
    if not extra:
        return
    if spec.extra_columns == "reject" and result.whole_file_reason is None:
        result.whole_file_reason = (
            "unexpected_column",
            f"column {extra[0]!r} is not declared for source {spec.name!r}; declare it or set "
            'extra_columns = "drop"',
        )
    else:
        result.warnings.append(
            f"{result.path.name}: undeclared columns dropped: {', '.join(extra)}"
        )
