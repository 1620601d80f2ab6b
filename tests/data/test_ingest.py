"""Ingestion: validation, quarantine with reasons, idempotence, the files real users send."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backline.cli import main
from backline.core.config import Config, load_config
from backline.core.errors import InputError, NotFoundError
from backline.data.ingest import ingest
from backline.data.offline_store import OfflineStore
from tests.data.helpers import HEADER, row, tx_id, write_csv


def query(cfg: Config, sql: str) -> list[tuple]:
    con = OfflineStore.open(cfg).connect_duckdb(cfg.sources.values())
    return con.sql(sql).fetchall()


def quarantine_by_line(cfg: Config) -> dict[int, str]:
    return dict(query(cfg, "SELECT line, reason FROM quarantine"))


def test_each_bad_value_gets_its_reason_and_line(cfg: Config, tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        [
            row(1),  # line 2: good
            row(2, amount="-3"),  # 3
            row(3, currency="XXX"),  # 4
            row(4, event_time="2026-01-02 10:00:00"),  # 5: no timezone
            row(5, event_time="2099-01-01T00:00:00Z"),  # 6: far future
            row(1, amount="7"),  # 7: duplicate of line 2
            "",  # 8: blank, not a record
            row(6).rsplit(",", 2)[0],  # 9: two fields short
            row(7, card=""),  # 10: required value missing
            row(8, amount="abc"),  # 11
            row(9, amount="nan"),  # 12
            row(10, channel="carrier_pigeon"),  # 13
            row(11, event_time="1999-12-31T23:00:00Z"),  # 14: before not_before
            row(12, event_time="2026-01-02T10:00:00+02:00"),  # 15: good, offset normalised
            f"{tx_id(13)},card_0000001,m_000001,grocery,1.0,USD,US,pos,,2026-01-03T00:00:00Z",  # 16: good, optional empty
        ],
    )
    result = ingest(cfg, "transactions", path)
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (14, 3, 11)
    assert quarantine_by_line(cfg) == {
        3: "out_of_range",
        4: "not_allowed",
        5: "timestamp_without_timezone",
        6: "timestamp_in_future",
        7: "duplicate_key_in_batch",
        9: "malformed_row",
        10: "missing_value",
        11: "type_mismatch",
        12: "type_mismatch",
        13: "not_allowed",
        14: "timestamp_too_old",
    }
    rows = query(
        cfg,
        "SELECT transaction_id, amount, device_id, epoch(event_time)::BIGINT FROM transactions ORDER BY 1",
    )
    assert rows == [
        (tx_id(1), 12.5, "dev_00000001", 1767348000),
        (tx_id(12), 12.5, "dev_00000001", 1767340800),
        (tx_id(13), 1.0, None, 1767398400),
    ]
    messages = dict(query(cfg, "SELECT reason, message FROM quarantine"))
    assert messages["out_of_range"] == "amount = -3 is below min 0.01"
    assert "add an offset such as Z or +00:00" in messages["timestamp_without_timezone"]
    raw = dict(query(cfg, "SELECT line, raw_record FROM quarantine"))
    assert json.loads(raw[3])["amount"] == "-3"  # the original text, not a parsed value
    assert raw[9] == row(6).rsplit(",", 2)[0]


def test_reingesting_the_same_content_is_a_no_op(cfg: Config, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", [row(i) for i in range(50)] + [row(1000, amount="-1")])
    first = ingest(cfg, "transactions", path)
    again = ingest(cfg, "transactions", path)
    assert first.status == "committed" and again.status == "already_ingested"
    assert again.batch_id == first.batch_id
    assert (again.rows_in, again.rows_accepted, again.rows_quarantined) == (51, 50, 1)
    assert (first.rows_new, again.rows_new) == (50, 0)  # the counts are the first batch's
    assert again.to_json()["rows_new"] == 0
    assert query(cfg, "SELECT count(*) FROM transactions") == [(50,)]
    assert query(cfg, "SELECT count(*) FROM quarantine") == [(1,)]
    assert query(cfg, "SELECT count(*) FROM batches") == [(1,)]


def test_keys_already_in_the_store_are_quarantined_not_doubled(cfg: Config, tmp_path: Path) -> None:
    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(i) for i in range(10)]))
    result = ingest(
        cfg, "transactions", write_csv(tmp_path / "b.csv", [row(i) for i in range(5, 15)])
    )
    assert result.rows_accepted == 5
    assert result.quarantine_reasons == {"duplicate_key": 5}
    assert query(cfg, "SELECT count(*), count(DISTINCT transaction_id) FROM transactions") == [
        (15, 15)
    ]


def test_empty_and_header_only_files(cfg: Config, tmp_path: Path) -> None:
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    header_only = tmp_path / "header.csv"
    header_only.write_text(HEADER + "\n")
    for path in (empty, header_only):
        result = ingest(cfg, "transactions", path)
        assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (0, 0, 0)
    # a header with no rows is a batch; a 0-byte file is nothing, and says so
    assert query(cfg, "SELECT count(*) FROM batches") == [(1,)]
    result = ingest(cfg, "transactions", empty)
    assert (result.status, result.batch_id, result.rows_new) == ("empty", "", 0)
    assert result.warnings == ("empty.csv is empty (0 bytes); nothing was committed",)
    assert result.to_json()["status"] == "empty"
    assert not (cfg.store_uri("offline").path / "_staging").exists()  # type: ignore[operator]


def test_a_0_byte_file_among_others_is_noted(cfg: Config, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_bytes(b"")
    write_csv(folder / "b.csv", [row(1)])
    result = ingest(cfg, "transactions", folder)
    assert (result.status, result.rows_accepted) == ("committed", 1)
    assert "a.csv: empty (0 bytes)" in result.warnings


def test_truncated_file_loses_only_its_last_record(cfg: Config, tmp_path: Path) -> None:
    data = (HEADER + "\n" + "\n".join(row(i) for i in range(20)) + "\n").encode()
    path = tmp_path / "t.csv"
    path.write_bytes(data[: len(data) - 30])  # cut inside the last line
    result = ingest(cfg, "transactions", path)
    assert (result.rows_in, result.rows_accepted) == (20, 19)
    assert result.quarantine_reasons in (
        {"malformed_row": 1},
        {"timestamp_without_timezone": 1},
        {"type_mismatch": 1},
    )


def test_wrong_delimiter_quarantines_every_row_and_says_why(cfg: Config, tmp_path: Path) -> None:
    path = tmp_path / "semi.csv"
    path.write_text(
        HEADER.replace(",", ";")
        + "\n"
        + "\n".join(row(i).replace(",", ";") for i in range(5))
        + "\n"
    )
    result = ingest(cfg, "transactions", path)
    assert (result.rows_in, result.rows_quarantined) == (5, 5)
    assert result.quarantine_reasons == {"missing_column": 5}
    message = query(cfg, "SELECT DISTINCT message FROM quarantine")[0][0]
    assert "the delimiter is probably not ','" in message


def test_bytes_in_another_encoding_quarantine_only_their_line(cfg: Config, tmp_path: Path) -> None:
    lines = [row(i).encode() for i in range(6)]
    lines[3] = row(3).replace("grocery", "caf\u00e9").encode("latin-1")
    path = tmp_path / "t.csv"
    path.write_bytes(HEADER.encode() + b"\n" + b"\n".join(lines) + b"\n")
    result = ingest(cfg, "transactions", path)
    assert (result.rows_in, result.rows_accepted) == (6, 5)
    assert quarantine_by_line(cfg) == {5: "invalid_encoding"}
    assert "caf\\xe9" in query(cfg, "SELECT raw_record FROM quarantine")[0][0]


def test_quoted_fields_crlf_and_bom(cfg: Config, tmp_path: Path) -> None:
    rows = [row(i).replace("grocery", '"grocery"') for i in range(4)]
    rows.append(row(4).replace("m_000001", '"m_0,01"'))  # a delimiter inside quotes
    rows.append(row(5).replace("m_000001", '"m_00\nsplit"'))  # a newline inside quotes
    rows.append(row(6).replace("m_000001", '"never closed'))
    rows.append(row(7))
    path = tmp_path / "q.csv"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n".join([HEADER, *rows]) + "\r\n").encode())
    result = ingest(cfg, "transactions", path)
    assert result.rows_in == 8
    assert result.quarantine_reasons == {"malformed_row": 1}
    assert query(
        cfg, f"SELECT merchant_id FROM transactions WHERE transaction_id = '{tx_id(4)}'"
    ) == [("m_0,01",)]
    assert query(
        cfg, f"SELECT merchant_id FROM transactions WHERE transaction_id = '{tx_id(5)}'"
    ) == [("m_00\nsplit",)]
    assert quarantine_by_line(cfg) == {9: "malformed_row"}


def test_an_unclosed_quote_rejects_only_its_own_line(cfg: Config, tmp_path: Path) -> None:
    """A quote closed by a later line's quote does not make the lines between one record
    unless together they are a valid record: the good rows between two open quotes are kept."""
    rows = [
        row(1).replace("m_000001", '"m_open'),  # line 2: never closed
        row(2),  # 3: good
        row(3).replace("m_000001", '"m_open2'),  # 4: its quote would "close" line 2's
        row(4),  # 5: good
        row(5).replace("m_000001", '"m_two\nlines"'),  # 6-7: a value spanning two lines
        row(6).replace("grocery", '"gro\ncery",extra'),  # 8-9: spans lines, one field too many
        row(7),  # 10: good
    ]
    result = ingest(cfg, "transactions", write_csv(tmp_path / "q.csv", rows))
    assert (result.rows_in, result.rows_accepted) == (8, 4)
    assert quarantine_by_line(cfg) == {
        2: "malformed_row",
        4: "malformed_row",
        8: "malformed_row",
        9: "malformed_row",
    }
    kept = query(cfg, "SELECT transaction_id, merchant_id FROM transactions ORDER BY 1")
    assert kept == [
        (tx_id(2), "m_000001"),
        (tx_id(4), "m_000001"),
        (tx_id(5), "m_two\nlines"),
        (tx_id(7), "m_000001"),
    ]


def test_jsonl_with_broken_lines(cfg: Config, tmp_path: Path) -> None:
    good = {
        "transaction_id": tx_id(1),
        "card_id": "card_0000001",
        "merchant_id": "m_1",
        "merchant_category": "fuel",
        "amount": 30.5,
        "currency": "EUR",
        "country": "DE",
        "channel": "pos",
        "device_id": "d",
        "event_time": "2026-01-05T08:00:00Z",
        "extra": 1,
    }
    lines = [
        json.dumps(good),
        '{"transaction_id": "tx_broken',
        "[1, 2, 3]",
        json.dumps({**good, "transaction_id": tx_id(2), "amount": "40"}),
        json.dumps({**good, "transaction_id": tx_id(3), "amount": {"value": 1}}),
        json.dumps({**good, "transaction_id": tx_id(4), "amount": None}),
        "",
    ]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(lines))
    result = ingest(cfg, "transactions", path)
    assert (result.rows_in, result.rows_accepted) == (6, 2)
    assert quarantine_by_line(cfg) == {
        2: "malformed_row",
        3: "malformed_row",
        5: "type_mismatch",
        6: "missing_value",
    }
    assert any("extra" in w for w in result.warnings)
    # JSON Lines keep the original line as the raw record
    assert query(cfg, "SELECT raw_record FROM quarantine WHERE line = 6")[0][0] == lines[5]


def test_parquet_typed_input_and_naive_timestamps(cfg: Config, tmp_path: Path) -> None:
    n = 1000
    ts = pa.array(np.datetime64("2026-01-01T00:00:00") + np.arange(n) * np.timedelta64(60, "s"))
    table = pa.table(
        {
            "transaction_id": [tx_id(i) for i in range(n)],
            "card_id": ["card_0000001"] * n,
            "merchant_id": ["m_1"] * n,
            "merchant_category": ["fuel"] * n,
            "amount": np.linspace(1, 100, n),
            "currency": ["USD"] * n,
            "country": ["US"] * n,
            "channel": ["pos"] * n,
            "device_id": [None] * n,
            "event_time": ts.cast(pa.timestamp("us", tz="Europe/Berlin")),
        }
    )
    aware = tmp_path / "aware.parquet"
    pq.write_table(table, aware)
    result = ingest(cfg, "transactions", aware)
    assert (result.rows_in, result.rows_accepted) == (n, n)
    naive = tmp_path / "naive.parquet"
    pq.write_table(
        table.set_column(9, "event_time", ts.cast(pa.timestamp("us"))).slice(0, 10), naive
    )
    assert ingest(cfg, "transactions", naive).quarantine_reasons == {
        "timestamp_without_timezone": 10
    }
    # Arrow keeps instants; a Berlin-zoned column lands as the same instant in UTC
    assert query(cfg, "SELECT min(event_time)::VARCHAR FROM transactions") == [
        ("2026-01-01 00:00:00+00",)
    ]


def test_truncated_parquet_is_kept_whole_in_quarantine(cfg: Config, tmp_path: Path) -> None:
    good = tmp_path / "in" / "a.parquet"
    good.parent.mkdir()
    pq.write_table(pa.table({"transaction_id": [tx_id(1)]}), good)
    data = good.read_bytes()
    bad = tmp_path / "in" / "b.parquet"
    bad.write_bytes(data[: len(data) // 2])
    result = ingest(cfg, "transactions", tmp_path / "in")
    assert result.files == 2
    assert result.quarantine_reasons == {"missing_column": 1, "unreadable_file": 1}
    kept = list((cfg.store_uri("offline").path / "quarantine" / "files").rglob("b.parquet"))
    assert len(kept) == 1 and kept[0].read_bytes() == bad.read_bytes()


def test_statistics_are_stored_per_batch(cfg: Config, tmp_path: Path) -> None:
    amounts = [f"{a:.2f}" for a in np.linspace(1, 500, 101)]
    path = write_csv(
        tmp_path / "t.csv",
        [row(i, amount=a, channel="online" if i % 4 else "pos") for i, a in enumerate(amounts)]
        + [row(999, card="")],
    )
    ingest(cfg, "transactions", path)
    stats = {c: json.loads(s) for c, s in query(cfg, "SELECT column_name, stats FROM batch_stats")}
    assert stats["amount"]["count"] == 101 and stats["amount"]["null_rate"] == 0
    assert stats["amount"]["quantiles"]["0.5"] == pytest.approx(
        np.median([float(a) for a in amounts])
    )
    assert stats["amount"]["min"] == 1.0 and stats["amount"]["max"] == 500.0
    assert stats["channel"]["categories"] == {"online": 75, "pos": 26}
    assert stats["device_id"]["null_rate"] == 0.0
    assert stats["event_time"]["min"].startswith("2026-01-02T10:00:00")


def test_errors_for_unknown_source_and_missing_path(cfg: Config, tmp_path: Path) -> None:
    with pytest.raises(
        NotFoundError, match=r"unknown source 'transaction'\. Did you mean 'transactions'\?"
    ):
        ingest(cfg, "transaction", tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        ingest(cfg, "transactions", tmp_path / "nope.csv")
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(InputError, match=r"holds no \.csv"):
        ingest(cfg, "transactions", tmp_path / "empty-dir")


def test_cli_ingest_json_and_exit_codes(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "t.csv", [row(1), row(2, amount="-1")])
    assert main(["--project", str(project), "ingest", "transactions", str(path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert {
        "rows_in",
        "rows_accepted",
        "rows_quarantined",
        "batch_id",
        "quarantine_reasons",
    } <= set(payload)
    assert payload["quarantine_reasons"] == {"out_of_range": 1}
    assert main(["--project", str(project), "ingest", "nope", str(path)]) == 2
    assert main(["--project", str(project), "sql", "SELECT * FROM nowhere"]) == 2
    err = capsys.readouterr().err
    assert "unknown source 'nope'" in err and "query failed" in err and "Traceback" not in err


def test_sql_shows_sources_quarantine_and_batches(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_csv(tmp_path / "t.csv", [row(1), row(2, amount="x")])
    main(["--project", str(project), "ingest", "transactions", str(path)])
    capsys.readouterr()
    assert (
        main(
            [
                "--project",
                str(project),
                "sql",
                "SELECT b.rows_in, q.reason FROM batches b JOIN quarantine q USING (batch_id)",
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == {"rows_in": 2, "reason": "type_mismatch"}


def test_uncommitted_files_are_invisible_and_swept(cfg: Config, tmp_path: Path) -> None:
    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(1)]))
    root = cfg.store_uri("offline").path
    stray = root / "source=transactions" / "event_date=2026-01-02" / "part-crashed-0.parquet"
    pq.write_table(pa.table({"transaction_id": ["tx_ffffffffffffffff"]}), stray)
    assert query(cfg, "SELECT count(*) FROM transactions") == [(1,)]
    ingest(cfg, "transactions", write_csv(tmp_path / "b.csv", [row(2)]))
    assert not stray.exists()
    assert duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/source=transactions/**/*.parquet')"
    ).fetchall() == [(2,)]


def test_key_index_files_are_committed_with_each_batch(cfg: Config, tmp_path: Path) -> None:
    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(i) for i in range(20)]))
    store = OfflineStore.open(cfg)
    hashes, unindexed = store.key_index("transactions")
    assert len(hashes) == 20 and unindexed == []
    assert list(np.sort(hashes)) == list(hashes)


def test_hash_collisions_never_quarantine_a_new_key(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backline.data.ingest as ingest_module

    monkeypatch.setattr(
        ingest_module, "key_hashes", lambda table, spec: np.zeros(table.num_rows, dtype=np.uint64)
    )
    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(i) for i in range(10)]))
    result = ingest(
        cfg, "transactions", write_csv(tmp_path / "b.csv", [row(i) for i in range(8, 14)])
    )
    assert result.rows_accepted == 4 and result.quarantine_reasons == {"duplicate_key": 2}


def test_a_catalog_from_before_key_files_is_upgraded_and_still_deduplicates(
    cfg: Config, tmp_path: Path
) -> None:
    import sqlite3

    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(i) for i in range(10)]))
    catalog = cfg.catalog_uri.path
    root = cfg.store_uri("offline").path
    with sqlite3.connect(catalog) as con:  # make it look like a version-1 catalog
        con.executescript(
            """
            DELETE FROM batch_files WHERE kind = 'keys';
            CREATE TABLE old (batch_id TEXT NOT NULL, kind TEXT NOT NULL
                CHECK (kind IN ('data', 'quarantine', 'kept')), path TEXT NOT NULL, rows INTEGER NOT NULL);
            INSERT INTO old SELECT * FROM batch_files; DROP TABLE batch_files;
            ALTER TABLE old RENAME TO batch_files;
            UPDATE meta SET value = '1' WHERE key = 'schema_version';
            """
        )
    for f in (root / "keys").rglob("*.npy"):
        f.unlink()
    result = ingest(
        cfg, "transactions", write_csv(tmp_path / "b.csv", [row(i) for i in range(5, 15)])
    )
    assert result.rows_accepted == 5 and result.quarantine_reasons == {"duplicate_key": 5}
    with sqlite3.connect(catalog) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (
            "2",
        )
    hashes, unindexed = OfflineStore.open(cfg).key_index("transactions")
    assert len(hashes) == 5 and len(unindexed) == 1  # the old batch keeps working without one
    assert query(cfg, "SELECT count(*) FROM transactions") == [(15,)]


def test_a_catalog_from_a_newer_backline_is_refused(cfg: Config, tmp_path: Path) -> None:
    import sqlite3

    from backline.core.errors import StoreError

    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(1)]))
    with sqlite3.connect(cfg.catalog_uri.path) as con:
        con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="newer than this backline understands"):
        OfflineStore.open(cfg)


def _tx_table(**overrides: pa.Array) -> pa.Table:
    columns = {
        "transaction_id": pa.array([tx_id(1), tx_id(2)]),
        "card_id": pa.array(["card_0000001", "card_0000002"]),
        "merchant_id": pa.array(["m_000001", "m_000002"]),
        "merchant_category": pa.array(["grocery", "grocery"]),
        "amount": pa.array([1.5, 2.5]),
        "currency": pa.array(["USD", "USD"]),
        "country": pa.array(["US", "US"]),
        "channel": pa.array(["pos", "pos"]),
        "device_id": pa.array(["dev_1", "dev_2"]),
        "event_time": pa.array([1767348000, 1767348001]).cast(pa.timestamp("s", tz="UTC")),
    }
    columns.update(overrides)
    return pa.table(columns)


def test_parquet_nested_value_in_a_string_column_is_a_type_mismatch(
    cfg: Config, tmp_path: Path
) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(_tx_table(card_id=pa.array([[1, 2], None], pa.list_(pa.int64()))), path)
    result = ingest(cfg, "transactions", path)  # used to raise ArrowNotImplementedError
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (2, 0, 2)
    rows = query(cfg, 'SELECT line, reason, "column", message FROM quarantine ORDER BY line')
    assert rows[0][:3] == (1, "type_mismatch", "card_id")
    assert "nested value (list<element: int64>), not a string" in rows[0][3]
    assert rows[1][:3] == (2, "missing_value", "card_id")
    assert not (cfg.store_uri("offline").path / "_staging").exists()  # type: ignore[operator]


def test_parquet_struct_map_and_non_utf8_bytes_quarantine_their_rows_only(
    cfg: Config, tmp_path: Path
) -> None:
    path = tmp_path / "odd.parquet"
    table = _tx_table(
        merchant_id=pa.array([b"m_000001", b"\xff\xfe"], pa.binary()),
        device_id=pa.array([None, {"a": 1}], pa.struct([("a", pa.int64())])),
        channel=pa.array(["pos", "pos"]).cast(pa.dictionary(pa.int8(), pa.string())),
        amount=pa.array([Decimal("1.50"), Decimal("2.50")], pa.decimal128(6, 2)),
    )
    pq.write_table(table, path)
    result = ingest(cfg, "transactions", path)
    assert (result.rows_accepted, result.rows_quarantined) == (1, 1)
    assert query(cfg, 'SELECT line, reason, "column" FROM quarantine') == [
        (2, "type_mismatch", "merchant_id")
    ]
    assert query(cfg, "SELECT merchant_id, amount, channel FROM transactions") == [
        ("m_000001", 1.5, "pos")
    ]


def test_a_failed_ingest_leaves_no_staging_folder(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backline.data.ingest as ingest_module

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest_module, "_write_quarantine", broken)
    path = write_csv(tmp_path / "t.csv", [row(1), row(2, amount="-1")])
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(cfg, "transactions", path)
    offline = cfg.store_uri("offline").path
    assert offline is not None
    assert not (offline / "_staging").exists()
    assert [p for p in offline.rglob("*") if p.is_file() and p.name != ".lock"] == []
    monkeypatch.undo()
    assert ingest(cfg, "transactions", path).status == "committed"


def _big_value_rows(sizes: list[int], *, quoted_newline: bool = False) -> list[str]:
    """One row per size, its device_id that many bytes long (quoted, so Arrow's and Python's
    CSV readers both parse it); optionally a row whose quoted value spans two lines, which
    sends the file down the careful path."""
    rows = [row(i + 1).replace("dev_00000001", f'"{"d" * size}"') for i, size in enumerate(sizes)]
    if quoted_newline:
        rows.append(row(len(sizes) + 1).replace("dev_00000001", '"dev\n1"'))
    return rows


@pytest.mark.parametrize("careful", [False, True], ids=["arrow_reader", "careful_reader"])
def test_value_size_limit_is_too_long_at_one_configurable_limit(
    project: Path, tmp_path: Path, careful: bool
) -> None:
    limit = 300_000
    cfg = load_config(project, env={"BACKLINE_INGEST_MAX_VALUE_BYTES": str(limit)})
    # 131072 was Python's csv field limit: values around it, and around the configured limit
    sizes = [131_071, 131_072, 131_073, limit - 1, limit, limit + 1, 3 * limit]
    path = write_csv(tmp_path / "big.csv", _big_value_rows(sizes, quoted_newline=careful))
    result = ingest(cfg, "transactions", path)
    assert result.rows_accepted == 5 + careful
    assert result.quarantine_reasons == {"too_long": 2}
    rows = query(cfg, 'SELECT line, reason, "column", message FROM quarantine ORDER BY line')
    assert [(line, reason, column) for line, reason, column, _ in rows] == [
        (7, "too_long", "device_id"),
        (8, "too_long", "device_id"),
    ]
    assert "device_id is bigger than ingest.max_value_bytes = 300,000 bytes" in rows[0][3]
    kept = query(cfg, "SELECT length(device_id) FROM transactions ORDER BY 1")
    assert [n for (n,) in kept if n > 5] == sizes[:5]


def test_value_size_limit_is_the_same_in_jsonl_and_parquet(project: Path, tmp_path: Path) -> None:
    cfg = load_config(project, env={"BACKLINE_INGEST_MAX_VALUE_BYTES": "1000"})
    lines = [
        {"transaction_id": tx_id(i + 1), "card_id": "card_0000001", "merchant_id": "m_000001",
         "merchant_category": "grocery", "amount": 1.5, "currency": "USD", "country": "US",
         "channel": "pos", "device_id": "é" * (size // 2), "event_time": "2026-01-02T10:00:00Z"}
        for i, size in enumerate([1000, 1002])  # bytes as UTF-8: 'é' is two
    ]  # fmt: skip
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert ingest(cfg, "transactions", jsonl).quarantine_reasons == {"too_long": 1}
    parquet = tmp_path / "big.parquet"
    table = pa.Table.from_pylist(lines).set_column(
        9, "event_time", pa.array([1767348000] * 2).cast(pa.timestamp("s", tz="UTC"))
    )
    pq.write_table(table, parquet)
    result = ingest(cfg, "transactions", parquet)
    assert result.quarantine_reasons == {"too_long": 1, "duplicate_key": 1}
    assert query(cfg, "SELECT reason, \"column\" FROM quarantine WHERE reason = 'too_long'") == [
        ("too_long", "device_id"),
        ("too_long", "device_id"),
    ]


def test_max_length_is_too_long_whatever_the_size(cfg: Config, tmp_path: Path) -> None:
    rows = [row(1).replace("m_000001", "m" * size) for size in (33, 200_000)]
    path = write_csv(tmp_path / "t.csv", [rows[0], rows[1].replace(tx_id(1), tx_id(2))])
    result = ingest(cfg, "transactions", path)
    assert result.quarantine_reasons == {"too_long": 2}
    assert query(cfg, 'SELECT DISTINCT "column", message FROM quarantine') == [
        ("merchant_id", "merchant_id is longer than 32 characters")
    ]


@pytest.mark.slow
def test_a_value_bigger_than_a_reader_block_gets_the_same_verdict(
    cfg: Config, tmp_path: Path
) -> None:
    """Arrow reads CSV in 16 MiB blocks; the default limit is 16 MiB. A record bigger than a
    block used to fall to Python's csv module, which called a 50 MB value malformed_row."""
    limit = cfg.ingest.max_value_bytes
    assert limit == 16 * 1024 * 1024
    path = write_csv(tmp_path / "huge.csv", _big_value_rows([limit, limit + 1, 50_000_000]))
    result = ingest(cfg, "transactions", path)
    assert (result.rows_accepted, result.quarantine_reasons) == (1, {"too_long": 2})
    assert query(cfg, 'SELECT line, "column" FROM quarantine ORDER BY line') == [
        (3, "device_id"),
        (4, "device_id"),
    ]


def test_dates_and_times_outside_years_1_to_9999_are_type_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "backline.toml").write_text(
        '[sources.d]\nprimary_key = ["k"]\nevent_time = "t"\n'
        '[sources.d.columns.k]\ntype = "string"\n[sources.d.columns.t]\ntype = "timestamp"\n'
        '[sources.d.columns.day]\ntype = "date"\n'
    )
    cfg = load_config(root, env={})
    t = pa.array([-(10**12), 1767348000, 1767348000]).cast(pa.timestamp("s", tz="UTC"))
    table = pa.table(
        {
            "k": ["a", "b", "c"],
            "t": t,  # year -29719 (a coarse unit; in microseconds it would overflow)
            "day": pa.array([0, 2**31 - 5, 20_000], pa.int32()).cast(pa.date32()),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    result = ingest(cfg, "d", tmp_path / "d.parquet")  # used to raise OverflowError
    assert (result.rows_accepted, result.quarantine_reasons) == (1, {"type_mismatch": 2})
    assert query(cfg, 'SELECT line, "column" FROM quarantine ORDER BY 1') == [(1, "t"), (2, "day")]
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("k,t,day\nx,2026-01-02T00:00:00Z,99999-01-01\n")
    assert ingest(cfg, "d", csv_path).quarantine_reasons == {"type_mismatch": 1}


def test_an_integer_column_never_rounds_a_fraction(tmp_path: Path) -> None:
    """'1.5' in an int64 column is a type_mismatch, not 2; '1.0', ' 12 ' and 3.0 are whole."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "backline.toml").write_text(
        '[sources.n]\nprimary_key = ["k"]\nevent_time = "t"\n'
        '[sources.n.columns.k]\ntype = "string"\n[sources.n.columns.t]\ntype = "timestamp"\n'
        '[sources.n.columns.n]\ntype = "int64"\n'
    )
    cfg = load_config(root, env={})
    t = "2026-01-02T00:00:00Z"
    values = ["1.5", "2", " 12 ", "1.0", "-3", "0.0000000001", "9223372036854775808", "7"]
    (tmp_path / "n.csv").write_text(
        "k,t,n\n" + "".join(f'k{i},{t},"{v}"\n' for i, v in enumerate(values))
    )
    result = ingest(cfg, "n", tmp_path / "n.csv")
    assert result.quarantine_reasons == {"type_mismatch": 3}
    stored = dict(query(cfg, "SELECT k, n FROM n"))
    assert stored == {"k1": 2, "k2": 12, "k3": 1, "k4": -3, "k7": 7}
    table = pa.table(
        {
            "k": ["a", "b", "c"],
            "t": pa.array([1767348000] * 3).cast(pa.timestamp("s", tz="UTC")),
            "n": pa.array([1.5, 3.0, 1e20]),
        }
    )
    pq.write_table(table, tmp_path / "n.parquet")
    result = ingest(cfg, "n", tmp_path / "n.parquet")
    assert (result.rows_accepted, result.quarantine_reasons) == (1, {"type_mismatch": 2})
    assert query(cfg, "SELECT n FROM n WHERE k = 'b'") == [(3,)]


def _two_column_key_project(tmp_path: Path) -> Config:
    root = tmp_path / "p"
    root.mkdir()
    (root / "backline.toml").write_text(
        '[sources.c]\nprimary_key = ["a", "b"]\nevent_time = "t"\n'
        '[sources.c.columns.a]\ntype = "string"\n[sources.c.columns.b]\ntype = "string"\n'
        '[sources.c.columns.t]\ntype = "timestamp"\n[sources.c.columns.n]\ntype = "int64"\n'
    )
    return load_config(root, env={})


def _keyed_csv(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    t = "2026-01-02T00:00:00Z"
    path.write_text("a,b,t,n\n" + "".join(f"{a},{b},{t},{n}\n" for a, b, n in rows))
    return path


def test_a_two_column_key_compares_every_column_and_keeps_them_apart(tmp_path: Path) -> None:
    """Rows that share the first key column, or whose key columns would run together when
    joined ("a", "bc") and ("ab", "c"), are different keys; only whole-key repeats are
    duplicates, in the batch and against the store."""
    cfg = _two_column_key_project(tmp_path)
    first = _keyed_csv(
        tmp_path / "one.csv",
        [
            ("x", "1", 1),  # line 2
            ("x", "2", 2),  # 3: differs only in the second column
            ("a", "bc", 3),  # 4
            ("ab", "c", 4),  # 5: "abc" like line 4 when joined without a separator
            ("x", "1", 5),  # 6: the whole key of line 2 again
        ],
    )
    result = ingest(cfg, "c", first)
    assert (result.rows_accepted, result.quarantine_reasons) == (4, {"duplicate_key_in_batch": 1})
    assert query(cfg, "SELECT line, reason FROM quarantine") == [(6, "duplicate_key_in_batch")]
    second = _keyed_csv(
        tmp_path / "two.csv",
        [
            ("x", "3", 6),  # line 2: new, shares its first column with stored keys
            ("x", "2", 7),  # 3: stored
            ("ab", "c", 8),  # 4: stored
            ("abc", "d", 9),  # 5: new
            ("a", "bcd", 10),  # 6: new
            ("a", "bc", 11),  # 7: stored
        ],
    )
    result = ingest(cfg, "c", second)
    assert (result.rows_accepted, result.quarantine_reasons) == (3, {"duplicate_key": 3})
    assert query(cfg, "SELECT line FROM quarantine WHERE reason = 'duplicate_key' ORDER BY 1") == [
        (3,),
        (4,),
        (7,),
    ]
    assert query(cfg, "SELECT a, b, n FROM c ORDER BY n") == [
        ("x", "1", 1),
        ("x", "2", 2),
        ("a", "bc", 3),
        ("ab", "c", 4),
        ("x", "3", 6),
        ("abc", "d", 9),
        ("a", "bcd", 10),
    ]


def test_every_stored_row_carries_its_batch_ingest_time_in_utc(cfg: Config, tmp_path: Path) -> None:
    from datetime import datetime, timedelta

    ingest(cfg, "transactions", write_csv(tmp_path / "a.csv", [row(i) for i in range(5)]))
    ingest(cfg, "transactions", write_csv(tmp_path / "b.csv", [row(i) for i in range(5, 8)]))
    store = OfflineStore.open(cfg)
    batches = store.batches("transactions")
    assert len(batches) == 2
    when = {b.batch_id: datetime.fromisoformat(b.ingested_at) for b in batches}
    assert all(t.utcoffset() == timedelta(0) for t in when.values())
    assert when[batches[0].batch_id] != when[batches[1].batch_id]
    stored = pa.concat_tables(
        pq.read_table(f, columns=["ingested_at", "batch_id"])
        for f in store.files("data", "transactions")
    )
    assert stored.num_rows == 8 and stored.column("ingested_at").null_count == 0
    assert stored.schema.field("ingested_at").type == pa.timestamp("us", tz="UTC")
    for stamp, batch in zip(
        stored.column("ingested_at").to_pylist(), stored.column("batch_id").to_pylist(), strict=True
    ):
        assert stamp.utcoffset() == timedelta(0)  # tz-aware (a naive one answers None), UTC
        assert stamp == when[batch]
    # the same instants through SQL, as `backline sql` shows them
    per_batch = dict(query(cfg, "SELECT batch_id, epoch_us(ingested_at) FROM batches"))
    stored_sql = query(
        cfg, "SELECT batch_id, epoch_us(ingested_at), count(*) FROM transactions GROUP BY ALL"
    )
    assert sorted((b, us) for b, us, _ in stored_sql) == sorted(per_batch.items())
    assert sum(n for _, _, n in stored_sql) == 8
