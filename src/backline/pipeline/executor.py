"""Run the pipeline once for a run key: plan, run the stale steps in order, record each one.

    result = run_pipeline(cfg)                                   # logical time: now, to the minute
    result = run_pipeline(cfg, logical_time=t, until="train")    # the same key again is a no-op
    result.run.state, [(s.step, s.state) for s in result.run.steps], result.error

A run's key is (pipeline, logical time); the pipeline is `project.name`. Triggering a key
again never redoes work: a succeeded run is answered from its record, and a failed one resumes
where it failed, because steps that succeeded (in this run or an earlier one) are fresh to the
planner unless their inputs changed since. A step planned only because a step it needs runs
is checked again just before it would start: when that step's run left its inputs as they
were, it is skipped ("early cutoff"), so landing nothing new retrains nothing.

Failures are classified. A user error (a BacklineError other than those below: config, schema,
usage, a gate rejection) fails the step for good: `retryable` is false and only a fix helps.
A store that was down (StoreError), training workers that died or were stopped, and OS
errors (disk, network) are `retryable`: a scheduler may run the key again after a backoff
(`should_retry`). Any other exception is a bug: it is recorded, then raised with its traceback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from backline.core.config import Config
from backline.core.errors import (
    BacklineError,
    InvalidArgument,
    StoreError,
    TrainingFailed,
    TrainingInterrupted,
)
from backline.pipeline.history import RunHistory, RunRecord, StepRecord
from backline.pipeline.plan import Graph, Plan, changed_inputs, plan
from backline.pipeline.steps import GRAPH, STEPS, Context, StepImpl

Clock = Callable[[], datetime]
OnStep = Callable[[str, str], None]
"""on_step(step, event): event is "running", "succeeded", "skipped" or "failed"."""

RETRYABLE_ERRORS: tuple[type[BaseException], ...] = (
    StoreError,
    TrainingFailed,
    TrainingInterrupted,
    OSError,  # disk full, a connection refused or reset, a timeout
)
"""Failures that running the same step again, unchanged, may get past."""


def is_retryable(exc: BaseException) -> bool:
    """Whether a step that failed with `exc` may succeed when simply run again."""
    return isinstance(exc, RETRYABLE_ERRORS)


def should_retry(run: RunRecord, *, max_attempts: int = 3) -> bool:
    """For a scheduler: a failed run whose failed step is retryable and has started fewer
    than `max_attempts` times. Trigger the same key again (after a backoff) to retry it."""
    failed = [s for s in run.steps if s.state == "failed"]
    return run.state == "failed" and any(
        bool(s.retryable) and s.attempts < max_attempts for s in failed
    )


def utc_now() -> datetime:
    return datetime.now(UTC)


def default_logical_time(now: datetime) -> datetime:
    """The logical time `backline run` uses when none is given: now, to the minute, so the
    same command twice within a minute is the same run."""
    return now.astimezone(UTC).replace(second=0, microsecond=0)


@dataclass(frozen=True)
class RunResult:
    """What one trigger of a run key did."""

    run: RunRecord
    """The run as recorded at the end of this trigger."""
    plan: Plan | None
    """What the planner decided; None when the key had already succeeded."""
    already_done: bool
    """The key had succeeded before: nothing ran."""
    resumed: bool
    """The key had run before and failed (or stopped): this trigger continued it."""
    error: BaseException | None = None
    """The failed step's error (a BacklineError or a retryable OS error); None on success."""

    @property
    def failed_step(self) -> StepRecord | None:
        return next((s for s in self.run.steps if s.state == "failed"), None)


def run_pipeline(
    cfg: Config,
    *,
    logical_time: datetime | None = None,
    until: str | None = None,
    clock: Clock = utc_now,
    on_step: OnStep | None = None,
    graph: Graph = GRAPH,
    steps: dict[str, StepImpl] | None = None,
    force: bool = False,
) -> RunResult:
    """Trigger the run (project.name, `logical_time`) and run its stale steps up to `until`.

    `clock` stamps the records (and gives the default logical time); tests pass a fake one.
    `graph` and `steps` replace the pipeline's own for tests of the executor itself. `force`
    runs every step in scope again, even for a key that succeeded (`backfill --mode all`).
    """
    from backline.registry.db import Database

    impls = STEPS if steps is None else steps
    scope = graph.needed_by(until) if until is not None else frozenset(graph.names)
    when = default_logical_time(clock()) if logical_time is None else logical_time
    if when.utcoffset() is None:
        raise InvalidArgument(
            f"logical_time {when.isoformat()} has no time zone; pass a tz-aware time such as "
            "datetime(2026, 1, 20, tzinfo=UTC)."
        )
    when = when.astimezone(UTC)
    pipeline = cfg.project.name
    history = RunHistory(Database(cfg.store_uri("registry")))
    ctx = Context(cfg, pipeline, when)
    try:
        history.prepare()
        found = history.find(pipeline, when)
        done = found is not None and found.state == "succeeded" and _covers(found, scope)
        if done and not force:
            assert found is not None
            return RunResult(found, None, already_done=True, resumed=False)
        run, created = history.claim(pipeline, when, owner=_owner(), now=clock())
        forced = scope if force else frozenset()
        return _execute(history, run, not created, ctx, graph, impls, until, clock, on_step, forced)
    finally:
        ctx.close()
        history.dispose()


def _execute(
    history: RunHistory,
    run: RunRecord,
    resumed: bool,
    ctx: Context,
    graph: Graph,
    impls: dict[str, StepImpl],
    until: str | None,
    clock: Clock,
    on_step: OnStep | None,
    forced: frozenset[str] = frozenset(),
) -> RunResult:
    tell = on_step or (lambda step, event: None)
    position = {name: i for i, name in enumerate(graph.names)}
    scope = [n for n in graph.names if until is None or n in graph.needed_by(until)]
    last: dict[str, dict[str, str] | None] = {}
    for name in graph.names:
        record = history.last_success(ctx.pipeline, name)
        last[name] = None if record is None else dict(record.input_digests)
        if record is not None:
            ctx.outputs[name] = dict(record.outputs)
    try:
        current = {name: impls[name].inputs(ctx) for name in scope}
    except BaseException:  # the stores could not be read: nothing ran, the run is failed
        history.finish(run.id, "failed", now=clock())
        raise
    decided = plan(graph, current, last, until=until, force=forced)
    mine = {s.step: s for s in run.steps}
    for name in decided.fresh:
        if name not in mine or mine[name].state != "succeeded":
            history.set_step(
                run.id,
                name,
                position[name],
                "skipped",
                reason="fresh: inputs unchanged",
                digests=current[name],
                now=clock(),
            )
    for d in decided.steps:
        history.set_step(run.id, d.step, position[d.step], "pending", reason=d.explain())

    for d in decided.steps:
        name = d.step
        try:
            digests = impls[name].inputs(ctx)  # again: the steps before may have changed them
            if (
                d.reason == "upstream runs"
                and last[name] is not None
                and not changed_inputs(digests, last[name])
            ):
                history.set_step(
                    run.id,
                    name,
                    position[name],
                    "skipped",
                    reason="fresh: the steps it needs left its inputs unchanged",
                    digests=digests,
                    now=clock(),
                )
                tell(name, "skipped")
                continue
            history.set_step(
                run.id,
                name,
                position[name],
                "running",
                reason=d.explain(),
                digests=digests,
                now=clock(),
                started=True,
            )
            tell(name, "running")
            outputs = impls[name].run(ctx)
        except BaseException as exc:
            retryable = is_retryable(exc) or isinstance(exc, KeyboardInterrupt)
            history.set_step(
                run.id,
                name,
                position[name],
                "failed",
                reason=d.explain(),
                now=clock(),
                error=exc,
                retryable=retryable,
            )
            history.finish(run.id, "failed", now=clock())
            tell(name, "failed")
            if isinstance(exc, BacklineError | OSError):
                return RunResult(history.get(run.id), decided, False, resumed, error=exc)
            raise  # a bug (or Ctrl-C): recorded, and shown with its traceback
        ctx.outputs[name] = outputs
        history.set_step(
            run.id,
            name,
            position[name],
            "succeeded",
            reason=d.explain(),
            outputs=outputs,
            now=clock(),
        )
        tell(name, "succeeded")
    history.finish(run.id, "succeeded", now=clock())
    return RunResult(history.get(run.id), decided, False, resumed)


def _covers(run: RunRecord, scope: frozenset[str]) -> bool:
    """Whether a run's records settle every step of `scope` (succeeded, or skipped as fresh):
    a run made with --until covers less than the whole pipeline."""
    done = {s.step for s in run.steps if s.state in ("succeeded", "skipped")}
    return scope <= done


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_logical_time(text: str) -> datetime:
    """An ISO time with an offset (2026-01-20T06:00:00Z) or a date (midnight UTC)."""
    from backline.core.durations import parse_utc

    return parse_utc(text, what="--logical-time")


__all__ = [
    "RETRYABLE_ERRORS",
    "RunResult",
    "default_logical_time",
    "is_retryable",
    "parse_logical_time",
    "run_pipeline",
    "should_retry",
]
