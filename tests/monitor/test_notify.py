"""Notifiers against a real HTTP receiver on loopback: payload shapes, retries with backoff,
failures that are counted and kept instead of raised, and the log file.

Backoff waits go through an injected `sleep`, so no test sleeps.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backline.core.config import AlertRuleSpec, MonitorSection, NotifierSpec
from backline.core.errors import InvalidArgument
from backline.monitor.alerts import Alert, AlertEngine, State, fingerprint
from backline.monitor.metrics import MonitorMetrics
from backline.monitor.notify import (
    ZERO_TIME,
    AlertmanagerNotifier,
    LogNotifier,
    WebhookNotifier,
    build_notifiers,
    notify_all,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 2, 12, tzinfo=UTC)
pytestmark = pytest.mark.http


class Receiver:
    """A real HTTP server in a thread that records every POST and answers with the statuses
    it is told to (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, Any]] = []
        self.statuses: list[int] = []
        self.delay = 0.0
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.arrived:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append((self.path, json.loads(body)))
                    receiver.arrived.notify_all()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}" if status < 400 else b'{"error": "planted"}')

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout: float = 30.0) -> list[tuple[str, Any]]:
        """The requests once at least `count` have arrived."""
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"{len(self.requests)} of {count} requests arrived"
            )
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def alert(name: str = "Drift", state: State = State.FIRING, **labels: str) -> Alert:
    return Alert(
        labels={"alertname": name, "severity": "warning", "model": "fraud", **labels},
        annotations={"summary": f"{name} {labels}"},
        state=state,
        starts_at=T0,
        ends_at=T0 + timedelta(hours=3) if state is State.RESOLVED else None,
        value=2.0,
        generator_url="https://reports.example.com/fraud",
    )


def test_alertmanager_body_is_the_api_v2_shape_with_ttl_and_capped_times() -> None:
    n = AlertmanagerNotifier("http://am:9093/", ttl=timedelta(hours=4), clock=lambda: NOW)
    future = Alert(
        labels={"alertname": "F", "severity": "info"},
        annotations={},
        state=State.RESOLVED,
        starts_at=NOW + timedelta(days=1),
        ends_at=NOW + timedelta(days=2),
        value=None,
    )
    body = n.body([alert(), alert("Gone", State.RESOLVED), future])
    assert body[0] == {
        "labels": {"alertname": "Drift", "severity": "warning", "model": "fraud"},
        "annotations": {"summary": "Drift {}"},
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "2026-01-02T16:00:00Z",  # sent at 12:00, valid for the ttl
        "generatorURL": "https://reports.example.com/fraud",
    }
    assert (body[1]["startsAt"], body[1]["endsAt"]) == (
        "2026-01-01T00:00:00Z",
        "2026-01-01T03:00:00Z",
    )
    # times from the future (synthetic data) are capped at now, so it resolves at once
    assert (body[2]["startsAt"], body[2]["endsAt"]) == ("2026-01-02T12:00:00Z",) * 2
    assert "generatorURL" not in body[2]
    assert n.url == "http://am:9093"


def test_webhook_posts_the_alertmanager_v4_payload_per_alertname(receiver: Receiver) -> None:
    n = WebhookNotifier(
        receiver.url + "/hook", external_url="https://reports.example.com", clock=lambda: NOW
    )
    sent = [
        alert("Drift", feature="amount"),
        alert("Drift", State.RESOLVED, feature="country"),
        alert("Perf", State.RESOLVED),
        alert("Pending", State.PENDING),  # never sent
    ]
    delivery = n.send(sent)
    assert (delivery.ok, delivery.alerts, delivery.attempts) == (True, 3, 2)
    (path1, drift), (path2, perf) = receiver.wait_for(2)
    assert path1 == path2 == "/hook"
    assert set(drift) == {
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
        "commonLabels", "commonAnnotations", "externalURL", "alerts",
    }  # fmt: skip
    assert drift["version"] == "4" and drift["groupKey"] == '{}:{alertname="Drift"}'
    assert drift["status"] == "firing"  # one of its alerts still fires
    assert (drift["receiver"], drift["externalURL"]) == ("backline", "https://reports.example.com")
    assert drift["groupLabels"] == {"alertname": "Drift"}
    assert drift["commonLabels"] == {"alertname": "Drift", "severity": "warning", "model": "fraud"}
    assert drift["commonAnnotations"] == {}
    first, second = drift["alerts"]
    assert set(first) == {
        "status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint",
    }  # fmt: skip
    assert (first["status"], first["endsAt"]) == ("firing", ZERO_TIME)
    assert first["labels"]["feature"] == "amount"
    assert first["fingerprint"] == fingerprint(first["labels"])
    assert (second["status"], second["endsAt"]) == ("resolved", "2026-01-01T03:00:00Z")
    assert perf["status"] == "resolved" and perf["commonAnnotations"] == {"summary": "Perf {}"}


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(receiver: Receiver) -> None:
    receiver.statuses = [503, 429, 200]
    sleeps = Sleeps()
    n = AlertmanagerNotifier(receiver.url, retries=3, sleep=sleeps)
    delivery = n.send([alert()])
    assert (delivery.ok, delivery.attempts, delivery.error) == (True, 3, None)
    assert sleeps == [0.5, 1.0]
    assert [p for p, _ in receiver.requests] == ["/api/v2/alerts"] * 3
    assert (n.failures, n.backlog) == (0, [])


def test_a_receiver_that_keeps_failing_is_counted_kept_and_sent_first_next_time(
    receiver: Receiver,
) -> None:
    receiver.statuses = [500, 500, 500]
    sleeps = Sleeps()
    n = WebhookNotifier(receiver.url, retries=2, sleep=sleeps)
    delivery = n.send([alert("Drift")])
    assert (delivery.ok, delivery.attempts) == (False, 3)
    assert delivery.error and "HTTP 500" in delivery.error and "planted" in delivery.error
    assert sleeps == [0.5, 1.0] and n.failures == 1
    assert [a.name for a in n.backlog] == ["Drift"]
    # next window: the receiver is back; the kept alert goes too, in its newest state
    delivery = n.send([alert("Drift", State.RESOLVED), alert("Perf")])
    assert delivery.ok and delivery.alerts == 2 and n.backlog == []
    bodies = [b for _, b in receiver.wait_for(5)[3:]]
    assert [(b["groupLabels"]["alertname"], b["status"]) for b in bodies] == [
        ("Drift", "resolved"),
        ("Perf", "firing"),
    ]


def test_a_failed_delivery_is_counted_in_the_gauges(receiver: Receiver) -> None:
    receiver.statuses = [500]
    gauges = MonitorMetrics()
    rules = [AlertRuleSpec(name="Drift", metric="m", op=">", threshold=1)]
    engine = AlertEngine(rules)
    changes = engine.observe(T0, {"m": 5})
    hook = WebhookNotifier(receiver.url, retries=0)
    (failed,) = notify_all([hook], changes, engine.firing(), metrics=gauges)
    assert not failed.ok
    (ok,) = notify_all([hook], [], engine.firing(), metrics=gauges)  # the backlog goes through
    assert ok.ok and ok.alerts == 1
    text = gauges.exposition().decode()
    assert 'backline_alert_notifications_failed_total{notifier="webhook"} 1.0' in text


def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [400]
    sleeps = Sleeps()
    n = AlertmanagerNotifier(receiver.url, retries=3, sleep=sleeps)
    delivery = n.send([alert()])
    assert (delivery.ok, delivery.attempts, sleeps) == (False, 1, [])
    assert delivery.error and "HTTP 400" in delivery.error


def closed_port_url() -> str:
    """A loopback URL nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def test_nothing_listening_and_a_timeout_fail_without_raising(receiver: Receiver) -> None:
    sleeps = Sleeps()
    n = WebhookNotifier(closed_port_url(), retries=3, sleep=sleeps)
    delivery = n.send([alert()])
    assert not delivery.ok and delivery.attempts == 4 and sleeps == [0.5, 1.0, 2.0]
    assert delivery.error and "refused" in delivery.error.lower()
    receiver.delay = 1.0
    n = WebhookNotifier(receiver.url, retries=0, timeout=0.1)
    delivery = n.send([alert()])
    assert not delivery.ok and delivery.error and "timed out" in delivery.error


def test_the_backlog_is_bounded_and_drops_the_oldest() -> None:
    n = WebhookNotifier("http://127.0.0.1:9/x", retries=0, max_backlog=2, sleep=Sleeps())

    def refuse(alerts: list[Alert]) -> None:
        raise OSError("down")

    n.deliver = refuse  # type: ignore[method-assign]
    n.send([alert(f"A{i}") for i in range(5)])
    assert [a.name for a in n.backlog] == ["A3", "A4"] and n.dropped == 3


def test_log_notifier_appends_json_lines_and_survives_an_unwritable_path(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "alerts.jsonl"
    n = LogNotifier(path, clock=lambda: NOW, sleep=Sleeps())
    assert n.send([alert(), alert("Perf", State.RESOLVED), alert("P", State.PENDING)]).ok
    assert n.send([]).attempts == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["labels"]["alertname"], x["status"]) for x in lines] == [
        ("Drift", "firing"),
        ("Perf", "resolved"),
    ]
    assert lines[0]["time"] == "2026-01-02T12:00:00Z" and lines[0]["endsAt"] is None
    assert lines[1]["endsAt"] == "2026-01-01T03:00:00Z" and lines[1]["value"] == 2.0
    blocked = LogNotifier(tmp_path, retries=1, sleep=Sleeps())  # a folder, not a file
    delivery = blocked.send([alert()])
    assert not delivery.ok and "IsADirectoryError" in str(delivery.error)
    assert blocked.failures == 1 and len(blocked.backlog) == 1


def test_notify_all_resends_firing_alerts_only_to_alertmanager(
    receiver: Receiver, tmp_path: Path
) -> None:
    rules = [AlertRuleSpec(name="Drift", metric="m", op=">", threshold=1)]
    engine = AlertEngine(rules, labels={"model": "fraud"})
    am = AlertmanagerNotifier(receiver.url, clock=lambda: NOW)
    log = LogNotifier(tmp_path / "a.jsonl")
    for i, value in enumerate([5, 5, 0]):
        changes = engine.observe(T0 + timedelta(hours=i), {"m": value})
        assert all(d.ok for d in notify_all([am, log], changes, engine.firing()))
    posted = [body for _, body in receiver.wait_for(3)]
    # fired, still firing (resent), resolved
    assert [len(b) for b in posted] == [1, 1, 1]
    assert posted[1][0]["endsAt"] > "2026-01-02T12:00:00Z"
    assert posted[2][0]["endsAt"] == "2026-01-01T02:00:00Z"
    statuses = [json.loads(x)["status"] for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert statuses == ["firing", "resolved"]  # the log hears only the changes


def test_notifiers_are_built_from_the_monitor_section(tmp_path: Path) -> None:
    section = MonitorSection(
        window=timedelta(hours=2),
        external_url="https://r.example.com",
        notify=(
            NotifierSpec(kind="alertmanager", url="http://am:9093", retries=5),
            NotifierSpec(kind="webhook", url="http://hook:1/x", timeout=timedelta(seconds=2)),
            NotifierSpec(kind="log", path=".backline/alerts.jsonl"),
        ),
    )
    am, hook, log = build_notifiers(section, root=tmp_path)
    assert isinstance(am, AlertmanagerNotifier) and am.ttl == timedelta(hours=8)
    assert am.retries == 5 and am.resend_firing
    assert isinstance(hook, WebhookNotifier) and hook.timeout == 2.0
    assert hook.external_url == "https://r.example.com" and not hook.resend_firing
    assert isinstance(log, LogNotifier) and log.path == tmp_path / ".backline/alerts.jsonl"
    rows = MonitorSection(window=5000, notify=section.notify[:1])
    (am_rows,) = build_notifiers(rows, root=tmp_path)
    assert isinstance(am_rows, AlertmanagerNotifier) and am_rows.ttl == timedelta(days=1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="must start with http"):
        WebhookNotifier("ftp://x")
    with pytest.raises(InvalidArgument, match="timeout"):
        WebhookNotifier("http://x", timeout=0)
    with pytest.raises(InvalidArgument, match="must not be negative"):
        LogNotifier(Path("x"), retries=-1)
