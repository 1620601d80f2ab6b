"""The `backline` command: parse, call, print.

    backline init fraud-project
    backline generate --out data --days 30 --cards 5000 --seed 7
    backline ingest transactions data/transactions.csv --json
    backline sql "SELECT reason, count(*) FROM quarantine GROUP BY 1"

A user error (a BacklineError) prints one line on stderr and exits with code 2.

The commands live in one module per group: `data` (init, generate, ingest, sql, doctor),
`features`, `train`, `models`, `pipeline` (run, runs), `schedule` (schedule, backfill) and
`demo`; `common` holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.markup import escape

from backline import __version__
from backline.cli import (
    airflow,
    bench,
    data,
    demo,
    features,
    models,
    monitor,
    pipeline,
    schedule,
    serve,
    train,
    up,
)
from backline.cli.common import cli_name
from backline.core.console import err
from backline.core.errors import BacklineError

__all__ = ["build_parser", "cli_name", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backline",
        description="The ML infrastructure behind a model: ingest, features, train, serve, monitor.",
    )
    parser.add_argument("--version", action="version", version=f"backline {__version__}")
    parser.add_argument(
        "--project",
        metavar="DIR",
        help="project folder (default: the nearest one holding backline.toml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    data.add_commands(sub)  # init, generate, ingest, sql
    features.add_commands(sub)
    train.add_commands(sub)
    models.add_commands(sub)
    serve.add_commands(sub)
    monitor.add_commands(sub)
    pipeline.add_commands(sub)  # run, runs
    airflow.add_commands(sub)  # pipeline export --airflow
    schedule.add_commands(sub)  # schedule, backfill
    bench.add_commands(sub)
    data.add_doctor(sub)
    up.add_commands(sub)
    demo.add_commands(sub)
    _accept_project_anywhere(parser)
    return parser


def _accept_project_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let `--project DIR` follow any subcommand too (`backline sql --project p "..."`).

    Each subcommand gets its own --project whose default is SUPPRESS, so leaving it out there
    keeps whatever the top-level one set."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in dict.fromkeys(action.choices.values()):
            if "--project" not in child._option_string_actions:
                child.add_argument(
                    "--project",
                    metavar="DIR",
                    default=argparse.SUPPRESS,
                    help="project folder (default: the nearest one holding backline.toml)",
                )
            _accept_project_anywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except BacklineError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except BrokenPipeError:  # `backline sql ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
