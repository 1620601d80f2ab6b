"""`backline pipeline export --airflow DIR`: the pipeline as an Airflow DAG file."""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path
from typing import Any

from backline.cli.common import _project
from backline.core.console import out
from backline.core.errors import UsageError


def add_commands(sub: Any) -> None:
    """Add `pipeline export` to the top-level subparsers."""
    p = sub.add_parser(
        "pipeline",
        help="hand the pipeline to an orchestrator (export an Airflow DAG)",
        description="Hand the pipeline to the orchestrator a team already runs.",
    )
    group = p.add_subparsers(dest="pipeline_command", metavar="COMMAND", required=True)
    e = group.add_parser(
        "export",
        help="write the pipeline as an Airflow DAG file",
        description="Write the pipeline as an Airflow DAG: one task per step, each running "
        "`backline run --until STEP` for the run's logical time, with the schedule and "
        "retries of [schedule] in backline.toml. Re-export after changing backline.toml.",
    )
    e.add_argument(
        "--airflow", required=True, metavar="DIR", help="the DAG folder to write the file into"
    )
    e.add_argument(
        "--backline-command",
        metavar="CMD",
        help="how Airflow's workers run backline (default: the absolute path of this one)",
    )
    e.add_argument(
        "--start",
        metavar="DATE",
        help="the DAG's start date, YYYY-MM-DD (default: today); Airflow runs no logical date "
        "before it, so make it early enough for the backfills you plan",
    )
    e.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from backline.core.config import load_config
    from backline.pipeline.airflow import dag_id, export_airflow, split_command

    cfg = load_config(_project(args))
    command = split_command(args.backline_command) if args.backline_command else None
    start = None
    if args.start is not None:
        try:
            start = date.fromisoformat(args.start)
        except ValueError:
            raise UsageError(
                f"--start {args.start!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-01-01."
            ) from None
    path = export_airflow(cfg, Path(args.airflow), command=command, start=start)
    out.print(f"Wrote {path} (DAG {dag_id(cfg)})", highlight=False, soft_wrap=True)
    return 0
