"""The supervisor behind `backline up`: restarts with backoff, user errors are fatal, clean stop.

Fake processes and a fake clock: nothing is started and nothing sleeps.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

import pytest

from backline.core.errors import InvalidArgument
from backline.pipeline.supervisor import Backoff, Child, Supervisor


class FakeProcess:
    def __init__(self, pid: int, clock: FakeClock, exits_after_term: float | None = 0.0) -> None:
        self.pid = pid
        self.code: int | None = None
        self.clock = clock
        self.terminated_at: float | None = None
        self.killed = False
        self.exits_after_term = exits_after_term

    def poll(self) -> int | None:
        return self.code

    def terminate(self) -> None:
        self.terminated_at = self.clock.now

    def kill(self) -> None:
        self.killed = True
        self.code = -9

    def wait(self, timeout: float | None = None) -> int:
        if self.code is not None:
            return self.code
        stops = self.terminated_at is not None and self.exits_after_term is not None
        if stops and (timeout is None or self.exits_after_term <= timeout):
            assert self.exits_after_term is not None
            self.clock.now += self.exits_after_term
            self.code = 0
            return 0
        if timeout is None:
            raise AssertionError("would wait forever")
        self.clock.now += timeout
        raise subprocess.TimeoutExpired("child", timeout)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Spawner:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.started: list[tuple[str, FakeProcess]] = []
        self.slow_to_stop: set[str] = set()

    def __call__(self, argv: Sequence[str]) -> FakeProcess:
        name = argv[0]
        process = FakeProcess(
            100 + len(self.started),
            self.clock,
            exits_after_term=None if name in self.slow_to_stop else 1.0,
        )
        self.started.append((name, process))
        return process

    def last(self, name: str) -> FakeProcess:
        return [p for n, p in self.started if n == name][-1]


def _supervisor(grace: float = 30.0) -> tuple[Supervisor, Spawner, FakeClock]:
    clock = FakeClock()
    spawn = Spawner(clock)
    children = [Child("server", ("server",)), Child("monitor", ("monitor",))]
    sup = Supervisor(children, spawn=spawn, clock=clock, backoff=Backoff(1, 8, 60), grace=grace)
    return sup, spawn, clock


def test_a_crashing_child_restarts_with_doubling_backoff_capped_and_reset_after_a_stable_run() -> (
    None
):
    sup, spawn, clock = _supervisor()
    assert [e.what for e in sup.start()] == ["started", "started"]
    delays = []
    for _ in range(6):  # crash at once, six times in a row
        spawn.last("monitor").code = 1
        events = sup.step()
        (restart,) = [e for e in events if e.what == "restarting"]
        delays.append(restart.delay)
        assert restart.delay is not None
        clock.now += restart.delay - 0.01
        assert sup.step() == []  # not before its time
        clock.now += 0.01
        assert [e.what for e in sup.step()] == ["started"]
    assert delays == [1, 2, 4, 8, 8, 8]
    assert sup.starts("monitor") == 7 and sup.starts("server") == 1

    clock.now += 61  # a stable run: the next crash starts the backoff over
    spawn.last("monitor").code = -9
    (restart,) = [e for e in sup.step() if e.what == "restarting"]
    assert restart.delay == 1
    assert sup.pid("server") == spawn.last("server").pid  # the other child was left alone


def test_a_user_error_at_start_is_fatal_and_not_restarted() -> None:
    sup, spawn, clock = _supervisor()
    sup.start()
    clock.now += 3
    spawn.last("server").code = 2
    events = sup.step()
    assert [(e.child, e.what, e.code) for e in events] == [("server", "fatal", 2)]
    clock.now += 100
    assert sup.step() == [] and sup.starts("server") == 1
    assert [e.child for e in sup.fatal] == ["server"]


def test_exit_2_after_a_stable_run_is_restarted_like_any_exit() -> None:
    sup, spawn, clock = _supervisor()
    sup.start()
    clock.now += 120
    spawn.last("monitor").code = 2
    assert [e.what for e in sup.step()] == ["exited", "restarting"] and sup.fatal == []


def test_stop_terminates_all_at_once_and_kills_only_what_outlives_the_grace() -> None:
    sup, spawn, clock = _supervisor(grace=10)
    spawn.slow_to_stop.add("monitor")
    sup.start()
    server, monitor = spawn.last("server"), spawn.last("monitor")
    events = sup.stop()
    # both got SIGTERM before the supervisor waited for either
    assert server.terminated_at == 0.0 and monitor.terminated_at == 0.0
    assert [(e.child, e.what) for e in events] == [("server", "stopped"), ("monitor", "killed")]
    assert not server.killed and monitor.killed
    assert clock.now == pytest.approx(10.0)  # one grace for everyone, not one each
    clock.now += 100
    assert sup.step() == []  # nothing restarts after a stop


def test_a_child_waiting_to_restart_is_not_started_by_a_stop() -> None:
    sup, spawn, clock = _supervisor()
    sup.start()
    spawn.last("monitor").code = 1
    sup.step()
    assert [(e.child, e.what) for e in sup.stop()] == [("server", "stopped")]
    clock.now += 100
    assert sup.step() == [] and sup.starts("monitor") == 1


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="must be above 0"):
        Backoff(initial=0)
    with pytest.raises(InvalidArgument, match="names repeat"):
        Supervisor([Child("a", ("x",)), Child("a", ("y",))])
