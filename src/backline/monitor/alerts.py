"""Alert rules as a pure state machine: each window's metrics go in, state changes come out.

    engine = AlertEngine(cfg.monitor.alerts, labels={"model": "fraud"})
    for change in engine.observe(window_end, {"drift.features_drifted": 3.0}):
        print(change.rule, change.before, "->", change.after)      # Drift inactive -> pending
    state_file.write_text(engine.to_json())                         # a restart goes on from here
    engine = AlertEngine.from_json(cfg.monitor.alerts, state_file.read_text())

Nothing here sends, sleeps or reads a clock to decide: the monitor hands over one window at a
time (its end, in event time, and its metrics as floats), and the notifiers (monitor/notify.py)
and the retrain hook act on what comes back.

Series. A rule names a metric (`drift.score`); the window may publish it once, bare, or once per
label set, keyed as ``series("drift.score", feature="amount")`` (written
``drift.score{feature="amount"}``). Every label set is its own alert with its own state, as a
Prometheus alerting rule does with each element of its result vector.

States, per rule and label set, and the exact meaning of `for` and `keep_firing_for` (both
counted in windows that carry the metric; a window is breaching when ``value op threshold``):

    inactive / resolved --breach--> pending            (fired at once when for = 0)
    pending  --breach, for + 1 breaching windows in a row--> firing
    pending  --clear--> inactive                       (the streak is broken; never notified)
    firing   --breach--> firing                        (a clear streak, if any, starts over)
    firing   --clear, keep_firing_for + 1 clear windows in a row--> resolved
    resolved --clear--> resolved

So `for = N` is Prometheus's ``for: N × window``: pending on the first breaching window, firing
on the (N+1)-th in a row; `keep_firing_for = K` resolves on the (K+1)-th clear window in a row.

No data. A window without the metric (or with NaN) leaves that series exactly as it was: it
neither breaks nor extends a streak. Performance metrics appear only once enough labels have
arrived, and a window that cannot say whether the model is fine must not resolve an alert that
says it is not. (Prometheus instead treats an absent series as resolved.)

Replays. A window that ends at or before the last one observed is ignored (``observe`` returns
no changes), so a monitor that crashed after observing a window but before saving its state can
hand the same window over again.
"""

from __future__ import annotations

import json
import math
import re
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from backline.core.config import AlertRuleSpec
from backline.core.errors import IntegrityError, InvalidArgument, StoreError

Rule = AlertRuleSpec
"""A rule is the validated [[monitor.alerts]] table itself (core/config.py)."""

Clock = Callable[[], datetime]
STATE_VERSION = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class State(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


# ---------------------------------------------------------------------------------------------
# Series keys: metric{label="value",...}
# ---------------------------------------------------------------------------------------------

_METRIC = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)*")
_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def series(metric: str, **labels: str) -> str:
    """The key of one labelled series of a metric, as ``observe`` reads it:
    ``series("drift.score", feature="amount")`` is ``'drift.score{feature="amount"}'``."""
    if not _METRIC.fullmatch(metric):
        raise InvalidArgument(
            f"metric name {metric!r} must be lower-case words joined by . or _, e.g. 'drift.score'."
        )
    return metric + _label_text(labels)


def parse_series(key: str) -> tuple[str, dict[str, str]]:
    """('drift.score', {'feature': 'amount'}) for 'drift.score{feature="amount"}'."""
    brace = key.find("{")
    metric, rest = (key, "") if brace < 0 else (key[:brace], key[brace:])
    if not _METRIC.fullmatch(metric) or (rest and not rest.endswith("}")):
        raise InvalidArgument(
            f"metric key {key!r} is not a metric name with optional labels; write it as "
            "'drift.score' or series('drift.score', feature='amount')."
        )
    labels: dict[str, str] = {}
    body, pos = rest[1:-1], 0
    while pos < len(body):
        match = _PAIR.match(body, pos)
        if not match or match.end() == pos:
            raise InvalidArgument(
                f'metric key {key!r}: labels must be written name="value", comma-separated; '
                "build the key with series(metric, name=value)."
            )
        labels[match[1]] = re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], match[2])
        pos = match.end()
    return metric, labels


def _label_text(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    for name in labels:
        if not _LABEL.fullmatch(name):
            raise InvalidArgument(
                f"label name {name!r} must be letters, digits and _ (not starting with a digit)."
            )
    escaped = {
        k: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        for k, v in labels.items()
    }
    return "{" + ",".join(f'{k}="{escaped[k]}"' for k in sorted(escaped)) + "}"


# ---------------------------------------------------------------------------------------------
# What the engine hands out
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One rule's alert for one label set, as notifiers send it and reports show it."""

    labels: Mapping[str, str]
    """alertname, severity, the engine's labels (model), the rule's labels, the series' labels."""

    annotations: Mapping[str, str]
    """The rule's annotations with $value, $threshold, $metric and $<label> filled in."""

    state: State
    starts_at: datetime
    """When it fired (the end of the window it fired in); for a pending alert, when it began."""

    ends_at: datetime | None
    """When it resolved (the end of the window it resolved in); None while it is active."""

    value: float | None
    """The metric in the latest window that carried it."""

    retrain: bool = False
    """The rule asks for retraining while this alert fires."""

    generator_url: str = ""

    @property
    def name(self) -> str:
        return self.labels["alertname"]

    @property
    def fingerprint(self) -> str:
        """Alertmanager's fingerprint of the label set (FNV-1a 64 as 16 hex digits), so the
        webhook payload and Alertmanager's API name the same alert the same way."""
        return fingerprint(self.labels)


@dataclass(frozen=True)
class Transition:
    """One rule's alert for one label set changed state at the end of a window."""

    rule: str
    before: State
    after: State
    window_end: datetime
    """The event-time end of the window that caused the change."""

    noticed_at: datetime
    """Wall time when the engine saw it (its clock)."""

    alert: Alert
    """The alert as it is after the change."""

    @property
    def notify(self) -> bool:
        """Whether a notifier should hear of it: it fired or it resolved."""
        return self.after in (State.FIRING, State.RESOLVED)


def fingerprint(labels: Mapping[str, str]) -> str:
    """Prometheus's label-set fingerprint: FNV-1a 64 over sorted name, 0xff, value, 0xff."""
    h = 0xCBF29CE484222325
    for name in sorted(labels):
        for chunk in (name.encode(), b"\xff", str(labels[name]).encode(), b"\xff"):
            for byte in chunk:
                h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


@dataclass
class _Track:
    """The mutable state of one rule for one label set."""

    state: State = State.INACTIVE
    active_at: datetime | None = None  # first window of the current breaching streak
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    breaching: int = 0  # breaching windows in a row (with data)
    clear: int = 0  # clear windows in a row while firing
    value: float | None = None
    labels: dict[str, str] = field(default_factory=dict)  # the series' own labels


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, t: v > t,
    ">=": lambda v, t: v >= t,
    "<": lambda v, t: v < t,
    "<=": lambda v, t: v <= t,
}


def breaches(rule: Rule, value: float) -> bool:
    """Whether `value` breaches the rule (`value op threshold`)."""
    return _OPS[rule.op](value, rule.threshold)


class AlertEngine:
    """Every rule's state, per label set; `observe` moves them on by one window."""

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        clock: Clock = utc_now,
        labels: Mapping[str, str] | None = None,
        generator_url: str = "",
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InvalidArgument(f"two alert rules are named {dup!r}; rename one.")
        self.rules = {r.name: r for r in rules}
        self.clock = clock
        self.labels = dict(labels or {})
        _label_text(self.labels)  # checks the names
        self.generator_url = generator_url
        self.last_window: datetime | None = None
        self._tracks: dict[str, dict[str, _Track]] = {name: {} for name in self.rules}

    # -- the one decision ----------------------------------------------------------------------

    def observe(self, window_end: datetime, metrics: Mapping[str, float]) -> list[Transition]:
        """Move every rule on by the window that ended at `window_end`; return what changed."""
        if window_end.tzinfo is None:
            raise InvalidArgument(
                f"window_end {window_end.isoformat()} has no timezone; pass a tz-aware UTC time."
            )
        window_end = window_end.astimezone(UTC)
        if self.last_window is not None and window_end <= self.last_window:
            return []  # a replay of a window already seen (see the module docstring)
        by_metric: dict[str, dict[str, tuple[dict[str, str], float]]] = {}
        for key, raw in metrics.items():
            metric, labels = parse_series(key)
            try:
                value = float(raw)
            except (TypeError, ValueError):
                raise InvalidArgument(
                    f"metric {key!r} = {raw!r} is not a number; pass a float per metric."
                ) from None
            if math.isnan(value):
                continue  # NaN is no data
            by_metric.setdefault(metric, {})[_label_text(labels)] = (labels, value)
        noticed = self.clock()
        changes: list[Transition] = []
        for name, rule in self.rules.items():
            tracks = self._tracks[name]
            for key, (labels, value) in by_metric.get(rule.metric, {}).items():
                track = tracks.get(key) or _Track(labels=labels)
                before = track.state
                _step(track, rule, breaches(rule, value), value, window_end)
                if track.state is State.INACTIVE:
                    tracks.pop(key, None)  # nothing left to remember
                else:
                    tracks[key] = track
                if track.state is not before:
                    alert = self._alert(rule, track)
                    changes.append(
                        Transition(name, before, track.state, window_end, noticed, alert)
                    )
        self.last_window = window_end
        return changes

    # -- what is active ------------------------------------------------------------------------

    def alerts(self, *states: State) -> list[Alert]:
        """The alerts in the given states (default: pending, firing and resolved)."""
        wanted = set(states or (State.PENDING, State.FIRING, State.RESOLVED))
        return [
            self._alert(self.rules[name], track)
            for name, tracks in self._tracks.items()
            for _, track in sorted(tracks.items())
            if track.state in wanted
        ]

    def firing(self) -> list[Alert]:
        """The alerts firing now: what the monitor resends each window, and what the retrain
        hook looks at."""
        return self.alerts(State.FIRING)

    def state_of(self, rule: str, **labels: str) -> State:
        """The state of one rule for one label set (inactive when never seen)."""
        if rule not in self.rules:
            raise InvalidArgument(f"no alert rule named {rule!r}; rules: {', '.join(self.rules)}.")
        track = self._tracks[rule].get(_label_text(labels))
        return track.state if track else State.INACTIVE

    def _alert(self, rule: Rule, track: _Track) -> Alert:
        labels = {**self.labels, **rule.labels, **track.labels}
        labels.update(alertname=rule.name, severity=rule.severity)
        fill = {
            **labels,
            "value": "" if track.value is None else f"{track.value:g}",
            "threshold": f"{rule.threshold:g}",
            "metric": rule.metric,
        }
        annotations = {
            k: string.Template(v).safe_substitute(fill) for k, v in rule.annotations.items()
        }
        active = track.state in (State.FIRING, State.RESOLVED)
        starts = track.fired_at if active else track.active_at
        assert starts is not None  # set on the first breaching window, before any transition
        return Alert(
            labels=labels,
            annotations=annotations,
            state=track.state,
            starts_at=starts,
            ends_at=track.resolved_at if track.state is State.RESOLVED else None,
            value=track.value,
            retrain=rule.retrain,
            generator_url=self.generator_url,
        )

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self) -> str:
        """Everything a restarted monitor needs to go on exactly where this one stopped."""
        rules = {
            name: {key: _track_json(t) for key, t in sorted(tracks.items())}
            for name, tracks in self._tracks.items()
        }
        doc = {
            "version": STATE_VERSION,
            "last_window": _iso(self.last_window),
            "rules": rules,
        }
        return json.dumps(doc, sort_keys=True, indent=1)

    @classmethod
    def from_json(
        cls,
        rules: Sequence[Rule],
        text: str,
        *,
        clock: Clock = utc_now,
        labels: Mapping[str, str] | None = None,
        generator_url: str = "",
    ) -> AlertEngine:
        """An engine for `rules` that goes on from a saved state. State saved for a rule that
        no longer exists is dropped; a new rule starts inactive."""
        engine = cls(rules, clock=clock, labels=labels, generator_url=generator_url)
        try:
            doc = json.loads(text)
            version = doc["version"]
            if isinstance(version, int) and version > STATE_VERSION:
                raise StoreError(
                    f"the alert state was written by a newer backline (state version {version}, "
                    f"this one reads {STATE_VERSION}). Upgrade backline."
                )
            if version != STATE_VERSION:
                raise ValueError(f"version {version!r}")
            engine.last_window = _parse_time(doc["last_window"])
            for name, tracks in doc["rules"].items():
                if name in engine.rules:
                    engine._tracks[name] = {k: _track_from(v) for k, v in tracks.items()}
        except StoreError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise IntegrityError(
                f"the saved alert state cannot be read ({type(exc).__name__}: {exc}). Delete the "
                "state file to start every alert inactive."
            ) from None
        return engine


def _step(track: _Track, rule: Rule, breach: bool, value: float, at: datetime) -> None:
    """One window with data for one series: the state machine of the module docstring."""
    track.value = value
    if breach:
        track.clear = 0
        if track.state in (State.INACTIVE, State.RESOLVED):
            track.breaching, track.active_at, track.resolved_at = 1, at, None
            track.fired_at = None
            track.state = State.PENDING
        elif track.state is State.PENDING:
            track.breaching += 1
        if track.state is State.PENDING and track.breaching > rule.for_:
            track.state, track.fired_at = State.FIRING, at
        return
    track.breaching = 0
    if track.state is State.PENDING:
        track.state = State.INACTIVE  # the track is dropped; its alert keeps active_at
    elif track.state is State.FIRING:
        track.clear += 1
        if track.clear > rule.keep_firing_for:
            track.state, track.resolved_at, track.clear = State.RESOLVED, at, 0


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _parse_time(text: Any) -> datetime | None:
    if text is None:
        return None
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"time {text!r} has no timezone")
    return value.astimezone(UTC)


def _track_json(t: _Track) -> dict[str, Any]:
    return {
        "state": t.state.value,
        "active_at": _iso(t.active_at),
        "fired_at": _iso(t.fired_at),
        "resolved_at": _iso(t.resolved_at),
        "breaching": t.breaching,
        "clear": t.clear,
        "value": t.value,
        "labels": t.labels,
    }


def _track_from(d: Mapping[str, Any]) -> _Track:
    value = d["value"]
    return _Track(
        state=State(d["state"]),
        active_at=_parse_time(d["active_at"]),
        fired_at=_parse_time(d["fired_at"]),
        resolved_at=_parse_time(d["resolved_at"]),
        breaching=int(d["breaching"]),
        clear=int(d["clear"]),
        value=None if value is None else float(value),
        labels={str(k): str(v) for k, v in d["labels"].items()},
    )


# ---------------------------------------------------------------------------------------------
# Retraining
# ---------------------------------------------------------------------------------------------


class RetrainTrigger:
    """Asks for retraining while an alert with retrain = true fires, at most once per cooldown.

        trigger = RetrainTrigger(cfg.monitor.retrain_cooldown, on_retrain=start_run)
        trigger.consider(engine.firing())      # each window, after observe()

    `on_retrain(alerts)` gets the firing alerts that asked. An alert that fires inside the
    cooldown is not forgotten: if it still fires once the cooldown has passed, the next
    `consider` asks then. If the hook raises, the exception propagates and the cooldown does not
    start, so the next window asks again.
    """

    def __init__(
        self,
        cooldown: timedelta,
        on_retrain: Callable[[Sequence[Alert]], object],
        *,
        clock: Clock = utc_now,
        last_at: datetime | None = None,
    ) -> None:
        if cooldown < timedelta(0):
            raise InvalidArgument(f"retrain cooldown {cooldown} must not be negative.")
        self.cooldown = cooldown
        self.on_retrain = on_retrain
        self.clock = clock
        self.last_at = last_at
        """When the hook was last called (saved with the monitor's state)."""

    def ready(self, now: datetime | None = None) -> bool:
        """Whether a request now would be let through."""
        now = now or self.clock()
        return self.last_at is None or now >= self.last_at + self.cooldown

    def consider(self, alerts: Iterable[Alert], now: datetime | None = None) -> bool:
        """Call the hook if a firing alert asks for retraining and the cooldown has passed;
        return whether it was called."""
        wanting = [a for a in alerts if a.retrain and a.state is State.FIRING]
        if not wanting:
            return False
        now = now or self.clock()
        if not self.ready(now):
            return False
        self.on_retrain(wanting)
        self.last_at = now
        return True
