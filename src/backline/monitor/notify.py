"""Notifiers: where alerts go when they fire or resolve.

    notifiers = build_notifiers(cfg.monitor, root=cfg.root)
    changes = engine.observe(window_end, metrics)
    deliveries = notify_all(notifiers, changes, engine.firing(), metrics=gauges)
    failed = [d for d in deliveries if not d.ok]       # counted, logged; the monitor goes on

Three kinds, one per ``[[monitor.notify]]`` table:

- `AlertmanagerNotifier` POSTs to ``{url}/api/v2/alerts`` the list Alertmanager's API takes
  (labels, annotations, startsAt, endsAt, generatorURL). Alertmanager forgets a firing alert
  that is not sent again before its endsAt, so this notifier gets every firing alert each
  window (not only the changes), with endsAt = now + `ttl`, as Prometheus does.
- `WebhookNotifier` POSTs Alertmanager's webhook payload (version "4": groupKey, status,
  receiver, groupLabels, commonLabels, commonAnnotations, externalURL, alerts with status,
  labels, annotations, startsAt, endsAt, generatorURL, fingerprint), one POST per alertname, so
  a receiver written for Alertmanager reads it unchanged. It gets only the changes.
- `LogNotifier` appends one JSON line per change to a file.

Times are the alert's event times (the end of the window it fired or resolved in), capped at the
notifier's clock, so an alert replayed from old windows resolves at once in Alertmanager.

Failure never stops the monitor. A delivery that fails (a refused connection, a timeout, an
HTTP 5xx or 429) is tried again `retries` times, 0.5 s, 1 s, 2 s ... apart; an HTTP 4xx other
than 429 is not retried, since the same body would be refused again. A batch that still fails
is kept and sent first next time (the newest state of each alert wins; beyond `max_backlog`
alerts the oldest are dropped and counted), `failures` is counted, a warning is logged, and
`send` returns a `Delivery` with ok = False.
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backline.core.config import MonitorSection, NotifierSpec
from backline.core.errors import InvalidArgument
from backline.monitor.alerts import Alert, Clock, State, Transition, utc_now
from backline.monitor.metrics import MonitorMetrics

log = logging.getLogger("backline.monitor.notify")

#: What Alertmanager's webhook writes as the endsAt of an alert that has not ended.
ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class Delivery:
    """The outcome of one `send`."""

    notifier: str
    """Which notifier, e.g. 'webhook http://127.0.0.1:9000/hook'."""

    alerts: int
    """Alerts it tried to deliver (this call's and the backlog's)."""

    ok: bool
    attempts: int
    """Attempts made, over all batches; 0 when there was nothing to send."""

    error: str | None = None
    """The last failure, when not ok."""


class DeliveryFailed(Exception):
    """One attempt failed; `retry` says whether another attempt could succeed."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


class Notifier(ABC):
    """Sends alerts somewhere, retrying with backoff, never raising for a failed delivery."""

    kind: str = ""
    resend_firing: bool = False
    """Whether it wants every firing alert each window (Alertmanager), not only the changes."""

    def __init__(
        self,
        *,
        retries: int = 3,
        backoff: float = 0.5,
        max_backlog: int = 1000,
        clock: Clock = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if retries < 0 or backoff < 0 or max_backlog < 0:
            raise InvalidArgument(
                f"retries = {retries}, backoff = {backoff} and max_backlog = {max_backlog} must "
                "not be negative."
            )
        self.retries = retries
        self.backoff = backoff
        self.max_backlog = max_backlog
        self.clock = clock
        self.sleep = sleep
        self.failures = 0
        """Deliveries that failed after every retry."""
        self.dropped = 0
        """Undelivered alerts dropped because the backlog was full."""
        self.backlog: list[Alert] = []
        """Alerts whose delivery failed, sent first next time."""

    @property
    def name(self) -> str:
        return f"{self.kind} {self.target}"

    @property
    @abstractmethod
    def target(self) -> str:
        """Where it sends: a URL or a path."""

    def batches(self, alerts: list[Alert]) -> list[list[Alert]]:
        """How alerts are split into deliveries (one by default)."""
        return [alerts]

    @abstractmethod
    def deliver(self, alerts: list[Alert]) -> None:
        """One attempt at one batch; raise DeliveryFailed (or OSError) when it did not arrive."""

    def send(self, alerts: Iterable[Alert]) -> Delivery:
        """Deliver the backlog and the firing and resolved ones of `alerts`; never raises for a
        failed delivery."""
        fresh = [a for a in alerts if a.state in (State.FIRING, State.RESOLVED)]
        todo = _newest(self.backlog + fresh)
        self.backlog = []
        if not todo:
            return Delivery(self.name, 0, True, 0)
        attempts, error = 0, None
        for batch in self.batches(todo):
            tried, problem = self._attempt(batch)
            attempts += tried
            if problem is not None:
                error = problem
                self._keep(batch)
        if error is not None:
            self.failures += 1
            log.warning(
                "%s: %d alert(s) not delivered after %d attempt(s): %s",
                self.name,
                len(self.backlog),
                attempts,
                error,
            )
        return Delivery(self.name, len(todo), error is None, attempts, error)

    def _attempt(self, batch: list[Alert]) -> tuple[int, str | None]:
        problem = "not tried"
        for attempt in range(self.retries + 1):
            try:
                self.deliver(batch)
                return attempt + 1, None
            except DeliveryFailed as exc:
                problem = str(exc)
                if not exc.retry:
                    return attempt + 1, problem
            except OSError as exc:  # refused, unreachable, timed out, disk full
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.retries:
                self.sleep(self.backoff * 2**attempt)
        return self.retries + 1, problem

    def _keep(self, batch: list[Alert]) -> None:
        self.backlog = _newest(self.backlog + batch)
        over = len(self.backlog) - self.max_backlog
        if over > 0:
            self.dropped += over
            self.backlog = self.backlog[over:]

    def _now(self) -> datetime:
        return self.clock().astimezone(UTC)


def _newest(alerts: list[Alert]) -> list[Alert]:
    """One alert per label set, the last one given, in first-seen order."""
    latest: dict[str, Alert] = {}
    for alert in alerts:
        latest[alert.fingerprint] = alert
    return list(latest.values())


def _time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------------------------


def post_json(url: str, body: Any, timeout: float) -> None:
    """POST `body` as JSON; raise DeliveryFailed unless the answer is 2xx."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "backline-monitor"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
    except urllib.error.HTTPError as exc:
        text = exc.read()[:300].decode(errors="replace").strip()
        retry = exc.code >= 500 or exc.code == 429
        raise DeliveryFailed(f"HTTP {exc.code} from {url}: {text}", retry=retry) from None
    except urllib.error.URLError as exc:
        raise DeliveryFailed(f"{url}: {exc.reason}", retry=True) from None
    except (TimeoutError, ConnectionError) as exc:
        raise DeliveryFailed(f"{url}: {type(exc).__name__} {exc}", retry=True) from None


class _HttpNotifier(Notifier):
    def __init__(self, url: str, *, timeout: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not url.startswith(("http://", "https://")):
            raise InvalidArgument(f"notifier url {url!r} must start with http:// or https://.")
        if timeout <= 0:
            raise InvalidArgument(f"notifier timeout {timeout} must be above 0 seconds.")
        self.url = url.rstrip("/") if self.kind == "alertmanager" else url
        self.timeout = timeout

    @property
    def target(self) -> str:
        return self.url


class AlertmanagerNotifier(_HttpNotifier):
    """Alertmanager's API: ``POST {url}/api/v2/alerts``.

    AlertmanagerNotifier("http://127.0.0.1:9093", ttl=timedelta(hours=4)).send(alerts)
    """

    kind = "alertmanager"
    resend_firing = True

    def __init__(self, url: str, *, ttl: timedelta = timedelta(hours=4), **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        if ttl <= timedelta(0):
            raise InvalidArgument(f"Alertmanager ttl {ttl} must be above 0.")
        self.ttl = ttl
        """A firing alert's endsAt is the time it was sent plus this: if the monitor stops
        sending, Alertmanager resolves it then."""

    def body(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        now = self._now()
        out = []
        for alert in alerts:
            ends = alert.ends_at if alert.state is State.RESOLVED else None
            end = min(ends, now) if ends is not None else now + self.ttl
            item: dict[str, Any] = {
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": _time(min(alert.starts_at, end, now)),
                "endsAt": _time(end),
            }
            if alert.generator_url:
                item["generatorURL"] = alert.generator_url
            out.append(item)
        return out

    def deliver(self, alerts: list[Alert]) -> None:
        post_json(f"{self.url}/api/v2/alerts", self.body(alerts), self.timeout)


class WebhookNotifier(_HttpNotifier):
    """Any HTTP receiver, sent the body Alertmanager's webhook_config sends (version 4).

    WebhookNotifier("http://127.0.0.1:9000/hook", receiver="backline").send(alerts)
    """

    kind = "webhook"

    def __init__(
        self, url: str, *, receiver: str = "backline", external_url: str = "", **kwargs: Any
    ) -> None:
        super().__init__(url, **kwargs)
        self.receiver = receiver
        self.external_url = external_url

    def batches(self, alerts: list[Alert]) -> list[list[Alert]]:
        groups: dict[str, list[Alert]] = {}
        for alert in alerts:
            groups.setdefault(alert.name, []).append(alert)
        return list(groups.values())

    def body(self, alerts: Sequence[Alert]) -> dict[str, Any]:
        """The payload for one group (alerts sharing an alertname)."""
        now = self._now()
        name = alerts[0].name
        items = []
        for alert in alerts:
            resolved = alert.state is State.RESOLVED and alert.ends_at is not None
            end = min(alert.ends_at, now) if resolved and alert.ends_at else None
            items.append(
                {
                    "status": "resolved" if resolved else "firing",
                    "labels": dict(alert.labels),
                    "annotations": dict(alert.annotations),
                    "startsAt": _time(min(alert.starts_at, now)),
                    "endsAt": _time(end) if end else ZERO_TIME,
                    "generatorURL": alert.generator_url,
                    "fingerprint": alert.fingerprint,
                }
            )
        firing = any(item["status"] == "firing" for item in items)
        group_labels = {"alertname": name}
        return {
            "version": "4",
            "groupKey": '{}:{alertname="%s"}' % name.replace('"', '\\"'),  # noqa: UP031
            "truncatedAlerts": 0,
            "status": "firing" if firing else "resolved",
            "receiver": self.receiver,
            "groupLabels": group_labels,
            "commonLabels": _common([a.labels for a in alerts]),
            "commonAnnotations": _common([a.annotations for a in alerts]),
            "externalURL": self.external_url,
            "alerts": items,
        }

    def deliver(self, alerts: list[Alert]) -> None:
        post_json(self.url, self.body(alerts), self.timeout)


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The pairs every map has in common."""
    first = dict(maps[0])
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


# ---------------------------------------------------------------------------------------------
# Log file
# ---------------------------------------------------------------------------------------------


class LogNotifier(Notifier):
    """Appends one JSON line per alert change to a file (made with its folder if missing).

    LogNotifier(Path(".backline/alerts.jsonl")).send(alerts)
    """

    kind = "log"

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)

    @property
    def target(self) -> str:
        return str(self.path)

    def line(self, alert: Alert) -> str:
        return json.dumps(
            {
                "time": _time(self._now()),
                "status": alert.state.value,
                "labels": dict(alert.labels),
                "annotations": dict(alert.annotations),
                "startsAt": _time(alert.starts_at),
                "endsAt": _time(alert.ends_at) if alert.ends_at else None,
                "value": alert.value,
                "fingerprint": alert.fingerprint,
            },
            sort_keys=True,
        )

    def deliver(self, alerts: list[Alert]) -> None:
        text = "".join(self.line(a) + "\n" for a in alerts)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------
# From backline.toml
# ---------------------------------------------------------------------------------------------


def build_notifier(
    spec: NotifierSpec,
    *,
    root: Path,
    ttl: timedelta = timedelta(hours=4),
    external_url: str = "",
    clock: Clock = utc_now,
    sleep: Callable[[float], None] = time.sleep,
) -> Notifier:
    """The notifier one [[monitor.notify]] table describes; a log path is relative to `root`."""
    common: dict[str, Any] = {"retries": spec.retries, "clock": clock, "sleep": sleep}
    timeout = spec.timeout.total_seconds()
    if spec.kind == "alertmanager":
        return AlertmanagerNotifier(spec.url, ttl=ttl, timeout=timeout, **common)
    if spec.kind == "webhook":
        return WebhookNotifier(spec.url, external_url=external_url, timeout=timeout, **common)
    return LogNotifier(root / spec.path, **common)


def build_notifiers(
    section: MonitorSection,
    *,
    root: Path,
    clock: Clock = utc_now,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Notifier]:
    """Every notifier of [monitor]. Alertmanager's ttl is 4 windows (as Prometheus resends
    within 4 evaluation intervals), or a day when windows are counted in rows."""
    span = section.window_span
    ttl = 4 * span if span is not None else timedelta(days=1)
    return [
        build_notifier(
            spec, root=root, ttl=ttl, external_url=section.external_url, clock=clock, sleep=sleep
        )
        for spec in section.notify
    ]


def notify_all(
    notifiers: Sequence[Notifier],
    changes: Sequence[Transition],
    firing: Sequence[Alert] = (),
    *,
    metrics: MonitorMetrics | None = None,
) -> list[Delivery]:
    """Send one window's outcome: the alerts that fired or resolved to every notifier, and the
    ones still firing to those that want them resent (Alertmanager). A failed delivery is
    counted in `metrics` (backline_alert_notifications_failed_total{notifier=KIND})."""
    changed = [t.alert for t in changes if t.notify]
    out = []
    for notifier in notifiers:
        alerts = changed + list(firing) if notifier.resend_firing else changed
        delivery = notifier.send(alerts)
        if not delivery.ok and metrics is not None:
            metrics.notification_failed(notifier.kind)
        out.append(delivery)
    return out
