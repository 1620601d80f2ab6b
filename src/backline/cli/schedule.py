"""`backline schedule`: run the pipeline on its [schedule]; `backline backfill`: run past times.

    backline schedule --once                      # one tick: what is due now, then exit
    backline schedule                             # tick, wait for the next due time, for ever
    backline backfill --start 2026-02-01 --end 2026-02-07 --mode failed

`schedule` exits 0 when stopped with Ctrl-C or SIGTERM (its leases are given back first).
`--once` and `backfill` exit 0 when every run succeeded, 1 when one failed with an error that
running it again may get past (a store that was down), 2 on a user error: a bad argument, no
[schedule] section, or a run whose failed step needs a fix (the line says what to fix).
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from backline.cli.common import _project, cli_name
from backline.core.console import err, out
from backline.core.errors import BacklineError, InvalidArgument, UsageError

if TYPE_CHECKING:
    from backline.pipeline.scheduler import Ran, Scheduler, TickReport

_STYLE = {
    "succeeded": "green",
    "already done": "dim",
    "failed": "bold red",
    "left alone": "yellow",
}


def add_commands(sub: Any) -> None:
    """Add `schedule` and `backfill` to the top-level subparsers."""
    p = sub.add_parser(
        "schedule",
        help="run the pipeline on the [schedule] of backline.toml (and when the monitor asks)",
        description=(
            "Run the pipeline at the cron times of [schedule] in backline.toml, and when an "
            "alert rule with retrain = true asks for retraining. Each logical time runs once, "
            "under a lease that another scheduler takes over if this one dies; a failure that "
            "may pass when run again is retried with a backoff. Without --once it keeps "
            "running until Ctrl-C or SIGTERM."
        ),
    )
    p.add_argument("--once", action="store_true", help="tick once: run what is due now, then exit")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser(
        "backfill",
        help="run the scheduled logical times of a past range: missing, failed or all",
        description=(
            "Run the cron times of [schedule] between --start and --end (both included), in "
            "order: the ones that never ran (missing), whose run failed (failed: each resumes "
            "from its failed step), or all of them. A time whose run is in progress elsewhere "
            "is left alone."
        ),
    )
    p.add_argument(
        "--start",
        required=True,
        metavar="TIME",
        help="oldest logical time: ISO-8601 with an offset, or a date",
    )
    p.add_argument("--end", required=True, metavar="TIME", help="newest logical time (included)")
    p.add_argument(
        "--mode",
        default="missing",
        metavar="MODE",
        help="missing (never ran; the default), failed (resume failed runs) or all",
    )
    p.set_defaults(func=cmd_backfill)


def _scheduler(args: argparse.Namespace) -> Scheduler:
    from backline.core.config import load_config
    from backline.pipeline.scheduler import Scheduler

    return Scheduler(load_config(_project(args)))


def _key(ran: Ran) -> str:
    return ran.logical_time.isoformat()


def _describe(ran: Ran) -> str:
    """One line for one logical time."""
    style = _STYLE[ran.ending]
    head = f"{ran.trigger} {_key(ran)}: [{style}]{ran.ending}[/]"
    if ran.ending == "left alone":
        holder = ran.holder
        by = (
            ""
            if holder is None
            else f" (its lease is held by {holder.owner} until {holder.expires_at.isoformat()})"
        )
        return head + escape(by)
    parts: list[str] = []
    if ran.took_over is not None:
        parts.append(f"taken over from {ran.took_over.owner}, whose lease lapsed")
    if ran.attempts > 1:
        parts.append(f"{ran.attempts} attempts")
    steps = list(dict.fromkeys(ran.ran_steps()))
    if steps:
        parts.append("ran " + ", ".join(steps))
    elif ran.ending in ("succeeded", "already done"):
        parts.append("every step fresh" if ran.ending == "succeeded" else "nothing to do")
    text = head + (f" ({escape('; '.join(parts))})" if parts else "")
    if ran.ending == "failed":
        how = "may pass when run again" if ran.retryable else "needs a fix"
        text += f"\n    [red]{escape(ran.error.rstrip('.'))}[/] ({how})"
    return text


def _print_tick(report: TickReport, *, quiet_when_idle: bool) -> None:
    lines = [_describe(r) for r in report.ran]
    if report.skipped:
        first, last = report.skipped[0], report.skipped[-1]
        more = " (and more)" if report.skipped_truncated else ""
        lines.append(
            f"skipped {len(report.skipped)}{more} missed time(s), {first.isoformat()} to "
            f"{last.isoformat()}: catch-up is off. Run them: {cli_name()} backfill --start "
            f"{first.isoformat()} --end {last.isoformat()} --mode missing"
        )
    if report.suppressed:
        lines.append(
            f"{len(report.suppressed)} retraining request(s) inside the alert cooldown: no run"
        )
    for request in report.ignored:
        lines.append(
            f"retraining request for model {request.model!r} ignored: this pipeline trains "
            "pipeline.model only"
        )
    lines += [f"malformed retraining request at {m.source}: {m.reason}" for m in report.malformed]
    lines += list(report.notes)
    if not lines and quiet_when_idle:
        return
    if not report.ran:
        lines.insert(0, "nothing due")
    stamp = report.now.isoformat(timespec="seconds")
    out.print(f"[bold]tick {stamp}[/]", highlight=False)
    for line in lines:
        out.print("  " + line, highlight=False, soft_wrap=True)
    out.print(f"  next cron time {report.next_due.isoformat()}", highlight=False)


def _exit_code(ran: Sequence[Ran]) -> int:
    failed = [r for r in ran if r.ending == "failed"]
    needs_fix = [r for r in failed if not r.retryable]
    if needs_fix:
        raise UsageError(
            f"the run of {_key(needs_fix[0])} failed with an error that needs a fix: "
            f"{needs_fix[0].error.rstrip('.')}. Fix it, then run {cli_name()} backfill --start "
            f"{_key(needs_fix[0])} --end {_key(needs_fix[0])} --mode failed"
        )
    return 1 if failed else 0


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM stops the loop as Ctrl-C does: the leases are given back on the way out."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread (a test calling main() from a thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_schedule(args: argparse.Namespace) -> int:
    scheduler = _scheduler(args)
    schedule = scheduler.require_schedule()
    where = f'"{schedule.expr}" in {schedule.timezone}'
    if args.once:
        try:
            report = scheduler.tick()
        finally:
            scheduler.release_all()
        _print_tick(report, quiet_when_idle=False)
        return _exit_code(report.ran)
    out.print(f"scheduling {escape(where)}; Ctrl-C or SIGTERM stops", highlight=False)
    ticks = [0]

    def show(report: TickReport) -> None:  # the first tick always, then only busy ones
        _print_tick(report, quiet_when_idle=ticks[0] > 0)
        ticks[0] += 1

    with _stop_on_sigterm():
        try:
            scheduler.loop(show)
        except KeyboardInterrupt:
            out.print("stopped; leases given back")
    return 0


def _time(text: str, flag: str) -> datetime:
    from backline.core.durations import parse_utc

    try:
        return parse_utc(text, what=flag)
    except BacklineError as exc:
        raise UsageError(str(exc)) from None


def cmd_backfill(args: argparse.Namespace) -> int:
    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    scheduler = _scheduler(args)
    try:
        plan = scheduler.plan_backfill(start, end, args.mode)
    except InvalidArgument as exc:
        raise UsageError(str(exc)) from None
    span = f"{start.isoformat()} .. {end.isoformat()}"
    for t in plan.running:
        out.print(f"left alone {t.isoformat()}: its run is in progress elsewhere", highlight=False)
    if not plan.entries:
        out.print(
            f"Nothing to backfill: none of the {plan.considered} logical time(s) in {span} is "
            f"{args.mode}.",
            highlight=False,
        )
        return 0
    out.print(
        f"Backfilling {len(plan.entries)} of {plan.considered} logical time(s) in {span} "
        f"({args.mode}), oldest first",
        highlight=False,
    )
    ran: list[Ran] = []
    with _bar(err.is_terminal, len(plan.entries)) as advance:
        for entry in plan.entries:
            advance(entry.logical_time.isoformat())
            ran.append(scheduler.run_one(entry.logical_time, "backfill", force=entry.force))
            out.print("  " + _describe(ran[-1]), highlight=False, soft_wrap=True)
    counts = {e: sum(r.ending == e for r in ran) for e in _STYLE}
    out.print(
        "backfill: " + ", ".join(f"{n} {e}" for e, n in counts.items() if n),
        highlight=False,
    )
    code = _exit_code(ran)
    if code == 1:
        err.print(
            f"[red]error:[/] {counts['failed']} run(s) failed with an error that may pass when "
            f"run again: {cli_name()} backfill --start {args.start} --end {args.end} --mode "
            "failed resumes each from its failed step.",
            highlight=False,
            soft_wrap=True,
        )
    return code


@contextmanager
def _bar(enabled: bool, total: int) -> Iterator[Any]:
    """A progress bar over the runs on stderr; a no-op when stderr is not a terminal."""
    if not enabled:
        yield lambda label: None
        return
    with Progress(
        TextColumn("[bold]backfill[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=total)
        started = [False]

        def advance(label: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=label)

        yield advance
        bar.advance(task)
