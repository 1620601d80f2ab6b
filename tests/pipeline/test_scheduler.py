"""The scheduler runner on real projects: ticks, catch-up, backfill plans, retries, takeover of a
crashed scheduler's run, alert-triggered runs. The executor is the real one; the clock and the
wait are fakes, so nothing sleeps. Runs stop at `validate` or `materialize` (a second or two).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backline.core.config import Config, load_config
from backline.core.errors import ConfigError, StoreError
from backline.core.workspace import init_project
from backline.pipeline.executor import run_pipeline
from backline.pipeline.history import RunHistory
from backline.pipeline.leases import FileLeaseStore, Lease, Leaser
from backline.pipeline.scheduler import Scheduler, lease_key
from backline.registry.db import Database
from tests.pipeline.conftest import FakeClock, Landing, land

HOURLY = {"BACKLINE_SCHEDULE_CRON": "0 * * * *", "BACKLINE_SCHEDULE_UNTIL": "validate"}
DOWN = {"BACKLINE_ONLINE_URI": "redis://127.0.0.1:1/0", "BACKLINE_SCHEDULE_UNTIL": "materialize"}
START = datetime(2026, 2, 1, 6, 30, tzinfo=UTC)
SIX = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)


def _cfg(root: Path, **env: str) -> Config:
    return load_config(root, env={**HOURLY, **env})


class Waits:
    """A fake `wait`: records each delay and moves the clock by it."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.delays = clock, []  # type: ignore[var-annotated]

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.now += timedelta(seconds=seconds)


def _scheduler(cfg: Config, clock: FakeClock, owner: str = "test:1:a") -> tuple[Scheduler, Waits]:
    waits = Waits(clock)
    return Scheduler(cfg, clock=clock, wait=waits, owner=owner), waits


def _history(cfg: Config) -> RunHistory:
    history = RunHistory(Database(cfg.store_uri("registry")))
    history.prepare()
    return history


def test_a_due_tick_runs_once_and_the_next_tick_does_nothing(landed: Path) -> None:
    cfg = _cfg(landed)
    clock = FakeClock(START)
    scheduler, waits = _scheduler(cfg, clock)
    first = scheduler.tick()
    assert [(r.logical_time, r.trigger, r.ending) for r in first.ran] == [
        (SIX, "cron", "succeeded")
    ]
    assert first.ran[0].ran_steps() == ["ingest", "validate"] and first.ran[0].attempts == 1
    assert first.skipped == () and first.next_due == SIX + timedelta(hours=1)
    assert first.wake_at - clock.now == timedelta(minutes=1)  # the poll comes before 07:00

    assert scheduler.tick().ran == ()  # the same minute, the same hour: nothing
    restarted, _ = _scheduler(cfg, clock, owner="test:2:b")
    assert restarted.tick().ran == ()  # the state file says 06:00 was handled
    assert waits.delays == []
    assert json.loads((landed / ".backline/scheduler/lease.json").read_text()) == {}


def test_catch_up_off_runs_only_the_newest_missed_time_and_reports_the_rest(
    landed: Path,
) -> None:
    cfg = _cfg(landed)
    clock = FakeClock(START)
    scheduler, _ = _scheduler(cfg, clock)
    scheduler.tick()
    clock.now += timedelta(hours=4)  # down from 06:30 to 10:30
    report = scheduler.tick()
    ten = SIX + timedelta(hours=4)
    assert [r.logical_time for r in report.ran] == [ten]
    assert report.skipped == tuple(SIX + timedelta(hours=h) for h in (1, 2, 3))
    history = _history(cfg)
    try:
        assert [r.logical_time for r in history.recent("fraud")] == [ten, SIX]
    finally:
        history.dispose()

    caught_up = _cfg(landed, BACKLINE_SCHEDULE_CATCHUP="true")
    clock.now += timedelta(hours=2)
    report = Scheduler(caught_up, clock=clock, wait=Waits(clock), owner="t:3:c").tick()
    assert [r.logical_time.hour for r in report.ran] == [11, 12]
    assert report.skipped == ()


def test_backfill_plans_read_the_run_history_and_the_leases(landed: Path) -> None:
    cfg = _cfg(landed, BACKLINE_SCHEDULE_CRON="0 6 * * *")
    day = [datetime(2026, 2, d, 6, tzinfo=UTC) for d in range(1, 7)]
    history = _history(cfg)
    now = START
    try:
        for t, state in ((day[0], "succeeded"), (day[1], "failed"), (day[3], "running")):
            run, _ = history.claim("fraud", t, owner="elsewhere:1", now=now)
            if state != "running":
                history.finish(run.id, state, now=now)  # type: ignore[arg-type]
        # day 5: running, by a scheduler whose lease lapsed: it reads as failed
        history.claim("fraud", day[4], owner="elsewhere:2", now=now)
    finally:
        history.dispose()
    leases = FileLeaseStore(landed / ".backline/scheduler/lease.json")
    lapsed = Lease(lease_key("fraud", day[4]), "elsewhere:2:x", now, now - timedelta(minutes=3))
    assert leases.swap(lapsed.key, None, lapsed)

    scheduler, _ = _scheduler(cfg, FakeClock(day[5] + timedelta(hours=1)))

    def planned(mode: str) -> list[datetime]:
        plan = scheduler.plan_backfill(day[0], day[5], mode)
        assert plan.running == (day[3],) and plan.considered == 6
        return [e.logical_time for e in plan.entries]

    assert planned("missing") == [day[2], day[5]]
    assert planned("failed") == [day[1], day[4]]
    assert planned("all") == [day[0], day[1], day[2], day[4], day[5]]


def test_a_retryable_failure_is_retried_with_backoff_and_resumes_from_its_step(
    landed: Path,
) -> None:
    cfg = _cfg(
        landed,
        **DOWN,
        BACKLINE_SCHEDULE_MAX_ATTEMPTS="3",
        BACKLINE_SCHEDULE_BACKOFF_BASE="30s",
        BACKLINE_SCHEDULE_BACKOFF_FACTOR="2",
    )
    clock = FakeClock(START)
    scheduler, waits = _scheduler(cfg, clock)
    ran = scheduler.tick().ran[0]
    assert (ran.ending, ran.retryable, ran.attempts) == ("failed", True, 3)
    assert waits.delays == [30.0, 60.0]
    assert "materialize" in ran.error and "redis" in ran.error.lower()
    assert ran.ran_steps(1) == ["ingest", "validate", "materialize"]
    assert ran.ran_steps(2) == ran.ran_steps(3) == ["materialize"]  # resumed, not redone
    history = _history(cfg)
    try:
        record = history.find("fraud", SIX)
    finally:
        history.dispose()
    assert record is not None and record.state == "failed" and record.triggers == 3
    step = record.step("materialize")
    assert step is not None and step.attempts == 3


def test_a_scheduler_that_lost_its_lease_while_waiting_stops_retrying(landed: Path) -> None:
    cfg = _cfg(landed, **DOWN, BACKLINE_SCHEDULE_MAX_ATTEMPTS="3")
    clock = FakeClock(START)
    store = FileLeaseStore(landed / ".backline/scheduler/lease.json")
    rival = Leaser(store, "rival:2:b", timedelta(minutes=3), clock)

    def paused(seconds: float) -> None:  # a pause far past the ttl; the rival takes over
        clock.now += timedelta(minutes=10)
        assert rival.acquire(lease_key("fraud", SIX)).action == "take over"

    scheduler = Scheduler(cfg, clock=clock, wait=paused, owner="test:1:a")
    ran = scheduler.tick().ran[0]
    assert (ran.ending, ran.attempts, ran.retryable) == ("failed", 2, False)
    assert "lost to rival:2:b" in ran.error and ran.ran_steps(2) == []
    held = store.get(lease_key("fraud", SIX))
    assert held is not None and held.owner == "rival:2:b"  # not released by the loser


def test_a_user_error_fails_once_without_waiting(tmp_path: Path, landing_files: Landing) -> None:
    root = init_project(tmp_path / "proj")  # features.py not applied: validate needs a fix
    land(root, "transactions", landing_files.early)
    land(root, "labels", landing_files.labels)
    clock = FakeClock(START)
    scheduler, waits = _scheduler(_cfg(root, BACKLINE_SCHEDULE_MAX_ATTEMPTS="5"), clock)
    ran = scheduler.tick().ran[0]
    assert (ran.ending, ran.retryable, ran.attempts) == ("failed", False, 1)
    assert "backline features apply" in ran.error
    assert waits.delays == []


def test_a_crashed_schedulers_run_is_taken_over_after_the_ttl_and_resumes(landed: Path) -> None:
    # A scheduler on another host ran 06:00: ingest and validate succeeded, then it died while
    # materialize ran (the store was down on its first attempt). Its record says running.
    down = _cfg(landed, **DOWN, BACKLINE_SCHEDULE_MAX_ATTEMPTS="1")
    run_pipeline(down, logical_time=SIX, until="materialize", clock=FakeClock(START))
    cfg = _cfg(landed, BACKLINE_SCHEDULE_UNTIL="materialize", BACKLINE_SCHEDULE_LEASE_TTL="3m")
    history = _history(cfg)
    crashed = START + timedelta(minutes=5)
    try:
        run, _ = history.claim("fraud", SIX, owner="other-host:4242", now=crashed)
        history.set_step(run.id, "materialize", 2, "running", reason="x", now=crashed, started=True)
    finally:
        history.dispose()
    leases = FileLeaseStore(landed / ".backline/scheduler/lease.json")
    key = lease_key("fraud", SIX)
    ghost = Lease(key, "other-host:4242:dead", crashed + timedelta(minutes=3), crashed)
    assert leases.swap(key, None, ghost)
    # the executor alone cannot tell whether a process on another host is alive
    with pytest.raises(StoreError, match="other-host:4242"):
        run_pipeline(cfg, logical_time=SIX, until="materialize", clock=FakeClock(START))

    clock = FakeClock(crashed + timedelta(minutes=1))
    scheduler, _ = _scheduler(cfg, clock)
    early = scheduler.tick()
    assert [(r.ending, r.holder) for r in early.ran] == [("left alone", ghost)]
    assert early.wake_at > clock.now  # waits for the poll, no busy loop

    clock.now = crashed + timedelta(minutes=3)  # the ghost's lease lapsed
    ran = scheduler.tick().ran[0]
    assert ran.ending == "succeeded" and ran.took_over == ghost
    assert ran.ran_steps() == ["materialize"]  # ingest and validate are not run again
    history = _history(cfg)
    try:
        record = history.find("fraud", SIX)
    finally:
        history.dispose()
    assert record is not None and record.state == "succeeded"
    steps = {s.step: s.attempts for s in record.steps}
    assert steps == {"ingest": 1, "validate": 1, "materialize": 3}
    assert leases.get(key) is None  # released


def test_a_retrain_request_triggers_one_run_and_a_second_inside_the_cooldown_none(
    landed: Path,
) -> None:
    cfg = _cfg(landed, BACKLINE_SCHEDULE_ALERT_COOLDOWN="6h")
    clock = FakeClock(START)
    scheduler, _ = _scheduler(cfg, clock)
    scheduler.tick()  # the 06:00 cron run
    requests = landed / ".backline/monitor/fraud/retrain-requests.jsonl"
    requests.parent.mkdir(parents=True)

    def ask(at: datetime, model: str = "fraud") -> None:
        line = {"model": model, "at": at.isoformat(), "alerts": ["FeatureDrift"]}
        with requests.open("a") as f:
            f.write(json.dumps(line) + "\n")

    asked = datetime(2026, 2, 1, 6, 41, 27, 5, tzinfo=UTC)
    ask(asked)
    clock.now = asked + timedelta(seconds=30)
    report = scheduler.tick()
    assert [(r.trigger, r.logical_time, r.ending) for r in report.ran] == [
        ("alert", datetime(2026, 2, 1, 6, 41, tzinfo=UTC), "succeeded")
    ]
    assert scheduler.tick().ran == ()  # read once

    ask(asked + timedelta(hours=1))
    clock.now = asked + timedelta(hours=1, minutes=1)  # inside the 6 h cooldown
    report = scheduler.tick()
    alerts = [r for r in report.ran if r.trigger == "alert"]
    assert alerts == [] and len(report.suppressed) == 1

    off = _cfg(landed, BACKLINE_SCHEDULE_ALERT_RUNS="false")
    ask(asked + timedelta(hours=8))
    clock.now = asked + timedelta(hours=8)
    report = Scheduler(off, clock=clock, wait=Waits(clock), owner="t:9:z").tick()
    assert [r.trigger for r in report.ran] == ["cron"]


def test_the_loop_waits_for_the_next_due_time_and_gives_its_leases_back(landed: Path) -> None:
    cfg = _cfg(landed, BACKLINE_SCHEDULE_ALERT_RUNS="false", BACKLINE_SCHEDULE_POLL="1h")
    clock = FakeClock(START)
    ticks: list[int] = []

    def wait(seconds: float) -> None:
        ticks.append(round(seconds))
        clock.now += timedelta(seconds=seconds)
        if len(ticks) == 2:
            scheduler.held.add("fraud@left-behind")  # as if stopped inside a run
            raise KeyboardInterrupt

    scheduler = Scheduler(cfg, clock=clock, wait=wait, owner="t:1:a")
    store = FileLeaseStore(landed / ".backline/scheduler/lease.json")
    mine = Lease("fraud@left-behind", "t:1:a", START + timedelta(hours=9), START)
    assert store.swap(mine.key, None, mine)
    reports: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        scheduler.loop(lambda r: reports.append(len(r.ran)))
    assert reports == [1, 1]  # 06:00, then 07:00
    assert 1700 < ticks[0] < 1800  # from about 06:30:0x until 07:00, not a poll of an hour
    assert store.get(mine.key) is None and scheduler.held == set()


def test_a_project_without_a_schedule_is_told_how_to_add_one(landed: Path) -> None:
    cfg = load_config(landed, env={"BACKLINE_SCHEDULE_CRON": ""})
    with pytest.raises(ConfigError, match=r"add a \[schedule\] section"):
        Scheduler(cfg).tick()
    with pytest.raises(ConfigError, match=r"schedule\.until = 'trian'"):
        Scheduler(load_config(landed, env={"BACKLINE_SCHEDULE_UNTIL": "trian"}))


def test_a_sigterm_that_stopped_training_stops_the_scheduler_instead_of_a_retry(
    landed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trainer takes SIGTERM itself (to checkpoint first) and raises TrainingInterrupted,
    which is retryable. Under a scheduler that SIGTERM was meant for the scheduler: it must stop
    as Ctrl-C stops it (no backoff wait, the lease given back), not wait and train again."""
    from dataclasses import replace

    from backline.core.errors import TrainingInterrupted
    from backline.pipeline import steps

    def interrupted(ctx: object) -> dict[str, object]:
        raise TrainingInterrupted("training stopped by SIGTERM at step 7; a checkpoint was kept")

    monkeypatch.setitem(
        steps.STEPS, "materialize", replace(steps.STEPS["materialize"], run=interrupted)
    )
    cfg = _cfg(landed, BACKLINE_SCHEDULE_UNTIL="materialize", BACKLINE_SCHEDULE_MAX_ATTEMPTS="3")
    clock = FakeClock(START)
    scheduler, waits = _scheduler(cfg, clock)
    with pytest.raises(KeyboardInterrupt):
        scheduler.tick()
    assert waits.delays == []  # no retry was waited for
    lease_file = landed / ".backline" / "scheduler" / "lease.json"
    held = json.loads(lease_file.read_text()) if lease_file.exists() else {}
    assert lease_key("fraud", SIX) not in held
    history = _history(cfg)
    try:
        record = history.find("fraud", SIX)
    finally:
        history.dispose()
    assert record is not None and record.state == "failed"
    step = record.step("materialize")
    assert step is not None and step.attempts == 1 and step.retryable
