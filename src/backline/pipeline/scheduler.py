"""The scheduler that runs: cron ticks, alert-triggered runs and backfills, through the executor.

    scheduler = Scheduler(cfg)                   # [schedule] of backline.toml; clock and wait
    report = scheduler.tick()                    # injectable: tests pass fakes, nothing sleeps
    report.ran, report.skipped, report.wake_at   # what ran, what catch-up=off let go, when next
    plan = scheduler.plan_backfill(start, end, "failed")
    ran = [scheduler.run_one(e.logical_time, "backfill") for e in plan.entries]
    scheduler.release_all()                      # on Ctrl-C / SIGTERM: give the leases back

The deciding is done by the pure core (`schedule.py`: which times, how many attempts and how
long between them; `leases.py`: who runs a time; `triggers.py`: which retraining requests start
a run); this module acts on it. Each logical time runs under a lease (`FileLeaseStore` in
`.backline/scheduler/lease.json` by default), through `drive`, whose every attempt triggers
the same run key with `run_pipeline`: the executor resumes a failed key from its failed step.
Only a retryable failure (a store that was down, an OS error) gets another attempt.

The lease is the authority over a run a scheduler left behind. The executor refuses to claim a
key that is `running` in another live process, and it cannot tell whether a process on another
host is alive, so a scheduler that crashed there would block its key for good. When a lease
expired unrenewed, the scheduler that takes it over first marks that run failed (its unfinished
steps failed and retryable), then triggers the key: the executor resumes it from there, and
the steps that succeeded are not run again.

State in `.backline/scheduler/`: `state.json` (the newest logical time handled, saved after its
run ended, so a scheduler that dies mid-run decides that time again on restart), `lease.json`
and `alert-requests.json` (offsets in the monitor's request files and the alert cooldown).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from backline.core.config import CONFIG_FILE, Config
from backline.core.errors import (
    ConfigError,
    InvalidArgument,
    StoreError,
    TrainingInterrupted,
)
from backline.core.files import write_text_atomic
from backline.core.workspace import STATE_DIR
from backline.pipeline.executor import (
    RunResult,
    default_logical_time,
    is_retryable,
    run_pipeline,
    utc_now,
)
from backline.pipeline.history import RunHistory
from backline.pipeline.leases import FileLeaseStore, Lease, Leaser, LeaseStore
from backline.pipeline.schedule import (
    BackfillPlan,
    Clock,
    CronSchedule,
    Driven,
    Outcome,
    RetryPolicy,
    RunState,
    backfill,
    decide_tick,
    drive,
)
from backline.pipeline.steps import GRAPH
from backline.pipeline.triggers import AlertInbox, Malformed, RetrainRequest
from backline.registry.db import Database

Trigger = Literal["cron", "alert", "backfill"]
Ending = Literal["succeeded", "already done", "failed", "left alone"]


def lease_key(pipeline: str, logical_time: datetime) -> str:
    """The lease of one run key: 'fraud@2026-03-08T07:00:00+00:00'."""
    return f"{pipeline}@{logical_time.isoformat()}"


@dataclass(frozen=True)
class Ran:
    """What the scheduler did about one logical time."""

    logical_time: datetime
    trigger: Trigger
    ending: Ending
    driven: Driven | None = None
    """Every attempt and its outcome; None when the time was left alone."""
    events: tuple[tuple[int, str, str], ...] = ()
    """(attempt, step, event) as the executor reported them: which steps ran in which attempt."""
    took_over: Lease | None = None
    """The expired lease of a scheduler that stopped renewing it: this run was resumed."""
    holder: Lease | None = None
    """Left alone: the lease of the scheduler that holds the time."""
    retryable: bool = False
    """Failed: whether a later trigger may get past it without a fix."""
    error: str = ""

    @property
    def attempts(self) -> int:
        return 0 if self.driven is None else len(self.driven.attempts)

    def ran_steps(self, attempt: int | None = None) -> list[str]:
        """Steps that started (in one attempt, or in all), in order."""
        return [
            s for a, s, e in self.events if e == "running" and (attempt is None or a == attempt)
        ]


@dataclass(frozen=True)
class TickReport:
    """What one tick did."""

    now: datetime
    ran: tuple[Ran, ...]
    skipped: tuple[datetime, ...]
    """Missed times catch-up=off let go (the oldest ones, when there are many)."""
    skipped_truncated: bool
    next_due: datetime
    """The next cron time."""
    wake_at: datetime
    """When the loop ticks again: the next cron time or the next poll, whichever is first."""
    suppressed: tuple[RetrainRequest, ...] = ()
    """Retraining requests inside the cooldown: consumed, no run."""
    ignored: tuple[RetrainRequest, ...] = ()
    """Requests for a model this project's pipeline does not train."""
    malformed: tuple[Malformed, ...] = ()
    notes: tuple[str, ...] = ()


class HistoryRunStore:
    """The `RunStore` of the pure core, read from the executor's run history.

    A run recorded `running` whose lease expired unrenewed reads as `failed`: its scheduler is
    gone, and taking its lease over resumes it (so `backfill --mode failed` picks it up). A
    `running` run without a lease (a `backline run` in a terminal) stays `running`."""

    def __init__(self, history: RunHistory, pipeline: str, leases: LeaseStore, clock: Clock):
        self.history, self.pipeline, self.leases, self.clock = history, pipeline, leases, clock

    def state(self, logical_time: datetime) -> RunState | None:
        record = self.history.find(self.pipeline, logical_time)
        if record is None:
            return None
        if record.state == "running":
            lease = self.leases.get(lease_key(self.pipeline, record.logical_time))
            if lease is not None and lease.expired(self.clock()):
                return "failed"
        return record.state


def scheduler_owner() -> str:
    """This process, unique even when a pid is reused: 'host:pid:token'."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass
class Scheduler:
    """Runs the project's pipeline on its [schedule]. One instance per scheduler process."""

    cfg: Config
    clock: Clock = utc_now
    wait: Callable[[float], object] = time.sleep
    leases: LeaseStore | None = None
    """Default: FileLeaseStore(<project>/.backline/scheduler/lease.json)."""
    owner: str = field(default_factory=scheduler_owner)
    on_step: Callable[[datetime, str, str], None] | None = None
    """on_step(logical_time, step, event), as the executor reports each step."""
    schedule: CronSchedule | None = field(init=False, default=None)
    policy: RetryPolicy = field(init=False)
    until: str | None = field(init=False)
    held: set[str] = field(init=False, default_factory=set)
    """Keys of the leases this scheduler holds now (given back by `release_all`)."""

    def __post_init__(self) -> None:
        section = self.cfg.schedule
        if section.scheduled:
            try:
                self.schedule = CronSchedule(section.cron, section.timezone)
            except InvalidArgument as exc:
                raise ConfigError(f"{CONFIG_FILE}: [schedule]: {exc}") from None
        self.policy = RetryPolicy(
            max_attempts=section.max_attempts,
            base=section.backoff_base.total_seconds(),
            factor=section.backoff_factor,
            max_delay=section.backoff_max.total_seconds(),
        )
        self.until = section.until or None
        if self.until is not None and self.until not in GRAPH.names:
            raise ConfigError(
                f"{CONFIG_FILE}: schedule.until = {self.until!r} is not a pipeline step. Use "
                f'one of {", ".join(GRAPH.names)}, or until = "" for every step.'
            )
        self.dir = self.cfg.root / STATE_DIR / "scheduler"
        if self.leases is None:
            self.leases = FileLeaseStore(self.dir / "lease.json")
        self.leaser = Leaser(self.leases, self.owner, section.lease_ttl, self.clock)
        self.pipeline = self.cfg.project.name

    # -- the tick ----------------------------------------------------------------------------

    def require_schedule(self) -> CronSchedule:
        if self.schedule is None:
            raise ConfigError(
                f"{CONFIG_FILE} has no schedule: add a [schedule] section to it with a cron "
                'expression, e.g. cron = "0 2 * * *" for 02:00 every day (docs/scheduling.md '
                "lists its other keys)."
            )
        return self.schedule

    def tick(self) -> TickReport:
        """Run what is due now: the newest cron time (every missed one with catch-up on), then
        a run for new retraining requests. Each time runs under its lease, with retries."""
        schedule = self.require_schedule()
        now = self.clock()
        last = self._load_last()
        decided = decide_tick(
            schedule, last_scheduled=last, now=now, catchup=self.cfg.schedule.catchup
        )
        ran: list[Ran] = []
        handled = last
        held_elsewhere = False
        for t in decided.run:
            outcome = self.run_one(t, "cron")
            ran.append(outcome)
            if outcome.ending == "left alone":
                # not saved: decided again on the next poll, when its holder has finished it
                # (then it is already done) or stopped renewing its lease (then taken over)
                held_elsewhere = True
                break
            handled = t
            self._save_last(t)  # after the run: a scheduler dying mid-run decides it again
        suppressed: tuple[RetrainRequest, ...] = ()
        ignored: list[RetrainRequest] = []
        malformed: tuple[Malformed, ...] = ()
        notes: list[str] = []
        if self.cfg.schedule.alert_runs:
            inbox = AlertInbox(
                self.cfg.root / STATE_DIR / "monitor",
                self.dir / "alert-requests.json",
                cooldown=self.cfg.schedule.alert_cooldown,
                clock=self.clock,
            )
            polled = inbox.poll()
            notes += inbox.notes
            suppressed, malformed = polled.suppressed, polled.malformed
            for model, requests in polled.triggered.items():
                if model != self.cfg.pipeline.model:
                    ignored += requests
                    continue
                # the run key as `backline run` at the newest request's time would make it
                when = default_logical_time(max(r.at for r in requests))
                ran.append(self.run_one(when, "alert"))
        after = self.clock()
        next_due = schedule.next(handled if handled is not None else now)
        poll = after + self.cfg.schedule.poll
        # a time that came due while this tick ran is run at once; one held elsewhere, at the poll
        wake_at = poll if held_elsewhere else min(next_due, poll)
        return TickReport(
            now=now,
            ran=tuple(ran),
            skipped=decided.skipped,
            skipped_truncated=decided.skipped_truncated,
            next_due=next_due,
            wake_at=wake_at,
            suppressed=suppressed,
            ignored=tuple(ignored),
            malformed=malformed,
            notes=tuple(notes),
        )

    def loop(self, on_tick: Callable[[TickReport], None]) -> None:
        """Tick, then wait until the next cron time or the next poll, for ever. Stop it with
        KeyboardInterrupt (the CLI turns SIGTERM into one); the leases are given back."""
        try:
            while True:
                report = self.tick()
                on_tick(report)
                delay = (report.wake_at - self.clock()).total_seconds()
                if delay > 0:
                    self.wait(delay)
        finally:
            self.release_all()

    def release_all(self) -> None:
        """Give back every lease this scheduler holds (it is stopping)."""
        for key in sorted(self.held):
            self.leaser.release(key)
        self.held.clear()

    # -- backfill ----------------------------------------------------------------------------

    def plan_backfill(self, start: datetime, end: datetime, mode: str) -> BackfillPlan:
        """The cron times in [start, end] that `mode` (missing, failed, all) runs again."""
        schedule = self.require_schedule()
        history = self._history()
        try:
            store = HistoryRunStore(history, self.pipeline, self._leases(), self.clock)
            return backfill(schedule, start, end, mode, store)
        finally:
            history.dispose()

    # -- one logical time --------------------------------------------------------------------

    def run_one(self, logical_time: datetime, trigger: Trigger, *, force: bool = False) -> Ran:
        """Run one logical time under its lease, retrying retryable failures. `force`: run
        every step again even if the key succeeded (a backfill in mode `all`)."""
        key = lease_key(self.pipeline, logical_time)
        decision = self.leaser.acquire(key)
        if decision.action == "leave alone":
            return Ran(logical_time, trigger, "left alone", holder=decision.holder)
        self.held.add(key)
        events: list[tuple[int, str, str]] = []
        results: list[RunResult] = []
        try:
            took_over = decision.holder if decision.resume else None
            if took_over is not None:
                self._abandon(logical_time, took_over)

            def attempt(t: datetime, number: int) -> Outcome:
                def tell(step: str, event: str) -> None:
                    events.append((number, step, event))
                    self.leaser.renew_if_due(key)
                    if self.on_step is not None:
                        self.on_step(t, step, event)

                if number > 1 and not self.leaser.renew_if_due(key):
                    # we paused past the ttl and another scheduler took the run over: its now
                    holder = self._leases().get(key)
                    who = "another scheduler" if holder is None else holder.owner
                    return Outcome.failure(
                        f"the lease on this run was lost to {who}; it runs it now",
                        retryable=False,
                    )
                try:
                    result = run_pipeline(
                        self.cfg,
                        logical_time=t,
                        until=self.until,
                        clock=self.clock,
                        on_step=tell,
                        # a retry resumes: only the first attempt forces
                        force=force and number == 1,
                    )
                except TrainingInterrupted:
                    raise KeyboardInterrupt from None  # see below
                except Exception as exc:  # the executor recorded it; classify it as it does
                    return Outcome.failure(
                        f"{type(exc).__name__}: {exc}", retryable=is_retryable(exc)
                    )
                results.append(result)
                if isinstance(result.error, TrainingInterrupted):
                    # SIGTERM reached the trainer (it takes the signal to checkpoint first), so
                    # this scheduler is being stopped: stop as Ctrl-C would, leases given back,
                    # instead of retrying; the next scheduler resumes from the checkpoint
                    raise KeyboardInterrupt
                if result.error is None:
                    return Outcome.success()
                failed = result.failed_step
                retry = bool(failed is not None and failed.retryable)
                where = f"step {failed.step}: " if failed is not None else ""
                return Outcome.failure(f"{where}{result.error}", retryable=retry)

            driven = drive(
                logical_time,
                attempt,
                self.policy,
                clock=self.clock,
                wait=self.wait,
                on_wait=lambda: self.leaser.renew_if_due(key),
            )
        finally:
            self.leaser.release(key)
            self.held.discard(key)
        outcome = driven.outcome
        if outcome.ok:
            done = bool(results) and results[-1].already_done and len(driven.attempts) == 1
            ending: Ending = "already done" if done else "succeeded"
        else:
            ending = "failed"
        return Ran(
            driven.logical_time,
            trigger,
            ending,
            driven=driven,
            events=tuple(events),
            took_over=took_over,
            retryable=outcome.retryable,
            error=outcome.error,
        )

    def _abandon(self, logical_time: datetime, lease: Lease) -> None:
        """Mark the run of a scheduler whose lease lapsed failed, so the executor resumes it."""
        history = self._history()
        try:
            record = history.find(self.pipeline, logical_time)
            if record is None or record.state != "running":
                return
            now = self.clock()
            gone = StoreError(
                f"scheduler {lease.owner} stopped renewing its lease on this run (it expired "
                f"{lease.expires_at.isoformat()}); {self.owner} took the run over"
            )
            for step in record.steps:
                if step.state == "running":
                    history.set_step(
                        record.id,
                        step.step,
                        GRAPH.names.index(step.step),
                        "failed",
                        reason=step.reason,
                        now=now,
                        error=gone,
                        retryable=True,
                    )
            history.finish(record.id, "failed", now=now)
        finally:
            history.dispose()

    # -- state -------------------------------------------------------------------------------

    def _history(self) -> RunHistory:
        history = RunHistory(Database(self.cfg.store_uri("registry")))
        history.prepare()
        return history

    def _leases(self) -> LeaseStore:
        assert self.leases is not None  # set in __post_init__
        return self.leases

    @property
    def state_path(self) -> Path:
        return self.dir / "state.json"

    def _load_last(self) -> datetime | None:
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
            return datetime.fromisoformat(raw["last_scheduled"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(
                f"{self.state_path} cannot be read ({exc}). Delete it: the next tick then runs "
                "the newest due time, and `backline backfill` runs older ones."
            ) from None

    def _save_last(self, t: datetime) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.state_path, json.dumps({"last_scheduled": t.isoformat()}))


__all__ = ["HistoryRunStore", "Ran", "Scheduler", "TickReport", "lease_key", "scheduler_owner"]
