"""`backline demo`: the fraud example end to end, from an empty folder to a champion."""

from __future__ import annotations

import argparse
import shlex
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from backline.cli.common import _positive, _progress, cli_name
from backline.cli.data import _print_ingest
from backline.core.console import err, out

if TYPE_CHECKING:
    from backline.project import Project


def add_commands(sub: Any) -> None:
    """Add `demo` to the top-level subparsers."""
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


def cmd_demo(args: argparse.Namespace) -> int:
    from backline.core.workspace import init_project
    from backline.project import open as open_project

    target = Path(args.dir)
    if target.exists() and args.fresh:
        shutil.rmtree(target)
    root = init_project(target, force=True)
    with open_project(root) as project:
        promoted = _demo(project, root, args)
    bl = cli_name()
    out.print(f"Explore it: cd {shlex.quote(str(root))}, then")
    out.print(f'  {bl} sql "SELECT source, rows_accepted, rows_quarantined FROM batches"')
    out.print(f"  {bl} models list")
    if promoted:
        out.print(f"  {bl} models show fraud@champion")
    return 0


def _demo(project: Project, root: Path, args: argparse.Namespace) -> bool:
    """Steps 1-10 of the demo, on the project just made; whether a champion was promoted."""
    from backline.data.generator import GeneratorConfig, generate, write_generated

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
            result = project.ingest(source, paths[source], progress=tick)
        out.print(f"{step}. ingested     {source}")
        _print_ingest(result)
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
        columns, rows = project.sql_rows(query)
        table = Table(*columns, title=title, title_justify="left")
        for row in rows:
            table.add_row(*(str(v) for v in row))
        out.print(table)
    _demo_features(project, data.transactions)
    return _demo_training(project, args.steps)


def _demo_training(project: Project, steps: int) -> bool:
    """Steps 9-10 of the demo: train and register a model, gate it, promote it."""
    from backline.pipeline.train import gate

    registered = project.train(max_steps=steps, progress=err.is_terminal)
    m, version = registered.train.metrics, registered.version
    out.print(
        f"9. trained      {registered.train.steps} steps on {registered.train.train_examples:,} "
        f"point-in-time examples; holdout AUC-PR {m.auc_pr:.3f}, ROC-AUC {m.roc_auc:.3f}, "
        f"recall {m.recall_at_fpr:.3f} at {m.target_fpr:.0%} FPR -> registered "
        f"{version.model} v{version.version} (serving package: {registered.package.served})"
    )
    record = gate(project.config, version.model, version.version)
    verdict = "passed" if record.passed else "failed"
    checks = ", ".join(f"{c.name} {'ok' if c.passed else 'FAIL'}" for c in record.checks)
    out.print(f"10. gate       {verdict}: {checks}")
    if record.passed:
        project.registry.promote(version.model, version.version, actor="demo", reason="demo run")
        out.print(f"    promoted   {version.model} v{version.version} is the champion")
        return True
    failed = "; ".join(c.detail for c in record.checks if not c.passed)
    out.print(f"    [yellow]not promoted[/]: {escape(failed)}")
    return False


def _demo_features(project: Project, transactions: Any) -> None:
    """Steps 6-8 of the demo: versioned features, a training set, an online read."""
    from datetime import timedelta

    import pyarrow as pa

    changes = [c for c in project.apply() if c.action != "unchanged"]
    defs = project.definitions
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
    train = project.historical_features(entities, "fraud_v1")
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
    result = project.materialize(end=latest)
    card, merchant = burst["card_id"][0].as_py(), burst["merchant_id"][0].as_py()
    online = project.online_features(
        "fraud_v1", {"card_id": card, "merchant_id": merchant}, request={"amount": 250.0}, at=latest
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
