"""When the pipeline runs: cron times, catch-up, backfill and retries, decided in pure code.

    daily = CronSchedule("30 2 * * *", "America/New_York")
    daily.due(after, until)                      # logical times in (after, until], UTC, in order
    decided = decide_tick(daily, last_scheduled=last, now=clock())
    decided.run, decided.skipped                 # what to run now; what catch-up=off let go
    plan = backfill(daily, start, end, "failed", store)   # which past times to run again
    result = drive(t, run, RetryPolicy(max_attempts=3), clock=clock, wait=time.sleep)

Nothing here sleeps, reads the wall clock or touches torch and data: time comes in as `now`
or as a `clock` callable, and waiting goes through the `wait(seconds)` the caller passes, so
every rule is tested with a fake clock (tests/pipeline/test_schedule.py). The executor owns
the acting side: it implements `RunStore` over its run history and passes a `Runner`.
Leases live in `backline.pipeline.leases`, alert-triggered runs in
`backline.pipeline.triggers`. docs/scheduling.md describes the semantics.

Daylight saving (cron fields are read in the schedule's IANA zone):
- a local time that does not exist (spring forward) fires at the instant the clock jumps:
  "30 2 * * *" in America/New_York runs at 03:00 EDT (07:00 UTC) on 2026-03-08;
- a local time that happens twice (fall back) fires once, at its first occurrence, unless
  the expression fires every hour ("0 * * * *", "*/30 * * * *"): then each real hour runs, so
  the interval between runs stays what it says. "30 1 * * *" in America/New_York runs at
  01:30 EDT (05:30 UTC) on 2026-11-01 only; "30 2 * * *" is not ambiguous there (02:30 EST).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from backline.core.errors import BacklineError, IntegrityError, InvalidArgument
from backline.core.suggest import did_you_mean

Clock = Callable[[], datetime]
"""Returns the current time, tz-aware (tests pass a fake one)."""

RunState = Literal["succeeded", "failed", "running"]
"""The last known state of the run of one logical time; None when it never ran."""

BackfillMode = Literal["missing", "failed", "all"]
BACKFILL_MODES: tuple[str, ...] = ("missing", "failed", "all")

MAX_BACKFILL_RUNS = 10_000
"""A backfill plans at most this many logical times unless the caller raises `max_runs`."""

MAX_CATCHUP_RUNS = 1_000
"""One tick with catch-up on hands at most this many missed times; the next tick goes on."""

_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_EPSILON = timedelta(microseconds=1)


def _utc(value: datetime, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgument(
            f"{what} {value!r} has no timezone. Pass a tz-aware datetime, e.g. "
            "datetime(2026, 3, 1, tzinfo=UTC) (backline keeps every timestamp in UTC)."
        )
    return value.astimezone(UTC)


# -- cron -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression read in an IANA timezone; logical times come out in UTC.

    >>> s = CronSchedule("0 6 * * 1-5", "Europe/London")
    >>> s.next(datetime(2026, 7, 3, 12, tzinfo=UTC)).isoformat()   # Friday noon -> Monday
    '2026-07-06T05:00:00+00:00'
    """

    expr: str
    """Five fields (minute hour day-of-month month day-of-week) or @daily, @hourly and so on."""
    timezone: str = "UTC"
    """IANA zone the fields are read in, e.g. 'Europe/London'."""
    zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _every_hour: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expr = " ".join(str(self.expr).split())
        object.__setattr__(self, "expr", expr)
        fields = expr.split(" ")
        if not (len(fields) == 5 or (len(fields) == 1 and expr.lower() in _ALIASES)):
            raise InvalidArgument(
                f"schedule {self.expr!r} is not a cron expression. Write five fields "
                "'minute hour day-of-month month day-of-week', e.g. '30 2 * * *' for 02:30 "
                f"every day, or one of {', '.join(_ALIASES)}."
            )
        try:
            zone = ZoneInfo(str(self.timezone))
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidArgument(
                f"schedule timezone {self.timezone!r} is not an IANA zone. Write a name such "
                "as 'UTC', 'Europe/London' or 'America/New_York'."
            ) from None
        try:
            hours = croniter(expr).expanded[1]
            croniter(expr, datetime(2000, 1, 1, tzinfo=zone)).get_next(datetime)
        except CroniterError as exc:
            raise InvalidArgument(
                f"schedule {self.expr!r} does not parse or never fires ({exc}). Fix the "
                "field it names, e.g. '30 2 * * *' for 02:30 every day."
            ) from None
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "_every_hour", hours == ["*"] or len(hours) == 24)

    def _keep(self, local: datetime) -> bool:
        # The second pass through a repeated hour (fold=1) runs only for expressions that
        # fire every hour; a fixed-time job runs once on the fall-back day.
        if local.fold == 0 or self._every_hour:
            return True
        first = local.replace(fold=0)
        return first.utcoffset() == local.utcoffset()  # not ambiguous after all

    def _walk(self, start: datetime, forward: bool) -> Iterator[datetime]:
        it = croniter(self.expr, _utc(start, "time").astimezone(self.zone))
        last: datetime | None = None
        while True:
            local = it.get_next(datetime) if forward else it.get_prev(datetime)
            if not self._keep(local):
                continue
            t = local.astimezone(UTC)
            if last is not None and t == last:
                continue  # two wall times mapped to one instant (a spring-forward gap)
            last = t
            yield t

    def next(self, t: datetime) -> datetime:
        """The first logical time strictly after `t`."""
        start = _utc(t, "time")
        return next(x for x in self._walk(start, True) if x > start)

    def previous(self, t: datetime) -> datetime:
        """The last logical time at or before `t`."""
        start = _utc(t, "time")
        return next(x for x in self._walk(start + _EPSILON, False) if x <= start)

    def due(self, after: datetime, until: datetime, *, limit: int | None = None) -> list[datetime]:
        """Logical times in (after, until], in order; more than `limit` of them is an error."""
        lo, hi = _utc(after, "after"), _utc(until, "until")
        out: list[datetime] = []
        if hi <= lo:
            return out
        for t in self._walk(lo, True):
            if t <= lo:
                continue
            if t > hi:
                break
            out.append(t)
            if limit is not None and len(out) > limit:
                raise InvalidArgument(
                    f"schedule {self.expr!r} has more than {limit} logical times between "
                    f"{lo.isoformat()} and {hi.isoformat()}. Narrow the range, or raise the "
                    "limit if you really mean it."
                )
        return out


# -- the tick --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tick:
    """What one scheduler tick decided."""

    run: tuple[datetime, ...]
    """Logical times to run now, oldest first."""
    skipped: tuple[datetime, ...]
    """Missed logical times let go because catch-up is off (report them)."""
    last_scheduled: datetime | None
    """Save this and pass it to the next tick: the newest logical time handled so far."""
    next_due: datetime
    """The next logical time after `last_scheduled`: when the next tick has work."""
    skipped_truncated: bool = False
    """More times were skipped than `skipped` lists (it holds the oldest `max_catchup`)."""


def decide_tick(
    schedule: CronSchedule,
    *,
    last_scheduled: datetime | None,
    now: datetime,
    catchup: bool = False,
    start: datetime | None = None,
    max_catchup: int = MAX_CATCHUP_RUNS,
) -> Tick:
    """Which logical times to run at `now`.

    Catch-up off (the default): only the newest due time runs; older missed ones are skipped
    and listed (the oldest `max_catchup` of them). Catch-up on: every missed time runs, oldest
    first, at most `max_catchup` per tick (the rest come on the next tick). With no `last_scheduled` the history starts at
    `start` (a due time equal to `start` counts) or, without it, at the newest due time.
    """
    now = _utc(now, "now")
    if last_scheduled is not None:
        after = _utc(last_scheduled, "last_scheduled")
    elif start is not None:
        after = _utc(start, "start") - _EPSILON
    else:
        newest = schedule.previous(now)
        return Tick((newest,), (), newest, schedule.next(newest))
    if max_catchup < 1:
        raise InvalidArgument(f"max_catchup {max_catchup} must be at least 1.")
    if not catchup:
        newest = schedule.previous(now)
        if newest <= after:
            return Tick((), (), last_scheduled, schedule.next(after))
        skipped: list[datetime] = []
        for t in schedule._walk(after, True):
            if t <= after:
                continue
            if t >= newest or len(skipped) == max_catchup:
                break
            skipped.append(t)
        truncated = len(skipped) == max_catchup and schedule.next(skipped[-1]) < newest
        return Tick((newest,), tuple(skipped), newest, schedule.next(newest), truncated)
    run: list[datetime] = []
    for t in schedule._walk(after, True):
        if t <= after:
            continue
        if t > now or len(run) == max_catchup:
            break
        run.append(t)
    last = run[-1] if run else last_scheduled
    return Tick(tuple(run), (), last, schedule.next(run[-1] if run else after))


# -- backfill --------------------------------------------------------------------------------


class RunStore(Protocol):
    """What the scheduler needs to know of run history (the executor's registry tables)."""

    def state(self, logical_time: datetime) -> RunState | None:
        """The last state of the run of `logical_time` (UTC), or None if it never ran."""
        ...


@dataclass
class MemoryRunStore:
    """A `RunStore` in a dict, for tests and for planning against a snapshot."""

    states: dict[datetime, RunState] = field(default_factory=dict)

    def state(self, logical_time: datetime) -> RunState | None:
        return self.states.get(_utc(logical_time, "logical_time"))


@dataclass(frozen=True)
class BackfillEntry:
    """One logical time a backfill runs."""

    logical_time: datetime
    previous: RunState | None
    """Its state before the backfill (None: it never ran)."""
    force: bool
    """Ask the executor to rerun steps whose run key already succeeded (mode 'all' only)."""


@dataclass(frozen=True)
class BackfillPlan:
    entries: tuple[BackfillEntry, ...]
    """What to run, oldest first."""
    running: tuple[datetime, ...]
    """Times left out because a run of them is in progress (its lease decides)."""
    considered: int
    """How many logical times the range holds."""


def backfill(
    schedule: CronSchedule,
    start: datetime,
    end: datetime,
    mode: str,
    store: RunStore,
    *,
    max_runs: int = MAX_BACKFILL_RUNS,
) -> BackfillPlan:
    """The logical times in [start, end] to run again.

    mode 'missing': times that never ran. 'failed': times whose last run failed (the executor
    resumes them from the failed step). 'all': every time, with `force` set: run keys make a
    rerun of a succeeded step a no-op unless the executor is told to force it, so this plan
    says so instead of deciding for the executor. A time with a run in progress is never
    planned; it is listed in `running`.
    """
    if mode not in BACKFILL_MODES:
        raise InvalidArgument(
            f"backfill mode {mode!r} is not known.{did_you_mean(mode, BACKFILL_MODES)} "
            f"Use one of: {', '.join(BACKFILL_MODES)}."
        )
    lo, hi = _utc(start, "backfill start"), _utc(end, "backfill end")
    if lo > hi:
        raise InvalidArgument(
            f"backfill start {lo.isoformat()} is after its end {hi.isoformat()}. "
            "Swap them: the start is the older time."
        )
    times = schedule.due(lo - _EPSILON, hi, limit=max_runs)
    entries: list[BackfillEntry] = []
    running: list[datetime] = []
    for t in times:
        state = store.state(t)
        if state == "running":
            running.append(t)
        elif mode == "all" or (mode == "missing" and state is None) or state == mode:
            entries.append(BackfillEntry(t, state, force=mode == "all"))
    return BackfillPlan(tuple(entries), tuple(running), len(times))


# -- retries ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended, as the run callable reports it."""

    ok: bool
    retryable: bool = False
    """Worth another attempt (a lost connection, a locked store); never for a user error."""
    error: str = ""

    @classmethod
    def success(cls) -> Outcome:
        return cls(True)

    @classmethod
    def failure(cls, error: str, *, retryable: bool) -> Outcome:
        return cls(False, retryable, error)

    @classmethod
    def from_exception(cls, exc: BaseException) -> Outcome:
        """A `BacklineError` is the user's to fix (not retried) unless it is the server side's
        (http_status >= 500, e.g. StoreError); an `IntegrityError` (damaged artifact) is not
        retried either; any other exception is taken as transient and retried."""
        if isinstance(exc, BacklineError):
            retry = exc.http_status >= 500 and not isinstance(exc, IntegrityError)
            return cls.failure(str(exc), retryable=retry)
        return cls.failure(repr(exc), retryable=True)


Runner = Callable[[datetime, int], Outcome]
"""run(logical_time, attempt) -> Outcome; attempt counts from 1."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: the delay before attempt k (k >= 2) is
    min(max_delay, base * factor ** (k - 2)), less up to `jitter` of itself at random.

    >>> RetryPolicy(max_attempts=4, base=30, factor=2, max_delay=90).delays()
    [30.0, 60.0, 90.0]
    """

    max_attempts: int = 3
    """Attempts in all, the first included (1: never retry)."""
    base: float = 30.0
    """Seconds before the second attempt."""
    factor: float = 2.0
    """Each further delay is this many times the one before (>= 1)."""
    max_delay: float = 600.0
    """No delay is longer than this many seconds."""
    jitter: float = 0.0
    """Fraction in [0, 1]: each delay is shortened by a random part of itself up to this, so
    schedulers that failed together do not retry together."""
    seed: int | None = None
    """Seeds the jitter's generator: the same seed gives the same delays."""

    def __post_init__(self) -> None:
        problems = []
        if self.max_attempts < 1:
            problems.append(f"max_attempts {self.max_attempts} must be at least 1")
        if self.base < 0:
            problems.append(f"base {self.base} must not be negative")
        if self.factor < 1:
            problems.append(f"factor {self.factor} must be at least 1")
        if self.max_delay < self.base:
            problems.append(f"max_delay {self.max_delay} must be at least base {self.base}")
        if not 0 <= self.jitter <= 1:
            problems.append(f"jitter {self.jitter} must lie in [0, 1]")
        if problems:
            raise InvalidArgument("retry policy: " + "; ".join(problems) + ".")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt` (0 before the first)."""
        if attempt <= 1:
            return 0.0
        exponent = attempt - 2
        # factor ** exponent overflows a float long after it passes any sane max_delay
        raw = self.base * self.factor ** min(exponent, 1024) if self.factor > 1 else self.base
        capped = min(self.max_delay, raw)
        if self.jitter:
            capped -= capped * self.jitter * (rng or random.Random(self.seed)).random()
        return float(capped)

    def delays(self) -> list[float]:
        """The delays before attempts 2..max_attempts, drawn as `drive` draws them."""
        rng = random.Random(self.seed)
        return [self.delay(k, rng) for k in range(2, self.max_attempts + 1)]


@dataclass(frozen=True)
class Attempt:
    number: int
    """1 for the first attempt."""
    waited: float
    """Seconds waited before it."""
    started_at: datetime
    finished_at: datetime
    outcome: Outcome


@dataclass(frozen=True)
class Driven:
    """All attempts made for one logical time."""

    logical_time: datetime
    attempts: tuple[Attempt, ...]

    @property
    def ok(self) -> bool:
        return bool(self.attempts) and self.attempts[-1].outcome.ok

    @property
    def outcome(self) -> Outcome:
        return self.attempts[-1].outcome


def drive(
    logical_time: datetime,
    run: Runner,
    policy: RetryPolicy,
    *,
    clock: Clock,
    wait: Callable[[float], object],
    on_wait: Callable[[], object] | None = None,
) -> Driven:
    """Run one logical time, retrying a retryable failure after the policy's delay.

    An exception from `run` becomes an `Outcome` (see `Outcome.from_exception`). `wait` is
    `time.sleep` in production and a fake that advances a fake clock in tests; `on_wait` is
    called before each wait (renew the lease there).
    """
    t = _utc(logical_time, "logical_time")
    rng = random.Random(policy.seed)
    attempts: list[Attempt] = []
    for number in range(1, policy.max_attempts + 1):
        waited = policy.delay(number, rng)
        if waited:
            if on_wait is not None:
                on_wait()
            wait(waited)
        started = clock()
        try:
            outcome = run(t, number)
        except Exception as exc:  # the run is the executor's: its failure is an outcome
            outcome = Outcome.from_exception(exc)
        attempts.append(Attempt(number, waited, started, clock(), outcome))
        if outcome.ok or not outcome.retryable:
            break
    return Driven(t, tuple(attempts))


def states_from(mapping: Mapping[datetime, RunState]) -> MemoryRunStore:
    """A `MemoryRunStore` from {logical time: state}, times taken to UTC."""
    return MemoryRunStore({_utc(k, "logical_time"): v for k, v in mapping.items()})
