"""Nothing lost: rows in = rows accepted + rows quarantined, for any input a feed can produce.

Each generated line carries a unique marker in its merchant_id. Whatever is done to the line,
the marker must end up exactly once: in an accepted row, or inside a quarantined raw record.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backline.core.config import load_config
from backline.core.errors import BacklineError
from backline.core.workspace import init_project
from backline.data.ingest import ingest
from backline.data.offline_store import OfflineStore
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
        if not any(kind == "open_quote" for kind, _ in lines) or fmt == "jsonl":
            # one record per non-blank line: the count is known without asking the reader
            assert result.rows_in == len(lines)
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
