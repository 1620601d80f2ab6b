"""The `backline` command: parse, call, print.

    backline init fraud-project
    backline generate --out data --days 30 --cards 5000 --seed 7
    backline ingest transactions data/transactions.csv --json
    backline sql "SELECT reason, count(*) FROM quarantine GROUP BY 1"

A user error (a BacklineError) prints one line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from backline import __version__
from backline.core.console import err, out
from backline.core.errors import BacklineError, UsageError

# ---------------------------------------------------------------------------------------------
# helpers


def cli_name() -> str:
    """How to call this very `backline` in a command we print: plain `backline` when that is
    what the shell finds on PATH, else the full path of the running one (say, `make demo` runs
    .venv/bin/backline without an activated venv, and the printed command must still work)."""
    running = Path(sys.argv[0])
    if running.name != "backline":
        return "backline"  # python -m backline.cli, or a test calling main()
    found = shutil.which("backline")
    if found and Path(found).resolve() == running.resolve():
        return "backline"
    return shlex.quote(str(running.resolve()))


def _project(args: argparse.Namespace) -> Path:
    from backline.core.config import find_project

    if args.project is not None:
        return find_project(Path(args.project))
    return find_project()


def _config(args: argparse.Namespace) -> Any:
    from backline.core.config import load_config

    return load_config(_project(args))


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[Callable[[str, float], None]]:
    """A rich progress bar on stderr; a no-op when output is JSON or not a terminal."""
    if not enabled:
        yield lambda stage, done: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=1.0)

        def update(stage: str, done: float) -> None:
            bar.update(task, completed=done, description=f"{label}: {stage}")

        yield update


def _positive(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive, got {text!r}")
        return value

    return convert


# ---------------------------------------------------------------------------------------------
# commands


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
    from backline.data.ingest import ingest

    cfg = _config(args)
    with _progress(not args.json and err.is_terminal, f"ingesting {args.source}") as tick:
        result = ingest(cfg, args.source, Path(args.path), progress=tick)
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
    import duckdb

    from backline.data.offline_store import OfflineStore

    cfg = _config(args)
    store = OfflineStore.open(cfg)
    con = store.connect_duckdb(cfg.sources.values())
    try:
        rel = con.sql(args.query)
    except duckdb.Error as exc:
        raise UsageError(
            f"query failed: {str(exc).splitlines()[0]}. Tables: {', '.join(_tables(cfg))}."
        ) from None
    if rel is None:
        return 0
    columns = rel.columns
    try:
        rows = rel.limit(args.max_rows + 1).fetchall()
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None
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


def _tables(cfg: Any) -> list[str]:
    return [*cfg.sources, "quarantine", "batches", "batch_stats"]


def cmd_train(args: argparse.Namespace) -> int:
    from backline.pipeline.train import train_and_register

    cfg = _config(args)
    released = train_and_register(
        cfg,
        model_name=args.model,
        service=args.service,
        max_steps=args.max_steps,
        resume=args.resume,
        nproc=args.nproc,
        device=args.device,
        progress=err.is_terminal and not args.json,
    )
    result, version, pkg = released.train, released.version, released.package
    if args.json:
        print(
            json.dumps(
                {
                    "model": version.model,
                    "version": version.version,
                    "run_id": result.run_id,
                    "steps": result.steps,
                    "resumed_from": result.resumed_from,
                    "metrics": dataclasses.asdict(result.metrics),
                    "training_set_digest": result.training_set_digest,
                    "served_variant": pkg.served,
                    "already_registered": released.already_registered,
                },
                default=str,
            )
        )
        return 0
    m = result.metrics
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    speed = result.samples_per_second
    rate = "throughput unknown" if speed != speed else f"{speed:,.0f} samples/s"  # NaN
    out.print(
        f"Trained run {result.run_id}: {result.steps} steps on {result.train_examples:,} examples "
        f"({rate}{resumed})"
    )
    out.print(
        f"  holdout ({result.holdout_examples:,} examples, {m.positives} fraud): AUC-PR {m.auc_pr:.4f}, "
        f"ROC-AUC {m.roc_auc:.4f}, recall@{m.target_fpr:.0%} FPR {m.recall_at_fpr:.4f}, ECE {m.ece:.4f}"
    )
    what = (
        "Already registered as" if released.already_registered else "Registered"
    )  # a finished run trained again: same package, same version
    out.print(
        f"{what} [bold]{version.model} v{version.version}[/] (served variant: {pkg.served}). "
        f"Next: {cli_name()} models gate {version.model} {version.version}"
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from backline.core.uris import check_reachable

    cfg = _config(args)
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
        check("train", _train_ready, cfg)
    problems = sum(not c["ok"] for c in checks)
    if args.json:
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


def _train_ready(cfg: Any) -> str:
    """What `backline train` will need from [train]: its sources and its feature service."""
    from backline.core.errors import ConfigError
    from backline.features.repository import load_definitions

    t = cfg.train
    known = ", ".join(cfg.sources) or "none are declared"
    for key in ("entity_source", "label_source"):
        name = getattr(t, key)
        if name not in cfg.sources:
            raise ConfigError(
                f"train.{key} = {name!r} names no source in backline.toml (sources: {known}). "
                f"Set train.{key} to a declared source, or declare [sources.{name}]."
            )
    defs = load_definitions(cfg)
    defs.service(t.service)  # a NotFoundError with the known services
    return f"service {t.service}, examples from {t.entity_source}, labels from {t.label_source}"


def _definitions(args: argparse.Namespace) -> tuple[Any, Any]:
    from backline.features.repository import load_definitions

    cfg = _config(args)
    return cfg, load_definitions(cfg)


def cmd_features_plan(args: argparse.Namespace) -> int:
    from backline.features.repository import plan

    cfg, defs = _definitions(args)
    changes = plan(cfg, defs)
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
    from backline.features.repository import apply

    cfg, defs = _definitions(args)
    changes = [c for c in apply(cfg, defs) if c.action != "unchanged"]
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

    cfg, defs = _definitions(args)
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

    cfg, defs = _definitions(args)
    entities = Path(args.entities)
    if not entities.is_file():
        raise UsageError(
            f"--entities {entities} does not exist. Give a .parquet or .csv file of join keys "
            f"and {args.timestamp_column}; `{cli_name()} features entities --service "
            f"{args.service} --out {entities}` makes one from a source's events."
        )
    with _progress(err.is_terminal and not args.json, f"building {args.service}") as tick:
        tick("joining", 0.1)
        rows = write_historical_features(
            cfg,
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
    from backline.features.materialize import materialize

    if args.incremental and (args.start or args.end):
        raise UsageError("use either --incremental or --start/--end, not both.")
    if not args.incremental and not args.end:
        raise UsageError(
            "say what to materialize: --incremental, or --end T (and optionally --start T)."
        )
    cfg, defs = _definitions(args)
    with _progress(err.is_terminal, "materializing") as tick:
        result = materialize(
            cfg,
            defs,
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
    from backline.features.online import get_online_features

    cfg, defs = _definitions(args)
    entity = _pairs(args.keys, "", "card_id=card_0000123")
    request: dict[str, Any] = {}
    for key, value in _pairs(args.request or [], "--request ", "amount=12.5").items():
        try:
            request[key] = float(value)
        except ValueError:
            request[key] = value
    at = parse_utc(args.at, what="--at") if args.at else None
    result = get_online_features(cfg, defs, args.service, [entity], request_rows=[request], at=at)
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


def _pairs(items: Sequence[str], flag: str, example: str) -> dict[str, str]:
    """KEY=VALUE arguments as a dict; a malformed or repeated key is a usage error."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{flag}{item!r} is not KEY=VALUE; write e.g. {flag}{example}.")
        if key in pairs:
            raise UsageError(
                f"{flag}{key} is given twice ({pairs[key]!r} and {value!r}); give each key once."
            )
        pairs[key] = value
    return pairs


def cmd_demo(args: argparse.Namespace) -> int:
    from backline.core.config import load_config
    from backline.core.workspace import init_project
    from backline.data.generator import GeneratorConfig, generate, write_generated
    from backline.data.ingest import ingest
    from backline.data.offline_store import OfflineStore

    target = Path(args.dir)
    if target.exists() and args.fresh:
        shutil.rmtree(target)
    root = init_project(target, force=True)
    cfg = load_config(root)
    out.print("[bold]backline demo: card-fraud scoring[/]\n" + "─" * 40)
    out.print(f"1. project      {root}")
    gen = GeneratorConfig(days=args.days, cards=args.cards, seed=args.seed, corrupt=0.002)
    show = err.is_terminal
    with _progress(show, "generating") as tick:
        data = generate(gen, progress=tick)
        paths = write_generated(data, root / "data", fmt="csv")
    _append_broken_lines(paths["transactions"])
    out.print(
        f"2. generated    {data.transactions.num_rows:,} transactions, {data.labels.num_rows:,} "
        f"labels (with a few broken rows, as real feeds have) in {root / 'data'}"
    )
    for step, source in ((3, "transactions"), (4, "labels")):
        with _progress(show, f"ingesting {source}") as tick:
            result = ingest(cfg, source, paths[source], progress=tick)
        out.print(f"{step}. ingested     {source}")
        _print_ingest(result)
    store = OfflineStore.open(cfg)
    con = store.connect_duckdb(cfg.sources.values())
    out.print("5. what landed (backline sql)")
    for title, query in (
        (
            "fraud by channel (labels joined to transactions)",
            "SELECT t.channel, count(*) AS transactions, sum(l.is_fraud::INT) AS fraud, "
            "round(100 * avg(l.is_fraud::INT), 2) AS fraud_pct "
            "FROM transactions t JOIN (SELECT * FROM labels QUALIFY row_number() OVER "
            "(PARTITION BY transaction_id ORDER BY label_time DESC, ingested_at DESC) = 1) l "
            "USING (transaction_id) GROUP BY 1 ORDER BY 4 DESC",
        ),
        (
            "what was known when: labels by week of arrival",
            "SELECT date_trunc('week', label_time)::DATE AS arrived_week, count(*) AS labels, "
            "sum(is_fraud::INT) AS fraud FROM labels GROUP BY 1 ORDER BY 1",
        ),
        (
            "quarantine: one example per reason",
            'SELECT source, reason, "column", message FROM quarantine '
            "QUALIFY row_number() OVER (PARTITION BY source, reason ORDER BY line) = 1 "
            "ORDER BY source, reason",
        ),
    ):
        rel = con.sql(query)
        table = Table(*rel.columns, title=title, title_justify="left")
        for row in rel.fetchall():
            table.add_row(*(str(v) for v in row))
        out.print(table)
    _demo_features(cfg, data.transactions)
    promoted = _demo_training(cfg, args.steps)
    bl = cli_name()
    out.print(f"Explore it: cd {shlex.quote(str(root))}, then")
    out.print(f'  {bl} sql "SELECT source, rows_accepted, rows_quarantined FROM batches"')
    out.print(f"  {bl} models list")
    if promoted:
        out.print(f"  {bl} models show fraud@champion")
    return 0


def _demo_training(cfg: Any, steps: int) -> bool:
    """Steps 9-10 of the demo: train and register a model, gate it, promote it."""
    from backline.pipeline.train import gate, train_and_register
    from backline.registry import open_registry

    released = train_and_register(cfg, max_steps=steps, progress=err.is_terminal)
    m, version = released.train.metrics, released.version
    out.print(
        f"9. trained      {released.train.steps} steps on {released.train.train_examples:,} "
        f"point-in-time examples; holdout AUC-PR {m.auc_pr:.3f}, ROC-AUC {m.roc_auc:.3f}, "
        f"recall {m.recall_at_fpr:.3f} at {m.target_fpr:.0%} FPR -> registered "
        f"{version.model} v{version.version} (serving package: {released.package.served})"
    )
    record = gate(cfg, version.model, version.version)
    verdict = "passed" if record.passed else "failed"
    checks = ", ".join(f"{c.name} {'ok' if c.passed else 'FAIL'}" for c in record.checks)
    out.print(f"10. gate       {verdict}: {checks}")
    if record.passed:
        with open_registry(cfg) as registry:
            registry.promote(version.model, version.version, actor="demo", reason="demo run")
        out.print(f"    promoted   {version.model} v{version.version} is the champion")
        return True
    failed = "; ".join(c.detail for c in record.checks if not c.passed)
    out.print(f"    [yellow]not promoted[/]: {escape(failed)}")
    return False


def _demo_features(cfg: Any, transactions: Any) -> None:
    """Steps 6-8 of the demo: versioned features, a training set, an online read."""
    from datetime import timedelta

    import pyarrow as pa

    from backline.features.history import get_historical_features
    from backline.features.materialize import materialize
    from backline.features.online import get_online_features
    from backline.features.repository import apply, load_definitions

    defs = load_definitions(cfg)
    changes = [c for c in apply(cfg, defs) if c.action != "unchanged"]
    out.print(
        f"6. features     applied {len(changes)} definitions from features.py "
        f"({len(defs.views)} views, {len(defs.on_demand)} on-demand, service fraud_v1)"
    )
    burst = transactions.filter(pa.compute.is_valid(transactions["card_id"])).slice(2000, 5)
    entities = pa.table(
        {
            "card_id": burst["card_id"],
            "merchant_id": burst["merchant_id"],
            "amount": burst["amount"],
            "event_timestamp": burst["event_time"],
        }
    )
    train = get_historical_features(cfg, defs, "fraud_v1", entities)
    shown = [
        "card_id",
        "event_timestamp",
        "count_1h",
        "amount_mean_7d",
        "last_country",
        "amount_to_mean_30d",
    ]
    table = Table(
        *shown, title="7. a point-in-time training set (first rows)", title_justify="left"
    )
    for row in train.select(shown).to_pylist():
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()))
    out.print(table)
    end = (
        transactions["event_time"]
        .combine_chunks()
        .filter(pa.compute.is_valid(transactions["event_time"]))
    )
    last_event = max(t for t in end.to_pylist() if t.year < 2090)
    # a whole minute after the last event, so the printed --at reads exactly what is shown
    latest = (last_event + timedelta(minutes=1)).replace(second=0, microsecond=0)
    result = materialize(cfg, defs, end=latest)
    card, merchant = burst["card_id"][0].as_py(), burst["merchant_id"][0].as_py()
    online = get_online_features(
        cfg,
        defs,
        "fraud_v1",
        [{"card_id": card, "merchant_id": merchant}],
        request_rows=[{"amount": 250.0}],
        at=latest,
    )
    out.print(
        f"8. online       materialized {result.entities:,} entity values; "
        f"`{cli_name()} features get --service fraud_v1 card_id={card} merchant_id={merchant} "
        f"--request amount=250 --at {latest.strftime('%Y-%m-%dT%H:%M:%SZ')}`:"
    )
    values = online.to_dicts()[0]
    table = Table("feature", "value", "status", box=None, padding=(0, 2))
    for name in (
        "count_10m",
        "count_24h",
        "amount_mean_30d",
        "last_country",
        "merchant_count_24h",
        "amount_to_mean_30d",
    ):
        value = values[name]
        table.add_row(
            name, f"{value:.3f}" if isinstance(value, float) else str(value), online.status(0, name)
        )
    out.print(table)


def _append_broken_lines(path: Path) -> None:
    """Real feeds break: a truncated line, a wrong field count, bytes in another encoding."""
    with path.open("ab") as fh:
        fh.write(b"tx_00000000deadbeef,card_0000001,m_000001,grocery,12.50,USD,US,pos\n")
        fh.write(
            "tx_00000000cafe0001,card_0000002,m_000002,caf\xe9,3.20,EUR,FR,pos,dev_0000000001,"
            "2026-01-02T10:00:00Z\n".encode("latin-1")
        )
        fh.write(b"tx_00000000cafe0002,card_0000003,m_0000")


# ---------------------------------------------------------------------------------------------
# parser


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

    p = sub.add_parser("train", help="train on a point-in-time training set and register the model")
    p.add_argument("--service", help="feature service (default: train.service)")
    p.add_argument(
        "--max-steps",
        type=_positive(int, "--max-steps"),
        help="optimizer steps (default: train.max_steps)",
    )
    p.add_argument(
        "--resume",
        choices=("auto", "never"),
        default="auto",
        help="continue from the newest good checkpoint (auto)",
    )
    p.add_argument(
        "--nproc",
        type=_positive(int, "--nproc"),
        default=1,
        help="workers through torchrun DDP (1)",
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train (cpu)")
    p.add_argument("--model", default="fraud", help="registry model name (fraud)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=cmd_train)

    from backline.cli.models import add_commands as add_model_commands

    add_model_commands(sub)

    p = sub.add_parser("doctor", help="check the config and that every store is reachable")
    p.add_argument("--json", action="store_true", help="print the checks as one JSON object")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("demo", help="run the fraud example end to end on embedded defaults")
    p.add_argument(
        "--dir", default="demo-project", help="project folder to (re)create (demo-project)"
    )
    p.add_argument("--days", type=_positive(int, "--days"), default=30, help="days of data (30)")
    p.add_argument("--cards", type=_positive(int, "--cards"), default=3000, help="cards (3000)")
    p.add_argument("--seed", type=int, default=7, help="random seed (7)")
    p.add_argument(
        "--keep", dest="fresh", action="store_false", help="keep an existing demo folder"
    )
    p.add_argument(
        "--steps", type=_positive(int, "--steps"), default=300, help="training steps (300)"
    )
    p.set_defaults(func=cmd_demo)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
