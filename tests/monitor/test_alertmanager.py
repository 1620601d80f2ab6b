"""Alerts through a real Alertmanager (Debian's prometheus-alertmanager) to a real HTTP receiver.

The test starts Alertmanager on a free port with a config that routes every alert, grouped by
alertname, to a webhook receiver the test runs on loopback. An alert fired by the engine and
sent by AlertmanagerNotifier must show up in Alertmanager's API and reach the receiver; once
it resolves, both must say so. The payload Alertmanager sends is then compared with the one
WebhookNotifier sends for the same alert: same keys, same groupKey, same fingerprint.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from backline.core.config import AlertRuleSpec
from backline.monitor.alerts import AlertEngine, State, fingerprint
from backline.monitor.notify import AlertmanagerNotifier, WebhookNotifier, notify_all
from tests.conftest import find_binary
from tests.monitor.test_notify import Receiver

pytestmark = [pytest.mark.alertmanager, pytest.mark.http]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read() or b"null")


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy (Alertmanager acts on its own timers)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


class Alertmanager:
    def __init__(self, folder: Path, hook_url: str) -> None:
        binary = find_binary("alertmanager")
        assert binary
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = folder / "alertmanager.yml"
        config.write_text(
            "route:\n"
            "  receiver: hook\n"
            "  group_by: [alertname]\n"
            "  group_wait: 100ms\n"
            "  group_interval: 1s\n"
            "  repeat_interval: 1h\n"
            "receivers:\n"
            "  - name: hook\n"
            "    webhook_configs:\n"
            f"      - url: {hook_url}\n"
            "        send_resolved: true\n"
        )
        self.log = (folder / "alertmanager.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # one instance: no gossip port
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until("Alertmanager to be ready", self._ready)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"Alertmanager exited: {self.log.name}")
        with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
            return bool(answer.status == 200)

    def alerts(self) -> list[dict[str, Any]]:
        return list(_get(f"{self.url}/api/v2/alerts"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Alertmanager, Receiver]]:
    receiver = Receiver()
    am = Alertmanager(tmp_path, receiver.url + "/am")
    try:
        yield am, receiver
    finally:
        am.stop()
        receiver.close()


def _payloads(receiver: Receiver, status: str) -> list[dict[str, Any]]:
    return [body for path, body in receiver.requests if path == "/am" and body["status"] == status]


def test_an_alert_fires_and_resolves_through_a_real_alertmanager(
    stack: tuple[Alertmanager, Receiver],
) -> None:
    am, receiver = stack
    rule = AlertRuleSpec(
        name="FeatureDrift",
        metric="drift.features_drifted",
        op=">=",
        threshold=1,
        severity="warning",
        labels={"team": "fraud"},
        annotations={"summary": "$value features drifted"},
    )
    engine = AlertEngine([rule], labels={"model": "fraud"}, generator_url="http://r/fraud")
    notifier = AlertmanagerNotifier(am.url, ttl=timedelta(hours=1), retries=0)
    start = datetime.now(UTC) - timedelta(hours=2)

    changes = engine.observe(start, {"drift.features_drifted": 3})
    assert [c.after for c in changes] == [State.FIRING]
    (delivery,) = notify_all([notifier], changes, engine.firing())
    assert delivery.ok, delivery.error

    # Alertmanager holds it, with our labels and our fingerprint of them
    (held,) = wait_until("the alert in Alertmanager's API", am.alerts)
    labels = {
        "alertname": "FeatureDrift",
        "severity": "warning",
        "model": "fraud",
        "team": "fraud",
    }
    assert held["labels"] == labels
    assert held["annotations"] == {"summary": "3 features drifted"}
    assert held["status"]["state"] == "active"
    assert held["generatorURL"] == "http://r/fraud"
    assert held["fingerprint"] == fingerprint(labels)

    # ... and routes it to the webhook receiver
    (firing,) = wait_until("the firing notification", lambda: _payloads(receiver, "firing"))
    assert firing["version"] == "4" and firing["groupKey"] == '{}:{alertname="FeatureDrift"}'
    assert firing["alerts"][0]["labels"] == labels
    assert firing["alerts"][0]["fingerprint"] == fingerprint(labels)

    # a window later it is still firing (resent), then it clears and resolves
    changes = engine.observe(start + timedelta(hours=1), {"drift.features_drifted": 2})
    assert changes == [] and len(engine.firing()) == 1
    assert all(d.ok for d in notify_all([notifier], changes, engine.firing()))
    changes = engine.observe(start + timedelta(hours=2), {"drift.features_drifted": 0})
    assert [c.after for c in changes] == [State.RESOLVED]
    assert all(d.ok for d in notify_all([notifier], changes, engine.firing()))

    (resolved,) = wait_until("the resolved notification", lambda: _payloads(receiver, "resolved"))
    assert resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"].startswith(
        (start + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M")
    )
    wait_until("Alertmanager to drop the resolved alert", lambda: am.alerts() == [])


def test_our_webhook_payload_has_alertmanagers_shape(
    stack: tuple[Alertmanager, Receiver],
) -> None:
    """The same alert, sent by Alertmanager's webhook and by WebhookNotifier, arrives at the
    receiver with the same keys, groupKey, status, labels and fingerprint."""
    am, receiver = stack
    rule = AlertRuleSpec(name="Perf", metric="m", op=">", threshold=0, severity="critical")
    engine = AlertEngine([rule], labels={"model": "fraud"}, generator_url="http://r/perf")
    changes = engine.observe(datetime.now(UTC) - timedelta(minutes=5), {"m": 1})
    ours = WebhookNotifier(receiver.url + "/ours", receiver="hook")
    assert ours.send([c.alert for c in changes]).ok
    assert AlertmanagerNotifier(am.url).send(engine.firing()).ok
    theirs = wait_until("Alertmanager's notification", lambda: _payloads(receiver, "firing"))[0]
    (mine,) = [body for path, body in receiver.requests if path == "/ours"]

    def shape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(v) for v in value]
        return type(value).__name__

    assert shape(mine) == shape(theirs)
    for key in ("version", "groupKey", "status", "receiver", "groupLabels", "commonLabels"):
        assert mine[key] == theirs[key], key
    for key in ("status", "labels", "annotations", "generatorURL", "fingerprint"):
        assert mine["alerts"][0][key] == theirs["alerts"][0][key], key
    assert mine["alerts"][0]["endsAt"] == theirs["alerts"][0]["endsAt"] == "0001-01-01T00:00:00Z"
