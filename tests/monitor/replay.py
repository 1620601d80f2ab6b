"""Make it fail on purpose: a fraud project whose traffic drifts on a day of your choosing,
replayed through the real model server, and watched by the real monitor.

    root = build_project(tmp / "fraud")                 # warm history, v1 trained and promoted
    data = Replay.generate(drift="channel_mix=online:0.5", drift_day=6, normal_from=8)
    with ServerThread(root) as server:
        for day in range(3):
            replay_day(server.port, data.day(day))      # push each event, then score it at its time
            wait_logged(root, data.rows_until(day))
            Monitor(load_config(root)).run_once()       # the day's window is complete

Why the project looks the way it does:

- **Warm history.** The fraud features look back up to 30 days. A model trained on the first
  days of a data set sees half-empty windows (`count_30d` grows day by day), so every later
  day would differ from training and the monitor would be right to say so. The project holds
  `WARM_DAYS` of transactions before its first labelled one; only labelled transactions are
  training examples, so the reference is steady state.
- **Replay in event time.** Each request carries `at` = its transaction's time, so the server
  reads features as of that moment and logs `scored_at` = event time: the monitor's daily
  windows are days of the data. Before scoring, the events are pushed through the server's
  push path (`POST /v1/features:push`), in runs of time in which no card appears twice: the
  online store answers a card's latest-value view only at or after that card's newest event,
  and every event up to a transaction's time must be in the store when it is scored.
- **Drift that ends.** A drift spec starts on a day and never ends, so a day from
  `normal_from` on is taken from the plain generation instead. With the same seed the two are
  identical before the drift day and differ afterwards only in the columns the change names.

The replay and the offline scoring live in `backline.demo.replay` (the demo uses them too);
keep this module free of pytest.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import backline
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, parse_drift
from backline.demo.replay import logged, replay_day, score_offline, wait_logged
from backline.demo.replay import write_log as write_log
from backline.pipeline.train import gate

if TYPE_CHECKING:
    from backline.pipeline.monitor import Monitor, PassResult

CARDS = 400
"""About 650 transactions a day."""
SEED = 5
WARM_DAYS = 30
"""History before the first labelled transaction: the longest feature window."""
TRAIN_DAYS = 14
"""Labelled days the model is trained (10) and evaluated (4, the holdout) on."""
REPLAY_DAYS = 9
"""Days after the training data that can be replayed through the server."""
REPLAY_START = datetime(2026, 2, 15, tzinfo=UTC)
"""The first replayed day. A whole number of 3-day spans after the epoch, so that windows of
"1d" and "3d" both start with it."""
START = REPLAY_START - timedelta(days=WARM_DAYS + TRAIN_DAYS)
LABELLED_FROM = START + timedelta(days=WARM_DAYS)

SETTINGS = """
[serve]
max_batch = 64
max_queue = 512
timeout_ms = 5000
drain_timeout = "10s"
swap_poll = "0.2s"
log_flush = "0.1s"
"""


def day_start(day: int) -> datetime:
    """The first instant of replay day `day` (0 = REPLAY_START)."""
    return REPLAY_START + timedelta(days=day)


MONITOR = '\n[monitor]\nwindow = "1d"\n'
"""The [monitor] section of a built project: daily windows, no rules (copies add theirs)."""


def build_project(root: Path, monitor: str = MONITOR) -> Path:
    """A fraud project with warm history and labels up to REPLAY_START, its features
    materialized and v1 trained (briefly), gated and promoted. `monitor`: TOML appended to
    backline.toml (the [monitor] section, alert rules). About 20 s."""
    import torch

    root = init_project(root)
    toml = root / "backline.toml"
    text = toml.read_text(encoding="utf-8")
    for old, new in (
        ("max_steps = 2000", "max_steps = 60"),
        ("max_latency_ms = 5.0", "max_latency_ms = 1000000.0"),  # no verdict on machine load
        ('holdout = "5d"', 'holdout = "4d"'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    toml.write_text(text + SETTINGS + monitor, encoding="utf-8")
    data = generate(_config())
    tx, labels = data.transactions, data.labels
    history = tx.filter(pc.less(tx.column("event_time"), REPLAY_START))
    times = labels.column("event_time")
    labelled = labels.filter(
        pc.and_(pc.greater_equal(times, LABELLED_FROM), pc.less(times, REPLAY_START))
    )
    (root / "data").mkdir(exist_ok=True)
    pq.write_table(history, root / "data" / "transactions.parquet")
    pq.write_table(labelled, root / "data" / "labels.parquet")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # packaging measures latency: two threads on a busy machine crawl
    try:
        with backline.open(root) as project:
            project.ingest("transactions", root / "data" / "transactions.parquet")
            project.ingest("labels", root / "data" / "labels.parquet")
            project.apply()
            project.materialize()
            first = project.train(model_name="fraud")
            gate(project.config, "fraud", first.version.version)
            project.registry.promote("fraud", first.version.version, actor="test", reason="v1")
    finally:
        torch.set_num_threads(threads)
    return root


_SHARED: dict[str, Any] = {}


def shared_project(folder: Path) -> Path:
    """`build_project` once per process (tests in several modules share it): the first call
    builds under `folder`, later calls return that project whatever `folder` they pass."""
    if "project" not in _SHARED:
        _SHARED["project"] = build_project(folder / "fraud")
    return Path(_SHARED["project"])


def shared_rows(folder: Path) -> pa.Table:
    """Prediction-log rows of every plain replay day, scored offline (`score_offline`), once
    per process; the first call works in a copy of the shared project under `folder`."""
    if "rows" not in _SHARED:
        root = copy_project(shared_project(folder), folder / "scored")
        transactions = Replay.generate().transactions
        ingest_replay(root, transactions)
        _SHARED["rows"] = score_offline(root, transactions)
    rows: pa.Table = _SHARED["rows"]
    return rows


def copy_project(template: Path, target: Path, toml: str = "", window: str | None = None) -> Path:
    """A private copy of a built project with `toml` appended to backline.toml (alert rules,
    notifiers) and, if given, another monitoring window (e.g. '"3d"' or '5000')."""
    shutil.copytree(template, target)
    config = target / "backline.toml"
    text = config.read_text(encoding="utf-8")
    if window is not None:
        assert MONITOR in text
        text = text.replace(MONITOR, f"\n[monitor]\nwindow = {window}\n")
    config.write_text(text + toml, encoding="utf-8")
    return target


def _config(drift: str = "") -> GeneratorConfig:
    return GeneratorConfig(
        days=WARM_DAYS + TRAIN_DAYS + REPLAY_DAYS,
        cards=CARDS,
        seed=SEED,
        start=START,
        drift=parse_drift(drift) if drift else (),
    )


@dataclass(frozen=True)
class Replay:
    """The transactions and labels of the replayed days."""

    transactions: pa.Table
    labels: pa.Table

    @classmethod
    def generate(
        cls, drift: str = "", drift_day: int = 0, normal_from: int | None = None
    ) -> Replay:
        """The replay days, with `drift` (e.g. "channel_mix=online:0.5") from replay day
        `drift_day` on, and plain data again from day `normal_from` on."""
        spec = f"{day_start(drift_day).isoformat()}:{drift}" if drift else ""
        data = generate(_config(spec))
        tx, labels = data.transactions, data.labels
        if drift and normal_from is not None:
            plain = generate(_config())
            assert plain.transactions.column("transaction_id").equals(
                tx.column("transaction_id")
            ), "a drifted generation must keep every transaction"
            cut = day_start(normal_from)
            tx = pa.concat_tables(
                [
                    tx.filter(pc.less(tx.column("event_time"), cut)),
                    plain.transactions.filter(
                        pc.greater_equal(plain.transactions.column("event_time"), cut)
                    ),
                ]
            )
        tx = tx.filter(pc.greater_equal(tx.column("event_time"), REPLAY_START))
        labels = labels.filter(pc.greater_equal(labels.column("event_time"), REPLAY_START))
        return cls(tx, labels)

    def day(self, day: int) -> pa.Table:
        """The transactions of replay day `day`, in event-time order."""
        times = self.transactions.column("event_time")
        return self.transactions.filter(
            pc.and_(pc.greater_equal(times, day_start(day)), pc.less(times, day_start(day + 1)))
        )

    def days(self, first: int, last: int) -> pa.Table:
        """The transactions of replay days `first` to `last`, in event-time order."""
        times = self.transactions.column("event_time")
        return self.transactions.filter(
            pc.and_(pc.greater_equal(times, day_start(first)), pc.less(times, day_start(last + 1)))
        )


def run_days(
    root: Path, data: Replay, days: Sequence[int], monitor: Monitor | None = None
) -> list[PassResult]:
    """Serve `days` of `data` through a real server on loopback, one after another; after
    each day, once its rows are logged, one monitor pass (its window is then complete). The
    pass results, one per day. `monitor` defaults to one built from the project's config (its
    notifiers and rules)."""
    from backline.core.config import load_config
    from backline.pipeline.monitor import Monitor
    from tests.serve.serving import ServerThread

    monitor = monitor or Monitor(load_config(root))
    before = logged(root)
    sent = 0
    results = []
    with ServerThread(root) as server:
        for day in days:
            rows = data.day(day)
            replay_day(server.port, rows)
            sent += rows.num_rows
            wait_logged(root, before + sent)
            (result,) = monitor.run_once("fraud")
            results.append(result)
    return results


# -- scoring without the server ---------------------------------------------------------------


def ingest_replay(
    root: Path, transactions: pa.Table, name: str = "replay", materialize: bool = False
) -> None:
    """Ingest replay transactions into the project's offline store (for `score_offline`); with
    `materialize`, into the online store too, as history a later replay starts after."""
    path = root / "data" / f"{name}.parquet"
    pq.write_table(transactions, path)
    with backline.open(root) as project:
        project.ingest("transactions", path)
        if materialize:
            project.materialize(incremental=True)


def ingest_labels(root: Path, labels: pa.Table, name: str = "replay-labels") -> None:
    """Ingest labels (they arrived long ago by the real clock: label times are in 2026-05)."""
    path = root / "data" / f"{name}.parquet"
    pq.write_table(labels, path)
    with backline.open(root) as project:
        project.ingest("labels", path)


def rows_of_days(rows: pa.Table, first: int, last: int) -> pa.Table:
    """The log rows scored on replay days `first` to `last`."""
    times = rows.column("scored_at")
    return rows.filter(
        pc.and_(
            pc.greater_equal(times, pa.scalar(day_start(first), times.type)),
            pc.less(times, pa.scalar(day_start(last + 1), times.type)),
        )
    )
