"""A supervisor for `backline up`: the server, the scheduler and the monitor as child processes.

    supervisor = Supervisor([Child("server", [...]), Child("monitor", [...])])
    supervisor.start()
    while not asked_to_stop:
        supervisor.step()          # reap exits, restart what is due
        time.sleep(0.2)
    codes = supervisor.stop()      # SIGTERM to all; SIGKILL after `grace`

The rules:
- A child that exits is restarted after a backoff: `initial` seconds, doubling up to `most`.
  A child that ran for `stable` seconds or more before it exited starts again from `initial`,
  so a crash once a day does not wait as long as a crash loop does.
- A child that exits with code 2 (a user error: bad config, no champion to serve) before it
  was stable is not restarted: restarting cannot fix it. The supervisor reports it as fatal,
  and `backline up` stops everything and exits 2.
- Stopping sends SIGTERM to every child at once, then waits. The server drains its queue, the
  scheduler gives its leases back and the monitor finishes its pass. A child still running
  after `grace` seconds gets SIGKILL.

Processes and time are injected (`spawn`, `clock`), so the policy is tested without starting
anything or sleeping.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from backline.core.errors import InvalidArgument

USER_ERROR = 2
"""The exit code of a backline command that stopped on a user error (see core.errors)."""


class Process(Protocol):
    """What the supervisor needs of a child process (subprocess.Popen has it all)."""

    pid: int

    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


Spawn = Callable[[Sequence[str]], Process]


def popen(argv: Sequence[str]) -> Process:
    """Start a child that shares the supervisor's terminal output."""
    return subprocess.Popen(list(argv))


@dataclass(frozen=True)
class Backoff:
    """Restart delays: initial, doubling, at most `most`; back to initial after a stable run."""

    initial: float = 1.0
    most: float = 30.0
    stable: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.most:
            raise InvalidArgument(
                f"Backoff: initial = {self.initial} must be above 0 and at most most = {self.most}."
            )
        if self.stable <= 0:
            raise InvalidArgument(f"Backoff: stable = {self.stable} must be above 0.")

    def delay(self, failures: int) -> float:
        """The wait before restarting after the `failures`-th exit in a row (1, 2, ...)."""
        return min(self.most, self.initial * 2.0 ** max(failures - 1, 0))


@dataclass(frozen=True)
class Child:
    """A child to keep running: a name for messages and the command that runs it."""

    name: str
    argv: tuple[str, ...]


@dataclass
class Event:
    """Something the supervisor did or saw, for the caller to print."""

    child: str
    what: str
    """'started', 'exited', 'restarting', 'fatal', 'stopped' or 'killed'."""
    pid: int | None = None
    code: int | None = None
    delay: float | None = None


@dataclass
class _State:
    child: Child
    process: Process | None = None
    started_at: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    starts: int = 0


@dataclass
class Supervisor:
    """Keeps `children` running (see the module docstring)."""

    children: Sequence[Child]
    spawn: Spawn = popen
    clock: Callable[[], float] = time.monotonic
    backoff: Backoff = field(default_factory=Backoff)
    grace: float = 30.0
    fatal: list[Event] = field(default_factory=list)
    """Children that stopped on a user error; `backline up` exits 2 when there are any."""

    def __post_init__(self) -> None:
        names = [c.name for c in self.children]
        if len(set(names)) != len(names):
            raise InvalidArgument(f"Supervisor: child names repeat: {names}.")
        self._states = {c.name: _State(c) for c in self.children}

    def start(self) -> list[Event]:
        """Start every child."""
        return [self._start(state) for state in self._states.values()]

    def pid(self, name: str) -> int | None:
        """The running process id of child `name`, if it runs."""
        process = self._states[name].process
        return process.pid if process is not None and process.poll() is None else None

    def starts(self, name: str) -> int:
        """How many times child `name` was started."""
        return self._states[name].starts

    def step(self) -> list[Event]:
        """Reap the children that exited and start those whose backoff is over."""
        now = self.clock()
        events: list[Event] = []
        for state in self._states.values():
            if state.process is not None:
                code = state.process.poll()
                if code is None:
                    continue
                pid = state.process.pid
                state.process = None
                ran = now - state.started_at
                if code == USER_ERROR and ran < self.backoff.stable:
                    event = Event(state.child.name, "fatal", pid=pid, code=code)
                    self.fatal.append(event)
                    events.append(event)
                    continue
                state.failures = 1 if ran >= self.backoff.stable else state.failures + 1
                delay = self.backoff.delay(state.failures)
                state.restart_at = now + delay
                events.append(Event(state.child.name, "exited", pid=pid, code=code))
                events.append(Event(state.child.name, "restarting", delay=delay))
            elif state.restart_at is not None and now >= state.restart_at:
                events.append(self._start(state))
        return events

    def stop(self) -> list[Event]:
        """SIGTERM to every running child, wait up to `grace` for all, SIGKILL the rest."""
        running = [s for s in self._states.values() if s.process is not None]
        for state in running:
            state.restart_at = None
            assert state.process is not None
            if state.process.poll() is None:
                state.process.terminate()
        deadline = self.clock() + self.grace
        events = []
        for state in running:
            process = state.process
            assert process is not None
            try:
                code = process.wait(timeout=max(deadline - self.clock(), 0.0))
                events.append(Event(state.child.name, "stopped", pid=process.pid, code=code))
            except subprocess.TimeoutExpired:
                process.kill()
                code = process.wait()
                events.append(Event(state.child.name, "killed", pid=process.pid, code=code))
            state.process = None
        for state in self._states.values():
            state.restart_at = None
        return events

    def _start(self, state: _State) -> Event:
        state.process = self.spawn(state.child.argv)
        state.started_at = self.clock()
        state.restart_at = None
        state.starts += 1
        return Event(state.child.name, "started", pid=state.process.pid)
