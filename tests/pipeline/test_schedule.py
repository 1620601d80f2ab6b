"""The scheduler's pure core: cron times across DST, catch-up, backfill, retries, leases and
alert-triggered runs, all on a fake clock (nothing here sleeps)."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.core.errors import InvalidArgument, NotFoundError, StoreError
from backline.pipeline.leases import (
    FileLeaseStore,
    Lease,
    Leaser,
    MemoryLeaseStore,
    decide,
)
from backline.pipeline.schedule import (
    CronSchedule,
    MemoryRunStore,
    Outcome,
    RetryPolicy,
    RunState,
    backfill,
    decide_tick,
    drive,
)
from backline.pipeline.triggers import AlertInbox, Cooldown, parse_request


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now
        self.waits: list[float] = []

    def __call__(self) -> datetime:
        return self.now

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += timedelta(seconds=seconds)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def iso(times: list[datetime]) -> list[str]:
    return [t.isoformat() for t in times]


# -- cron and DST --------------------------------------------------------------------------


def test_new_york_0230_daily_across_both_transitions() -> None:
    daily = CronSchedule("30 2 * * *", "America/New_York")
    # spring forward (2026-03-08): 02:30 does not exist; it fires when the clock jumps, 03:00 EDT
    assert iso(daily.due(utc(2026, 3, 6), utc(2026, 3, 10))) == [
        "2026-03-06T07:30:00+00:00",
        "2026-03-07T07:30:00+00:00",
        "2026-03-08T07:00:00+00:00",
        "2026-03-09T06:30:00+00:00",
    ]
    # two times inside the gap, or one in it and 03:00 itself, make one run at 03:00 EDT
    for expr in ("0,30 2 * * *", "0 2,3 * * *"):
        gap = CronSchedule(expr, "America/New_York").due(utc(2026, 3, 8, 5), utc(2026, 3, 8, 8))
        assert gap == [utc(2026, 3, 8, 7)], expr
    # fall back (2026-11-01): 02:30 happens once (EST), one run a day
    assert iso(daily.due(utc(2026, 10, 30), utc(2026, 11, 3))) == [
        "2026-10-30T06:30:00+00:00",
        "2026-10-31T06:30:00+00:00",
        "2026-11-01T07:30:00+00:00",
        "2026-11-02T07:30:00+00:00",
    ]


def test_a_repeated_hour_runs_a_fixed_time_job_once_and_an_hourly_job_twice() -> None:
    daily = CronSchedule("30 1 * * *", "America/New_York")
    # 01:30 happens at 05:30 and 06:30 UTC on 2026-11-01: the daily job runs at the first only
    assert iso(daily.due(utc(2026, 10, 31, 12), utc(2026, 11, 2, 12))) == [
        "2026-11-01T05:30:00+00:00",
        "2026-11-02T06:30:00+00:00",
    ]
    assert daily.previous(utc(2026, 11, 1, 6, 45)) == utc(2026, 11, 1, 5, 30)
    assert daily.next(utc(2026, 11, 1, 5, 30)) == utc(2026, 11, 2, 6, 30)
    hourly = CronSchedule("0 * * * *", "America/New_York")
    got = hourly.due(utc(2026, 11, 1, 4), utc(2026, 11, 1, 8))
    assert got == [utc(2026, 11, 1, h) for h in (5, 6, 7, 8)]  # 01:00 EDT, 01:00 EST, ...


def test_london_both_transitions() -> None:
    night = CronSchedule("30 1 * * *", "Europe/London")
    # 2026-03-29: 01:00 GMT jumps to 02:00 BST, 01:30 does not exist -> 02:00 BST = 01:00 UTC
    assert iso(night.due(utc(2026, 3, 28), utc(2026, 3, 31))) == [
        "2026-03-28T01:30:00+00:00",
        "2026-03-29T01:00:00+00:00",
        "2026-03-30T00:30:00+00:00",
    ]
    # 2026-10-25: 01:30 happens twice (BST, then GMT): once
    assert iso(night.due(utc(2026, 10, 24), utc(2026, 10, 27))) == [
        "2026-10-24T00:30:00+00:00",
        "2026-10-25T00:30:00+00:00",
        "2026-10-26T01:30:00+00:00",
    ]
    # 02:30 London exists on both days: nothing special
    late = CronSchedule("30 2 * * *", "Europe/London")
    assert late.due(utc(2026, 3, 29), utc(2026, 3, 29, 23)) == [utc(2026, 3, 29, 1, 30)]
    assert late.due(utc(2026, 10, 25), utc(2026, 10, 25, 23)) == [utc(2026, 10, 25, 2, 30)]
    half = CronSchedule("*/30 * * * *", "Europe/London")
    assert len(half.due(utc(2026, 10, 24, 23), utc(2026, 10, 25, 3))) == 8  # 4 real hours


def test_due_is_half_open_and_previous_next_bracket() -> None:
    s = CronSchedule("0 6 * * *")
    assert s.due(utc(2026, 1, 1, 6), utc(2026, 1, 3, 6)) == [utc(2026, 1, 2, 6), utc(2026, 1, 3, 6)]
    assert s.previous(utc(2026, 1, 2, 6)) == utc(2026, 1, 2, 6)
    assert s.next(utc(2026, 1, 2, 6)) == utc(2026, 1, 3, 6)
    assert s.due(utc(2026, 1, 3), utc(2026, 1, 1)) == []


@pytest.mark.parametrize(
    ("expr", "zone", "named"),
    [
        ("30 25 * * *", "UTC", "30 25 * * *"),
        ("daily", "UTC", "'daily'"),
        ("* * * *", "UTC", "five fields"),
        ("0 0 30 2 *", "UTC", "never fires"),
        ("0 2 * * *", "Europe/Londn", "'Europe/Londn'"),
        ("0 2 * * *", "", "IANA"),
    ],
)
def test_bad_schedules_name_the_value_and_the_fix(expr: str, zone: str, named: str) -> None:
    with pytest.raises(InvalidArgument, match=named) as err:
        CronSchedule(expr, zone)
    assert "\n" not in str(err.value) and ("e.g." in str(err.value) or "Write" in str(err.value))


def test_naive_times_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="no timezone"):
        CronSchedule("@daily").next(datetime(2026, 1, 1))


ZONES = ["UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
EXPRS = ["30 2 * * *", "30 1 * * *", "0 * * * *", "*/20 1-3 * * *", "15 2 * * 0", "0 0 1 * *"]


def croniter_reference(expr: str, zone: str, after: datetime, until: datetime) -> list[datetime]:
    """croniter's own sequence, less the second pass through a repeated hour for a job that
    does not fire every hour (the documented rule), deduplicated by instant."""
    s = CronSchedule(expr, zone)
    it = croniter(expr, after.astimezone(s.zone))
    out: list[datetime] = []
    while True:
        local = it.get_next(datetime)
        t = local.astimezone(UTC)
        if t > until:
            return out
        ambiguous = local.replace(fold=0).utcoffset() != local.utcoffset()
        if local.fold == 1 and ambiguous and not s._every_hour:
            continue
        if t > after and (not out or t != out[-1]):
            out.append(t)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(EXPRS),
    st.sampled_from(ZONES),
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2027, 12, 1)),
    st.integers(min_value=0, max_value=4 * 24 * 60),
)
def test_due_is_increasing_in_range_and_croniters_sequence(
    expr: str, zone: str, start: datetime, minutes: int
) -> None:
    s = CronSchedule(expr, zone)
    after = start.replace(tzinfo=UTC)
    until = after + timedelta(minutes=minutes)
    got = s.due(after, until)
    assert all(a < b for a, b in itertools.pairwise(got))
    assert all(after < t <= until for t in got)
    assert got == croniter_reference(expr, zone, after, until)
    if got:
        assert s.previous(until) == got[-1]
        assert s.next(after) == got[0]


# -- the tick --------------------------------------------------------------------------------


HOURLY = CronSchedule("0 * * * *")


def test_catchup_off_runs_only_the_newest_missed_time_and_reports_the_rest() -> None:
    tick = decide_tick(HOURLY, last_scheduled=utc(2026, 1, 1, 0), now=utc(2026, 1, 1, 4, 10))
    assert tick.run == (utc(2026, 1, 1, 4),)
    assert tick.skipped == (utc(2026, 1, 1, 1), utc(2026, 1, 1, 2), utc(2026, 1, 1, 3))
    assert tick.last_scheduled == utc(2026, 1, 1, 4) and tick.next_due == utc(2026, 1, 1, 5)
    again = decide_tick(HOURLY, last_scheduled=tick.last_scheduled, now=utc(2026, 1, 1, 4, 50))
    assert again.run == () and again.skipped == () and again.last_scheduled == utc(2026, 1, 1, 4)


def test_catchup_on_runs_every_missed_time_in_order_in_bounded_ticks() -> None:
    last, now = utc(2026, 1, 1, 0), utc(2026, 1, 1, 5, 1)
    tick = decide_tick(HOURLY, last_scheduled=last, now=now, catchup=True, max_catchup=3)
    assert tick.run == tuple(utc(2026, 1, 1, h) for h in (1, 2, 3)) and tick.skipped == ()
    rest = decide_tick(HOURLY, last_scheduled=tick.last_scheduled, now=now, catchup=True)
    assert rest.run == (utc(2026, 1, 1, 4), utc(2026, 1, 1, 5))


def test_first_tick_runs_the_newest_time_or_everything_since_start() -> None:
    now = utc(2026, 1, 1, 3, 30)
    assert decide_tick(HOURLY, last_scheduled=None, now=now).run == (utc(2026, 1, 1, 3),)
    since = decide_tick(
        HOURLY, last_scheduled=None, now=now, catchup=True, start=utc(2026, 1, 1, 2)
    )
    assert since.run == (utc(2026, 1, 1, 2), utc(2026, 1, 1, 3))


def test_a_long_outage_lists_a_bounded_number_of_skipped_times() -> None:
    minutely = CronSchedule("* * * * *")
    tick = decide_tick(
        minutely, last_scheduled=utc(2026, 1, 1), now=utc(2027, 1, 1, 0, 0, 30), max_catchup=5
    )
    assert tick.run == (utc(2027, 1, 1),) and tick.skipped_truncated
    assert tick.skipped == tuple(utc(2026, 1, 1, 0, m) for m in range(1, 6))
    exact = decide_tick(
        minutely, last_scheduled=utc(2026, 1, 1), now=utc(2026, 1, 1, 0, 6), max_catchup=5
    )
    assert len(exact.skipped) == 5 and not exact.skipped_truncated


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["0 * * * *", "*/20 1-3 * * *", "30 1 * * *", "30 2 * * *"]),
    st.sampled_from(["UTC", "America/New_York", "Europe/London"]),
    st.datetimes(min_value=datetime(2026, 3, 1), max_value=datetime(2026, 11, 30)),
    st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=8),
    st.booleans(),
)
def test_ticks_account_for_every_due_time_exactly_once(
    expr: str, zone: str, start: datetime, steps: list[int], catchup: bool
) -> None:
    """Over any sequence of ticks, run + skipped is exactly due(start, last now), in order:
    catch-up on skips nothing; catch-up off runs only the newest of each tick."""
    s = CronSchedule(expr, zone)
    origin = now = start.replace(tzinfo=UTC)
    last: datetime | None = origin
    ran: list[datetime] = []
    skipped: list[datetime] = []
    for minutes in steps:
        now = now + timedelta(minutes=minutes)
        cap = 7 if catchup else 1000  # catch-up off lists up to `cap` skipped times
        tick = decide_tick(s, last_scheduled=last, now=now, catchup=catchup, max_catchup=cap)
        assert not tick.skipped_truncated
        assert len(tick.run) <= (7 if catchup else 1)
        assert not (catchup and tick.skipped)
        ran += tick.run
        skipped += tick.skipped
        last = tick.last_scheduled
        assert tick.next_due > now or len(tick.run) == 7
    handled = sorted(ran + skipped)
    assert len(set(handled)) == len(handled)
    assert last is not None and handled == s.due(origin, last)


# -- backfill --------------------------------------------------------------------------------


DAILY = CronSchedule("0 6 * * *")
DAYS = [utc(2026, 2, d, 6) for d in range(1, 8)]
STATES: dict[datetime, RunState] = {
    DAYS[0]: "succeeded",
    DAYS[1]: "failed",
    DAYS[3]: "running",
    DAYS[4]: "succeeded",
    DAYS[5]: "failed",
}


def test_backfill_modes() -> None:
    store = MemoryRunStore(dict(STATES))
    start, end = utc(2026, 2, 1, 6), utc(2026, 2, 7, 6)  # both ends are in the range
    missing = backfill(DAILY, start, end, "missing", store)
    assert [e.logical_time for e in missing.entries] == [DAYS[2], DAYS[6]]
    assert missing.running == (DAYS[3],) and missing.considered == 7
    failed = backfill(DAILY, start, end, "failed", store)
    assert [(e.logical_time, e.force) for e in failed.entries] == [
        (DAYS[1], False),
        (DAYS[5], False),
    ]
    everything = backfill(DAILY, start, end, "all", store)
    assert [e.logical_time for e in everything.entries] == [d for d in DAYS if d != DAYS[3]]
    assert all(e.force for e in everything.entries)
    assert everything.entries[0].previous == "succeeded"


def test_backfill_refuses_a_reversed_or_huge_range_and_an_unknown_mode() -> None:
    store = MemoryRunStore()
    with pytest.raises(InvalidArgument, match="after its end"):
        backfill(DAILY, utc(2026, 2, 7), utc(2026, 2, 1), "missing", store)
    with pytest.raises(InvalidArgument, match="more than 10000 logical times"):
        backfill(CronSchedule("* * * * *"), utc(2026, 1, 1), utc(2026, 2, 1), "all", store)
    with pytest.raises(InvalidArgument, match="Did you mean 'failed'"):
        backfill(DAILY, utc(2026, 2, 1), utc(2026, 2, 7), "faild", store)


@settings(max_examples=80, deadline=None)
@given(
    st.dictionaries(
        st.integers(min_value=0, max_value=20),
        st.sampled_from(["succeeded", "failed", "running"]),
    ),
    st.integers(min_value=0, max_value=20),
    st.integers(min_value=0, max_value=20),
    st.sampled_from(["missing", "failed", "all"]),
)
def test_backfill_never_reruns_what_its_mode_excludes(
    states: dict[int, RunState], a: int, b: int, mode: str
) -> None:
    day0 = utc(2026, 2, 1, 6)
    store = MemoryRunStore({day0 + timedelta(days=k): v for k, v in states.items()})
    lo, hi = sorted((a, b))
    plan = backfill(DAILY, day0 + timedelta(days=lo), day0 + timedelta(days=hi), mode, store)
    assert plan.considered == hi - lo + 1
    planned = [e.logical_time for e in plan.entries]
    assert planned == sorted(planned)
    for e in plan.entries:
        assert store.state(e.logical_time) != "running"
        assert e.previous == store.state(e.logical_time)
        if mode == "missing":
            assert e.previous is None
        if mode == "failed":
            assert e.previous == "failed"
        assert e.force == (mode == "all")
    if mode == "all":
        assert len(planned) + len(plan.running) == plan.considered


# -- retries ---------------------------------------------------------------------------------


def runner(
    outcomes: list[Outcome | Exception],
) -> tuple[Callable[[datetime, int], Outcome], list[tuple[datetime, int]]]:
    calls: list[tuple[datetime, int]] = []

    def run(t: datetime, attempt: int) -> Outcome:
        calls.append((t, attempt))
        got = outcomes[min(attempt, len(outcomes)) - 1]
        if isinstance(got, Exception):
            raise got
        return got

    return run, calls


def test_retryable_failures_back_off_then_succeed() -> None:
    clock = FakeClock(utc(2026, 1, 1))
    transient = Outcome.failure("connection reset", retryable=True)
    run, calls = runner([transient, transient, Outcome.success()])
    policy = RetryPolicy(max_attempts=5, base=10, factor=3, max_delay=60)
    driven = drive(utc(2026, 1, 1), run, policy, clock=clock, wait=clock.wait)
    assert driven.ok and [a.number for a in driven.attempts] == [1, 2, 3]
    assert clock.waits == [10.0, 30.0] and [a.waited for a in driven.attempts] == [0, 10, 30]
    assert driven.attempts[2].started_at == utc(2026, 1, 1, 0, 0, 40)
    assert calls == [(utc(2026, 1, 1), k) for k in (1, 2, 3)]


def test_a_user_error_fails_at_once_and_retries_stop_at_max_attempts() -> None:
    clock = FakeClock(utc(2026, 1, 1))
    run, calls = runner([NotFoundError("feature view 'x' does not exist")])
    driven = drive(utc(2026, 1, 1), run, RetryPolicy(), clock=clock, wait=clock.wait)
    assert len(calls) == 1 and clock.waits == [] and not driven.ok
    assert not driven.outcome.retryable and "feature view" in driven.outcome.error
    run, calls = runner([Outcome.failure("bad config", retryable=False)])
    assert (
        len(drive(utc(2026, 1, 1), run, RetryPolicy(), clock=clock, wait=clock.wait).attempts) == 1
    )
    run, calls = runner([StoreError("registry locked")])  # a 503: transient
    renewals: list[int] = []
    driven = drive(
        utc(2026, 1, 1),
        run,
        RetryPolicy(max_attempts=3, base=1, max_delay=5),
        clock=clock,
        wait=clock.wait,
        on_wait=lambda: renewals.append(1),
    )
    assert len(calls) == 3 and not driven.ok and driven.outcome.retryable and len(renewals) == 2
    run, calls = runner([OSError("disk went away"), Outcome.success()])
    assert drive(utc(2026, 1, 1), run, RetryPolicy(), clock=clock, wait=clock.wait).ok


def test_retry_policy_rejects_nonsense_and_jitter_is_seeded() -> None:
    with pytest.raises(InvalidArgument, match="max_attempts 0 must be at least 1"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(InvalidArgument, match="jitter 2 must lie in"):
        RetryPolicy(jitter=2)
    a = RetryPolicy(max_attempts=6, jitter=0.5, seed=7).delays()
    assert a == RetryPolicy(max_attempts=6, jitter=0.5, seed=7).delays()
    plain = RetryPolicy(max_attempts=6).delays()
    assert all(p / 2 <= j <= p for j, p in zip(a, plain, strict=True)) and a != plain


@settings(max_examples=100, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.floats(min_value=0, max_value=1e4),
    st.floats(min_value=1, max_value=10),
    st.floats(min_value=0, max_value=1e5),
)
def test_retry_delays_are_non_decreasing_and_capped(
    attempts: int, base: float, factor: float, extra: float
) -> None:
    policy = RetryPolicy(max_attempts=attempts, base=base, factor=factor, max_delay=base + extra)
    delays = policy.delays()
    assert len(delays) == attempts - 1
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert all(0 <= d <= policy.max_delay for d in delays)
    if delays:
        assert delays[0] == base


# -- leases ----------------------------------------------------------------------------------


TTL = timedelta(minutes=3)


def test_lease_rule() -> None:
    now = utc(2026, 1, 1, 12)
    held = Lease("k", "a", now + TTL, now)
    assert decide(None, "a", now).action == "take over" and not decide(None, "a", now).resume
    assert decide(held, "a", now).action == "mine"
    assert decide(held, "b", now).action == "leave alone"
    assert decide(held, "b", now + TTL - timedelta(seconds=1)).action == "leave alone"
    late = decide(held, "b", now + TTL)  # expires_at itself is past
    assert late.action == "take over" and late.resume and late.holder == held


def test_renewal_every_third_of_the_ttl_keeps_a_live_holder_and_expiry_lets_another_in() -> None:
    clock = FakeClock(utc(2026, 1, 1, 12))
    store = MemoryLeaseStore()
    a, b = Leaser(store, "a", TTL, clock), Leaser(store, "b", TTL, clock)
    assert a.acquire("run").action == "take over"
    for _ in range(10):  # a renews on time for half an hour: b never gets in
        clock.now += timedelta(minutes=1)
        assert a.renew_if_due("run")
        assert b.acquire("run").action == "leave alone"
    assert store.get("run").renewed_at == clock.now  # type: ignore[union-attr]
    clock.now += timedelta(seconds=59)  # under ttl/3 after a renewal: not due, nothing written
    before = store.get("run")
    assert a.renew_if_due("run") and store.get("run") == before
    clock.now += TTL  # a crashed
    taken = b.acquire("run")
    assert taken.action == "take over" and taken.resume and taken.holder.owner == "a"  # type: ignore[union-attr]
    assert not a.renew_if_due("run") and not a.release("run")  # a came back: not its run
    assert b.acquire("run").action == "mine" and b.release("run") and store.get("run") is None


def test_a_lost_race_reads_as_leave_alone() -> None:
    clock = FakeClock(utc(2026, 1, 1))
    store = MemoryLeaseStore()

    class Racing(MemoryLeaseStore):
        def swap(self, key: str, expected: Lease | None, new: Lease | None) -> bool:
            store.swap(key, None, Lease(key, "other", clock.now + TTL, clock.now))
            return store.swap(key, expected, new)

        def get(self, key: str) -> Lease | None:
            return store.get(key)

    decision = Leaser(Racing(), "me", TTL, clock).acquire("k")
    assert decision.action == "leave alone" and decision.holder.owner == "other"  # type: ignore[union-attr]


def test_a_renewal_that_races_a_takeover_loses_it() -> None:
    clock = FakeClock(utc(2026, 1, 1))
    store = MemoryLeaseStore()
    slow = Leaser(store, "slow", TTL, clock)
    slow.acquire("k")
    clock.now += TTL  # slow hung past its expiry; it renews just as "fast" takes over

    class Racing(MemoryLeaseStore):
        def get(self, key: str) -> Lease | None:
            return store.get(key)

        def swap(self, key: str, expected: Lease | None, new: Lease | None) -> bool:
            Leaser(store, "fast", TTL, clock).acquire(key)
            return store.swap(key, expected, new)

    assert not Leaser(Racing(), "slow", TTL, clock).renew_if_due("k")
    assert store.get("k").owner == "fast"  # type: ignore[union-attr]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("abc"), st.sampled_from(["acquire", "renew", "release"])),
        min_size=1,
        max_size=40,
    ),
    st.lists(st.integers(min_value=0, max_value=200), min_size=40, max_size=40),
)
def test_at_most_one_scheduler_ever_believes_it_holds_a_live_lease(
    ops: list[tuple[str, str]], gaps: list[int]
) -> None:
    clock = FakeClock(utc(2026, 1, 1))
    store = MemoryLeaseStore()
    leasers = {name: Leaser(store, name, TTL, clock) for name in "abc"}
    holding: dict[str, datetime] = {}  # who thinks it holds the run, until when
    for (name, op), gap in zip(ops, gaps, strict=False):
        clock.now += timedelta(seconds=gap)
        leaser = leasers[name]
        if op == "acquire" and leaser.acquire("run").action in ("mine", "take over"):
            holding[name] = store.get("run").expires_at  # type: ignore[union-attr]
        elif op == "renew":
            if leaser.renew_if_due("run"):
                holding[name] = store.get("run").expires_at  # type: ignore[union-attr]
            else:
                holding.pop(name, None)
        elif op == "release":
            leaser.release("run")
            holding.pop(name, None)
        live = [n for n, until in holding.items() if clock.now < until]
        assert len(live) <= 1, (live, store.get("run"))


def _contend(path: str, owner: str, keys: int, now: datetime, start: Any, out: Any) -> None:
    leaser = Leaser(FileLeaseStore(path), owner, TTL, lambda: now)
    start.wait(10)
    won = [k for k in range(keys) if leaser.acquire(f"k{k}").action == "take over"]
    out.put((owner, won))


def _hold_and_die(path: str, now: datetime) -> None:
    Leaser(FileLeaseStore(path), "crasher", TTL, lambda: now).acquire("daily")
    os._exit(0)  # no release, no cleanup: a crash


def test_two_processes_contending_for_file_leases_never_both_win(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / ".backline" / "scheduler" / "lease.json")
    now = utc(2026, 1, 1, 12)
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(path, name, 40, now, start, out)) for name in "ab"]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert set(results["a"]).isdisjoint(results["b"])
    assert sorted(results["a"] + results["b"]) == list(range(40))
    store = FileLeaseStore(path)
    for k in range(40):
        lease = store.get(f"k{k}")
        assert lease is not None and k in results[lease.owner]
    # a holder that dies without releasing: another process's scheduler takes over once expired
    crasher = ctx.Process(target=_hold_and_die, args=(path, now))
    crasher.start()
    crasher.join(timeout=30)
    assert crasher.exitcode == 0 and store.get("daily").owner == "crasher"  # type: ignore[union-attr]
    survivor = Leaser(store, "survivor", TTL, lambda: now + timedelta(minutes=1))
    assert survivor.acquire("daily").action == "leave alone"
    survivor.clock = lambda: now + TTL
    taken = survivor.acquire("daily")
    assert taken.action == "take over" and taken.resume
    assert store.get("daily").owner == "survivor"  # type: ignore[union-attr]


def test_a_damaged_lease_file_is_a_clear_store_error(tmp_path: Path) -> None:
    path = tmp_path / "lease.json"
    path.write_text("{not json")
    with pytest.raises(StoreError, match="delete it"):
        FileLeaseStore(path).get("k")


# -- alert-triggered runs --------------------------------------------------------------------


def request(model: str, at: datetime, *alerts: str) -> str:
    return json.dumps({"model": model, "at": at.isoformat(), "alerts": list(alerts)}) + "\n"


def append(root: Path, model: str, text: str) -> None:
    folder = root / model
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "retrain-requests.jsonl").open("a") as f:
        f.write(text)


def test_each_request_triggers_at_most_one_run_across_restarts(tmp_path: Path) -> None:
    root, state = tmp_path / "monitor", tmp_path / "scheduler" / "alerts.json"
    clock = FakeClock(utc(2026, 1, 1, 12))
    append(root, "fraud", request("fraud", clock.now, "psi_amount"))
    append(root, "churn", request("churn", clock.now, "auc"))
    first = AlertInbox(root, state, cooldown=timedelta(hours=1), clock=clock).poll()
    assert sorted(first.triggered) == ["churn", "fraud"]
    assert first.triggered["fraud"][0].alerts == ("psi_amount",)
    clock.now += timedelta(hours=2)
    restarted = AlertInbox(root, state, cooldown=timedelta(hours=1), clock=clock)
    assert restarted.poll().triggered == {}  # nothing new: nothing runs again
    # half a line (the monitor is writing it) waits; the rest of it completes it
    line = request("fraud", clock.now, "psi_amount")
    append(root, "fraud", line[:20])
    assert restarted.poll().triggered == {}
    append(root, "fraud", line[20:])
    again = AlertInbox(root, state, cooldown=timedelta(hours=1), clock=clock).poll()
    assert list(again.triggered) == ["fraud"] and again.malformed == ()


def test_cooldown_between_alert_runs_survives_a_restart(tmp_path: Path) -> None:
    root, state = tmp_path / "monitor", tmp_path / "alerts.json"
    clock = FakeClock(utc(2026, 1, 1, 12))
    inbox = AlertInbox(root, state, cooldown=timedelta(hours=6), clock=clock)
    append(root, "fraud", request("fraud", clock.now) + request("fraud", clock.now))
    assert len(inbox.poll().triggered["fraud"]) == 2  # two requests, one run
    clock.now += timedelta(hours=5)
    append(root, "fraud", request("fraud", clock.now))
    polled = AlertInbox(root, state, cooldown=timedelta(hours=6), clock=clock).poll()
    assert polled.triggered == {} and len(polled.suppressed) == 1
    clock.now += timedelta(hours=1)
    append(root, "fraud", request("fraud", clock.now))
    assert list(
        AlertInbox(root, state, cooldown=timedelta(hours=6), clock=clock).poll().triggered
    ) == ["fraud"]


def test_malformed_lines_are_skipped_and_reported(tmp_path: Path) -> None:
    root, state = tmp_path / "monitor", tmp_path / "alerts.json"
    clock = FakeClock(utc(2026, 1, 1, 12))
    append(root, "fraud", "{oops\n" + '{"model": "fraud", "at": "2026-01-01T00:00:00"}\n')
    append(root, "fraud", '{"at": "2026-01-01T00:00:00Z"}\n\n' + request("fraud", clock.now))
    (root / "fraud" / "retrain-requests.jsonl").open("ab").write(b"\xff\xfe\n")
    polled = AlertInbox(root, state, cooldown=timedelta(0), clock=clock).poll()
    assert list(polled.triggered) == ["fraud"] and len(polled.malformed) == 4
    reasons = " ".join(m.reason for m in polled.malformed)
    assert "no timezone" in reasons and "'model'" in reasons and "not UTF-8" in reasons
    assert all(m.source.startswith(str(root)) for m in polled.malformed)
    assert AlertInbox(root, state, cooldown=timedelta(0), clock=clock).poll().malformed == ()


def test_a_truncated_requests_file_is_read_from_the_start(tmp_path: Path) -> None:
    root, state = tmp_path / "monitor", tmp_path / "alerts.json"
    clock = FakeClock(utc(2026, 1, 1, 12))
    append(root, "fraud", request("fraud", clock.now) * 3)
    AlertInbox(root, state, cooldown=timedelta(0), clock=clock).poll()
    (root / "fraud" / "retrain-requests.jsonl").write_text(request("fraud", clock.now))
    polled = AlertInbox(root, state, cooldown=timedelta(0), clock=clock).poll()
    assert list(polled.triggered) == ["fraud"] and "shrank" in polled.malformed[0].reason


def test_a_damaged_state_file_is_reported_and_reading_starts_over(tmp_path: Path) -> None:
    root, state = tmp_path / "monitor", tmp_path / "alerts.json"
    clock = FakeClock(utc(2026, 1, 1, 12))
    append(root, "fraud", request("fraud", clock.now))
    AlertInbox(root, state, cooldown=timedelta(0), clock=clock).poll()
    state.write_text("{half")
    inbox = AlertInbox(root, state, cooldown=timedelta(0), clock=clock)
    assert "did not parse" in inbox.notes[0] and list(inbox.poll().triggered) == ["fraud"]


def test_request_parsing_and_cooldown_rules() -> None:
    parsed = parse_request('{"model": "m", "at": "2026-01-01T01:00:00+01:00"}', "x:0")
    assert parsed.at == utc(2026, 1, 1, 0) and parsed.alerts == ()  # type: ignore[union-attr]
    cool = Cooldown(timedelta(hours=1))
    now = utc(2026, 1, 1)
    assert cool.allow("m", now) and not cool.allow("m", now + timedelta(minutes=59))
    assert cool.allow("other", now) and cool.allow("m", now + timedelta(hours=1))
    with pytest.raises(InvalidArgument, match="must not be negative"):
        Cooldown(timedelta(seconds=-1))


# -- the page --------------------------------------------------------------------------------


def test_the_scheduling_page_runs_as_written() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "scheduling.md"
    blocks = re.findall(r"^```python\n(.*?)^```", page.read_text(), re.S | re.M)
    assert len(blocks) >= 7
    namespace: dict[str, object] = {"__name__": "scheduling_doc"}
    for code in blocks:
        exec(compile(code, str(page), "exec"), namespace)
