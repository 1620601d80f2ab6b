"""`backline run`: the pipeline once, for one run key; `backline runs`: what ran.

    backline run                                  # logical time: now (UTC, to the minute)
    backline run --until training_set
    backline run --logical-time 2026-01-20T06:00:00Z
    backline runs --limit 5

Exit codes: 0 when every step succeeded or was fresh; 2 when a step failed with a user error
(one line says what to fix); 1 when it failed with an error that running the same command
again may get past (a store that was down).
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from backline.cli.common import _open, _positive, cli_name
from backline.core.console import err, out
from backline.core.errors import BacklineError, InvalidArgument, UsageError

if TYPE_CHECKING:
    from backline.pipeline.history import RunRecord, StepRecord

_STYLE = {
    "succeeded": "green",
    "skipped": "dim",
    "failed": "bold red",
    "running": "yellow",
    "pending": "yellow",
}

_MARK = {"succeeded": "✓", "skipped": "·", "failed": "✗", "pending": "…", "running": "…"}


def add_commands(sub: Any) -> None:
    """Add `run` and `runs` to the top-level subparsers."""
    from backline.pipeline.steps import GRAPH

    steps = ", ".join(GRAPH.names)
    p = sub.add_parser(
        "run",
        help="run the pipeline once: ingest what landed, then every stale step",
        description=(
            f"Run the pipeline's steps ({steps}) for one run key, the project's name and a "
            "logical time. A step runs when its inputs changed since its last successful run, "
            "or a step it needs runs. The same key again does nothing when it succeeded, and "
            "resumes from the failed step when it failed."
        ),
    )
    p.add_argument(
        "--until",
        metavar="STEP",
        help=f"stop after STEP, running only the steps it needs ({steps})",
    )
    p.add_argument(
        "--logical-time",
        metavar="TIME",
        help="the run's logical time: ISO-8601 with an offset, or a date (default: now, to "
        "the minute)",
    )
    p.add_argument("--json", action="store_true", help="print the run record as JSON")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("runs", help="the pipeline's recent runs and their steps")
    p.add_argument(
        "--limit",
        type=_positive(int, "--limit"),
        default=10,
        metavar="N",
        help="newest N runs (10)",
    )
    p.add_argument("--json", action="store_true", help="print the run records as JSON")
    p.set_defaults(func=cmd_runs)


def _until(text: str | None) -> str | None:
    from backline.pipeline.steps import GRAPH

    if text is None:
        return None
    try:
        GRAPH.step(text)
    except InvalidArgument as exc:
        raise UsageError(f"--until {text!r}: {exc}") from None
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from backline.pipeline.executor import parse_logical_time

    until = _until(args.until)
    when = None
    if args.logical_time is not None:
        try:
            when = parse_logical_time(args.logical_time)
        except InvalidArgument as exc:
            raise UsageError(str(exc)) from None
    show = err.is_terminal and not args.json
    status = err.status("planning") if show else nullcontext()
    with _open(args) as project, status as spinner:

        def on_step(step: str, event: str) -> None:
            if spinner is not None and event == "running":
                spinner.update(f"running {step}")

        result = project.run(logical_time=when, until=until, on_step=on_step)
    run = result.run
    if args.json:
        print(json.dumps(_run_json(run) | {"already_done": result.already_done}, default=str))
    else:
        key = f"{run.pipeline} @ {run.logical_time.isoformat()}"
        if result.already_done:
            out.print(
                f"Run {escape(key)} already succeeded ({run.updated_at:%Y-%m-%d %H:%M:%S} UTC); "
                "nothing to do. Another logical time starts a new run: "
                f"{cli_name()} run --logical-time TIME"
            )
        else:
            how = " (resumed)" if result.resumed else ""
            out.print(f"Run {escape(key)}: [{_STYLE[run.state]}]{run.state}[/]{how}")
        out.print(_steps_table(run.steps))
    if result.error is None:
        return 0
    failed = result.failed_step
    assert failed is not None
    if isinstance(result.error, BacklineError) and not failed.retryable:
        raise result.error  # one line, exit 2 (cli.main)
    err.print(
        f"[red]error:[/] step {failed.step} failed: {escape((failed.error or '').rstrip('.'))}. "
        "This may pass "
        f"when run again: {cli_name()} run --logical-time {run.logical_time.isoformat()} "
        "resumes from that step.",
        highlight=False,
        soft_wrap=True,
    )
    return 1


def cmd_runs(args: argparse.Namespace) -> int:
    with _open(args) as project:
        runs = project.runs(limit=args.limit)
    if args.json:
        print(json.dumps([_run_json(r) for r in runs], default=str))
        return 0
    if not runs:
        out.print(f"No pipeline runs yet. Start one: {cli_name()} run")
        return 0
    table = Table(
        "logical time",
        "state",
        "triggers",
        "steps",
        title="pipeline runs",
        caption="✓ succeeded  · skipped (fresh)  ✗ failed  … pending or running",
    )
    for run in runs:
        steps = " ".join(
            f"[{_STYLE.get(s.state, '')}]{s.step}{_MARK.get(s.state, '?')}[/]" for s in run.steps
        )
        table.add_row(
            run.logical_time.isoformat(),
            f"[{_STYLE[run.state]}]{run.state}[/]",
            str(run.triggers),
            steps,
        )
    out.print(table)
    return 0


def _steps_table(steps: tuple[StepRecord, ...]) -> Table:
    table = Table("step", "state", "attempts", "duration", "why / error")
    for s in steps:
        seconds = s.seconds
        took = "" if seconds is None or s.state == "skipped" else f"{seconds:.1f}s"
        note = s.reason
        if s.state == "failed":  # the message itself is printed once, below the table
            note = f"{s.error_code}: {'retryable' if s.retryable else 'needs a fix'}"
        table.add_row(
            s.step,
            f"[{_STYLE.get(s.state, '')}]{s.state}[/]",
            str(s.attempts),
            took,
            escape(note),
        )
    return table


def _run_json(run: RunRecord) -> dict[str, object]:
    return {
        "pipeline": run.pipeline,
        "logical_time": run.logical_time.isoformat(),
        "state": run.state,
        "triggers": run.triggers,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
        "steps": [
            {
                "step": s.step,
                "state": s.state,
                "reason": s.reason,
                "attempts": s.attempts,
                "started_at": None if s.started_at is None else s.started_at.isoformat(),
                "ended_at": None if s.ended_at is None else s.ended_at.isoformat(),
                "seconds": s.seconds,
                "input_digests": dict(s.input_digests),
                "outputs": dict(s.outputs),
                "error": s.error,
                "error_code": s.error_code,
                "retryable": s.retryable,
            }
            for s in run.steps
        ],
    }
