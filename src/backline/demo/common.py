"""What the demo's steps share: the options, the calendar, the checks, the gate, the bars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
from rich.markup import escape

from backline.core.console import err, out, progress_bar

if TYPE_CHECKING:
    from backline.core.config import Config
    from backline.pipeline.train import Registered
    from backline.project import Project

START = datetime(2026, 1, 1, tzinfo=UTC)
LABELS_FROM = 30
"""The first day whose transactions are training examples (the days before are history)."""
LABEL_SPEEDUP = 60
"""Labels arrive this many times sooner than in the generator (see the module docstring)."""
DRIFT = "channel_mix=online:0.5;new_fraud=account_takeover:0.5"
MODEL = "fraud"

SETTINGS = """
[serve]
max_batch = 64
max_queue = 512
timeout_ms = 5000
drain_timeout = "10s"
swap_poll = "0.2s"
log_flush = "0.1s"

[monitor]
window = "1d"

[[monitor.alerts]]
name = "FeatureDrift"
metric = "drift.features_drifted"
op = ">="
threshold = 1
for = 3
severity = "warning"
retrain = true
annotations = { summary = "$value features drifted" }
"""
"""Appended to the demo project's backline.toml: daily monitor windows, and a drift alarm that
fires on the fourth drifted day in a row (`for = 3`) and asks for retraining."""


@dataclass(frozen=True)
class DemoOptions:
    root: Path
    seed: int = 7
    cards: int = 600
    """About 1,000 transactions a day."""
    first_served_day: int = 40
    drift_day: int = 45
    days: int = 60
    served_per_day: int = 30
    """Transactions of each day that go through the server (the rest are scored offline)."""
    steps: int = 200
    """Training steps of each model."""
    kill_at: int = 100
    """The checkpoint step right after which the first training run is SIGKILLed."""
    swap_seconds: float = 4.0
    """How long load runs while v2 is promoted and the server swaps to it."""
    progress: bool = False


@dataclass
class Outcome:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    report: Path | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def check(self, claim: str, ok: bool, detail: str = "") -> bool:
        self.checks.append((claim, bool(ok), detail))
        if not ok:
            out.print(f"    [red]check failed[/]: {escape(claim)} ({escape(detail)})")
        return bool(ok)


def day(d: int) -> datetime:
    return START + timedelta(days=d)


@dataclass(frozen=True)
class Data:
    replay: pa.Table
    """Clean transactions of the replayed days, in event-time order."""
    labels: pa.Table
    """Labels of every transaction, with compressed arrival times."""


def gate_and_promote(
    project: Project, reg: Registered, outcome: Outcome, *, first: bool, cfg: Config | None = None
) -> bool:
    """Gate `reg`'s version on the holdout of `cfg` (default: the project's config), and
    promote it when `first`; whether it passed."""
    from backline.pipeline.train import gate

    version = reg.version.version
    record = gate(cfg or project.config, MODEL, version)
    checks = ", ".join(f"{c.name} {'ok' if c.passed else 'FAIL'}" for c in record.checks)
    against = "" if record.champion_version is None else f" against v{record.champion_version}"
    out.print(
        f"{'6. gate       ' if first else '   gate       '} v{version} "
        f"{'passed' if record.passed else '[red]failed[/]'}{against}: {checks}"
    )
    if not record.passed:
        failed = "; ".join(c.detail for c in record.checks if not c.passed)
        out.print(f"               [red]{escape(failed)}[/]")
    outcome.check(f"v{version} passed the gate", record.passed, checks)
    if first and record.passed:
        project.registry.promote(MODEL, version, actor="demo", reason="first model")
        out.print(f"               promoted: {MODEL}@champion is v{version}")
    return record.passed


# -- serving, monitoring, retraining ------------------------------------------------------------


bar = progress_bar
"""The progress bar the commands show (backline.core.console.progress_bar)."""


@contextmanager
def spinner(enabled: bool, label: str) -> Iterator[None]:
    if not enabled:
        yield
        return
    with err.status(label):
        yield
