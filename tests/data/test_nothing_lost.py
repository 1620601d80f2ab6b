"""Nothing lost: rows in = rows accepted + rows quarantined, for any input a feed can produce.

Each generated line carries a unique marker in its merchant_id. Whatever is done to the line,
the marker must end up exactly once: in an accepted row, or inside a quarantined raw record.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backline.core.config import load_config
from backline.core.errors import BacklineError
from backline.core.workspace import init_project
from backline.data.ingest import ingest
from backline.data.offline_store import OfflineStore
from backline.data.validation import REASONS
from tests.data.helpers import HEADER

CORRUPTIONS = (
    "none",
    "bad_amount",
    "negative_amount",
    "drop_fields",
    "extra_field",
    "bad_bytes",
    "open_quote",
    "no_timezone",
    "bad_time",
    "empty_card",
    "bad_channel",
    "duplicate_id",
)


@st.composite
def feeds(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]], bool, bool]:
    """(format, [(corruption, marker)], crlf, truncate_last)."""
    fmt = draw(st.sampled_from(["csv", "jsonl"]))
    n = draw(st.integers(0, 30))
    kinds = draw(st.lists(st.sampled_from(CORRUPTIONS), min_size=n, max_size=n))
    return (
        fmt,
        [(k, f"m_L{i}x") for i, k in enumerate(kinds)],
        draw(st.booleans()),
        draw(st.booleans()),
    )


def _fields(i: int, kind: str, marker: str) -> dict[str, str]:
    f = {
        "transaction_id": f"tx_{(0 if kind == 'duplicate_id' else i + 1):016x}",
        "card_id": "" if kind == "empty_card" else f"card_{i:07d}",
        "merchant_id": marker,
        "merchant_category": "grocery",
        "amount": {"bad_amount": "12,5€", "negative_amount": "-4"}.get(kind, f"{i + 1}.25"),
        "currency": "USD",
        "country": "US",
        "channel": "teleport" if kind == "bad_channel" else "online",
        "device_id": "dev_1",
        "event_time": {"no_timezone": "2026-01-02 03:04:05", "bad_time": "yesterday"}.get(
            kind, "2026-01-02T03:04:05Z"
        ),
    }
    if kind == "open_quote":
        f["merchant_category"] = '"groc'
    return f


def _render(fmt: str, lines: list[tuple[str, str]], crlf: bool, truncate: bool) -> bytes:
    out: list[bytes] = [] if fmt == "jsonl" else [HEADER.encode()]
    for i, (kind, marker) in enumerate(lines):
        f = _fields(i, kind, marker)
        if fmt == "csv":
            values = list(f.values())
            if kind == "drop_fields":
                values = values[:-3]
            if kind == "extra_field":
                values.append("surprise")
            line = ",".join(values).encode()
        else:
            line = json.dumps(f).encode()
            if kind == "drop_fields":
                line = line[: line.index(b'"amount"')]  # broken JSON, marker kept
            if kind == "extra_field":
                line = b"[" + line + b"]"  # not an object
        if kind == "bad_bytes":
            line = line.replace(b"grocery", b"gr\xff\xfecery")
        out.append(line)
        if i % 7 == 3:
            out.append(b"")  # blank lines are not records
    data = (b"\r\n" if crlf else b"\n").join(out)
    if truncate and lines:
        data = data[
            : data.rindex(lines[-1][1].encode()) + len(lines[-1][1])
        ]  # cut after the marker
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(feeds())
def test_every_record_is_accepted_or_quarantined_exactly_once(feed: tuple) -> None:
    fmt, lines, crlf, truncate = feed
    with tempfile.TemporaryDirectory() as tmp:
        root = init_project(Path(tmp) / "p")
        cfg = load_config(root, env={})
        path = Path(tmp) / f"feed.{fmt}"
        path.write_bytes(_render(fmt, lines, crlf, truncate))
        result = ingest(cfg, "transactions", path)
        assert result.rows_in == result.rows_accepted + result.rows_quarantined
        con = OfflineStore.open(cfg).connect_duckdb(cfg.sources.values())
        accepted = [r[0] for r in con.sql("SELECT merchant_id FROM transactions").fetchall()]
        raws = [r[0] for r in con.sql("SELECT raw_record FROM quarantine").fetchall()]
        reasons = [r[0] for r in con.sql("SELECT reason FROM quarantine").fetchall()]
        assert len(accepted) == result.rows_accepted and len(raws) == result.rows_quarantined
        assert all(reasons), "every quarantined row has a reason"
        for kind, marker in lines:
            found = accepted.count(marker) + sum(raw.count(marker) for raw in raws)
            assert found == 1, f"{marker} ({kind}) found {found} times"
        # One record per non-blank line, in both formats: the count is known without asking
        # the reader. A CSV line with an unclosed quote is one record too: a quoted value may
        # span lines only when the lines form a valid record, so the quote never swallows the
        # lines after it (docs/ingest.md, "What is a record").
        assert result.rows_in == len(lines)
        for raw in raws:
            held = [m for _, m in lines if m in raw]
            assert len(held) <= 1, f"one quarantined record holds the lines of {held}"
        clean = {m for k, m in lines if k == "none"}
        if not truncate:
            assert clean <= set(accepted)
        assert not set(accepted) - {
            m for k, m in lines if k in ("none", "extra_field", "duplicate_id")
        }


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.sampled_from(["csv", "jsonl", "parquet"]))
def test_arbitrary_bytes_never_crash_and_always_balance(data: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = init_project(Path(tmp) / "p")
        cfg = load_config(root, env={})
        path = Path(tmp) / f"junk.{fmt}"
        path.write_bytes(
            HEADER.encode() + b"\n" + data if fmt == "csv" and data[:1] != b"\n" else data
        )
        try:
            result = ingest(cfg, "transactions", path)
        except BacklineError:
            return
        assert result.rows_in == result.rows_accepted + result.rows_quarantined
        con = OfflineStore.open(cfg).connect_duckdb(cfg.sources.values())
        assert (
            con.sql("SELECT count(*) FROM quarantine").fetchall()[0][0] == result.rows_quarantined
        )


# ---------------------------------------------------------------------------------------------
# Parquet: whatever Arrow type a column is stored as, for whatever type it is declared as.

_EVERY_TYPE_TOML = """
[sources.wide]
primary_key = ["k"]
event_time = "t"
[sources.wide.columns.k]
type = "string"
[sources.wide.columns.t]
type = "timestamp"
""" + "".join(
    f'[sources.wide.columns.c_{kind}]\ntype = "{kind}"\n'
    for kind in ("string", "int64", "float64", "bool", "timestamp", "date")
)
_ZONES = (None, "UTC", "+05:30", "America/New_York")
_INT64 = st.integers(-(2**63), 2**63 - 1)


def _maybe(values: st.SearchStrategy[object], n: int) -> st.SearchStrategy[list[object]]:
    return st.lists(st.one_of(st.none(), values), min_size=n, max_size=n)


@st.composite
def _arrow_column(draw: st.DrawFn, n: int) -> pa.Array:
    """n values of one Arrow type, drawn from what Parquet files in the wild hold."""
    kind = draw(
        st.sampled_from(
            [
                "int64",
                "int8",
                "uint64",
                "float64",
                "bool",
                "string",
                "large_string",
                "binary",
                "large_binary",
                "dictionary",
                "decimal",
                "decimal256",
                "date",
                "timestamp",
                "small_timestamp",
                "list",
                "large_list",
                "struct",
                "map",
                "all_null",
                "null_type",
                "text_numbers",
            ]
        )
    )
    text = st.text(max_size=12)
    if kind == "int64":
        return pa.array(draw(_maybe(_INT64, n)), pa.int64())
    if kind == "int8":
        return pa.array(draw(_maybe(st.integers(-128, 127), n)), pa.int8())
    if kind == "uint64":
        return pa.array(draw(_maybe(st.integers(0, 2**64 - 1), n)), pa.uint64())
    if kind == "float64":
        return pa.array(draw(_maybe(st.floats(allow_nan=True, allow_infinity=True), n)))
    if kind == "bool":
        return pa.array(draw(_maybe(st.booleans(), n)), pa.bool_())
    if kind in ("string", "large_string"):
        return pa.array(draw(_maybe(text, n)), getattr(pa, kind)())
    if kind == "text_numbers":  # text that looks like each declared type, or almost
        looks = st.sampled_from(
            ["1", "-7", "1.5", "1e400", "true", "no", "2026-01-02", "2026-01-02T03:04:05Z"]
        )
        return pa.array(draw(_maybe(looks, n)), pa.string())
    if kind in ("binary", "large_binary"):
        return pa.array(draw(_maybe(st.binary(max_size=8), n)), getattr(pa, kind)())
    if kind == "dictionary":
        return pa.array(draw(_maybe(st.sampled_from(["a", "1", "2.5", "true"]), n))).cast(
            pa.dictionary(pa.int32(), pa.string())
        )
    if kind == "decimal":
        places = st.decimals(min_value=-(10**7), max_value=10**7, places=2)
        return pa.array(draw(_maybe(places, n)), pa.decimal128(10, 2))
    if kind == "decimal256":
        big = st.decimals(min_value=-(10**60), max_value=10**60, places=0)
        return pa.array(draw(_maybe(big, n)), pa.decimal256(70, 0))
    if kind == "date":
        days = st.integers(-(2**31), 2**31 - 1)
        return pa.array(draw(_maybe(days, n)), pa.int32()).cast(pa.date32())
    if kind in ("timestamp", "small_timestamp"):
        unit = draw(st.sampled_from(["s", "ms", "us", "ns"]))
        ticks = _INT64 if kind == "timestamp" else st.integers(0, 2 * 10**9)
        if unit == "s" and kind == "timestamp":  # Parquet stores seconds as milliseconds
            ticks = st.integers(-((2**63 - 1) // 1000), (2**63 - 1) // 1000)
        if kind == "small_timestamp":  # seconds since 1970, in the unit
            ticks = ticks.map(lambda s: s * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit])
        zone = draw(st.sampled_from(_ZONES))
        return pa.array(draw(_maybe(ticks, n)), pa.int64()).cast(pa.timestamp(unit, tz=zone))
    if kind in ("list", "large_list"):
        lists = st.lists(st.integers(-5, 5), max_size=3)
        make = pa.list_ if kind == "list" else pa.large_list
        return pa.array(draw(_maybe(lists, n)), make(pa.int64()))
    if kind == "struct":
        record = st.fixed_dictionaries({"a": st.integers(0, 9), "b": text})
        return pa.array(draw(_maybe(record, n)), pa.struct([("a", pa.int64()), ("b", pa.string())]))
    if kind == "map":
        pairs = st.lists(st.tuples(st.sampled_from("xyz"), st.integers(0, 9)), max_size=2)
        return pa.array(draw(_maybe(pairs, n)), pa.map_(pa.string(), pa.int64()))
    if kind == "all_null":
        return pa.nulls(n, draw(st.sampled_from([pa.string(), pa.int64(), pa.list_(pa.int8())])))
    return pa.nulls(n, pa.null())


@st.composite
def parquet_tables(draw: st.DrawFn) -> pa.Table:
    """A table for source `wide`: key k is a unique marker; every other column is fuzzed, and
    the event time t is usually a valid zoned timestamp so rows reach the other checks."""
    n = draw(st.integers(0, 12))
    columns: dict[str, pa.Array] = {"k": pa.array([f"m_P{i}x" for i in range(n)], pa.string())}
    if draw(st.integers(0, 3)):
        columns["t"] = pa.array([1767323045 + i for i in range(n)], pa.int64()).cast(
            pa.timestamp("s", tz="UTC")
        )
    else:
        columns["t"] = draw(_arrow_column(n))
    declared = ("string", "int64", "float64", "bool", "timestamp", "date")
    for kind in sorted(draw(st.sets(st.sampled_from(declared), max_size=3))):
        columns[f"c_{kind}"] = draw(_arrow_column(n))  # few, so rows get past every check
    return pa.table(columns)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parquet_tables())
def test_parquet_of_any_arrow_type_is_accepted_or_quarantined_never_a_crash(
    table: pa.Table,
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "p"
        root.mkdir()
        (root / "backline.toml").write_text(_EVERY_TYPE_TOML)
        cfg = load_config(root, env={})
        path = Path(tmp) / "wide.parquet"
        pq.write_table(table, path)
        try:
            result = ingest(cfg, "wide", path)
        except BacklineError:
            result = None
        offline = cfg.store_uri("offline").path
        assert offline is not None
        assert not (offline / "_staging").exists(), "a staging folder was left behind"
        if result is None:
            return
        assert result.rows_in == result.rows_accepted + result.rows_quarantined == table.num_rows
        con = OfflineStore.open(cfg).connect_duckdb(cfg.sources.values())
        accepted = [r[0] for r in con.sql("SELECT k FROM wide").fetchall()]
        quarantined = con.sql("SELECT reason, raw_record FROM quarantine").fetchall()
        assert len(accepted) == result.rows_accepted
        assert len(quarantined) == result.rows_quarantined
        assert {reason for reason, _ in quarantined} <= set(REASONS)
        for marker in table.column("k").to_pylist():
            found = accepted.count(marker) + sum(raw.count(marker) for _, raw in quarantined)
            assert found == 1, f"{marker} found {found} times"
