"""The demo's story: sixty days of card traffic through the whole loop, each claim checked.

    outcome = run_demo(DemoOptions(root=Path("demo-project")))
    outcome.passed          # True only if every step did what the narration says it did

The days (day 0 = 2026-01-01, UTC):

    0-29    history: every feature window (the longest is 30 days) is full by day 30
    30-39   labelled examples v1 is trained on (the last 4 days are its holdout)
    40-59   replayed day by day through `backline serve`; the monitor runs after each day
    45      the drift: half the traffic moves online, and 30% of the legitimate online
            digital-goods purchases become fraud (account takeover, which v1 never saw)

Labels arrive as a card programme's do (fraud with the chargeback, legitimate purchases when
the dispute window closes), but 60 times sooner, so that the story fits in 60 days: a
chargeback comes in hours, a confirmation within a day. Each day's arrivals are ingested
at the end of that day.

A served day costs 13-20 s on a two-core machine (every run of events is pushed before its
rows are scored), so each day the first `served_per_day` transactions go through the server
and the rest are written to the prediction log the way the server would write them
(`replay.score_offline`: the same point-in-time features, the same serving package).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
from rich.markup import escape
from rich.table import Table

from backline.core.console import out
from backline.demo.common import (
    DRIFT,
    LABEL_SPEEDUP,
    LABELS_FROM,
    MODEL,
    SETTINGS,
    START,
    Data,
    DemoOptions,
    Outcome,
    bar,
    day,
    gate_and_promote,
    spinner,
)
from backline.demo.replay import iso
from backline.demo.traffic import serve_and_monitor

if TYPE_CHECKING:
    from backline.data.generator import GeneratedData
    from backline.pipeline.train import Registered
    from backline.project import Project


def run_demo(opts: DemoOptions) -> Outcome:
    """Tell the story in `opts.root` (a project folder made fresh); the checks it made."""
    import torch

    from backline.core.workspace import init_project
    from backline.project import open as open_project

    outcome = Outcome()
    root = init_project(opts.root, force=True)
    _configure(root, opts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: training is reproducible and leaves a core free
    try:
        with open_project(root) as project:
            _story(project, root, opts, outcome)
    finally:
        torch.set_num_threads(threads)
    return outcome


def _configure(root: Path, opts: DemoOptions) -> None:
    toml = root / "backline.toml"
    text = toml.read_text(encoding="utf-8")
    for old, new in (
        ("max_steps = 2000", f"max_steps = {opts.steps}"),
        ("checkpoint_every = 200", f"checkpoint_every = {opts.kill_at // 2}"),
        ("warmup_steps = 100", f"warmup_steps = {max(1, opts.steps // 10)}"),
        ("max_latency_ms = 5.0", "max_latency_ms = 1000.0"),  # no verdict on a busy machine
        ('holdout = "5d"', 'holdout = "4d"'),
    ):
        if old not in text:
            raise AssertionError(f"the example's backline.toml has no {old!r}")
        text = text.replace(old, new)
    toml.write_text(text + SETTINGS, encoding="utf-8")


def _story(project: Project, root: Path, opts: DemoOptions, outcome: Outcome) -> None:
    started = time.monotonic()
    out.print("[bold]backline demo: card-fraud scoring, sixty days of it[/]\n" + "─" * 60)
    out.print(f"1. project      {root}")
    data = _generate(root, opts)
    _ingest(project, root, opts, data, outcome)
    _features(project, opts)
    v1 = _train_killed_and_resumed(project, root, opts, outcome)
    gate_and_promote(project, v1, outcome, first=True)
    serve_and_monitor(project, root, opts, data, outcome)
    out.print(f"\nTold in {time.monotonic() - started:.0f} s.")


# -- data -------------------------------------------------------------------------------------


def _generate(root: Path, opts: DemoOptions) -> Data:
    from backline.data.generator import GeneratorConfig, generate, parse_drift, write_generated

    drift = parse_drift(f"{iso(day(opts.drift_day))}:{DRIFT}")
    config = GeneratorConfig(
        days=opts.days, cards=opts.cards, seed=opts.seed, start=START, drift=drift
    )
    with bar(opts.progress, "generating") as tick:
        clean = generate(config, progress=tick)
        dirty = generate(dataclasses.replace(config, corrupt=0.002))
    labels = _compress_label_times(clean.labels)
    served_from, until = day(opts.first_served_day), day(opts.days)
    times = dirty.transactions.column("event_time")
    in_replay = pc.and_(pc.greater_equal(times, served_from), pc.less(times, until))
    history = dirty.transactions.filter(pc.invert(pc.fill_null(in_replay, False)))
    known = labels.filter(
        pc.and_(
            pc.greater_equal(labels.column("event_time"), day(LABELS_FROM)),
            pc.less_equal(labels.column("label_time"), served_from),
        )
    )
    paths = write_generated(_generated(history, known), root / "data", fmt="csv")
    _append_broken_lines(paths["transactions"])
    times = clean.transactions.column("event_time")
    replay = clean.transactions.filter(
        pc.and_(pc.greater_equal(times, served_from), pc.less(times, until))
    )
    # a corrupted copy of a replayed row (a duplicated id) is already in the history
    replay = replay.filter(
        pc.invert(pc.is_in(replay.column("transaction_id"), history.column("transaction_id")))
    )
    out.print(
        f"2. generated    {opts.days} days of card traffic from {START:%Y-%m-%d}: "
        f"{clean.transactions.num_rows:,} transactions of {opts.cards:,} cards; drift from day "
        f"{opts.drift_day} ({day(opts.drift_day):%Y-%m-%d}): {DRIFT}"
    )
    out.print(
        f"               days 0-{opts.first_served_day - 1} written to data/ as CSV with bad "
        f"rows in them (as real feeds have); days {opts.first_served_day}-{opts.days - 1} "
        "are replayed later. Labels arrive 60x sooner than in life (hours, not weeks)."
    )
    return Data(replay, labels)


def _generated(transactions: pa.Table, labels: pa.Table) -> GeneratedData:
    from backline.data.generator import GeneratedData

    return GeneratedData(transactions, labels)


def _compress_label_times(labels: pa.Table) -> pa.Table:
    event = labels.column("event_time").cast(pa.int64()).to_numpy()
    arrived = labels.column("label_time").cast(pa.int64()).to_numpy()
    sooner = event + (arrived - event) // LABEL_SPEEDUP
    kind = labels.schema.field("label_time").type
    column = pa.array(sooner, pa.int64()).cast(kind)
    return labels.set_column(labels.schema.get_field_index("label_time"), "label_time", column)


def _append_broken_lines(path: Path) -> None:
    """Real feeds break: a truncated line, a wrong field count, bytes in another encoding."""
    with path.open("ab") as fh:
        fh.write(b"tx_00000000deadbeef,card_0000001,m_000001,grocery,12.50,USD,US,pos\n")
        fh.write(
            "tx_00000000cafe0001,card_0000002,m_000002,caf\xe9,3.20,EUR,FR,pos,dev_0000000001,"
            "2026-01-02T10:00:00Z\n".encode("latin-1")
        )
        fh.write(b"tx_00000000cafe0002,card_0000003,m_0000")


def _ingest(project: Project, root: Path, opts: DemoOptions, data: Data, outcome: Outcome) -> None:
    for source in ("transactions", "labels"):
        with bar(opts.progress, f"ingesting {source}") as tick:
            result = project.ingest(source, root / "data" / f"{source}.csv", progress=tick)
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.quarantine_reasons.items()))
        out.print(
            f"3. ingested     {source}: rows in {result.rows_in:,} = accepted "
            f"{result.rows_accepted:,} + quarantined {result.rows_quarantined:,}"
            + (f" ({reasons})" if reasons else "")
        )
        outcome.check(
            f"ingest {source}: every row accepted or quarantined with a reason",
            result.rows_in == result.rows_accepted + result.rows_quarantined,
            f"{result.rows_in} != {result.rows_accepted} + {result.rows_quarantined}",
        )
        if source == "transactions":
            outcome.check(
                "ingest quarantined the bad rows",
                result.rows_quarantined > 0,
                "no row quarantined",
            )
    columns, rows = project.sql_rows(
        'SELECT source, reason, "column", message FROM quarantine '
        "QUALIFY row_number() OVER (PARTITION BY source, reason ORDER BY line) = 1 "
        "ORDER BY source, reason"
    )
    table = Table(*columns, title="   the quarantine: one example per reason", title_justify="left")
    for row in rows:
        table.add_row(*(escape(str(v))[:90] for v in row))
    out.print(table)


def _features(project: Project, opts: DemoOptions) -> None:
    changes = [c for c in project.apply() if c.action != "unchanged"]
    result = project.materialize(end=day(opts.first_served_day))
    defs = project.definitions
    out.print(
        f"4. features     applied {len(changes)} definitions ({len(defs.views)} views, "
        f"{len(defs.on_demand)} on-demand); materialized {result.rows:,} source rows into the "
        "online store"
    )


# -- training -----------------------------------------------------------------------------------


def _train_killed_and_resumed(
    project: Project, root: Path, opts: DemoOptions, outcome: Outcome
) -> Registered:
    from backline.core.faults import FAULT_ENV, kill_at
    from backline.train.distributed import DistContext
    from backline.train.loop import (
        SPEC_FILE,
        TRAIN_DATA,
        TensorData,
        TrainSpec,
        fit,
        prepare_run_dir,
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env[FAULT_ENV] = kill_at("checkpoint_after_rename", opts.kill_at)
    command = [sys.executable, "-m", "backline.cli", "--project", str(root), "train"]
    with spinner(opts.progress, f"training v1 until it is killed at step {opts.kill_at}"):
        killed = subprocess.run(
            command, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=600
        )
    outcome.check(
        f"the trainer was SIGKILLed after its checkpoint at step {opts.kill_at}",
        killed.returncode == -signal.SIGKILL,
        f"exit {killed.returncode}: {killed.stderr.decode(errors='replace')[-300:]}",
    )
    out.print(
        f"5. train        `backline train` SIGKILLed right after its checkpoint at step "
        f"{opts.kill_at} of {opts.steps} (exit {killed.returncode})"
    )
    v1 = project.train(model_name=MODEL, progress=opts.progress)
    t = v1.train
    outcome.check(
        f"training resumed from the checkpoint at step {opts.kill_at}",
        t.resumed_from == opts.kill_at,
        f"resumed from {t.resumed_from}",
    )
    # the same run, never interrupted: the run's own spec and tensors in a fresh folder
    reference = root / ".backline" / "demo" / "uninterrupted"
    shutil.rmtree(reference, ignore_errors=True)
    spec = TrainSpec.from_json((t.run_dir / SPEC_FILE).read_text())
    prepare_run_dir(reference, spec, TensorData.load(t.run_dir / TRAIN_DATA))
    with spinner(opts.progress, "training the same run again, uninterrupted"):
        fitted = fit(
            spec,
            TensorData.load(reference / TRAIN_DATA),
            reference,
            ctx=DistContext(),
            notify=lambda message: None,
        )
    same = fitted.parameter_sha256 == t.parameter_sha256
    outcome.check(
        "resumed parameters are bitwise identical to an uninterrupted run",
        same,
        f"{t.parameter_sha256[:16]} vs {fitted.parameter_sha256[:16]}",
    )
    m = v1.train.metrics
    out.print(
        f"               resumed from step {t.resumed_from} and finished: parameters sha256 "
        f"{t.parameter_sha256[:16]}; an uninterrupted run: {fitted.parameter_sha256[:16]} "
        f"({'[green]bitwise identical[/]' if same else '[red]different[/]'})"
    )
    out.print(
        f"               v{v1.version.version}: {t.train_examples:,} point-in-time examples, "
        f"holdout ({t.holdout_examples:,}) AUC-PR {m.auc_pr:.3f}, ROC-AUC {m.roc_auc:.3f}. The "
        "holdout flatters: in its last hours legitimate labels (10-16 hours late here) are "
        "still missing while most fraud labels (a few hours) are in"
    )
    return v1
