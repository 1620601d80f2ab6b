"""A crash mid-ingest leaves the store exactly as it was; the next ingest cleans up and succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from backline.core.config import Config
from backline.data.ingest import FAULT_ENV, ingest
from backline.data.offline_store import OfflineStore
from tests.data.helpers import row, write_csv


def snapshot(cfg: Config) -> tuple:
    store = OfflineStore.open(cfg)
    con = store.connect_duckdb(cfg.sources.values())
    return (
        con.sql("SELECT count(*), sum(hash(transaction_id)) FROM transactions").fetchall(),
        con.sql("SELECT count(*) FROM quarantine").fetchall(),
        con.sql("SELECT batch_id, rows_in FROM batches ORDER BY 1").fetchall(),
        tuple(store.files("data")),
    )


def run_ingest(project: Path, path: Path, fault: str | None = None) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backline.cli",
            "--project",
            str(project),
            "ingest",
            "transactions",
            str(path),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def seeded(cfg: Config, tmp_path: Path) -> Config:
    ingest(cfg, "transactions", write_csv(tmp_path / "first.csv", [row(i) for i in range(100)]))
    return cfg


@pytest.mark.parametrize("fault", ["after_staging", "mid_move", "before_commit"])
def test_kill_at_each_step_of_the_commit(
    seeded: Config, project: Path, tmp_path: Path, fault: str
) -> None:
    before = snapshot(seeded)
    rows = [row(i, event_time=f"2026-01-{1 + i % 28:02d}T10:00:00Z") for i in range(100, 400)] + [
        row(9999, amount="-1")
    ]
    second = write_csv(tmp_path / "second.csv", rows)
    proc = run_ingest(project, second, fault)
    assert proc.wait(60) == -signal.SIGKILL
    assert snapshot(seeded) == before, "a killed ingest must leave no trace in what readers see"

    result = ingest(seeded, "transactions", second)
    assert result.status == "committed" and result.rows_accepted == 300
    after = snapshot(seeded)
    assert after[0][0][0] == 400 and after[1] == [(1,)]
    root = seeded.store_uri("offline").path
    on_disk = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/source=transactions/**/*.parquet')"
    ).fetchall()
    assert on_disk == [(400,)], "leftovers of the killed writer were swept"
    assert not (root / "_staging").exists()


@pytest.mark.slow
def test_kill_at_random_moments(seeded: Config, project: Path, tmp_path: Path) -> None:
    big = write_csv(
        tmp_path / "big.csv",
        [
            row(i, event_time=f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z")
            for i in range(1000, 61000)
        ],
    )
    started = time.perf_counter()
    proc = run_ingest(project, big)
    assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    full = time.perf_counter() - started
    done = snapshot(seeded)
    # start again from the one-batch store: forget the batch by restoring a fresh project copy
    rng = random.Random(1234)
    fresh_root = tmp_path / "fresh"
    from backline.core.config import load_config
    from backline.core.workspace import init_project

    fresh = load_config(init_project(fresh_root), env={})
    ingest(fresh, "transactions", write_csv(tmp_path / "first2.csv", [row(i) for i in range(100)]))
    initial = snapshot(fresh)
    outcomes = set()
    for _ in range(6):
        proc = run_ingest(fresh_root, big)
        time.sleep(rng.uniform(0.3 * full, full))  # late: most of a run is start-up
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        state = snapshot(fresh)
        counts = state[0][0][0]
        assert counts in (initial[0][0][0], done[0][0][0]), f"partial batch visible: {counts} rows"
        outcomes.add(counts)
        if counts == done[0][0][0]:
            break
    final = ingest(fresh, "transactions", big)
    assert snapshot(fresh)[0] == done[0]
    assert final.status in ("committed", "already_ingested")
