"""Commands on the project and its data: `init`, `generate`, `ingest`, `sql`, `doctor`."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from backline.cli.common import _open, _positive, _progress, cli_name
from backline.core.console import err, out
from backline.core.errors import BacklineError

if TYPE_CHECKING:
    from backline.project import Project


def add_commands(sub: Any) -> None:
    """Add `init`, `generate`, `ingest` and `sql` to the top-level subparsers."""
    p = sub.add_parser("init", help="create a project folder (the fraud example, or --empty)")
    p.add_argument("dir", metavar="DIR", help="folder to create")
    p.add_argument("--force", action="store_true", help="replace the config of an existing project")
    p.add_argument(
        "--empty",
        action="store_true",
        help="start with no sources or features, for your own data (default: the fraud example)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "generate", help="write synthetic card transactions and late-arriving labels"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="folder for transactions.* and labels.*"
    )
    p.add_argument(
        "--days", type=_positive(int, "--days"), default=30, help="days of activity (30)"
    )
    p.add_argument(
        "--cards", type=_positive(int, "--cards"), default=5000, help="number of cards (5000)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same bytes (0)")
    p.add_argument(
        "--start", default="2026-01-01", help="first day, YYYY-MM-DD in UTC (2026-01-01)"
    )
    p.add_argument(
        "--drift",
        action="append",
        metavar="SPEC",
        help="a change from a date on, e.g. '2026-01-20:amount_scale=1.5;channel_mix=online:0.4' "
        "(repeatable; see docs/generator.md)",
    )
    p.add_argument(
        "--format", choices=("csv", "parquet", "jsonl"), default="csv", help="file format (csv)"
    )
    p.add_argument(
        "--corrupt", type=float, default=0.0, help="fraction of rows given bad values (0)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("ingest", help="validate a file or folder and append it to a source")
    p.add_argument("source", metavar="SOURCE", help="source name from backline.toml")
    p.add_argument(
        "path", metavar="PATH", help="a .csv, .jsonl or .parquet file, or a folder of them"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object with the counts")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("sql", help="query sources, quarantine, batches and batch_stats with DuckDB")
    p.add_argument("query", metavar="QUERY", help='e.g. "SELECT * FROM quarantine LIMIT 5"')
    p.add_argument(
        "--format", choices=("table", "json", "csv"), default="table", help="output format"
    )
    p.add_argument(
        "--max-rows", type=_positive(int, "--max-rows"), default=100, help="rows to print (100)"
    )
    p.set_defaults(func=cmd_sql)


def add_doctor(sub: Any) -> None:
    """Add `doctor` to the top-level subparsers."""
    p = sub.add_parser("doctor", help="check the config and that every store is reachable")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=cmd_doctor)


def cmd_init(args: argparse.Namespace) -> int:
    from backline.core.workspace import init_project

    example = "empty" if args.empty else "fraud"
    target = init_project(Path(args.dir), force=args.force, example=example)
    bl = cli_name()
    if args.empty:
        out.print(f"Created an empty project [bold]{target}[/].")
        out.print(
            f"Next: declare your sources in {Path(args.dir) / 'backline.toml'} (an example is "
            f"commented there), then cd {shlex.quote(args.dir)} && {bl} doctor && "
            f"{bl} ingest SOURCE PATH"
        )
        return 0
    out.print(f"Created project [bold]{target}[/] from the fraud example.")
    out.print(
        f"Next: cd {shlex.quote(args.dir)} && {bl} generate --out data && "
        f"{bl} ingest transactions data/transactions.csv"
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from backline.core.durations import parse_utc
    from backline.data.generator import GeneratorConfig, generate, parse_drift, write_generated

    drift: tuple[Any, ...] = ()
    for spec in args.drift or []:
        drift += parse_drift(spec)
    cfg = GeneratorConfig(
        days=args.days,
        cards=args.cards,
        seed=args.seed,
        start=parse_utc(args.start, what="--start"),
        drift=drift,
        corrupt=args.corrupt,
    )
    with _progress(not args.json and err.is_terminal, "generating") as tick:
        data = generate(cfg, progress=lambda stage, done: tick(stage, 0.8 * done))
        tick("writing files", 0.8)
        paths = write_generated(data, Path(args.out), fmt=args.format)
    labels = data.labels
    fraud = sum(labels.column("is_fraud").to_pylist())
    summary = {
        "transactions": data.transactions.num_rows,
        "labels": labels.num_rows,
        "fraud": fraud,
        "fraud_rate": round(fraud / max(labels.num_rows, 1), 5),
        "files": {k: str(v) for k, v in paths.items()},
    }
    if args.json:
        print(json.dumps(summary))
    else:
        out.print(
            f"Wrote {summary['transactions']:,} transactions and {summary['labels']:,} labels "
            f"({fraud:,} fraud, {summary['fraud_rate']:.2%}) to {args.out}"
        )
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    with (
        _open(args) as project,
        _progress(not args.json and err.is_terminal, f"ingesting {args.source}") as tick,
    ):
        result = project.ingest(args.source, args.path, progress=tick)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    _print_ingest(result)
    return 0


def _print_ingest(result: Any) -> None:
    if result.status == "empty":
        out.print(f"Nothing ingested into source [bold]{result.source}[/]: no rows in the input.")
        for warning in result.warnings:
            out.print(f"  [yellow]note[/] {escape(warning)}")
        return
    if result.status == "already_ingested":
        # the counts are the original batch's: say plainly that nothing new went in
        out.print(
            f"Already ingested as batch [bold]{result.batch_id}[/] into source "
            f"[bold]{result.source}[/] ({result.rows_new} new rows): the same content was committed before, "
            f"with {result.rows_accepted:,} accepted and {result.rows_quarantined:,} "
            "quarantined."
        )
        return
    out.print(f"Committed batch [bold]{result.batch_id}[/] into source [bold]{result.source}[/]")
    out.print(
        f"  rows in {result.rows_in:,} = accepted {result.rows_accepted:,} + "
        f"quarantined {result.rows_quarantined:,}   ({result.seconds:.2f} s)"
    )
    if result.quarantine_reasons:
        table = Table("quarantine reason", "rows", box=None, padding=(0, 2))
        for reason, count in sorted(result.quarantine_reasons.items(), key=lambda kv: -kv[1]):
            table.add_row(reason, f"{count:,}")
        out.print(table)
    for warning in result.warnings:
        out.print(f"  [yellow]note[/] {escape(warning)}")


def cmd_sql(args: argparse.Namespace) -> int:
    with _open(args) as project:
        columns, rows = project.sql_rows(args.query, limit=args.max_rows + 1)
    if not columns:  # nothing to run: an empty query, or a comment alone
        return 0
    truncated = len(rows) > args.max_rows
    rows = rows[: args.max_rows]
    if args.format == "json":
        for row in rows:
            print(json.dumps(dict(zip(columns, row, strict=True)), default=str))
    elif args.format == "csv":
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        table = Table(*columns, show_lines=False)
        for row in rows:
            table.add_row(*("NULL" if v is None else str(v) for v in row))
        out.print(table)
        if truncated:
            out.print(f"(first {args.max_rows} rows; raise --max-rows for more)")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    with _open(args) as project:
        return _doctor(project, args.json)


def _doctor(project: Project, as_json: bool) -> int:
    from backline.core.uris import check_reachable

    cfg = project.config
    checks: list[dict[str, Any]] = []

    def check(name: str, probe: Callable[..., str], *args: Any) -> None:
        try:
            checks.append({"check": name, "ok": True, "detail": probe(*args)})
        except BacklineError as exc:
            checks.append({"check": name, "ok": False, "detail": str(exc)})

    for key in ("offline", "online", "registry"):
        check(f"{key}.uri", check_reachable, cfg.store_uri(key))
    check("offline.catalog", check_reachable, cfg.catalog_uri)
    if _has_section(cfg.root, "train"):
        check("train", _train_ready, project)
    problems = sum(not c["ok"] for c in checks)
    if as_json:
        print(json.dumps({"ok": not problems, "checks": checks, "sources": list(cfg.sources)}))
        return 2 if problems else 0
    for c in checks:
        if c["ok"]:
            out.print(f"[green]ok[/]   {c['check']}  {escape(c['detail'])}")
        else:
            err.print(f"[red]fail[/] {c['check']}: {escape(c['detail'])}")
    out.print(f"sources: {', '.join(cfg.sources) or '(none)'}")
    return 2 if problems else 0


def _has_section(root: Path, name: str) -> bool:
    import tomllib

    from backline.core.config import CONFIG_FILE

    return name in tomllib.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))


def _train_ready(project: Project) -> str:
    """What `backline train` will need from [train]: its sources and its feature service."""
    from backline.core.errors import ConfigError

    cfg = project.config
    t = cfg.train
    known = ", ".join(cfg.sources) or "none are declared"
    for key in ("entity_source", "label_source"):
        name = getattr(t, key)
        if name not in cfg.sources:
            raise ConfigError(
                f"train.{key} = {name!r} names no source in backline.toml (sources: {known}). "
                f"Set train.{key} to a declared source, or declare [sources.{name}]."
            )
    project.definitions.service(t.service)  # a NotFoundError with the known services
    return f"service {t.service}, examples from {t.entity_source}, labels from {t.label_source}"
