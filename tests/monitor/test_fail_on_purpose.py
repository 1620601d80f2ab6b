"""Make it fail on purpose (issue 11): drift injected on a known day, served through the real
server, must raise the alarm at the expected window, reach a real webhook receiver and a real
Alertmanager, and resolve once the data is normal again; a change of fraud that leaves the
inputs alone must be caught by the performance path once its labels arrive.

The project, the replay and the scoring are in `tests/monitor/replay.py` (the demo uses them
too). Its days: history and labels up to 2026-02-15, then replay days 0, 1, 2, ... from there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from backline.core.config import load_config
from backline.monitor.alerts import State, fingerprint
from backline.pipeline.monitor import Monitor
from tests.monitor.replay import (
    Replay,
    copy_project,
    day_start,
    ingest_labels,
    ingest_replay,
    logged,
    rows_of_days,
    run_days,
    shared_project,
    shared_rows,
    write_log,
)
from tests.monitor.test_alertmanager import Alertmanager, wait_until
from tests.monitor.test_notify import Receiver

pytestmark = pytest.mark.slow

DRIFT = "channel_mix=online:0.5"
"""Half the transactions move to the online channel: the cards' last channel (an input) and
the scores shift."""

FEATURE_DRIFT = """
[[monitor.alerts]]
name = "FeatureDrift"
metric = "drift.features_drifted"
op = ">="
threshold = 1
for = 0
severity = "warning"
labels = { team = "fraud" }
annotations = { summary = "$value features drifted" }
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_project(tmp_path_factory.mktemp("monitor"))


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> pa.Table:
    return shared_rows(tmp_path_factory.mktemp("scored"))


@pytest.fixture
def receivers(tmp_path: Path) -> Iterator[tuple[Receiver, Alertmanager]]:
    receiver = Receiver()
    (tmp_path / "am").mkdir()
    am = Alertmanager(tmp_path / "am", receiver.url + "/am")
    try:
        yield receiver, am
    finally:
        am.stop()
        receiver.close()


def _posted(receiver: Receiver, path: str, status: str) -> list[dict[str, Any]]:
    return [b for p, b in list(receiver.requests) if p == path and b["status"] == status]


@pytest.mark.http
@pytest.mark.alertmanager
def test_drift_fires_in_its_first_window_reaches_both_receivers_and_resolves(
    template: Path, scored: pa.Table, tmp_path: Path, receivers: tuple[Receiver, Alertmanager]
) -> None:
    """Day 3 is normal, day 4 drifted, day 5 normal again, and the monitor runs a pass after
    each. FeatureDrift (for = 0) stays quiet on day 3, fires on the window of day 4 and
    resolves on the window of day 5; the webhook and Alertmanager both hear of it.

    Days 4 and 5 go through `backline serve`. A served day costs 13-20 s on this machine: a
    replay must push every run of transactions in which no card or merchant repeats before
    scoring it (tests/monitor/replay.py), about 85 pushes a day at about 0.15 s each. So days
    0-3 go into the stores as history without the server, and day 3's log rows are written
    as the server would write them (`score_offline`: the same features and package)."""
    receiver, am = receivers
    notify = (
        f'\n[[monitor.notify]]\nkind = "webhook"\nurl = "{receiver.url}/hook"\nretries = 0\n'
        f'\n[[monitor.notify]]\nkind = "alertmanager"\nurl = "{am.url}"\nretries = 0\n'
    )
    root = copy_project(template, tmp_path / "fraud", FEATURE_DRIFT + notify)
    data = Replay.generate(drift=DRIFT, drift_day=4, normal_from=5)
    ingest_replay(root, data.days(0, 3), materialize=True)
    write_log(root, rows_of_days(scored, 3, 3))
    monitor = Monitor(load_config(root))
    (quiet,) = monitor.run_once("fraud")
    passes = [quiet, *run_days(root, data, [4, 5], monitor)]

    # every pass took exactly its own day, and nothing was lost on the way
    days = [3, 4, 5]
    assert [[(w.start, w.end) for w in p.windows] for p in passes] == [
        [(day_start(d), day_start(d + 1))] for d in days
    ]
    assert [p.windows[0].rows for p in passes] == [data.day(d).num_rows for d in days]
    assert logged(root) == data.days(3, 5).num_rows

    # normal: quiet. Drifted: the channel is flagged in the drift's first window
    drifted = [set(p.windows[0].drifted) for p in passes]
    assert drifted[0] == set() and drifted[2] == set()
    assert "last_channel" in drifted[1]
    assert [[(c.rule, c.after) for c in p.changes] for p in passes] == [
        [],
        [("FeatureDrift", State.FIRING)],
        [("FeatureDrift", State.RESOLVED)],
    ]

    # the webhook got the firing alert, then the resolved one (Alertmanager's v4 payload)
    labels = {"alertname": "FeatureDrift", "severity": "warning", "model": "fraud", "team": "fraud"}
    (fired,) = _posted(receiver, "/hook", "firing")
    alert = fired["alerts"][0]
    assert fired["version"] == "4" and alert["labels"] == labels
    assert alert["startsAt"].startswith(f"{day_start(5):%Y-%m-%dT%H:%M}")  # end of day 4
    assert alert["fingerprint"] == fingerprint(labels)
    (resolved,) = _posted(receiver, "/hook", "resolved")
    assert resolved["alerts"][0]["endsAt"].startswith(f"{day_start(6):%Y-%m-%dT%H:%M}")

    # ... and so did Alertmanager, which routed both to its own receiver
    (am_fired,) = wait_until("Alertmanager's firing", lambda: _posted(receiver, "/am", "firing"))
    assert am_fired["alerts"][0]["labels"] == labels
    wait_until("Alertmanager's resolved", lambda: _posted(receiver, "/am", "resolved"))
    wait_until("Alertmanager to drop the alert", lambda: am.alerts() == [])

    # what the monitor kept: one event per change, and where the next pass starts
    folder = root / ".backline" / "monitor" / "fraud"
    events = [json.loads(line) for line in (folder / "alerts.jsonl").read_text().splitlines()]
    assert [e["state"] for e in events] == ["firing", "resolved"]
    state = json.loads((folder / "state.json").read_text())
    assert state["processed_until"] == day_start(6).isoformat()


PERFORMANCE_DROP = """
[[monitor.alerts]]
name = "PerformanceDrop"
metric = "performance.auc_pr_drop"
op = ">"
threshold = 0.2
severity = "critical"
retrain = true
"""


def test_concept_drift_is_caught_by_the_performance_path_once_labels_arrive(
    template: Path, scored: pa.Table, tmp_path: Path
) -> None:
    """`new_fraud` turns 30% of the legitimate online digital-goods transactions into fraud
    from replay day 0 on and leaves every input as it was. The same six logged days are
    monitored twice, in 3-day windows, with the plain labels and with the drifted ones: the
    first window passes before any label has arrived (nothing to judge), the labels arrive,
    the second window completes, and only the drifted labels make realised AUC-PR fall far
    below what the scores promised, fire PerformanceDrop and ask for retraining.

    Windows of 3 days: a day here is ~650 transactions with ~5 frauds, too few for an AUC-PR.
    The rows are scored offline with the served package (see `score_offline`); serving them
    through HTTP would cost 13-20 s a day (see the test above)."""
    plain = Replay.generate()
    drifted = Replay.generate(drift="new_fraud=account_takeover:0.3", drift_day=0)
    assert drifted.transactions.equals(plain.transactions)  # the inputs are untouched
    fraud = [
        int(pc.sum(pc.cast(r.labels.column("is_fraud"), pa.int64())).as_py())
        for r in (plain, drifted)
    ]
    assert fraud[1] > 1.5 * fraud[0]
    rows = scored

    outcome = {}
    for name, labels in (("plain", plain.labels), ("drifted", drifted.labels)):
        root = copy_project(template, tmp_path / name, PERFORMANCE_DROP, window='"3d"')
        monitor = Monitor(load_config(root))
        write_log(root, rows_of_days(rows, 0, 2))
        (before,) = monitor.run_once("fraud")
        assert [w.start for w in before.windows] == [day_start(0)]
        assert not any(k.startswith("performance.") for k in before.windows[0].metrics)
        assert before.windows[0].metrics["label_coverage"] == 0.0  # due, and not a label yet

        ingest_labels(root, labels)
        write_log(root, rows_of_days(rows, 3, 5))
        (after,) = monitor.run_once("fraud")
        assert [w.start for w in after.windows] == [day_start(3)]
        metrics = after.windows[0].metrics
        assert metrics["label_coverage"] == 1.0
        outcome[name] = (metrics["performance.auc_pr_drop"], after)
        requests = root / ".backline" / "monitor" / "fraud" / "retrain-requests.jsonl"
        lines = requests.read_text().splitlines() if requests.exists() else []
        if name == "plain":
            assert after.changes == [] and lines == []
        else:
            assert [(c.rule, c.after) for c in after.changes] == [("PerformanceDrop", State.FIRING)]
            assert after.retrain_requested
            assert [json.loads(line)["alerts"] for line in lines] == [["PerformanceDrop"]]
    assert outcome["drifted"][0] > outcome["plain"][0] + 0.2
