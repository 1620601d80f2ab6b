"""`backline features ...`: plan, apply, entities, history, materialize, get."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
from pathlib import Path
from typing import Any

from rich.table import Table

from backline.cli.common import _open, _pairs, _positive, _progress, cli_name
from backline.core.console import err, out
from backline.core.errors import UsageError


def add_commands(sub: Any) -> argparse.ArgumentParser:
    """Add the `features` command group to the top-level subparsers; returns its parser."""
    features = sub.add_parser(
        "features", help="feature store: plan, apply, entities, history, materialize, get"
    )
    fsub = features.add_subparsers(dest="features_command", metavar="COMMAND")
    p = fsub.add_parser("plan", help="show what `apply` would record (new, changed, deleted)")
    p.add_argument("--json", action="store_true", help="print the changes as JSON")
    p.set_defaults(func=cmd_features_plan)
    p = fsub.add_parser("apply", help="check features.py against the sources and record versions")
    p.add_argument("--json", action="store_true", help="print the recorded changes as JSON")
    p.set_defaults(func=cmd_features_apply)
    p = fsub.add_parser(
        "entities",
        help="write the entity rows of a training set (keys, time, request fields) from a source",
    )
    p.add_argument("--service", required=True, help="feature service name from features.py")
    p.add_argument("--out", required=True, help="output file, .parquet or .csv")
    p.add_argument(
        "--source", help="source whose events are the rows (default: train.entity_source)"
    )
    p.add_argument("--start", help="first event time to take (UTC ISO time, inclusive)")
    p.add_argument("--end", help="take events before this time (UTC ISO time, exclusive)")
    p.add_argument(
        "--limit", type=_positive(int, "--limit"), help="keep the first N rows (oldest first)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_features_entities)
    p = fsub.add_parser("history", help="build a point-in-time training set")
    p.add_argument(
        "--entities", required=True, help="a .parquet or .csv of join keys and timestamps"
    )
    p.add_argument("--service", required=True, help="feature service name from features.py")
    p.add_argument("--out", required=True, help="output .parquet file")
    p.add_argument(
        "--timestamp-column", default="event_timestamp", help="entity time column (event_timestamp)"
    )
    p.add_argument("--engine", choices=("duckdb", "spark"), help="override features.engine")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_features_history)
    p = fsub.add_parser("materialize", help="write the latest feature values to the online store")
    p.add_argument("--start", help="first event time to consider (UTC ISO time)")
    p.add_argument("--end", help="materialize values as of this time (UTC ISO time)")
    p.add_argument("--incremental", action="store_true", help="apply batches not yet materialized")
    p.add_argument("--view", action="append", help="only this view (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_features_materialize)
    p = fsub.add_parser(
        "get", help="read a service's features for one entity from the online store"
    )
    p.add_argument("--service", required=True, help="feature service name")
    p.add_argument(
        "keys", nargs="+", metavar="KEY=VALUE", help="join keys, e.g. card_id=card_0000123"
    )
    p.add_argument(
        "--request",
        action="append",
        metavar="FIELD=VALUE",
        help="request field for on-demand features",
    )
    p.add_argument(
        "--at",
        help="read as of this time, UTC ISO time such as 2026-02-01T00:00:00Z (default: now)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_features_get)

    def features_help(_args: argparse.Namespace) -> int:
        features.print_help()
        return 2

    features.set_defaults(func=features_help)
    return features


def cmd_features_plan(args: argparse.Namespace) -> int:
    from backline.features.repository import plan

    with _open(args) as project:
        changes = plan(project.config, project.definitions)
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in changes]))
        return 0
    colours = {"create": "green", "update": "yellow", "delete": "red", "unchanged": "dim"}
    table = Table("action", "kind", "name", "version", box=None, padding=(0, 2))
    for c in changes:
        version = c.new_version or ""
        if c.action == "update":
            version = f"{c.old_version} -> {c.new_version}"
        table.add_row(f"[{colours[c.action]}]{c.action}[/]", c.kind, c.name, version)
    out.print(table)
    pending = sum(c.action != "unchanged" for c in changes)
    out.print(
        f"{pending} change(s); `backline features apply` records them."
        if pending
        else "Up to date."
    )
    return 0


def cmd_features_apply(args: argparse.Namespace) -> int:
    with _open(args) as project:
        changes = [c for c in project.apply() if c.action != "unchanged"]
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in changes]))
        return 0
    for c in changes:
        out.print(f"{c.action:<7} {c.kind} {c.name} {c.new_version or ''}")
    out.print(f"Applied {len(changes)} change(s)." if changes else "Nothing to apply; up to date.")
    return 0


def cmd_features_entities(args: argparse.Namespace) -> int:
    from backline.core.durations import parse_utc
    from backline.features.entities import entity_columns, entity_rows, write_entity_rows

    with _open(args) as project:
        cfg, defs = project.config, project.definitions
        out_path = Path(args.out)
        if out_path.suffix.lower() not in (".parquet", ".csv"):
            raise UsageError(f"--out {args.out} must end in .parquet or .csv.")
        cols = entity_columns(cfg, defs, args.service, args.source)
        table = entity_rows(
            cfg,
            defs,
            args.service,
            source=args.source,
            start=parse_utc(args.start, what="--start") if args.start else None,
            end=parse_utc(args.end, what="--end") if args.end else None,
            limit=args.limit,
        )
    write_entity_rows(table, out_path)
    if args.json:
        print(
            json.dumps(
                {
                    "rows": table.num_rows,
                    "source": cols.source,
                    "columns": table.column_names,
                    "out": str(out_path),
                }
            )
        )
        return 0
    out.print(
        f"Wrote {table.num_rows:,} entity rows of {args.service} from source {cols.source} to "
        f"{args.out} (columns: {', '.join(table.column_names)})."
    )
    out.print(
        f"Next: {cli_name()} features history --entities {shlex.quote(args.out)} "
        f"--service {args.service} --out train.parquet"
    )
    return 0


def cmd_features_history(args: argparse.Namespace) -> int:
    from backline.features.history import write_historical_features

    with _open(args) as project:
        defs = project.definitions
        entities = Path(args.entities)
        if not entities.is_file():
            raise UsageError(
                f"--entities {entities} does not exist. Give a .parquet or .csv file of join "
                f"keys and {args.timestamp_column}; `{cli_name()} features entities --service "
                f"{args.service} --out {entities}` makes one from a source's events."
            )
        with _progress(err.is_terminal and not args.json, f"building {args.service}") as tick:
            tick("joining", 0.1)
            rows = write_historical_features(
                project.config,
                defs,
                args.service,
                entities,
                Path(args.out),
                timestamp_column=args.timestamp_column,
                engine=args.engine,
            )
    if args.json:
        print(json.dumps({"rows": rows, "service": args.service, "out": args.out}))
        return 0
    out.print(f"Wrote {rows:,} rows of {args.service} to {args.out}")
    return 0


def cmd_features_materialize(args: argparse.Namespace) -> int:
    from backline.core.durations import parse_utc

    if args.incremental and (args.start or args.end):
        raise UsageError("use either --incremental or --start/--end, not both.")
    if not args.incremental and not args.end:
        raise UsageError(
            "say what to materialize: --incremental, or --end T (and optionally --start T)."
        )
    with _open(args) as project:
        project.definitions  # noqa: B018  (load features.py first: its errors come before --start's)
        with _progress(err.is_terminal, "materializing") as tick:
            result = project.materialize(
                start=parse_utc(args.start, what="--start") if args.start else None,
                end=parse_utc(args.end, what="--end") if args.end else None,
                incremental=args.incremental,
                views=args.view or None,
                progress=tick,
            )
    if args.json:
        print(json.dumps(dataclasses.asdict(result), default=str))
        return 0
    table = Table(
        "view",
        "version",
        "mode",
        "rows read",
        "entities",
        "batches",
        "seconds",
        box=None,
        padding=(0, 2),
    )
    for v in result.views:
        table.add_row(
            v.view,
            v.version,
            v.mode,
            f"{v.rows:,}",
            f"{v.entities:,}",
            str(v.batches),
            f"{v.seconds:.2f}",
        )
    out.print(table)
    out.print(f"Materialized {result.entities:,} entity values in {result.seconds:.2f} s.")
    return 0


def cmd_features_get(args: argparse.Namespace) -> int:
    from backline.core.durations import parse_utc

    with _open(args) as project:
        project.definitions  # noqa: B018  (load features.py first: its errors come before the keys')
        entity = _pairs(args.keys, "", "card_id=card_0000123")
        request: dict[str, Any] = {}
        for key, value in _pairs(args.request or [], "--request ", "amount=12.5").items():
            try:
                request[key] = float(value)
            except ValueError:
                request[key] = value
        at = parse_utc(args.at, what="--at") if args.at else None
        result = project.online_features(args.service, entity, request=request, at=at)
    row = result.to_dicts()[0]
    features = result.columns
    statuses = {name: result.status(0, name) for name in features}
    if args.json:
        ages = dict(zip(features, result.ages[0], strict=True))
        print(
            json.dumps(
                {
                    "service": args.service,
                    "at": result.at.isoformat(),
                    "entity": {k: row[k] for k in result.entity_columns},
                    "values": {name: row[name] for name in features},
                    "status": statuses,
                    "age_seconds": ages,
                },
                default=str,
            )
        )
        return 0
    table = Table("feature", "value", "status", box=None, padding=(0, 2))
    for name, value in row.items():
        table.add_row(name, "NULL" if value is None else str(value), result.status(0, name))
    out.print(table)
    out.print(f"as of {result.at.isoformat()}")
    stored = [s for s in statuses.values() if s]
    if at is None and stored and all(s != "ok" for s in stored):
        out.print(
            "[yellow]note[/] no feature has a current value now: is the data older than the "
            "views' ttl? Pass --at TIME to read as of the time your data is from."
        )
    return 0
