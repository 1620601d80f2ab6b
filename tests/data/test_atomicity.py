"""A crash mid-ingest leaves the store exactly as it was; the next ingest cleans up and succeeds."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from backline.core.config import Config, load_config
from backline.core.faults import FAULT_ENV, kill_at
from backline.core.workspace import init_project
from backline.data.ingest import ingest
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
        env[FAULT_ENV] = kill_at(fault)
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


@pytest.mark.parametrize(
    "fault", ["ingest_after_staging", "ingest_mid_move", "ingest_before_commit"]
)
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


def _wait_for_staging(proc: subprocess.Popen[bytes], root: Path) -> bool:
    """Wait until the writer holds the lock and has begun its batch (its staging folder
    exists) or has exited; True in the first case."""
    while proc.poll() is None:
        if _staging_begun(root):
            return True
        time.sleep(0.002)
    return False


def _staging_begun(root: Path, writing: bool = False) -> bool:
    """Whether a batch's staging folder exists under the store root (it may vanish as we look);
    with `writing`, whether its data files are being written."""
    try:
        return any((root / "_staging").glob("*/data" if writing else "*"))
    except FileNotFoundError:
        return False


def _fresh(tmp_path: Path, n: int) -> tuple[Path, Config]:
    root = init_project(tmp_path / f"fresh{n}")
    cfg = load_config(root, env={})
    ingest(cfg, "transactions", write_csv(tmp_path / f"first{n}.csv", [row(i) for i in range(100)]))
    return root, cfg


@pytest.mark.slow
def test_kill_at_random_moments(seeded: Config, project: Path, tmp_path: Path) -> None:
    """SIGKILL the writer at random moments of its batch: after each kill readers see the
    store exactly as before or with the whole batch, and the next writer sweeps what the
    killed one left. The moments are drawn from a measured ingest (from taking the lock to
    exit), so they land mid-ingest whatever the machine's speed; at least three must."""
    big = write_csv(
        tmp_path / "big.csv",
        [
            row(i, event_time=f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z")
            for i in range(1000, 61000)
        ],
    )
    seeded_root = seeded.store_uri("offline").path
    assert seeded_root is not None
    proc = run_ingest(project, big)
    assert _wait_for_staging(proc, seeded_root), proc.stderr.read() if proc.stderr else ""
    locked = time.perf_counter()
    assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    window = time.perf_counter() - locked  # the batch's life: lock, read, validate, write, commit
    done = snapshot(seeded)
    assert done[0][0][0] == 60_100

    rng = random.Random(1234)
    fresh_root, fresh = _fresh(tmp_path, 0)
    initial = snapshot(fresh)
    outcomes: list[str] = []
    for attempt in range(1, 16):
        offline = fresh.store_uri("offline").path
        assert offline is not None
        proc = run_ingest(fresh_root, big)
        if _wait_for_staging(proc, offline):
            time.sleep(rng.uniform(0.0, window))
            proc.send_signal(signal.SIGKILL)
        code = proc.wait(120)
        assert code in (0, -signal.SIGKILL), proc.stderr.read() if proc.stderr else ""
        state = snapshot(fresh)
        if state == initial:
            assert code == -signal.SIGKILL, "the writer exited 0 but its batch is not there"
            assert (offline / "_staging").exists(), "the killed writer had begun its batch"
            outcomes.append("killed mid-ingest")
        else:  # committed before the kill: the whole batch, never part of it
            assert state[0] == done[0] and state[1] == done[1], f"partial batch: {state[0]}"
            assert len(state[2]) == 2
            outcomes.append("killed after the commit" if code else "finished")
            fresh_root, fresh = _fresh(tmp_path, attempt)  # start again without the batch
            initial = snapshot(fresh)
        if outcomes.count("killed mid-ingest") >= 3:
            break
    assert outcomes.count("killed mid-ingest") >= 3, outcomes

    # the next writer sweeps every leftover of the killed ones, then commits the batch whole
    final = ingest(fresh, "transactions", big)
    assert final.status == "committed"
    assert snapshot(fresh)[0] == done[0]
    offline = fresh.store_uri("offline").path
    assert offline is not None
    assert not (offline / "_staging").exists()
    owned = {
        str(p)
        for kind in ("data", "keys", "quarantine")
        for p in OfflineStore.open(fresh).files(kind)
    }
    on_disk = {str(p) for p in offline.rglob("*") if p.is_file() and p.name != ".lock"}
    assert on_disk == owned, "files no committed batch owns were left behind"


_WORKER = """
import json, sys, time
from pathlib import Path
from backline.core.config import load_config
from backline.data.ingest import ingest

project, path, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cfg = load_config(project, env={})
Path(str(path) + ".ready").touch()
while not go.exists():
    time.sleep(0.002)
started = time.time()
result = ingest(cfg, "transactions", path)
assert result.status == "committed" and result.rows_new == 20_000, result
print(json.dumps({"started": started, "ended": time.time()}))
"""


def _concurrent_trial(project: Path, inputs: list[Path], tmp: Path) -> bool:
    """Writer 0 starts; writers 1 and 2 start once writer 0 holds the lock and is writing its
    batch. Asserts that all exit 0 and all rows land; True if the writers overlapped."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(project), str(p), str(tmp / f"go{w}")],
            env={k: v for k, v in os.environ.items() if k != FAULT_ENV},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w, p in enumerate(inputs)
    ]
    deadline = time.monotonic() + 120
    while not all(Path(str(p) + ".ready").exists() for p in inputs):
        assert time.monotonic() < deadline, "the writers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    cfg = load_config(project, env={})
    staging = cfg.store_uri("offline").path / "_staging"
    (tmp / "go0").touch()
    while procs[0].poll() is None and not _staging_begun(staging.parent, writing=True):
        time.sleep(0.001)
    (tmp / "go1").touch()
    (tmp / "go2").touch()
    outs = [p.communicate(timeout=180) for p in procs]
    errors = [err.decode()[-1500:] for _, err in outs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    store = OfflineStore.open(cfg)
    con = store.connect_duckdb(cfg.sources.values())
    assert con.sql(
        "SELECT count(*), count(DISTINCT transaction_id) FROM transactions"
    ).fetchall() == [(60_000, 60_000)], "every writer's rows are in the store"
    assert sorted(b.rows_accepted for b in store.batches("transactions")) == [20_000] * 3
    assert con.sql("SELECT count(*) FROM quarantine").fetchall() == [(0,)]
    assert not staging.exists()
    on_disk = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{store.root}/source=transactions/**/*.parquet')"
    ).fetchall()
    assert on_disk == [(60_000,)], "no writer's files were left behind or lost"
    times = [json.loads(out) for out, _ in outs]
    return min(t["started"] for t in times[1:]) < times[0]["ended"]


@pytest.mark.slow
def test_concurrent_ingests_wait_for_the_lock_and_all_land(tmp_path: Path) -> None:
    """docs/ingest.md: one writer at a time per store; a second writer waits for the lock.
    Three writers into one new store, the last two starting while the first is mid-batch,
    must all exit 0 with every row in the store. A trial where the machine was too slow for
    the writers to overlap proves nothing and is run again."""
    inputs = [
        write_csv(
            tmp_path / f"part{w}.csv",
            [
                row(w * 100_000 + i, event_time=f"2026-01-{1 + i % 28:02d}T{i % 24:02d}:00:00Z")
                for i in range(20_000)
            ],
        )
        for w in range(3)
    ]
    overlapped = 0
    for trial in range(3):
        tmp = tmp_path / f"trial{trial}"
        tmp.mkdir()
        for p in inputs:
            Path(str(p) + ".ready").unlink(missing_ok=True)
        overlapped += _concurrent_trial(init_project(tmp / "proj"), inputs, tmp)
        if overlapped:
            break
    assert overlapped, "in 3 trials the writers never overlapped: the lock was not exercised"


def _has_open(pid: int, path: Path) -> bool:
    """Whether process `pid` holds a descriptor on `path`."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(fd) == str(path):
                return True
        except FileNotFoundError:
            continue
    return False


def test_a_writer_waits_while_another_holds_the_lock(
    seeded: Config, project: Path, tmp_path: Path
) -> None:
    """While this process holds the writer lock, with a batch of its own half staged, a second
    writer that has reached the lock touches nothing; once released, it sweeps the (now dead)
    staging and commits."""
    store = OfflineStore.open(seeded)
    lock = os.path.realpath(store.root / ".lock")
    batch = write_csv(tmp_path / "next.csv", [row(i) for i in range(500, 700)])
    with store.writer_lock():
        mine = store.staging_dir("holder") / "half-written.parquet"
        mine.write_bytes(b"a batch being written by the lock's holder")
        proc = run_ingest(project, batch)
        while not _has_open(proc.pid, Path(lock)):  # it has opened .lock: it is at the lock
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.005)
        for _ in range(100):  # a second: a writer past the lock would have swept by now
            assert mine.exists(), "the second writer swept a batch while another held the lock"
            assert sorted(p.name for p in (store.root / "_staging").iterdir()) == ["holder"]
            assert proc.poll() is None, "the second writer did not wait for the lock"
            time.sleep(0.01)
    assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    assert not (store.root / "_staging").exists(), "the dead staging was swept after the lock"
    assert [b.rows_accepted for b in store.batches("transactions")] == [100, 200]
