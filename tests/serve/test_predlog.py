"""The prediction log: what the engine appends comes back through `predictions`, exactly once,
without scoring ever waiting for the disk, and a crash never leaves a file readers choke on."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backline
from backline.cli import main
from backline.core.config import Config
from backline.core.errors import InvalidArgument, SchemaError, StoreError
from backline.data.offline_store import PREDICTION_COLUMNS
from backline.serve import predlog
from backline.serve.predlog import PredictionLog

ROOT = Path(__file__).resolve().parents[2]
MIDNIGHT = datetime(2026, 1, 2, tzinfo=UTC)


def scored(
    n: int,
    start: datetime = MIDNIGHT - timedelta(hours=1),
    *,
    prefix: str = "r",
    version: int = 1,
    step: timedelta = timedelta(seconds=1),
    features: dict[str, pa.Array] | None = None,
) -> pa.Table:
    """`n` rows as the engine logs them: the core columns, an entity key, a passthrough id, a
    request field and features (default: feature__count_10m and feature__amount_avg_1h)."""
    if features is None:
        features = {
            "feature__count_10m": pa.array(range(n), pa.int64()),
            "feature__amount_avg_1h": pa.array([i / 8 for i in range(n)], pa.float64()),
        }
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([f"{prefix}{i:05d}" for i in range(n)], pa.string()),
        "scored_at": pa.array([start + i * step for i in range(n)], pa.timestamp("us", tz="UTC")),
        "model": pa.array(["fraud"] * n, pa.string()),
        "model_version": pa.array([version] * n, pa.int64()),
        "score": pa.array([i / (n + 1) for i in range(n)], pa.float64()),
        "latency_ms": pa.array([1.5 + i for i in range(n)], pa.float64()),
        "queue_ms": pa.array([0.25] * n, pa.float64()),
        "batch_size": pa.array([n] * n, pa.int32()),
        "degraded": pa.array([i % 3 == 0 for i in range(n)], pa.bool_()),
        "card_id": pa.array([f"card_{i % 4:07d}" for i in range(n)], pa.string()),
        "transaction_id": pa.array([f"tx_{prefix}{i:016x}" for i in range(n)], pa.string()),
        "amount": pa.array([10.0 + i for i in range(n)], pa.float64()),
    }
    columns.update(features)
    return pa.table(columns)


def query(project: Path, sql: str) -> pa.Table:
    with backline.open(project) as handle:
        return handle.sql(sql)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll `condition` until it holds (seconds waited) or fail after `timeout`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - start


def parquet_files(cfg: Config) -> list[Path]:
    return sorted(predlog.predictions_root(cfg).glob("date=*/*.parquet"))


@pytest.fixture
def logs(cfg: Config) -> Iterator[Callable[..., PredictionLog]]:
    """Make PredictionLogs on the test project (worker w0, capacity 10000, flush_every 1 h
    unless told); every one is closed at the end, even when the test failed."""
    made: list[PredictionLog] = []

    def make(**kwargs: object) -> PredictionLog:
        options: dict[str, object] = {"worker": "w0", "capacity": 10_000, "flush_every": 3600.0}
        options.update(kwargs)
        made.append(PredictionLog(cfg, **options))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for item in made:
        with contextlib.suppress(StoreError):
            item.close(timeout=5)


# -- what goes in comes back ------------------------------------------------------------------


def test_rows_come_back_exactly_with_their_types(
    cfg: Config, project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """Values and types survive the round trip, and a batch spanning UTC midnight lands in
    two date partitions whose `date` column is the UTC date of scored_at."""
    log = logs()
    first = scored(6, MIDNIGHT - timedelta(seconds=3))  # 3 rows on Jan 1, 3 on Jan 2
    second = scored(2, MIDNIGHT + timedelta(hours=5), prefix="s")
    assert log.append(first) == 6
    assert log.append(second) == 2
    assert log.pending == 8 and log.written == 0
    log.flush()
    assert (log.pending, log.written, log.dropped) == (0, 8, 0)

    folders = sorted(p.parent.name for p in parquet_files(cfg))
    assert folders == ["date=2026-01-01", "date=2026-01-02"]
    got = query(project, "SELECT * EXCLUDE (date) FROM predictions ORDER BY request_id")
    expected = pa.concat_tables([first, second]).sort_by("request_id")
    assert got.schema.equals(expected.schema), (got.schema, expected.schema)
    assert got.equals(expected)

    days = query(
        project,
        "SELECT date, count(*) AS n, min(scored_at) AS t FROM predictions GROUP BY 1 ORDER BY 1",
    )
    assert days.column("date").type == pa.date32()
    assert days.to_pylist() == [
        {"date": datetime(2026, 1, 1).date(), "n": 3, "t": MIDNIGHT - timedelta(seconds=3)},
        {"date": datetime(2026, 1, 2).date(), "n": 5, "t": MIDNIGHT},
    ]
    core = query(project, "DESCRIBE predictions").to_pylist()
    types = {r["column_name"]: r["column_type"] for r in core}
    assert types["scored_at"] == "TIMESTAMP WITH TIME ZONE"
    assert types["date"] == "DATE" and types["batch_size"] == "INTEGER"


def test_two_workers_write_at_once(
    cfg: Config, project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """Two server processes' logs (two workers) appending concurrently, each writing many
    small files: every row lands once, in files named by its worker."""
    one, two = logs(worker="w0-101", capacity=64), logs(worker="w1-202", capacity=64)
    accepted = {"a": 0, "b": 0}

    def feed(log: PredictionLog, prefix: str) -> None:
        for k in range(40):
            batch = scored(5, prefix=f"{prefix}{k:02d}-")
            while log.pending > 40:  # be the slow client a full buffer needs, not a dropper
                time.sleep(0.001)
            accepted[prefix] += log.append(batch)

    threads = [
        threading.Thread(target=feed, args=(one, "a")),
        threading.Thread(target=feed, args=(two, "b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    one.close()
    two.close()
    assert accepted == {"a": 200, "b": 200} and one.dropped == two.dropped == 0
    assert one.written == two.written == 200

    got = query(
        project,
        "SELECT left(request_id, 1) AS w, count(*) AS n, count(DISTINCT request_id) AS d "
        "FROM predictions GROUP BY 1 ORDER BY 1",
    )
    assert got.to_pylist() == [{"w": "a", "n": 200, "d": 200}, {"w": "b", "n": 200, "d": 200}]
    names = [p.name for p in parquet_files(cfg)]
    assert {n.rsplit("-", 1)[0] for n in names} == {"w0-101", "w1-202"}
    assert len(names) > 2, "each log wrote as its buffer filled (a quarter of 64 rows)"


def test_schema_evolution_reads_with_nulls(
    cfg: Config, project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """Versions logging different features: in separate files, and in one flush, every row
    is readable, a feature a row's version lacks NULL; a feature whose type changed between
    versions splits the flush into files instead of failing it."""
    log = logs()
    v1 = scored(3, prefix="v1-", features={"feature__old": pa.array([1.0, 2.0, 3.0])})
    v2 = scored(2, prefix="v2-", version=2, features={"feature__new": pa.array([7, 8])})
    log.append(v1)
    log.flush()
    log.append(v2)
    log.flush()
    v3 = scored(2, prefix="v3-", version=3, features={"feature__new": pa.array([5, 6])})
    v4 = scored(1, prefix="v4-", version=4, features={"feature__new": pa.array(["x"])})
    log.append(v3)
    log.append(v4)  # feature__new int64, then string: a clash inside one flush
    log.flush()
    assert log.written == 8 and log.dropped == 0

    got = query(
        project,
        "SELECT request_id, model_version, feature__old, feature__new FROM predictions "
        "ORDER BY request_id",
    ).to_pylist()
    assert [(r["request_id"], r["feature__old"], r["feature__new"]) for r in got] == [
        ("v1-00000", 1.0, None),
        ("v1-00001", 2.0, None),
        ("v1-00002", 3.0, None),
        ("v2-00000", None, "7"),
        ("v2-00001", None, "8"),
        ("v3-00000", None, "5"),
        ("v3-00001", None, "6"),
        ("v4-00000", None, "x"),
    ]
    assert len(parquet_files(cfg)) == 4  # v1, v2, and v3 + v4 in two files


# -- never blocking, never unbounded -----------------------------------------------------------


def test_a_full_buffer_drops_and_counts_without_blocking(
    monkeypatch: pytest.MonkeyPatch, logs: Callable[..., PredictionLog], project: Path
) -> None:
    """With the writer stuck on a slow disk, appends past capacity (counting the rows being
    written) return fewer rows at once, and dropped / on_drop count every row turned away."""
    entered, release = threading.Event(), threading.Event()
    real = predlog.write_parquet_atomic

    def stuck(table: pa.Table, path: Path) -> None:
        entered.set()
        assert release.wait(10)
        real(table, path)

    monkeypatch.setattr(predlog, "write_parquet_atomic", stuck)
    drops: list[int] = []
    log = logs(capacity=8, on_drop=drops.append)  # a write starts at 8 // 4 = 2 rows
    assert log.append(scored(5, prefix="a")) == 5
    assert entered.wait(5), "the writer took the rows and is stuck writing them"
    start = time.perf_counter()
    assert log.append(scored(5, prefix="b")) == 3  # 5 in flight + 3 buffered = capacity
    assert log.append(scored(4, prefix="c")) == 0
    assert time.perf_counter() - start < 0.5
    assert (log.dropped, drops, log.pending, log.written) == (6, [2, 4], 8, 0)

    release.set()
    log.close()
    assert (log.written, log.pending, log.dropped) == (8, 0, 6)
    got = query(project, "SELECT request_id FROM predictions ORDER BY 1").column(0).to_pylist()
    assert got == [f"a{i:05d}" for i in range(5)] + [f"b{i:05d}" for i in range(3)]


def test_append_never_waits_for_a_write(
    monkeypatch: pytest.MonkeyPatch, logs: Callable[..., PredictionLog]
) -> None:
    """Appends while a write is stuck take microseconds, not the write's time."""
    entered, release = threading.Event(), threading.Event()

    def stuck(table: pa.Table, path: Path) -> None:
        entered.set()
        release.wait(10)

    monkeypatch.setattr(predlog, "write_parquet_atomic", stuck)
    log = logs(capacity=1000)
    log.append(scored(300))  # over 1000 // 4: the writer starts at once
    assert entered.wait(5)
    start = time.perf_counter()
    for _ in range(50):
        log.append(scored(1))
    elapsed = time.perf_counter() - start
    release.set()
    assert elapsed < 0.5, f"50 appends took {elapsed:.3f} s while a write was stuck"


def test_a_failed_write_keeps_its_rows_for_a_retry(
    monkeypatch: pytest.MonkeyPatch, logs: Callable[..., PredictionLog], project: Path
) -> None:
    """A full disk: flush raises StoreError naming the folder, the rows stay pending (and
    count against capacity), and the next flush writes them."""
    real = predlog.write_parquet_atomic
    failing = [True]
    errors: list[BaseException] = []

    def disk(table: pa.Table, path: Path) -> None:
        if failing[0]:
            raise OSError(28, "No space left on device")
        real(table, path)

    monkeypatch.setattr(predlog, "write_parquet_atomic", disk)
    log = logs(capacity=10, on_error=errors.append)
    log.append(scored(2))
    with pytest.raises(StoreError, match=r"No space left.*2 rows kept for a retry"):
        log.flush()
    assert (log.pending, log.written, log.dropped) == (2, 0, 0)
    assert log.append(scored(10, prefix="x")) == 8 and log.dropped == 2
    assert len(errors) == 1 and isinstance(log.last_error, OSError)
    failing[0] = False
    log.flush()
    assert (log.pending, log.written) == (0, 10)
    assert query(project, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 10}]


def test_close_counts_rows_it_could_not_write(
    monkeypatch: pytest.MonkeyPatch, logs: Callable[..., PredictionLog]
) -> None:
    def full(table: pa.Table, path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(predlog, "write_parquet_atomic", full)
    drops: list[int] = []
    log = logs(on_drop=drops.append)
    log.append(scored(3))
    with pytest.raises(StoreError, match="3 rows could not be written"):
        log.close()
    assert (log.dropped, drops, log.pending) == (3, [3], 0)
    log.close()  # the second close does nothing


# -- when rows are written ----------------------------------------------------------------------


def test_a_row_is_written_within_flush_every(
    cfg: Config, project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """One row, far below the size trigger, is readable about flush_every after it came,
    with no flush call; on_flush reports the write."""
    flushes: list[tuple[int, float]] = []
    log = logs(capacity=1000, flush_every=0.3, on_flush=lambda n, s: flushes.append((n, s)))
    log.append(scored(1))
    assert log.written == 0
    waited = wait_for(
        lambda: query(project, "SELECT count(*) AS n FROM predictions")["n"][0].as_py() == 1
    )
    assert waited >= 0.2, "written long before flush_every: the clock or the trigger is off"
    assert log.written == 1 and len(flushes) == 1 and flushes[0][0] == 1 and flushes[0][1] >= 0


def test_a_quarter_full_buffer_is_written_at_once(
    cfg: Config, logs: Callable[..., PredictionLog]
) -> None:
    log = logs(capacity=40)  # flush_every is an hour: only the size rule can write it
    log.append(scored(9))
    time.sleep(0.2)
    assert log.written == 0, "9 rows are below 40 // 4"
    log.append(scored(1, prefix="z"))
    wait_for(lambda: log.written == 10)
    assert len(parquet_files(cfg)) == 1


def test_close_flushes_and_is_idempotent(project: Path, logs: Callable[..., PredictionLog]) -> None:
    drops: list[int] = []
    log = logs(on_drop=drops.append)
    log.append(scored(4))
    log.close()
    assert log.closed and log.written == 4 and log._thread.is_alive() is False
    log.close()
    log.flush()  # nothing left: does nothing
    assert log.append(scored(2)) == 0 and log.dropped == 2 and drops == [2]
    assert query(project, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 4}]


def test_a_reused_worker_id_never_replaces_a_file(
    cfg: Config, project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """A restarted server may get the old pid, so the old worker id: its files stay."""
    for prefix in ("first", "second"):
        log = logs(worker="w0-77")
        log.append(scored(3, prefix=prefix))
        log.close()
    assert [p.name for p in parquet_files(cfg)] == [
        "w0-77-00000000.parquet",
        "w0-77-00000001.parquet",
    ]
    assert query(project, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 6}]


# -- crashes -------------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    from datetime import timedelta
    from backline.core.config import load_config
    from backline.serve import predlog
    from tests.serve.test_predlog import MIDNIGHT, scored

    project, mode = sys.argv[1], sys.argv[2]
    log = predlog.PredictionLog(load_config(Path(project), env={}), worker="w0", capacity=10_000,
                                flush_every=3600.0)
    log.append(scored(50, prefix="kept"))
    log.flush()
    log.append(scored(30, prefix="lost"))
    if mode == "idle":
        print("ready", flush=True)
        time.sleep(60)
    real = predlog.pq.write_table

    def half_then_die(table, where, **kwargs):  # the kill lands mid-write
        real(table, where, **kwargs)
        size = os.path.getsize(where)
        os.truncate(where, size // 2)
        os.kill(os.getpid(), signal.SIGKILL)

    predlog.pq.write_table = half_then_die
    log.flush()
    """
)


@pytest.mark.parametrize("mode", ["idle", "mid-write"])
def test_a_killed_process_loses_only_its_buffer(cfg: Config, project: Path, mode: str) -> None:
    """SIGKILL with rows buffered (idle), or in the middle of writing them: readers see
    exactly the rows flushed before, every *.parquet file reads, and a half-written file
    exists only under the .partial name the reader's glob does not match."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(project), mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if mode == "idle":
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n", proc.stderr.read() if proc.stderr else ""
            proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    files = parquet_files(cfg)
    for path in files:
        pq.read_table(path)  # each file in place reads whole
    partials = list(predlog.predictions_root(cfg).glob("date=*/*.partial"))
    assert len(partials) == (mode == "mid-write")
    got = query(project, "SELECT request_id FROM predictions ORDER BY 1").column(0).to_pylist()
    assert got == [f"kept{i:05d}" for i in range(50)]


def test_a_partial_file_is_never_read(
    cfg: Config, project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """A torn temp file beside real ones (a writer killed mid-write), and one in a day with
    no other file, do not reach `predictions` or break it."""
    log = logs()
    log.append(scored(3))
    log.flush()
    real = parquet_files(cfg)[0]
    torn = real.with_name("w9-00000000.parquet.partial")
    torn.write_bytes(real.read_bytes()[:100])
    lonely = real.parent.with_name("date=2026-02-01") / "w9-00000001.parquet.partial"
    lonely.parent.mkdir()
    lonely.write_bytes(b"PAR1 garbage")
    assert query(project, "SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 3}]


def test_old_partials_are_swept_fresh_ones_kept(
    cfg: Config, logs: Callable[..., PredictionLog]
) -> None:
    folder = predlog.predictions_root(cfg) / "date=2026-01-01"
    folder.mkdir(parents=True)
    old, fresh = folder / "w5-00000000.parquet.partial", folder / "w6-00000000.parquet.partial"
    old.write_bytes(b"x")
    fresh.write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    logs()
    wait_for(lambda: not old.exists())
    assert fresh.exists(), "a write another process is doing now is not touched"


def test_writes_are_durable_in_order(
    cfg: Config, monkeypatch: pytest.MonkeyPatch, logs: Callable[..., PredictionLog]
) -> None:
    """The file's bytes are fsynced before its rename, and the rename, the new date folder
    and the new predictions folder are each fsynced in their parent (a power cut could
    otherwise take back a file a flush reported written)."""
    seen: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def traced_fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def traced_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append(("replace", os.path.realpath(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", traced_fsync)
    monkeypatch.setattr(os, "replace", traced_replace)
    log = logs()
    log.append(scored(2, MIDNIGHT))
    log.flush()
    root = predlog.predictions_root(cfg).resolve()
    final = str(root / "date=2026-01-02" / "w0-00000000.parquet")
    assert seen == [
        ("fsync", str(root.parent)),  # predictions/ made: its entry in the offline root
        ("fsync", str(root)),  # date=2026-01-02/ made: its entry in predictions/
        ("fsync", final + ".partial"),
        ("replace", final),
        ("fsync", str(root / "date=2026-01-02")),
    ]


# -- what append refuses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.drop_columns(["score"]), "lack column 'score'"),
        (
            lambda t: t.set_column(7, "batch_size", t["batch_size"].cast(pa.int64())),
            "'batch_size' is int64, not int32; cast it",
        ),
        (
            lambda t: t.set_column(1, "scored_at", t["scored_at"].cast(pa.timestamp("us"))),
            "'scored_at' is timestamp.us., not timestamp.us, tz=UTC.",
        ),
        (lambda t: t.append_column("date", pa.array(["x", "y"])), "column 'date'.*rename it"),
        (
            lambda t: t.set_column(
                1, "scored_at", pa.array([None, MIDNIGHT], pa.timestamp("us", tz="UTC"))
            ),
            "null scored_at",
        ),
        (lambda t: t.append_column("score", pa.array([1.0, 2.0])), r"\['score'\] more than once"),
    ],
)
def test_append_refuses_rows_readers_could_not_use(
    logs: Callable[..., PredictionLog], change: Callable[[pa.Table], pa.Table], message: str
) -> None:
    log = logs()
    with pytest.raises(SchemaError, match=message):
        log.append(change(scored(2)))
    assert log.pending == 0 and log.dropped == 0
    assert log.append(scored(2)) == 2  # a good table after a bad one still passes


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"worker": "w0/../x"}, "worker 'w0/../x' must be"),
        ({"worker": ""}, "worker '' must be"),
        ({"capacity": 0}, "capacity 0 must be"),
        ({"flush_every": 0.0}, "flush_every 0.0 must be"),
        ({"flush_every": float("inf")}, "flush_every inf must be"),
    ],
)
def test_bad_settings_are_refused(
    logs: Callable[..., PredictionLog], options: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        logs(**options)


def test_a_failing_callback_does_not_stop_the_log(logs: Callable[..., PredictionLog]) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("metric backend down")

    log = logs(capacity=4, on_drop=broken, on_flush=broken)
    assert log.append(scored(6)) == 4 and log.dropped == 2
    log.flush()
    assert log.written == 4


# -- reading: `backline sql` and the project handle -------------------------------------------


def test_backline_sql_counts_predictions(
    project: Path, logs: Callable[..., PredictionLog], capsys: pytest.CaptureFixture[str]
) -> None:
    command = ["--project", str(project), "sql", "SELECT count(*) AS n FROM predictions"]
    assert main([*command, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "0"]
    log = logs()
    log.append(scored(7))
    log.flush()
    assert main([*command, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "7"]


def test_empty_predictions_view_has_the_core_columns(project: Path) -> None:
    got = query(project, "SELECT * FROM predictions")
    expected = [pa.field(n, t) for n, t in PREDICTION_COLUMNS.items()]
    assert list(got.schema) == [*expected, pa.field("date", pa.date32())]
    assert got.num_rows == 0


def test_an_open_handle_sees_the_first_file(
    project: Path, logs: Callable[..., PredictionLog]
) -> None:
    """A long-lived handle queried before any file existed sees the log once one does, and
    files added later; the view comes back empty when the folder is emptied."""
    log = logs()
    with backline.open(project) as handle:
        count = "SELECT count(*) AS n FROM predictions"
        assert handle.sql(count)["n"][0].as_py() == 0
        log.append(scored(2))
        log.flush()
        assert handle.sql(count)["n"][0].as_py() == 2
        log.append(scored(3, prefix="s"))
        log.flush()
        assert handle.sql(count)["n"][0].as_py() == 5
        shutil.rmtree(log.root)
        assert handle.sql(count)["n"][0].as_py() == 0
        with pytest.raises(InvalidArgument, match=r"Tables: .*predictions"):
            handle.sql("SELECT * FROM predictionz")


# -- property ------------------------------------------------------------------------------

_OPS = st.lists(
    st.one_of(st.integers(min_value=0, max_value=9), st.just("flush")), min_size=1, max_size=25
)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=_OPS, capacity=st.integers(min_value=1, max_value=12))
def test_every_accepted_row_is_written_exactly_once(
    cfg: Config, ops: list[int | str], capacity: int
) -> None:
    """Any mix of appends (sizes 0-9, some crossing midnight) and flushes, racing the
    writer thread: accepted + dropped = offered, and the files hold each accepted row once,
    each table's accepted rows being its first ones."""
    root = predlog.predictions_root(cfg)
    shutil.rmtree(root, ignore_errors=True)
    log = PredictionLog(cfg, worker="p0", capacity=capacity, flush_every=0.05)
    expected: list[str] = []
    offered = 0
    try:
        for k, op in enumerate(ops):
            if op == "flush":
                log.flush()
                continue
            assert isinstance(op, int)
            table = scored(op, MIDNIGHT - timedelta(seconds=op // 2), prefix=f"{k:02d}-")
            offered += op
            accepted = log.append(table)
            expected += table.column("request_id").to_pylist()[:accepted]
    finally:
        log.close()
    assert log.written == len(expected) and log.written + log.dropped == offered
    files = sorted(root.glob("date=*/*.parquet"))
    got = [r for f in files for r in pq.read_table(f).column("request_id").to_pylist()]
    assert sorted(got) == sorted(expected)
