"""core/faults.py: the one fault-injection hook and its one format (BACKLINE_TEST_FAULT)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from backline.core import faults
from backline.core.faults import FAULT_ENV, kill_at, maybe_fail, pause_at


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What maybe_fail did, instead of doing it: 'kill' or 'sleep SECONDS'."""
    out: list[str] = []
    monkeypatch.setattr(faults, "_vanish", lambda: out.append("kill"))
    monkeypatch.setattr(faults.time, "sleep", lambda s: out.append(f"sleep {s}"))
    return out


def test_unset_does_nothing(seen: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)
    maybe_fail("ingest_before_commit")
    maybe_fail("checkpoint_before_rename", 10)
    assert seen == []


def test_a_named_point_kills_there_and_nowhere_else(
    seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, kill_at("ingest_mid_move"))
    maybe_fail("ingest_before_commit")
    maybe_fail("ingest_mid_move_later")
    assert seen == []
    maybe_fail("ingest_mid_move")
    assert seen == ["kill"]


def test_point_at_when_kills_only_at_that_value(
    seen: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_ENV, kill_at("checkpoint_after_rename", 100))
    assert os.environ[FAULT_ENV] == "checkpoint_after_rename@100"
    maybe_fail("checkpoint_after_rename", 90)
    maybe_fail("checkpoint_after_rename")
    assert seen == []
    maybe_fail("checkpoint_after_rename", 100)
    assert seen == ["kill"]


def test_pauses_and_kills_combine(seen: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ",".join([pause_at("checkpoint_slow", 0.25), kill_at("checkpoint_before_rename", 20)])
    monkeypatch.setenv(FAULT_ENV, spec)
    maybe_fail("checkpoint_slow")
    maybe_fail("checkpoint_before_rename", 10)
    maybe_fail("checkpoint_before_rename", 20)
    assert seen == ["sleep 0.25", "kill"]


def test_the_kill_is_a_real_sigkill() -> None:
    env = {**os.environ, FAULT_ENV: kill_at("here")}
    code = "from backline.core.faults import maybe_fail; maybe_fail('here'); print('survived')"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
