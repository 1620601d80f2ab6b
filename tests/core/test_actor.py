"""core/actor.py: one fallback order for the audit actor, used by the CLI and the pipeline."""

from __future__ import annotations

import pytest

from backline.core import actor as actor_module
from backline.core.actor import ACTOR_ENV, audit_actor


def _no_login() -> str:
    raise OSError("no login name")


def test_the_explicit_actor_wins() -> None:
    assert audit_actor("alice", env={ACTOR_ENV: "ci-bot"}) == "alice"


def test_then_backline_actor_then_the_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actor_module.getpass, "getuser", lambda: "bob")
    assert audit_actor(None, env={ACTOR_ENV: "ci-bot"}) == "ci-bot"
    assert audit_actor("", env={ACTOR_ENV: " "}) == "bob"  # empty values do not count
    assert audit_actor(None, env={}) == "bob"


def test_unknown_without_a_login_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(actor_module.getpass, "getuser", _no_login)
    assert audit_actor(None, env={}) == "unknown"


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ACTOR_ENV, "scheduler")
    assert audit_actor() == "scheduler"
