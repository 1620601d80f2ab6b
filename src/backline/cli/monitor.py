"""`backline monitor`: drift, delayed-label performance and alerts over the prediction log
(backline.pipeline.monitor); `backline monitor report`: the HTML dashboard."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from backline.cli.common import _positive, _project
from backline.core.console import err, out
from backline.core.errors import UsageError


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "monitor",
        help="check new windows of the prediction log for drift and decay; fire alerts",
        description=(
            "Process the windows of the prediction log completed since the last pass: drift of "
            "every input and of the score against the served version's training data, label "
            "coverage and performance as late labels arrive, the [[monitor.alerts]] rules, "
            "notifiers and retraining requests. Without --once it runs a pass every --interval "
            "seconds until Ctrl-C."
        ),
    )
    p.add_argument("--once", action="store_true", help="one pass, then exit")
    p.add_argument("--model", metavar="NAME", help="only this model (default: every model logged)")
    p.add_argument(
        "--interval",
        type=_positive(float, "--interval"),
        default=60.0,
        metavar="SECONDS",
        help="seconds between passes without --once (60)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve the monitor's Prometheus gauges on this port (without --once)",
    )
    p.set_defaults(func=cmd_monitor)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    r = actions.add_parser(
        "report",
        help="write the self-contained HTML monitoring dashboard",
        description="Write the monitoring dashboard (plots of drift, distributions, scores, "
        "latency, labels and alerts) as one HTML file that works offline.",
    )
    r.add_argument("--out", required=True, metavar="FILE", help="where to write the HTML")
    r.add_argument(
        "--model",
        metavar="NAME",
        default=argparse.SUPPRESS,  # keeps `monitor --model NAME report`
        help="the model (default: the first logged)",
    )
    r.set_defaults(func=cmd_report)


def cmd_monitor(args: argparse.Namespace) -> int:
    from backline.core.config import load_config
    from backline.pipeline.monitor import Monitor

    if args.metrics_port is not None and args.once:
        raise UsageError(
            "--metrics-port serves the gauges while the monitor keeps running; leave it out with "
            "--once (the pass ends at once), or drop --once."
        )
    cfg = load_config(_project(args))
    monitor = Monitor(cfg)
    if args.model is not None:
        monitor.check_model(args.model)
    if args.metrics_port is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(
                args.metrics_port, addr="127.0.0.1", registry=monitor.metrics.registry
            )
        except OSError as exc:
            raise UsageError(
                f"--metrics-port {args.metrics_port}: cannot listen on 127.0.0.1:"
                f"{args.metrics_port} ({exc.strerror or exc}). Choose a free port."
            ) from None
        out.print(f"Monitor metrics on http://127.0.0.1:{args.metrics_port}/metrics")
    while True:
        results = monitor.run_once(args.model)
        if not results:
            out.print(
                "No predictions logged yet: start `backline serve` and send it requests, then "
                "run `backline monitor --once` again."
            )
        for result in results:
            _print(result, monitor.folder(result.model))
        if args.once:
            return 0
        time.sleep(args.interval)


def _print(result: Any, folder: Path) -> None:
    windows = result.windows
    if not windows:
        out.print(f"{result.model}: no window completed since the last pass.")
    else:
        drifted = sorted({name for w in windows for name in w.drifted})
        out.print(
            f"{result.model}: {len(windows)} window(s) checked, "
            f"{windows[0].start:%Y-%m-%d %H:%M} to {windows[-1].end:%Y-%m-%d %H:%M} UTC; "
            + (f"drifted: {', '.join(drifted)}" if drifted else "no drift"),
            highlight=False,
            soft_wrap=True,
        )
    for change in result.changes:
        if change.notify:
            feature = change.alert.labels.get("feature")
            which = f"{change.rule}{{feature={feature}}}" if feature else change.rule
            out.print(
                f"  alert {which}: {change.before} -> {change.after} (window ending "
                f"{change.window_end:%Y-%m-%d %H:%M} UTC)",
                highlight=False,
            )
    if result.retrain_requested:
        out.print(
            f"  retraining requested: {folder / 'retrain-requests.jsonl'}",
            highlight=False,
            soft_wrap=True,
        )
    for note in result.notes:
        err.print(f"  note: {note}", highlight=False, soft_wrap=True)


def cmd_report(args: argparse.Namespace) -> int:
    from backline.core.config import load_config
    from backline.pipeline.monitor import Monitor

    target = Path(args.out)
    if not target.parent.is_dir():
        raise UsageError(
            f"--out {args.out}: the folder {target.parent} does not exist; create it first or "
            "write the report elsewhere."
        )
    if target.is_dir():
        raise UsageError(
            f"--out {args.out} is a folder; name a file, e.g. {target / 'report.html'}."
        )
    cfg = load_config(_project(args))
    path = Monitor(cfg).write_report(target, getattr(args, "model", None))
    out.print(f"Wrote {path}", highlight=False, soft_wrap=True)
    return 0
