"""`backline up` as a user runs it: a real server, scheduler and monitor under the supervisor.

The project is the served test project with a cron schedule (the scheduled run goes up to
`validate`, so it is quick). A child killed with SIGKILL comes back; SIGTERM to `up` stops
everything: the server drains and exits 0, the scheduler gives its leases back, and no child
outlives `up`. A child that stops on a user error stops the others, and `up` exits 2.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.http]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, ok: Callable[[], object], timeout: float = 90.0) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ok()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def _up(root: Path, log: Path, env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "backline"
    return subprocess.Popen(
        [str(exe), "--project", str(root), "up", *args],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _pids(text: str, child: str) -> list[int]:
    return [int(p) for p in re.findall(rf"^{child}: started \(pid (\d+)\)", text, re.M)]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    return env | extra


def test_up_restarts_a_killed_child_and_stops_everything_cleanly(
    fresh_project: Path, tmp_path: Path
) -> None:
    port = _free_port()
    log = tmp_path / "up.log"
    env = _env(BACKLINE_SCHEDULE_CRON="*/5 * * * *", BACKLINE_SCHEDULE_UNTIL="validate")
    up = _up(fresh_project, log, env, "--port", str(port), "--monitor-interval", "2")
    try:
        _wait("the server to be ready", lambda: _ready(port))
        text = str(
            _wait(
                "all three children", lambda: (t := log.read_text()).count(": started") >= 3 and t
            )
        )
        (server,), (scheduler,), (monitor,) = (
            _pids(text, "server"),
            _pids(text, "scheduler"),
            _pids(text, "monitor"),
        )

        # the scheduler ran the newest cron time (up to validate) under a lease
        lease_file = fresh_project / ".backline" / "scheduler" / "lease.json"
        _wait("the scheduled run", lambda: "validate" in _runs(fresh_project, env))

        os.kill(monitor, signal.SIGKILL)
        restarted = _wait("the monitor to come back", lambda: _pids(log.read_text(), "monitor")[1:])
        assert isinstance(restarted, list) and restarted[0] != monitor
        assert "monitor: restarting in 1 s" in log.read_text()
        assert _alive(server) and _alive(scheduler)  # the others were left alone

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert re.search(rf"^server: stopped \(pid {server}, exit code 0\)", text, re.M), text
    assert re.search(rf"^scheduler: stopped \(pid {scheduler}, exit code 0\)", text, re.M), text
    assert "killed" not in text
    assert text.rstrip().endswith("up: stopped")
    for pid in (server, scheduler, *restarted):
        assert not _alive(pid)
    held = json.loads(lease_file.read_text()) if lease_file.exists() else {}
    assert not any(str(scheduler) in str(lease.get("owner")) for lease in held.values()), held
    assert not _ready(port)


def _runs(root: Path, env: dict[str, str]) -> str:
    exe = Path(sys.executable).parent / "backline"
    done = subprocess.run(
        [str(exe), "--project", str(root), "runs", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    return done.stdout if done.returncode == 0 else ""


def test_a_child_stopping_on_a_user_error_stops_up_with_exit_2(
    fresh_project: Path, tmp_path: Path
) -> None:
    log = tmp_path / "up.log"
    env = _env(BACKLINE_SERVE_MODEL="nosuchmodel@champion")
    up = _up(fresh_project, log, env, "--port", str(_free_port()), "--no-scheduler")
    try:
        assert up.wait(timeout=120) == 2
    finally:
        if up.poll() is None:
            up.kill()
    text = log.read_text()
    assert re.search(r"^server: fatal \(pid \d+, exit code 2\)", text, re.M), text
    assert "up: stopping the others" in text
    assert re.search(r"^monitor: (stopped|killed)", text, re.M), text
    assert "stopped on a user error" in text
