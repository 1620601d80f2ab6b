"""`backline up`: the server, the scheduler and the monitor together, under one supervisor.

    backline up                         # serve on 127.0.0.1:8080, schedule, monitor every 60 s
    backline up --port 9000 --no-scheduler

Each runs as its own child process (`backline serve`, `backline schedule`, `backline
monitor`), restarted with backoff when it exits (backline.pipeline.supervisor). Ctrl-C or
SIGTERM stops them all at once: the server drains, the scheduler gives its leases back, the
monitor finishes its pass. A child that stops on a user error (exit 2: bad config, no champion
to serve) is not restarted: `up` stops the others and exits 2.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType
from typing import Any

from backline.cli.common import _positive, _project
from backline.core.console import err, out


def add_commands(sub: Any) -> None:
    """Add `up` to the top-level subparsers."""
    p = sub.add_parser(
        "up",
        help="run the server, the scheduler and the monitor together (restarts, clean stop)",
        description="Run `backline serve`, `backline schedule` (when [schedule] has a cron) and "
        "`backline monitor` as child processes, restart any that exits (with backoff), and "
        "stop them all cleanly on Ctrl-C or SIGTERM.",
    )
    p.add_argument("--host", help="address the server binds (serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="the server's port (serve.port, 8080)")
    p.add_argument("--no-server", action="store_true", help="do not run the server")
    p.add_argument("--no-scheduler", action="store_true", help="do not run the scheduler")
    p.add_argument("--no-monitor", action="store_true", help="do not run the monitor")
    p.add_argument(
        "--monitor-interval",
        type=_positive(float, "--monitor-interval"),
        default=60.0,
        metavar="SECONDS",
        help="seconds between the monitor's passes (60)",
    )
    p.set_defaults(func=cmd_up)


def cmd_up(args: argparse.Namespace) -> int:
    from backline.core.config import load_config
    from backline.core.errors import UsageError
    from backline.pipeline.supervisor import Child, Supervisor

    root = _project(args)
    cfg = load_config(root)
    base = (sys.executable, "-m", "backline.cli", "--project", str(root))
    children = []
    if not args.no_server:
        serve = ["serve"]
        if args.host:
            serve += ["--host", args.host]
        if args.port is not None:
            serve += ["--port", str(args.port)]
        children.append(Child("server", (*base, *serve)))
    if not args.no_scheduler:
        if cfg.schedule.cron:
            children.append(Child("scheduler", (*base, "schedule")))
        else:
            out.print(
                "scheduler: not started ([schedule] cron is empty in backline.toml; see "
                "docs/scheduling.md)",
                highlight=False,
            )
    if not args.no_monitor:
        interval = f"{args.monitor_interval:g}"
        children.append(Child("monitor", (*base, "monitor", "--interval", interval)))
    if not children:
        raise UsageError(
            "nothing to run: every child was left out (--no-server, --no-scheduler, "
            "--no-monitor). Drop one of them."
        )
    grace = cfg.serve.drain_timeout.total_seconds() + 15
    supervisor = Supervisor(children, grace=grace)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        _show(supervisor.start())
        out.print("up: Ctrl-C or SIGTERM stops everything", highlight=False)
        while not stopping and not supervisor.fatal:
            _show(supervisor.step())
            time.sleep(0.2)
        if not stopping:  # a child stopped on a user error: the others stop too
            out.print("up: stopping the others", highlight=False)
        _show(supervisor.stop())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if supervisor.fatal:
        names = ", ".join(e.child for e in supervisor.fatal)
        err.print(
            f"error: {names} stopped on a user error (exit 2; its message is above). Fix it "
            "and run `backline up` again.",
            highlight=False,
            soft_wrap=True,
        )
        return 2
    out.print("up: stopped", highlight=False)
    return 0


def _show(events: list[Any]) -> None:
    for e in events:
        if e.what == "started":
            text = f"{e.child}: started (pid {e.pid})"
        elif e.what == "restarting":
            text = f"{e.child}: restarting in {e.delay:g} s"
        elif e.what in ("exited", "stopped", "killed", "fatal"):
            text = f"{e.child}: {e.what} (pid {e.pid}, exit code {e.code})"
        else:
            text = f"{e.child}: {e.what}"
        out.print(text, highlight=False)
