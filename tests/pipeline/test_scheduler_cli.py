"""`backline schedule` and `backline backfill` as a user types them: what they print, exit codes
0 (all succeeded), 1 (a failure that may pass when run again) and 2 (a user error).

Runs stop at `validate` or `materialize` ([schedule] until), so nothing trains; waits between
attempts are 0 s, so nothing sleeps.
"""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backline.cli import main
from backline.core.config import load_config
from backline.pipeline.history import RunHistory
from backline.pipeline.schedule import CronSchedule
from backline.pipeline.scheduler import Scheduler
from backline.registry.db import Database
from tests.pipeline.conftest import Landing, land

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def _quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BACKLINE_SCHEDULE_UNTIL", "validate")
    monkeypatch.setenv("BACKLINE_SCHEDULE_BACKOFF_BASE", "0s")  # retry at once: no sleeping
    monkeypatch.setenv("BACKLINE_SCHEDULE_ALERT_RUNS", "false")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _states(root: Path) -> dict[datetime, str]:
    history = RunHistory(Database(load_config(root, env={}).store_uri("registry")))
    try:
        history.prepare()
        return {r.logical_time: r.state for r in history.recent("fraud", limit=50)}
    finally:
        history.dispose()


def test_schedule_once_runs_the_due_time_then_nothing(
    landed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    due = CronSchedule("0 2 * * *").previous(datetime.now(UTC))  # the example's schedule
    code, out, _ = _run(capsys, "schedule", "--once", "--project", str(landed))
    assert code == 0, out
    assert f"cron {due.isoformat()}: succeeded (ran ingest, validate)" in out
    assert re.search(r"next cron time \S+T02:00:00\+00:00", out)
    assert _states(landed) == {due: "succeeded"}

    code, out, _ = _run(capsys, "schedule", "--once", "--project", str(landed))
    assert code == 0 and "nothing due" in out
    assert _states(landed) == {due: "succeeded"}


def test_schedule_without_a_schedule_or_with_a_bad_one_exits_2(
    landed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKLINE_SCHEDULE_CRON", "")
    code, _, err = _run(capsys, "schedule", "--once", "--project", str(landed))
    assert code == 2
    assert "has no schedule: add a [schedule] section" in err and 'cron = "0 2 * * *"' in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    monkeypatch.setenv("BACKLINE_SCHEDULE_CRON", "0 2 * *")
    code, _, err = _run(capsys, "schedule", "--project", str(landed))
    assert code == 2 and "schedule.cron = '0 2 * *' is not a cron expression" in err
    monkeypatch.setenv("BACKLINE_SCHEDULE_CRON", "0 2 * * *")
    monkeypatch.setenv("BACKLINE_SCHEDULE_TIMEZONE", "Europe/Londn")
    code, _, err = _run(capsys, "schedule", "--project", str(landed))
    assert code == 2 and "'Europe/Londn' is not an IANA zone" in err and "Europe/London" in err


def test_schedule_stops_on_sigterm_and_gives_its_leases_back(
    landed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    waited: list[float] = []

    def wait(seconds: float) -> None:  # instead of sleeping: the service manager stops us
        waited.append(seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    def scheduler(args: object) -> Scheduler:
        return Scheduler(load_config(landed), wait=wait, owner="cli:1:a")

    monkeypatch.setattr("backline.cli.schedule._scheduler", scheduler)
    before = signal.getsignal(signal.SIGTERM)
    code, out, _ = _run(capsys, "schedule", "--project", str(landed))
    assert code == 0
    assert 'scheduling "0 2 * * *" in UTC' in out and "stopped; leases given back" in out
    assert re.search(r"cron \S+T02:00:00\+00:00: succeeded \(ran ingest, validate\)", out)
    assert len(waited) == 1 and 0 < waited[0] <= 60  # the next poll of retraining requests
    assert json.loads((landed / ".backline/scheduler/lease.json").read_text()) == {}
    assert signal.getsignal(signal.SIGTERM) == before


def test_backfill_runs_the_missing_times_and_then_has_nothing_to_do(
    landed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = str(landed)
    code, out, _ = _run(
        capsys, "backfill", "--project", p, "--start", "2026-02-01", "--end", "2026-02-03T02:00:00Z"
    )
    assert code == 0, out
    assert "Backfilling 3 of 3 logical time(s)" in out and "backfill: 3 succeeded" in out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("backfill 2026")]
    assert lines == [
        "backfill 2026-02-01T02:00:00+00:00: succeeded (ran ingest, validate)",
        "backfill 2026-02-02T02:00:00+00:00: succeeded (every step fresh)",
        "backfill 2026-02-03T02:00:00+00:00: succeeded (every step fresh)",
    ]
    code, out, _ = _run(
        capsys, "backfill", "--project", p, "--start", "2026-02-01", "--end", "2026-02-03T02:00:00Z"
    )
    assert code == 0 and "Nothing to backfill: none of the 3 logical time(s)" in out


def test_backfill_exits_1_on_a_retryable_failure_and_failed_mode_resumes_it(
    landed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    p, span = str(landed), ("--start", "2026-02-01", "--end", "2026-02-02T02:00:00Z")
    monkeypatch.setenv("BACKLINE_SCHEDULE_UNTIL", "materialize")
    monkeypatch.setenv("BACKLINE_SCHEDULE_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("BACKLINE_ONLINE_URI", DOWN)
    code, out, err = _run(capsys, "backfill", "--project", p, *span)
    assert code == 1, out
    assert "backfill: 2 failed" in out and "2 attempts" in out and "may pass when run again" in out
    assert "2 run(s) failed with an error that may pass when run again" in err
    assert "--mode failed" in err

    monkeypatch.delenv("BACKLINE_ONLINE_URI")  # the store is back
    code, out, _ = _run(capsys, "backfill", "--project", p, *span, "--mode", "failed")
    assert code == 0, out
    assert "(failed)" in out and "backfill: 2 succeeded" in out
    assert "2026-02-01T02:00:00+00:00: succeeded (ran materialize)" in out  # resumed there
    assert set(_states(landed).values()) == {"succeeded"}
    code, out, _ = _run(capsys, "backfill", "--project", p, *span, "--mode", "all")
    assert code == 0 and "backfill: 2 succeeded" in out, out  # forced: every step again
    assert "2026-02-01T02:00:00+00:00: succeeded (ran ingest, validate, materialize)" in out, out


def test_backfill_refuses_bad_input_and_a_run_that_needs_a_fix_exits_2(
    tmp_path: Path, landing_files: Landing, capsys: pytest.CaptureFixture[str]
) -> None:
    from backline.core.workspace import init_project

    root = init_project(tmp_path / "proj")  # features.py is not applied: validate needs it
    land(root, "transactions", landing_files.early)
    land(root, "labels", landing_files.labels)
    p = str(root)
    for argv, message in (
        (("--start", "2026-02-03", "--end", "2026-02-01"), "is after its end"),
        (("--start", "yesterday", "--end", "2026-02-01"), "--start 'yesterday' is not a date"),
        (("--start", "2026-02-01", "--end", "2026-02-03", "--mode", "al"), "Did you mean 'all'?"),
    ):
        code, out, err = _run(capsys, "backfill", "--project", p, *argv)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        assert out == ""
    code, out, err = _run(
        capsys, "backfill", "--project", p, "--start", "2026-02-01", "--end", "2026-02-01T12:00:00Z"
    )
    assert code == 2
    assert "needs a fix" in out and "backline features apply" in err
    assert _states(root) == {datetime(2026, 2, 1, 2, tzinfo=UTC): "failed"}  # tried once
