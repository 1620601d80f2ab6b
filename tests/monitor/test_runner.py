"""The monitor's pass (backline.pipeline.monitor) and `backline monitor`, on a real project.

The project is the shared one of tests/monitor/replay.py: warm history, v1 trained and
promoted, daily windows. Prediction-log rows are written with the server's own writer
(PredictionLog), scored offline with the served package at each transaction's time, so no
HTTP server is needed here (tests/monitor/test_fail_on_purpose.py serves them for real).
Time is injected: `clock` is the monitor's wall time.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from backline.cli import main
from backline.core.config import load_config
from backline.monitor.alerts import State
from backline.package.metrics import average_precision
from backline.pipeline.monitor import Monitor
from tests.monitor.replay import (
    Replay,
    copy_project,
    day_start,
    ingest_labels,
    rows_of_days,
    shared_project,
    shared_rows,
    write_log,
)

NOW = datetime(2026, 12, 1, tzinfo=UTC)
"""A wall time long after every replay day (and every label's arrival)."""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_project(tmp_path_factory.mktemp("monitor"))


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    return shared_rows(tmp_path_factory.mktemp("scored"))


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _folder(root: Path) -> Path:
    return root / ".backline" / "monitor" / "fraud"


def _lines(path: Path) -> list[Any]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _shifted(rows: pa.Table, factor: float = 1.6) -> pa.Table:
    """Rows as on the first day of amounts x `factor`: today's amount is scaled, the card's
    history is not yet (its means and deviations are as they were)."""
    amount = pc.multiply(rows.column("amount"), factor)
    new = {
        "amount": amount,
        "feature__amount_to_mean_30d": pc.multiply(
            rows.column("feature__amount_to_mean_30d"), factor
        ),
        "feature__amount_zscore_7d": pc.divide(
            pc.subtract(amount, rows.column("feature__amount_mean_7d")),
            rows.column("feature__amount_stddev_7d"),
        ),
        "feature__last_amount": pc.multiply(rows.column("feature__last_amount"), factor),
    }
    for name, column in new.items():
        rows = rows.set_column(rows.schema.get_field_index(name), name, column)
    return rows


# -- windows and the watermark ---------------------------------------------------------------


def test_day_windows_wait_for_the_newest_count_each_row_once_and_survive_a_restart(
    template: Path, scored: pa.Table, tmp_path: Path
) -> None:
    root = copy_project(template, tmp_path / "fraud")
    cut = pa.scalar(day_start(2) + timedelta(hours=6), scored.column("scored_at").type)
    first = rows_of_days(scored, 0, 2)
    early = first.filter(pc.less(first.column("scored_at"), cut))
    late = first.filter(pc.greater_equal(first.column("scored_at"), cut))
    write_log(root, early)
    clock = Clock(day_start(2) + timedelta(hours=12))  # day 2 is under way
    monitor = Monitor(load_config(root), clock=clock)

    (result,) = monitor.run_once()
    assert [(w.start, w.end) for w in result.windows] == [
        (day_start(0), day_start(1)),
        (day_start(1), day_start(2)),
    ]
    assert [w.rows for w in result.windows] == [rows_of_days(scored, d, d).num_rows for d in (0, 1)]
    (again,) = monitor.run_once()
    assert again.windows == [] and again.changes == []

    # a restart goes on from state.json: day 2 still waits until a whole day after its end
    restarted = Monitor(load_config(root), clock=clock)
    clock.now = day_start(3) + timedelta(hours=23)
    assert restarted.run_once()[0].windows == []
    clock.now = day_start(4)
    (done,) = restarted.run_once()
    assert [(w.start, w.rows) for w in done.windows] == [
        (day_start(2), early.num_rows - sum(rows_of_days(scored, d, d).num_rows for d in (0, 1)))
    ]

    # rows of day 2 logged after its window was processed are not counted again; day 3's are
    write_log(root, late)
    write_log(root, rows_of_days(scored, 3, 3))
    clock.now = NOW
    (later,) = Monitor(load_config(root), clock=clock).run_once()
    assert [(w.start, w.rows) for w in later.windows] == [
        (day_start(3), rows_of_days(scored, 3, 3).num_rows)
    ]
    records = [o["record"] for o in _lines(_folder(root) / "windows.jsonl")]
    assert [r["start"] for r in records] == [day_start(d).isoformat() for d in range(4)]
    state = json.loads((_folder(root) / "state.json").read_text())
    assert state["processed_until"] == day_start(4).isoformat()


def test_time_windows_are_aligned_to_the_epoch_not_to_the_first_row(
    template: Path, scored: pa.Table, tmp_path: Path
) -> None:
    root = copy_project(template, tmp_path / "fraud", window='"5h"')
    rows = rows_of_days(scored, 0, 0)
    write_log(root, rows)
    (result,) = Monitor(load_config(root), clock=Clock(NOW)).run_once()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    width = timedelta(hours=5)
    assert result.windows[0].start == datetime(2026, 2, 14, 23, tzinfo=UTC)  # 98,395 x 5h
    for w in result.windows:
        assert (w.start - epoch) % width == timedelta(0) and w.end - w.start == width
    assert sum(w.rows for w in result.windows) == rows.num_rows


def test_row_windows_keep_rows_of_one_time_together_so_no_row_is_lost(
    template: Path, scored: pa.Table, tmp_path: Path
) -> None:
    """A window of N rows that ends inside a group of rows logged with one time (a batch)
    takes the whole group: the next pass starts at a time, and a cut through the group would
    drop the rest of it."""
    root = copy_project(template, tmp_path / "fraud", window="500")
    day0 = rows_of_days(scored, 0, 0)
    times = day0.column("scored_at").to_pylist()
    times[495:506] = [times[499]] * 11  # one batch across the 500th row
    day0 = day0.set_column(1, "scored_at", pa.array(times, day0.column("scored_at").type))
    write_log(root, day0)
    monitor = Monitor(load_config(root), clock=Clock(NOW))
    (first,) = monitor.run_once()
    assert [w.rows for w in first.windows] == [506]
    assert first.windows[0].end == times[499] + timedelta(microseconds=1)

    day1 = rows_of_days(scored, 1, 1)
    write_log(root, day1)
    (second,) = monitor.run_once()
    counted = sum(w.rows for w in [*first.windows, *second.windows])
    waiting = day1.filter(
        pc.greater_equal(
            day1.column("scored_at"), pa.scalar(second.windows[-1].end, day1.schema.field(1).type)
        )
    ).num_rows
    assert counted + waiting == day0.num_rows + day1.num_rows
    assert waiting < 500


# -- drift, alerts, notifiers, retraining ----------------------------------------------------

RULES = """
[[monitor.alerts]]
name = "FeatureDrift"
metric = "drift.features_drifted"
op = ">="
threshold = 1
for = 1
keep_firing_for = 1
retrain = true

[[monitor.alerts]]
name = "AmountDrift"
metric = "drift.score"
op = ">"
threshold = 0.3
annotations = { summary = "$feature moved by $value" }

[[monitor.notify]]
kind = "log"
path = "alerts.log"
"""


def test_stationary_days_stay_quiet_a_shift_fires_after_for_and_resolves_after_recovery(
    template: Path, scored: pa.Table, tmp_path: Path
) -> None:
    """Days 0-1 normal, days 2-4 with amounts x1.6, days 5-6 normal, one pass a day from day
    2 on. FeatureDrift (for = 1, keep_firing_for = 1) is pending after day 2, fires after day
    3, holds through day 5 (one clean window) and resolves after day 6. Retraining is asked
    for once per cooldown (1 day of wall time), across a restart of the monitor."""
    root = copy_project(template, tmp_path / "fraud", RULES)
    asked: list[tuple[str, list[str]]] = []
    clock = Clock(NOW)

    def monitor() -> Monitor:
        return Monitor(
            load_config(root),
            clock=clock,
            on_retrain=lambda m, a: asked.append((m, [x.name for x in a])),
        )

    write_log(root, rows_of_days(scored, 0, 1))
    m = monitor()
    (quiet,) = m.run_once()
    assert len(quiet.windows) == 2 and quiet.changes == []
    assert all(w.metrics["drift.features_drifted"] == 0 for w in quiet.windows)
    assert all(w.metrics["drift.prediction_drifted"] == 0 for w in quiet.windows)

    passes = []
    for day, shift, hours in ((2, True, 0), (3, True, 1), (4, True, 2), (5, False, 30)):
        rows = rows_of_days(scored, day, day)
        write_log(root, _shifted(rows) if shift else rows)
        clock.now = NOW + timedelta(hours=hours)
        if day == 4:
            m = monitor()  # a restart: alert states and the cooldown come from state.json
        passes.append(m.run_once()[0])
    write_log(root, rows_of_days(scored, 6, 6))
    passes.append(m.run_once()[0])

    # the shifted input is flagged in its own window, the normal ones are not
    flagged = [set(p.windows[0].drifted) for p in passes]
    assert all("amount_to_mean_30d" in f for f in flagged[:3])
    assert not any(
        f & {"amount_to_mean_30d", "amount_zscore_7d", "last_amount"} for f in flagged[3:]
    )

    changes = [
        [(c.rule, c.after, c.alert.labels.get("feature")) for c in p.changes] for p in passes
    ]
    assert changes[0][0] == ("FeatureDrift", State.PENDING, None)
    assert ("FeatureDrift", State.FIRING, None) in changes[1]
    assert not any(rule == "FeatureDrift" for rule, _, _ in changes[2] + changes[3])
    assert ("FeatureDrift", State.RESOLVED, None) in changes[4]

    # a per-feature metric keeps one alert per feature: the amount ratios fire with the shift
    # and resolve when amounts are normal again
    def amount(i: int, state: State) -> set[str | None]:
        return {f for rule, after, f in changes[i] if rule == "AmountDrift" and after is state}

    moved = {"amount_to_mean_30d", "amount_zscore_7d"}
    assert moved <= amount(0, State.FIRING) and moved <= amount(3, State.RESOLVED)

    # the log notifier heard firing and resolved (never pending)
    logged = _lines(root / "alerts.log")
    feature_drift = [
        (x["status"], x["labels"]["alertname"])
        for x in logged
        if x["labels"]["alertname"] == "FeatureDrift"
    ]
    assert feature_drift == [("firing", "FeatureDrift"), ("resolved", "FeatureDrift")]

    # retraining: asked on the first firing window, not again within the day (even across the
    # restart), asked again once the cooldown passed while it still fired
    requests = _lines(_folder(root) / "retrain-requests.jsonl")
    assert [(r["at"], r["alerts"]) for r in requests] == [
        ((NOW + timedelta(hours=1)).isoformat(), ["FeatureDrift"]),
        ((NOW + timedelta(hours=30)).isoformat(), ["FeatureDrift"]),
    ]
    assert [p.retrain_requested for p in passes] == [False, True, False, True, False]
    assert asked == [("fraud", ["FeatureDrift"])] * 2


# -- labels and performance ------------------------------------------------------------------

LABELS_LATE = """
[[monitor.alerts]]
name = "LabelsLate"
metric = "label_coverage"
op = "<"
threshold = 0.5
"""


def test_late_labels_are_joined_coverage_is_watched_and_realised_auc_pr_appears(
    template: Path, scored: pa.Table, tmp_path: Path
) -> None:
    """Twenty days after the replay only chargebacks have arrived: coverage is low (and
    LabelsLate fires), no window is mature, no realised metric is claimed. Months later every
    label is in: coverage 1, realised AUC-PR equal to a direct computation on the same rows,
    and LabelsLate resolves."""
    root = copy_project(template, tmp_path / "fraud", LABELS_LATE)
    labels = Replay.generate().labels
    ingest_labels(root, labels)
    write_log(root, rows_of_days(scored, 0, 4))
    clock = Clock(day_start(5) + timedelta(days=20))
    monitor = Monitor(load_config(root), clock=clock, label_window=timedelta(days=10))
    (early,) = monitor.run_once()
    metrics = early.windows[-1].metrics
    assert 0 < metrics["label_coverage"] < 0.1
    assert not any(k.startswith("performance.") for k in metrics)
    assert [(c.rule, c.after) for c in early.changes] == [("LabelsLate", State.FIRING)]

    write_log(root, rows_of_days(scored, 5, 5))
    clock.now = NOW
    (late,) = monitor.run_once()
    metrics = late.windows[-1].metrics
    assert metrics["label_coverage"] == 1.0
    assert [(c.rule, c.after) for c in late.changes] == [("LabelsLate", State.RESOLVED)]

    truth = dict(
        zip(
            labels.column("transaction_id").to_pylist(),
            labels.column("is_fraud").to_pylist(),
            strict=True,
        )
    )
    cohorts = json.loads((_folder(root) / "performance.json").read_text())
    assert [c["start"] for c in cohorts] == [day_start(d).isoformat() for d in range(6)]
    for day, cohort in enumerate(cohorts):
        rows = rows_of_days(scored, day, day)
        y = np.array([truth[t] for t in rows.column("transaction_id").to_pylist()], dtype=float)
        expected = average_precision(y, rows.column("score").to_numpy())
        assert cohort["coverage"] == 1.0 and cohort["rows"] == rows.num_rows
        assert cohort["auc_pr"] == pytest.approx(expected, rel=1e-9)
    assert metrics["performance.auc_pr"] == pytest.approx(cohorts[-1]["auc_pr"], rel=1e-9)
    assert metrics["performance.auc_pr_drop"] == pytest.approx(
        metrics["performance.auc_pr_expected"] - metrics["performance.auc_pr"]
    )


# -- the command line ------------------------------------------------------------------------


def test_cli_monitor_once_and_report_work_as_printed_and_bad_input_exits_2(
    template: Path, scored: pa.Table, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = copy_project(template, tmp_path / "fraud")
    project = ["--project", str(root)]
    assert main(["monitor", "--once", *project]) == 0
    assert "No predictions logged yet" in capsys.readouterr().out

    write_log(root, rows_of_days(scored, 0, 1))
    assert main(["monitor", "--once", *project]) == 0
    out = capsys.readouterr().out
    assert "fraud: 2 window(s) checked, 2026-02-15 00:00 to 2026-02-17 00:00 UTC; no drift" in out
    assert main(["monitor", "--once", "--model", "fraud", *project]) == 0
    assert "fraud: no window completed since the last pass." in capsys.readouterr().out

    report = tmp_path / "report.html"
    assert main(["monitor", "report", "--out", str(report), *project]) == 0
    assert capsys.readouterr().out.strip() == f"Wrote {report}"
    html = report.read_text()
    assert html.startswith("<!DOCTYPE html>") and "2026-02-16" in html

    for args, message in (
        (["monitor", "--once", "--model", "frad"], "no model named 'frad'"),
        (["monitor", "--once", "--model", "../x"], "is not a registered model's name"),
        (["monitor", "report", "--out", str(report), "--model", "nope"], "no model named 'nope'"),
        (["monitor", "report", "--out", str(tmp_path / "no" / "r.html")], "does not exist"),
        (["monitor", "--once", "--metrics-port", "9"], "leave it out with --once"),
    ):
        assert main([*args, *project]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)
    assert "Did you mean 'fraud'?" in _err_of(
        ["monitor", "--once", "--model", "frad", *project], capsys
    )

    # a damaged state file is a user error that says what to do
    (_folder(root) / "state.json").write_text("{not json")
    assert main(["monitor", "--once", *project]) == 2
    assert "delete it to start monitoring that model afresh" in capsys.readouterr().err


def _err_of(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    main(args)
    return capsys.readouterr().err
