"""The prediction log: every scored request, appended to the offline store in the background.

The engine hands each scored batch to `PredictionLog.append`, which only puts the rows in a
bounded in-memory buffer; a daemon thread writes the buffer out as Parquet, so scoring never
waits for a disk. Monitoring reads the log, and late labels join to it, through the
`predictions` view of `backline sql`:

    <offline root>/predictions/date=2026-01-01/w0-4242-00000007.parquet

One file per flush, per UTC date of `scored_at` (a flush spanning midnight writes two), named
by the writing process (`worker`, unique among live server processes) and a sequence number.
Files are immutable once in place, so any number of processes append without a lock.

When the writer writes: as soon as the buffer holds a quarter of `capacity` rows, or when
the oldest buffered row has waited `flush_every` seconds, whichever comes first. A quarter
leaves three quarters of the buffer for rows that arrive while a file is written, so under
a steady load rows are dropped only when the disk is slower than scoring for as long as it
takes to fill those three quarters; and a quiet server still writes each row within about
`flush_every`.

Durability: each file is written under `NAME.parquet.partial` in its final folder (a name the
reader's `*.parquet` glob never matches), fsynced, renamed into place, and the folder fsynced
(`backline.core.files.atomic_path`). A process killed at any moment loses only the rows not
yet written, never leaves a half-written file where readers look, and never loses a file it
had finished. A `.partial` left by a killed process is removed by the next log started on the
same store once it is an hour old.

Back-pressure: the buffer holds at most `capacity` rows, counting the rows of a write in
progress. `append` accepts what fits and drops the rest, counting them in `dropped` and
calling `on_drop(n)` (the server exports it as `backline_prediction_log_dropped_total`):
losing log rows is better than making requests wait. A write that fails with an OS error
(disk full, permission) keeps its rows and is tried again after a pause; meanwhile new rows
fill the buffer and the excess is dropped and counted. Rows that can never be written (a
column type Parquet cannot hold) are dropped and counted at once instead of blocking the log.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backline.core.config import Config
from backline.core.errors import InvalidArgument, SchemaError, StoreError
from backline.core.files import PARTIAL_SUFFIX, atomic_path, fsync_dir
from backline.data.offline_store import PREDICTION_COLUMNS, PREDICTIONS_DIR, PREDICTIONS_PARTITION

__all__ = ["PredictionLog", "predictions_root", "write_parquet_atomic"]

log = logging.getLogger("backline.serve.predlog")

_WORKER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STALE_PARTIAL_S = 3600.0
"""A `.partial` file older than this is a leftover of a killed process, not a write going on."""
_RETRY_S = 1.0
"""Shortest pause before a write that failed with an OS error is tried again."""


def predictions_root(cfg: Config) -> Path:
    """The prediction log's folder: `predictions/` under the offline store's root."""
    root = cfg.store_uri("offline").path
    assert root is not None  # offline.uri accepts file:// only (checked when loaded)
    return root / PREDICTIONS_DIR


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write `table` to `path` as zstd Parquet: whole and durable, or not there at all."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


class PredictionLog:
    """A bounded buffer of scored rows and the thread that appends them to the offline store.

    `worker`: a short id unique among the server processes running now (e.g. "w0-4242"); it
    names the files this log writes. `capacity`: rows held in memory at most (serve.log_buffer).
    `flush_every`: seconds a row may wait in memory (serve.log_flush). `on_drop(n)`: called
    with each count of rows dropped. `on_flush(rows, seconds)`: called after each flush that
    wrote rows. `on_error(exc)`: called when a write fails (it is also logged as a warning).
    Callbacks run on the thread that appended or wrote, so they must be quick; one that raises
    is logged and otherwise ignored.

    Safe to use from several threads. `close()` (or the end of a `with` block) writes what is
    left: the server must call it when it drains. A log never closed is closed at a normal
    interpreter exit, as a safety net only (a process ended with os._exit, as a forked
    multiprocessing child is, skips it).
    """

    def __init__(
        self,
        cfg: Config,
        *,
        worker: str,
        capacity: int,
        flush_every: float,
        on_drop: Callable[[int], None] | None = None,
        on_flush: Callable[[int, float], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not isinstance(worker, str) or not _WORKER.fullmatch(worker):
            raise InvalidArgument(
                f"prediction log worker {worker!r} must be 1 to 64 letters, digits, '_', '.' or "
                "'-', starting with a letter or digit (it names files), e.g. 'w0-4242'."
            )
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgument(
                f"prediction log capacity {capacity!r} must be a whole number of rows >= 1 "
                "(serve.log_buffer)."
            )
        if not isinstance(flush_every, int | float) or not (
            flush_every > 0 and math.isfinite(flush_every)
        ):
            raise InvalidArgument(
                f"prediction log flush_every {flush_every!r} must be a number of seconds > 0 "
                "(serve.log_flush)."
            )
        self.root = predictions_root(cfg)
        """The log's folder; one `date=YYYY-MM-DD` folder under it per UTC day."""
        self.worker = worker
        self.capacity = capacity
        self.flush_every = float(flush_every)
        self.threshold = max(1, capacity // 4)
        """Buffered rows that make the writer write without waiting for `flush_every`."""
        self.last_error: BaseException | None = None
        """The latest write failure, kept after later writes succeed (None if there was none)."""
        self._on_drop = on_drop
        self._on_flush = on_flush
        self._on_error = on_error

        self._lock = threading.Lock()  # guards the buffer and the counters; never held for I/O
        self._wake = threading.Condition(self._lock)
        self._write_lock = threading.Lock()  # one write at a time; taken before `_lock`
        self._tables: list[pa.Table] = []
        self._buffered = 0  # rows in _tables
        self._in_flight = 0  # rows taken out of _tables by the write going on
        self._oldest: float | None = None  # monotonic time the oldest buffered row arrived
        self._retry_at = 0.0  # after a failed write: not before this monotonic time
        self._closed = False
        self._dropped = 0
        self._written = 0
        self._checked: pa.Schema | None = None  # the last schema `append` accepted
        self._seq = 0
        self._synced: set[Path] = set()  # folders whose entry in their parent is durable

        self._thread = threading.Thread(
            target=self._run, name=f"backline-predlog-{worker}", daemon=True
        )
        self._thread.start()
        _open_logs.add(self)

    # -- counters -------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Rows given to `append` that will never be written (no room, or not writable)."""
        return self._dropped

    @property
    def written(self) -> int:
        """Rows in files renamed into place and fsynced."""
        return self._written

    @property
    def pending(self) -> int:
        """Rows accepted and not written yet: buffered, or in a write going on."""
        with self._lock:
            return self._buffered + self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return (
            f"<PredictionLog {self.worker!r} at {str(self.root)!r}: written={self._written} "
            f"pending={self.pending} dropped={self._dropped}{' (closed)' if self._closed else ''}>"
        )

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the engine's side ----------------------------------------------------------------

    def append(self, rows: pa.Table) -> int:
        """Buffer `rows` for writing; return how many were accepted. Never waits for I/O: the
        rows past the buffer's room (or all of them, after `close`) are dropped and counted.

        `rows` must hold every column of PREDICTION_COLUMNS with its exact type, a non-null
        `scored_at`, and no column named `date` (the partition column readers see)."""
        if not isinstance(rows, pa.Table):
            raise InvalidArgument(
                f"prediction log rows are a {type(rows).__name__}; pass a pyarrow Table."
            )
        self._check(rows)
        total = rows.num_rows
        if total == 0:
            return 0
        with self._lock:
            room = 0 if self._closed else self.capacity - self._buffered - self._in_flight
            accepted = max(0, min(total, room))
            if accepted:
                was = self._buffered
                self._tables.append(rows if accepted == total else rows.slice(0, accepted))
                self._buffered += accepted
                if self._oldest is None:
                    self._oldest = time.monotonic()
                if was == 0 or (was < self.threshold <= self._buffered):
                    self._wake.notify()  # start the flush_every clock, or write now
            if accepted < total:
                self._dropped += total - accepted
        if accepted < total:
            self._call(self._on_drop, total - accepted)
        return accepted

    def flush(self) -> None:
        """Write every buffered row now, and wait until it is durable (with a write that was
        going on). Raises StoreError if a write fails; its rows stay buffered for a retry."""
        with self._write_lock:
            self._write_buffered()

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting rows, write what is buffered and stop the writer thread, waiting at
        most `timeout` seconds. Calling it again does nothing. Raises StoreError when rows
        could not be written (they are counted as dropped) or the writer did not finish."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        _open_logs.discard(self)
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise StoreError(
                f"prediction log {self.worker}: writing to {self.root} took over {timeout:g} s "
                f"at close; {self.pending} rows may be lost. Check that the disk responds, or "
                "pass a longer timeout."
            )
        with self._lock:
            lost = self._buffered
            self._tables, self._buffered, self._oldest = [], 0, None
            self._dropped += lost
        if lost:
            self._call(self._on_drop, lost)
            raise StoreError(
                f"prediction log {self.worker}: {lost} rows could not be written to {self.root} "
                f"at close ({self.last_error}). Free space or fix the folder's permissions."
            )

    # -- checking -------------------------------------------------------------------------

    def _check(self, rows: pa.Table) -> None:
        schema = rows.schema
        if self._checked is None or not schema.equals(self._checked):
            names = schema.names
            if len(set(names)) != len(names):
                twice = sorted({n for n in names if names.count(n) > 1})
                raise SchemaError(
                    f"prediction log rows name columns {twice} more than once; give each "
                    "column one name."
                )
            if PREDICTIONS_PARTITION in names:
                raise SchemaError(
                    f"prediction log rows have a column {PREDICTIONS_PARTITION!r}, the name of "
                    "the partition column readers of `predictions` see; rename it (e.g. "
                    f"'request_{PREDICTIONS_PARTITION}')."
                )
            for name, kind in PREDICTION_COLUMNS.items():
                index = schema.get_field_index(name)
                if index < 0:
                    raise SchemaError(
                        f"prediction log rows lack column {name!r} ({kind}); every row needs "
                        f"{', '.join(PREDICTION_COLUMNS)}."
                    )
                if not schema.field(index).type.equals(kind):
                    raise SchemaError(
                        f"prediction log column {name!r} is {schema.field(index).type}, not "
                        f"{kind}; cast it before appending."
                    )
            self._checked = schema
        if rows.column("scored_at").null_count:
            raise SchemaError(
                "prediction log rows have a null scored_at; set it to the time each row was "
                "scored (it picks the date partition)."
            )

    # -- writing --------------------------------------------------------------------------

    def _run(self) -> None:
        """The writer thread: wait until a write is due, write, repeat; after `close`, write
        what is left once and end."""
        try:
            self._remove_stale_partials()
        except OSError as exc:  # housekeeping only: the log works without it
            log.warning("prediction log %s: cannot clean up %s (%s)", self.worker, self.root, exc)
        while True:
            with self._lock:
                while not self._due():
                    self._wake.wait(self._wait_s())
                closing = self._closed
            try:
                with self._write_lock:
                    self._write_buffered()
            except StoreError:
                pass  # logged, rows kept, _retry_at set
            if closing:
                return

    def _due(self) -> bool:
        """Whether the writer should write now (called with `_lock` held)."""
        if self._closed:
            return True
        if not self._buffered:
            return False
        now = time.monotonic()
        if now < self._retry_at:
            return False
        assert self._oldest is not None
        return self._buffered >= self.threshold or now - self._oldest >= self.flush_every

    def _wait_s(self) -> float | None:
        """How long the writer may sleep before a write could be due (None: until woken)."""
        if not self._buffered:
            return None
        assert self._oldest is not None
        due = self._oldest + self.flush_every
        if self._buffered >= self.threshold:
            due = 0.0
        return max(0.0, max(due, self._retry_at) - time.monotonic())

    def _write_buffered(self) -> None:
        """Take the buffer and write it, one file per UTC date (caller holds `_write_lock`).
        On an OS error, put back what was not written and raise StoreError."""
        with self._lock:
            tables, oldest = self._tables, self._oldest
            self._tables, self._oldest = [], None
            self._in_flight, self._buffered = self._buffered, 0
        if not tables:
            return
        start = time.perf_counter()
        parts: list[pa.Table] = []
        try:
            parts = [part for table in _merge(tables) for part in _by_date(table)]
        except Exception as exc:  # no I/O yet: the rows themselves are the matter
            self._give_up(tables, exc)
            return
        written = 0
        while parts:
            part = parts[0]
            try:
                self._write_part(part)
            except OSError as exc:
                self._put_back(parts, oldest, exc)
                raise StoreError(
                    f"prediction log {self.worker}: cannot write to {self.root} ({exc}); "
                    f"{sum(p.num_rows for p in parts)} rows kept for a retry. Free space or "
                    "fix the folder's permissions."
                ) from None
            except Exception as exc:  # Parquet cannot hold these rows: retrying cannot help
                self._give_up(parts, exc)
                return
            parts.pop(0)
            written += part.num_rows
            with self._lock:
                self._written += part.num_rows
                self._in_flight -= part.num_rows
        self._call(self._on_flush, written, time.perf_counter() - start)

    def _write_part(self, part: pa.Table) -> None:
        """Write rows of one UTC date as the next file of this worker in its date folder."""
        day = part.column("scored_at")[0].cast(pa.date32()).as_py()
        folder = self.root / f"{PREDICTIONS_PARTITION}={day.isoformat()}"
        self._make_folder(folder)
        while True:  # a restarted process may reuse a worker id: never replace a file
            path = folder / f"{self.worker}-{self._seq:08d}.parquet"
            self._seq += 1
            if not path.exists():
                break
        write_parquet_atomic(part, path)

    def _make_folder(self, folder: Path) -> None:
        """Create `folder` (and the log's root) if missing, with each new entry durable."""
        if folder in self._synced:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for path in (self.root, folder):  # the entry of each in its parent
            if path not in self._synced:
                fsync_dir(path.parent)
                self._synced.add(path)

    def _put_back(self, parts: Sequence[pa.Table], oldest: float | None, exc: OSError) -> None:
        """Return unwritten rows to the front of the buffer and pause the writer a while."""
        rows = sum(p.num_rows for p in parts)
        with self._lock:
            self._tables[:0] = parts
            self._buffered += rows
            self._in_flight = 0
            if oldest is not None:
                self._oldest = oldest if self._oldest is None else min(oldest, self._oldest)
            self._retry_at = time.monotonic() + max(_RETRY_S, self.flush_every)
        self._failed(exc, f"{rows} rows kept for a retry")

    def _give_up(self, parts: Sequence[pa.Table], exc: BaseException) -> None:
        """Drop rows that no retry could write, counting them."""
        rows = sum(p.num_rows for p in parts)
        with self._lock:
            self._in_flight = 0
            self._dropped += rows
        self._failed(exc, f"{rows} rows dropped")
        self._call(self._on_drop, rows)

    def _failed(self, exc: BaseException, outcome: str) -> None:
        self.last_error = exc
        log.warning(
            "prediction log %s: write to %s failed: %s; %s", self.worker, self.root, exc, outcome
        )
        self._call(self._on_error, exc)

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:  # a broken metric must not stop the log
            log.exception("prediction log %s: callback %r failed", self.worker, callback)

    def _remove_stale_partials(self) -> None:
        """Delete `.partial` files a killed process left (old enough not to be a write going
        on); they are invisible to readers, but take space."""
        limit = time.time() - _STALE_PARTIAL_S
        for path in self.root.glob(f"{PREDICTIONS_PARTITION}=*/*.parquet{PARTIAL_SUFFIX}"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink()
            except FileNotFoundError:
                pass  # another process removed it first


def _merge(tables: Sequence[pa.Table]) -> list[pa.Table]:
    """The buffered tables as few as possible: one, where a column a table lacks can be null.
    Where two disagree on a column's type (a feature changed kind between model versions),
    each run of tables that agree becomes a table of its own, and so a file of its own."""
    if len(tables) == 1:
        return list(tables)
    try:
        return [pa.concat_tables(tables, promote_options="default")]
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    merged: list[pa.Table] = []
    for table in tables:
        if merged:
            try:
                merged[-1] = pa.concat_tables([merged[-1], table], promote_options="default")
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                pass
        merged.append(table)
    return merged


def _by_date(table: pa.Table) -> list[pa.Table]:
    """The rows of `table` split by the UTC date of `scored_at`, oldest date first."""
    days = pc.cast(table.column("scored_at"), pa.date32())
    bounds = pc.min_max(days)
    if bounds["min"] == bounds["max"]:
        return [table]
    return [
        table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        for day in sorted(pc.unique(days).to_pylist())
    ]


# Logs not closed yet, closed at a normal interpreter exit so buffered rows are written (a
# daemon thread is stopped without warning at exit).
_open_logs: weakref.WeakSet[PredictionLog] = weakref.WeakSet()


def _close_all() -> None:
    for predlog in list(_open_logs):
        try:
            predlog.close()
        except Exception as exc:
            log.warning("%s", exc)


atexit.register(_close_all)
