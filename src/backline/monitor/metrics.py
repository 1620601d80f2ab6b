"""The monitor's Prometheus gauges: drift, label coverage, performance and alert states.

    metrics = MonitorMetrics(max_feature_labels=cfg.monitor.max_feature_labels)
    metrics.drift("fraud", {"amount": {"psi": 0.31, "ks": 0.12}, "country": {"chi2": 0.02}})
    metrics.features_drifted("fraud", 1)
    metrics.alert_states("fraud", engine.rules, engine.alerts())
    body = metrics.exposition()          # what a scrape of the monitor answers

Label cardinality is bounded. A model with 500 features would otherwise put 500 × tests series
into Prometheus, and features that come and go would leave stale series behind. Per model, only
the `max_feature_labels` features with the highest score (over their tests) get a series of
their own; the rest are folded into one ``feature="_other"`` series holding, per test, the
highest score among them. A feature named ``_other`` is always folded. Each `drift` call
replaces the model's previous series, so the count never grows past
``(max_feature_labels + 1) × tests`` per model.

Exported (the shipped rules in monitor/prometheus/ read these names):

    backline_drift_score{model,feature,test}          one drift statistic of one feature
    backline_features_drifted{model}                  features flagged in the latest window
    backline_label_coverage{model}                    share of predictions with a label
    backline_performance{model,metric,kind}           kind: realised, estimated, estimated_lower, estimated_upper
    backline_alert_state{model,alertname}             0 inactive or resolved, 1 pending, 2 firing
    backline_monitor_window_end_timestamp_seconds{model}   end of the latest window (event time)
    backline_monitor_last_run_timestamp_seconds{model}     when the monitor last finished a pass
    backline_alert_notifications_failed_total{notifier}    deliveries that failed after retries
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from backline.core.config import AlertRuleSpec
from backline.core.errors import InvalidArgument
from backline.monitor.alerts import Alert, State

RULES_FILE = Path(__file__).parent / "prometheus" / "backline.rules.yml"
"""The shipped Prometheus rules (latency, errors, rejections, drift); docs/alerts.md."""
RULES_TEST_FILE = RULES_FILE.with_name("backline.rules.test.yml")
"""Their unit tests: promtool test rules RULES_TEST_FILE."""

OTHER = "_other"
PERFORMANCE_KINDS = ("realised", "estimated", "estimated_lower", "estimated_upper")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATE_VALUE = {State.INACTIVE: 0, State.RESOLVED: 0, State.PENDING: 1, State.FIRING: 2}


def fold_features(
    scores: Mapping[str, Mapping[str, float]], limit: int
) -> dict[str, dict[str, float]]:
    """Keep the `limit` features with the highest score (their largest over tests; NaN counts
    lowest, ties go to the name first in order) and fold the rest into "_other", per test the
    largest of theirs. Pure, so the bound is tested without Prometheus."""
    if limit < 1:
        raise InvalidArgument(f"max_feature_labels = {limit} must be at least 1.")

    def top(feature: str) -> float:
        finite = [s for s in scores[feature].values() if not math.isnan(s)]
        return max(finite, default=-math.inf)

    named = sorted((f for f in scores if f != OTHER), key=lambda f: (-top(f), f))
    kept, folded = named[:limit], named[limit:]
    if OTHER in scores:
        folded.append(OTHER)
    out = {f: dict(scores[f]) for f in kept}
    if folded:
        by_test: dict[str, list[float]] = {}
        for feature in folded:
            for test, score in scores[feature].items():
                by_test.setdefault(test, []).append(score)
        out[OTHER] = {
            test: max((v for v in values if not math.isnan(v)), default=math.nan)
            for test, values in by_test.items()
        }
    return out


class MonitorMetrics:
    """The monitor's gauges in their own registry (several monitors in one process, as in the
    tests, do not collide)."""

    def __init__(self, max_feature_labels: int = 20) -> None:
        if max_feature_labels < 1:
            raise InvalidArgument(f"max_feature_labels = {max_feature_labels} must be at least 1.")
        self.max_feature_labels = max_feature_labels
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.drift_score = Gauge(
            "backline_drift_score",
            "A drift statistic of one feature in the latest window (feature _other: the highest "
            "among the features not labelled individually).",
            ["model", "feature", "test"],
            registry=r,
        )
        self.drifted = Gauge(
            "backline_features_drifted",
            "Features flagged as drifted in the latest window.",
            ["model"],
            registry=r,
        )
        self.coverage = Gauge(
            "backline_label_coverage",
            "Share of the predictions under evaluation that have a label.",
            ["model"],
            registry=r,
        )
        self.perf = Gauge(
            "backline_performance",
            "A performance metric: realised (from labels) or estimated (before labels arrive).",
            ["model", "metric", "kind"],
            registry=r,
        )
        self.alert_state = Gauge(
            "backline_alert_state",
            "State of each alert rule: 0 inactive or resolved, 1 pending, 2 firing (the highest "
            "over the rule's label sets).",
            ["model", "alertname"],
            registry=r,
        )
        self.window_end = Gauge(
            "backline_monitor_window_end_timestamp_seconds",
            "End of the latest window the monitor processed (Unix time).",
            ["model"],
            registry=r,
        )
        self.last_run = Gauge(
            "backline_monitor_last_run_timestamp_seconds",
            "When the monitor last finished a pass over new windows (Unix time, wall clock).",
            ["model"],
            registry=r,
        )
        self.notify_failures = Counter(
            "backline_alert_notifications_failed",
            "Alert deliveries that failed after every retry.",
            ["notifier"],
            registry=r,
        )
        self._drift_series: dict[str, set[tuple[str, str]]] = {}
        self._alert_series: dict[str, set[str]] = {}

    def drift(self, model: str, scores: Mapping[str, Mapping[str, float]]) -> None:
        """Replace the model's drift scores with this window's: feature -> {test: score}."""
        folded = fold_features(scores, self.max_feature_labels)
        now = {(f, t) for f, tests in folded.items() for t in tests}
        for feature, test in self._drift_series.get(model, set()) - now:
            self.drift_score.remove(model, feature, test)
        for feature, tests in folded.items():
            for test, score in tests.items():
                self.drift_score.labels(model, feature, test).set(score)
        self._drift_series[model] = now

    def features_drifted(self, model: str, count: int) -> None:
        self.drifted.labels(model).set(count)

    def label_coverage(self, model: str, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise InvalidArgument(f"label coverage {fraction} must be between 0 and 1.")
        self.coverage.labels(model).set(fraction)

    def performance(self, model: str, metric: str, kind: str, value: float) -> None:
        if kind not in PERFORMANCE_KINDS:
            raise InvalidArgument(
                f"performance kind {kind!r} must be one of {', '.join(PERFORMANCE_KINDS)}."
            )
        self.perf.labels(model, metric, kind).set(value)

    def alert_states(
        self, model: str, rules: Iterable[str | AlertRuleSpec], alerts: Iterable[Alert]
    ) -> None:
        """Set each rule's state gauge: the highest state over its label sets (0 when it has
        none). Rules no longer configured lose their series."""
        names = [r if isinstance(r, str) else r.name for r in rules]
        level = dict.fromkeys(names, 0)
        for alert in alerts:
            if alert.name in level:
                level[alert.name] = max(level[alert.name], _STATE_VALUE[alert.state])
        for gone in self._alert_series.get(model, set()) - set(names):
            self.alert_state.remove(model, gone)
        for name, value in level.items():
            self.alert_state.labels(model, name).set(value)
        self._alert_series[model] = set(names)

    def window_done(self, model: str, window_end: datetime) -> None:
        """The window that ended at `window_end` (event time) was processed."""
        self.window_end.labels(model).set(window_end.timestamp())

    def pass_done(self, model: str, at: datetime | None = None) -> None:
        """A monitoring pass finished (now, or `at`): the shipped BacklineMonitorStale alert
        fires when this stops moving."""
        self.last_run.labels(model).set((at or datetime.now(UTC)).timestamp())

    def notification_failed(self, notifier_kind: str) -> None:
        self.notify_failures.labels(notifier_kind).inc()

    def exposition(self) -> bytes:
        """The text a scrape gets."""
        return generate_latest(self.registry)
