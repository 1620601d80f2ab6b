"""Durability: every file of a batch is on disk, and named by its folder, before the commit.

A SIGKILL test cannot see a missing fsync (the page cache survives the process; only a power
cut loses it), so these tests watch the calls instead: `os.fsync` is patched to record which
file or folder each descriptor names, `os.replace` to record each move, and the catalog's
SQL trace to record the commit point. The order of the three is the durability contract:

    fsync(staged file) ... replace(staged -> final) ... fsync(folder) ... COMMIT
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from backline.core.config import Config
from backline.data.ingest import ingest
from backline.data.offline_store import OfflineStore
from tests.data.helpers import row, write_csv

Event = tuple[str, str, int]  # (what, real path, inode or -1)


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """fsync / replace / SQL events of the current process, in order."""
    seen: list[Event] = []
    fsync, replace = os.fsync, os.replace
    connect = OfflineStore._connect

    def traced_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd).st_ino))
        fsync(fd)

    def traced_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        replace(src, dst)
        seen.append(("replace", os.path.realpath(dst), os.stat(dst).st_ino))

    @contextmanager
    def traced_connect(self: OfflineStore) -> Iterator[sqlite3.Connection]:
        with connect(self) as con:
            con.set_trace_callback(lambda sql: seen.append(("sql", sql.strip(), -1)))
            yield con

    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced_replace)
    monkeypatch.setattr(OfflineStore, "_connect", traced_connect)
    return seen


def _commit_point(events: list[Event]) -> int:
    """Index of the COMMIT of the transaction that inserts the batch."""
    insert = next(i for i, e in enumerate(events) if e[1].startswith("INSERT INTO batches"))
    return next(i for i in range(insert, len(events)) if events[i][1] == "COMMIT")


def _folders(root: Path) -> set[str]:
    return {
        os.path.realpath(p) for p in root.rglob("*") if p.is_dir() and "_staging" not in p.parts
    }


def _check_durable_before_commit(
    cfg: Config, events: list[Event], before: set[str], batch_id: str
) -> None:
    store = OfflineStore.open(cfg)
    root = store.root
    commit = _commit_point(events)
    synced = [(i, path, ino) for i, (what, path, ino) in enumerate(events) if what == "fsync"]
    moved = {path: i for i, (what, path, _) in enumerate(events) if what == "replace"}
    mine = [
        root / f
        for kind in ("data", "keys", "quarantine", "kept")
        for f in store.files(kind)
        if batch_id in str(f)
    ]
    kinds = {f.relative_to(root).parts[0].split("=")[0] for f in mine}
    assert kinds == {"source", "keys", "quarantine"}, mine  # every kind of file is checked
    assert any("files" in f.parts for f in mine), "the unreadable file was kept"
    for final in mine:
        real = os.path.realpath(final)
        ino = os.stat(final).st_ino
        assert any(i < commit and n == ino for i, _, n in synced), (
            f"{final.relative_to(root)} was not fsynced before the catalog commit"
        )
        assert real in moved and moved[real] < commit
        folder = os.path.dirname(real)
        assert any(moved[real] < i < commit and p == folder for i, p, _ in synced), (
            f"the folder of {final.relative_to(root)} was not fsynced between the move and "
            "the commit: after a power cut the file could be missing from it"
        )
    # a folder this batch created is an entry in its parent: that parent must be fsynced too
    created = _folders(root) - before
    assert created, "the test should create folders"
    for folder in created:
        first_move = min(i for path, i in moved.items() if path.startswith(folder + os.sep))
        parent = os.path.dirname(folder)
        assert any(first_move < i < commit and p == parent for i, p, _ in synced), (
            f"{Path(folder).relative_to(os.path.realpath(root))} was created but its parent "
            "folder was not fsynced before the commit"
        )


def _batch_input(folder: Path, first: int, days: int) -> Path:
    folder.mkdir()
    rows = [
        row(i, event_time=f"2026-01-{1 + i % days:02d}T10:00:00Z") for i in range(first, first + 50)
    ]
    write_csv(folder / "a.csv", [*rows, row(first + 99_999, amount="-1")])  # one quarantined
    (folder / "b.parquet").write_bytes(b"not parquet at all")  # kept whole
    return folder


def test_every_staged_file_and_folder_is_fsynced_before_the_commit(
    cfg: Config, tmp_path: Path, events: list[Event]
) -> None:
    root = cfg.store_uri("offline").path
    assert root is not None
    root.mkdir(parents=True, exist_ok=True)
    before = _folders(root)
    first = ingest(cfg, "transactions", _batch_input(tmp_path / "one", 0, 3))
    assert first.status == "committed"
    _check_durable_before_commit(cfg, events, before, first.batch_id)

    # a second batch into folders that exist, plus new event dates
    events.clear()
    before = _folders(root)
    second = ingest(cfg, "transactions", _batch_input(tmp_path / "two", 1000, 9))
    assert second.status == "committed"
    _check_durable_before_commit(cfg, events, before, second.batch_id)


def test_the_catalog_commits_with_synchronous_full(cfg: Config, tmp_path: Path) -> None:
    """The commit point is durable only if SQLite syncs its WAL at COMMIT (synchronous=FULL)."""
    store = OfflineStore.open(cfg)
    with store._connect() as con:
        assert con.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
