"""Days 40-59 of the demo: serve, replay, monitor; retrain on the alarm; hot-swap under load;
realised performance once the labels are in. See `backline.demo.story` for the calendar."""

from __future__ import annotations

import dataclasses
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.table import Table

from backline.core.console import out
from backline.demo.common import (
    MODEL,
    START,
    Data,
    DemoOptions,
    Outcome,
    bar,
    day,
    gate_and_promote,
    spinner,
)
from backline.demo.replay import iso, logged, replay_day, score_offline, wait_logged, write_log

if TYPE_CHECKING:
    from backline.bench.loadgen import Report
    from backline.pipeline.monitor import PassResult
    from backline.project import Project


@dataclass
class _Replay:
    latencies_ms: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    served: int = 0
    offline: int = 0
    labels_until: datetime | None = None
    version: int = 1
    swapped_after: int | None = None
    passes: dict[int, PassResult] = field(default_factory=dict)
    swap: Report | None = None
    held: bool = False
    retrained: bool = False


def serve_and_monitor(
    project: Project, root: Path, opts: DemoOptions, data: Data, outcome: Outcome
) -> None:
    from backline.bench.server import started_server
    from backline.core.config import load_config
    from backline.pipeline.monitor import Monitor
    from backline.pipeline.triggers import AlertInbox

    now = [day(opts.first_served_day)]
    # the newest window counts as complete one window after its end (late rows may still come):
    # the monitor's clock runs a day ahead of the replay, so each day is judged when served
    monitor = Monitor(
        load_config(root),
        clock=lambda: now[0] + timedelta(days=1),
        label_window=timedelta(days=3),
    )
    inbox = AlertInbox(
        root / ".backline" / "monitor",
        root / ".backline" / "demo" / "alert-inbox.json",
        cooldown=timedelta(days=30),
        clock=lambda: now[0],
    )
    state = _Replay(labels_until=day(opts.first_served_day))
    days = range(opts.first_served_day, opts.days)
    with started_server(root, model=f"{MODEL}@champion") as base:
        port = int(base.rsplit(":", 1)[1])
        out.print(
            f"7. serve        `backline serve` on {base} (a subprocess); each day its first "
            f"{opts.served_per_day} transactions go through HTTP (push the events, then "
            "predict at their time) and the rest are written to the prediction log as the "
            "server would write them (same features, same package), to keep the demo short"
        )
        out.print(
            "8. monitor      one pass after each day (daily windows); the alarm: "
            "FeatureDrift, 4 drifted days in a row (one drifted day alone is noise), asks for "
            "retraining"
        )
        with bar(opts.progress, "replaying days") as tick:
            for i, d in enumerate(days):
                _replay_day(project, root, port, d, opts, data, state)
                now[0] = day(d + 1)
                _ingest_labels(project, root, data, state, now[0])
                (result,) = monitor.run_once(MODEL)
                state.passes[d] = result
                _print_day(d, opts, result, state)
                polled = inbox.poll()
                if MODEL in polled.triggered and not state.retrained:
                    before = logged(root)
                    _retrain_and_swap(project, base, d, opts, data, state, polled, outcome)
                    # the load's answers are logged too (for the end of the day just judged)
                    _settle(root, before + (state.swap.ok if state.swap else 0))
                elif polled.suppressed and not state.held:
                    state.held = True
                    out.print(
                        "               FeatureDrift still fires (v2's reference is mostly "
                        "pre-drift traffic) and asks again each day; the scheduler's 30-day "
                        "cooldown holds those runs"
                    )
                tick("", (i + 1) / len(days))
    _check_story(opts, state, outcome)
    _recovery(project, root, opts, data, state, outcome)
    path = monitor.write_report(root / "report.html", MODEL)
    outcome.report = path
    outcome.check("the dashboard was written", path.exists(), str(path))
    out.print(f"12. dashboard  {path}")


def _replay_day(
    project: Project, root: Path, port: int, d: int, opts: DemoOptions, data: Data, state: _Replay
) -> None:
    times = data.replay.column("event_time")
    rows = data.replay.filter(pc.and_(pc.greater_equal(times, day(d)), pc.less(times, day(d + 1))))
    served, rest = rows.slice(0, opts.served_per_day), rows.slice(opts.served_per_day)
    before = logged(root)
    replay_day(port, served, MODEL, latencies_ms=state.latencies_ms, versions=state.versions)
    path = root / "data" / "replay" / f"day-{d:02d}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rest, path)
    project.ingest("transactions", path)
    project.materialize(incremental=True)
    write_log(root, score_offline(root, rest, MODEL, state.version, project=project))
    wait_logged(root, before + rows.num_rows)
    state.served += served.num_rows
    state.offline += rest.num_rows


def _settle(root: Path, at_least: int, quiet: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until the log holds `at_least` rows and has stopped growing for `quiet` seconds
    (a load generator's last answers may come after its window)."""
    deadline = time.monotonic() + timeout
    seen, since = logged(root), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        n = logged(root)
        if n != seen:
            seen, since = n, time.monotonic()
        elif n >= at_least and time.monotonic() - since >= quiet:
            return


def _ingest_labels(
    project: Project, root: Path, data: Data, state: _Replay, until: datetime
) -> None:
    arrived = data.labels.column("label_time")
    since = state.labels_until
    assert since is not None
    new = data.labels.filter(pc.and_(pc.greater(arrived, since), pc.less_equal(arrived, until)))
    state.labels_until = until
    if new.num_rows:
        path = root / "data" / "replay" / f"labels-{until:%Y%m%d}.parquet"
        pq.write_table(new, path)
        project.ingest("labels", path)


def _print_day(d: int, opts: DemoOptions, result: PassResult, state: _Replay) -> None:
    window = result.windows[0] if result.windows else None
    drifted = ", ".join(window.drifted) if window and window.drifted else "none"
    marks = "".join(f"  {c.rule} {c.after}" for c in result.changes)
    tag = " [yellow](drift)[/]" if d >= opts.drift_day else ""
    rows = f"{window.rows:,}" if window else "0"
    out.print(
        f"   day {d}  {day(d):%m-%d}{tag}  v{state.version}  {rows} rows  drifted: {drifted}"
        + (f"  [bold red]{marks.strip()}[/]" if marks else "")
        + ("  retraining requested" if result.retrain_requested else "")
    )


def _retrain_and_swap(
    project: Project,
    base: str,
    d: int,
    opts: DemoOptions,
    data: Data,
    state: _Replay,
    polled: Any,
    outcome: Outcome,
) -> None:
    from backline.bench.loadgen import predict_url, run_closed_loop
    from backline.bench.server import probe
    from backline.pipeline.train import train_and_register

    asked = polled.triggered[MODEL]
    state.retrained = True
    out.print(
        f"9. retrain      the scheduler's inbox (pipeline.triggers) took the request "
        f"({', '.join(asked[0].alerts)}); training v2 on the data and labels in by "
        f"{day(d + 1):%Y-%m-%d}"
    )
    # judged on the newest day, so that the days since the drift are in its training split
    # (v1 kept 4 days out: before the drift, a day may hold no fraud at all)
    cfg = dataclasses.replace(
        project.config, train=dataclasses.replace(project.config.train, holdout=timedelta(days=1))
    )
    with spinner(opts.progress, "training v2"):
        v2 = train_and_register(cfg, model_name=MODEL, progress=False)
    m = v2.train.metrics
    out.print(
        f"               v{v2.version.version}: {v2.train.train_examples:,} examples up to "
        f"the cutoff {v2.train.cutoff:%Y-%m-%d %H:%M}; holdout: the newest labelled day "
        f"({v2.train.holdout_examples:,} examples, where both models are judged), AUC-PR "
        f"{m.auc_pr:.3f}"
    )
    if not gate_and_promote(project, v2, outcome, first=False, cfg=cfg):
        return  # the story stops short of the swap (a check failed: the exit code says so)
    # load on the server while the alias moves: requests for the end of the day just served
    times = data.replay.column("event_time")
    rows = data.replay.filter(pc.and_(pc.greater_equal(times, day(d)), pc.less(times, day(d + 1))))
    at = iso(day(d + 1) - timedelta(milliseconds=1))
    bodies = [
        json.dumps(
            {
                "instances": [
                    {
                        "card_id": r["card_id"],
                        "merchant_id": r["merchant_id"],
                        "amount": r["amount"],
                    }
                ],
                "at": at,
            }
        ).encode()
        for r in rows.slice(0, 200).to_pylist()
    ]
    url = predict_url(base, MODEL)
    reports: list[Report] = []
    load = threading.Thread(
        target=lambda: reports.append(
            run_closed_loop(url, bodies, concurrency=4, duration=opts.swap_seconds)
        )
    )
    load.start()
    time.sleep(opts.swap_seconds / 3)
    project.registry.promote(MODEL, v2.version.version, actor="demo", reason="drift retrain")
    load.join()
    report = reports[0]
    state.swap = report
    deadline = time.monotonic() + 10
    answer = probe(url, bodies[0])
    while _version(answer.body) != v2.version.version and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = probe(url, bodies[0])
    failed = sum(report.errors.values()) + (report.sent - report.ok)
    lat = report.latency_ms
    out.print(
        f"10. hot swap    promoted v{v2.version.version} under load: {report.ok:,} requests "
        f"answered in {opts.swap_seconds:g} s, {failed} failed; p50 {lat['p50']:.1f} ms, "
        f"p99 {lat['p99']:.1f} ms; the server now answers with v{_version(answer.body)}"
    )
    outcome.check(
        "the hot swap failed no request", failed == 0 and report.ok > 0, str(report.errors)
    )
    outcome.check(
        "the server swapped to v2 without a restart",
        _version(answer.body) == v2.version.version,
        answer.body[:200],
    )
    state.version = v2.version.version
    state.swapped_after = d


def _version(body: str) -> int | None:
    try:
        return int(json.loads(body)["model_version"])
    except (ValueError, KeyError, TypeError):
        return None


def _check_story(opts: DemoOptions, state: _Replay, outcome: Outcome) -> None:
    lat = np.array(state.latencies_ms)
    out.print(
        f"   served       {state.served:,} requests through HTTP, every one answered 200: p50 "
        f"{np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms (push, "
        f"feature read, batching, scoring, logging); {state.offline:,} rows scored offline"
    )
    fired = [
        d
        for d, p in state.passes.items()
        for c in p.changes
        if c.rule == "FeatureDrift" and str(c.after) == "firing"
    ]
    early = [d for d in fired if d < opts.drift_day]
    outcome.check("no drift alarm before the drift", not early, f"fired on days {early}")
    outcome.check(
        f"the drift alarm fired after day {opts.drift_day}",
        any(opts.drift_day <= d <= opts.drift_day + 4 for d in fired),
        f"fired on days {fired}",
    )
    outcome.check("the alarm's retrain request triggered retraining", state.retrained)
    after = state.swapped_after
    if after is not None:
        outcome.check(
            "requests after the swap were answered by v2",
            all(v == state.version for v in state.versions[-opts.served_per_day :]),
            str(sorted(set(state.versions))),
        )


def _recovery(
    project: Project, root: Path, opts: DemoOptions, data: Data, state: _Replay, outcome: Outcome
) -> None:
    """Every label has arrived: realised AUC-PR by day, of the version that served it, and of
    v1 on the days after the swap had it stayed (scored offline)."""
    from backline.package.metrics import average_precision

    _ingest_labels(project, root, data, state, datetime(2100, 1, 1, tzinfo=UTC))
    after = state.swapped_after
    if after is None:
        return
    labels = dict(
        zip(
            data.labels.column("transaction_id").to_pylist(),
            data.labels.column("is_fraud").to_pylist(),
            strict=True,
        )
    )
    _, rows = project.sql_rows(
        "SELECT transaction_id, model_version, score, scored_at FROM predictions "
        "WHERE transaction_id IS NOT NULL"
    )
    times = data.replay.column("event_time")
    later = data.replay.filter(pc.greater_equal(times, day(after + 1)))
    stayed = score_offline(root, later, MODEL, 1, project=project)
    served: dict[tuple[int, int], tuple[list[float], list[bool]]] = {}
    for tx, version, score, at in rows:
        d = (_utc(at) - START).days
        scores, ys = served.setdefault((d, int(version)), ([], []))
        scores.append(float(score))
        ys.append(bool(labels[tx]))
    for tx, score, at in zip(
        stayed.column("transaction_id").to_pylist(),
        stayed.column("score").to_pylist(),
        stayed.column("scored_at").to_pylist(),
        strict=True,
    ):
        scores, ys = served.setdefault(((_utc(at) - START).days, -1), ([], []))
        scores.append(float(score))
        ys.append(bool(labels[tx]))

    def auc(keys: list[tuple[int, int]]) -> float:
        s = [x for k in keys if k in served for x in served[k][0]]
        y = [x for k in keys if k in served for x in served[k][1]]
        return average_precision(np.array(y), np.array(s)) if any(y) else float("nan")

    table = Table(
        "days",
        "served by",
        "realised AUC-PR",
        "v1 had it stayed",
        title="11. labels in: realised AUC-PR (every label has arrived)",
        title_justify="left",
    )
    spans = [
        (opts.first_served_day, opts.drift_day - 1, 1),
        (opts.drift_day, after, 1),
        (after + 1, opts.days - 1, state.version),
    ]
    for first, last, version in spans:
        keys = [(d, version) for d in range(first, last + 1)]
        stay = auc([(d, -1) for d in range(first, last + 1)]) if version != 1 else None
        table.add_row(
            f"{first}-{last}" + (" (drift)" if first >= opts.drift_day else ""),
            f"v{version}",
            f"{auc(keys):.3f}",
            "" if stay is None else f"{stay:.3f}",
        )
    windows = Table(
        "days",
        "v1",
        "v2",
        title="    by window of up to 4 days (v1 after the swap: had it stayed, scored offline)",
        title_justify="left",
    )
    starts = {opts.first_served_day, opts.drift_day, *range(after + 1, opts.days, 4)}
    starts |= set(range(opts.drift_day, after + 1, 4))
    bounds = [*sorted(starts), opts.days]
    for first, end in itertools.pairwise(bounds):
        span = range(first, end)
        v1 = auc([(d, 1) for d in span] + [(d, -1) for d in span])
        v2 = auc([(d, state.version) for d in span]) if state.version != 1 else float("nan")
        tag = " (drift)" if first >= opts.drift_day else ""
        windows.add_row(f"{span[0]}-{span[-1]}{tag}", _fmt(v1), _fmt(v2))
    out.print(table)
    out.print(windows)
    after_days = range(after + 1, opts.days)
    recovered = auc([(d, state.version) for d in after_days])
    stayed_auc = auc([(d, -1) for d in after_days])
    before = auc([(d, 1) for d in range(opts.first_served_day, opts.drift_day)])
    out.print(
        f"    v{state.version} on days {after + 1}-{opts.days - 1}: AUC-PR {recovered:.3f}; v1 "
        f"on the same days would have had {stayed_auc:.3f} (before the drift it had "
        f"{before:.3f}). "
        + (
            "v2, trained on the first days of drifted labels, is back where v1 was before it"
            if recovered >= before
            else "v2 won back part of what v1 lost from the first days of drifted labels: "
            "account takeover looks like legitimate traffic, so it is hard to win all back"
        )
    )
    outcome.check(
        "v2 beat v1 on the days after the swap (realised AUC-PR, v1 scored offline)",
        recovered > stayed_auc,
        f"{recovered} vs {stayed_auc}",
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _fmt(value: float) -> str:
    return "" if value != value else f"{value:.3f}"


# -- progress -----------------------------------------------------------------------------------
