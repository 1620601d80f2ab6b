"""The shipped Prometheus rules pass promtool, and the monitor's gauges keep their label
cardinality bounded.

`promtool check rules` and `promtool test rules` run the file's own unit tests (marker
`promtool`); a planted change of a threshold makes those unit tests fail, so they can fail.
Every metric name the rules read is one the server or the monitor exports.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.core.errors import InvalidArgument
from backline.monitor.alerts import Alert, State
from backline.monitor.metrics import (
    OTHER,
    RULES_FILE,
    RULES_TEST_FILE,
    MonitorMetrics,
    fold_features,
)
from backline.serve.metrics import Metrics
from tests.conftest import find_binary

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def promtool(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> str:
    path = find_binary("promtool")
    assert path
    done = subprocess.run(
        [path, *args], input=stdin, capture_output=True, timeout=120, cwd=cwd, check=False
    )
    out = (done.stdout + done.stderr).decode()
    assert done.returncode == 0, out
    return out


@pytest.mark.promtool
def test_promtool_checks_the_rules() -> None:
    assert "SUCCESS: 13 rules found" in promtool("check", "rules", str(RULES_FILE))


@pytest.mark.promtool
def test_promtool_runs_the_rules_unit_tests() -> None:
    assert "SUCCESS" in promtool("test", "rules", str(RULES_TEST_FILE))


@pytest.mark.promtool
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("> 0.025", "> 0.05"),  # a laxer latency objective
        ("and backline:requests:error_ratio_1h", "or backline:requests:error_ratio_1h"),
        ('{test="psi"}', ""),  # drift on any test, not PSI
        ("backline_ready < 1", "sum(backline_ready) < 1"),  # one instance down goes unseen
    ],
)
def test_the_rules_unit_tests_catch_a_planted_change(tmp_path: Path, old: str, new: str) -> None:
    text = RULES_FILE.read_text()
    assert text.count(old) == 1, old
    (tmp_path / RULES_FILE.name).write_text(text.replace(old, new))
    shutil.copy(RULES_TEST_FILE, tmp_path)
    path = find_binary("promtool")
    assert path
    done = subprocess.run(
        [path, "test", "rules", RULES_TEST_FILE.name],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0 and b"FAILED" in done.stdout + done.stderr


@pytest.mark.promtool
def test_promtool_accepts_the_monitors_exposition() -> None:
    metrics = _filled(MonitorMetrics())
    promtool("check", "metrics", stdin=metrics.exposition())


def _exported_names(exposition: bytes) -> set[str]:
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition.decode(), re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_every_metric_the_rules_read_is_exported() -> None:
    exported = _exported_names(Metrics().exposition()) | _exported_names(
        MonitorMetrics().exposition()
    )
    used = set(re.findall(r"\bbackline_[a-z0-9_]+", RULES_FILE.read_text()))
    assert used and used <= exported, sorted(used - exported)
    assert {"backline_request_duration_seconds_bucket", "backline_requests_total"} <= used


def test_the_rules_ship_inside_the_package() -> None:
    import backline

    package = Path(backline.__file__).parent
    for path in (RULES_FILE, RULES_TEST_FILE):
        assert path.is_file() and package in path.parents


# ---------------------------------------------------------------------------------------------
# Gauges
# ---------------------------------------------------------------------------------------------


def _filled(m: MonitorMetrics) -> MonitorMetrics:
    m.drift("fraud", {"amount": {"psi": 0.3, "ks": 0.2}, "country": {"chi2": 4.0}})
    m.features_drifted("fraud", 1)
    m.label_coverage("fraud", 0.4)
    m.performance("fraud", "auc_pr", "realised", 0.5)
    m.performance("fraud", "auc_pr", "estimated_lower", 0.6)
    m.window_done("fraud", T0)
    m.pass_done("fraud", T0)
    m.notification_failed("webhook")
    return m


def _series(m: MonitorMetrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out = {}
    for family in m.registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_many_features_stay_within_the_label_bound_window_after_window() -> None:
    m = MonitorMetrics(max_feature_labels=5)
    tests = ("psi", "ks", "wasserstein")
    for window in range(4):  # each window a different set of 300 features
        scores = {
            f"f{window}_{i}": {t: (i * 7 % 300) / 300 + j / 1000 for j, t in enumerate(tests)}
            for i in range(300)
        }
        m.drift("fraud", scores)
        series = _series(m, "backline_drift_score")
        assert len(series) == (5 + 1) * len(tests)  # old windows' features are gone
        features = {dict(k)["feature"] for k in series}
        top = sorted(scores, key=lambda f: -max(scores[f].values()))[:5]
        assert features == {*top, OTHER}
        other = {dict(k)["test"]: v for k, v in series.items() if dict(k)["feature"] == OTHER}
        rest = [f for f in scores if f not in top]
        assert other == {t: max(scores[f][t] for f in rest) for t in tests}
    m.drift("other-model", {"a": {"psi": 1.0}})
    assert len(_series(m, "backline_drift_score")) == 6 * 3 + 1  # per model


_SCORES = st.dictionaries(
    st.sampled_from([f"f{i}" for i in range(12)] + [OTHER]),
    st.dictionaries(
        st.sampled_from(["psi", "ks", "chi2"]),
        st.one_of(st.floats(0, 10), st.just(math.nan)),
        min_size=1,
    ),
    max_size=12,
)


@settings(max_examples=100, deadline=None)
@given(scores=_SCORES, limit=st.integers(1, 8))
def test_folding_keeps_the_top_features_and_the_max_of_the_rest(
    scores: dict[str, dict[str, float]], limit: int
) -> None:
    out = fold_features(scores, limit)
    named = [f for f in out if f != OTHER]
    assert len(named) <= limit and len(out) <= limit + 1
    folded = [f for f in scores if f not in named]
    assert (OTHER in out) == bool(folded)

    def top(f: str) -> float:
        return max((v for v in scores[f].values() if not math.isnan(v)), default=-math.inf)

    for f in named:
        assert out[f] == scores[f] and f != OTHER
        assert all(top(f) >= top(g) for g in folded if g != OTHER)  # _other is always folded
    if folded:
        for test, value in out[OTHER].items():
            values = [scores[f][test] for f in folded if test in scores[f]]
            finite = [v for v in values if not math.isnan(v)]
            assert (math.isnan(value) and not finite) or value == max(finite)
        assert set(out[OTHER]) == {t for f in folded for t in scores[f]}


def _alert(name: str, state: State) -> Alert:
    labels = {"alertname": name, "severity": "warning"}
    return Alert(labels, {}, state, T0, None, 1.0)


def test_alert_state_gauge_is_the_highest_state_per_rule_and_forgets_removed_rules() -> None:
    m = MonitorMetrics()
    m.alert_states(
        "fraud",
        ["Drift", "Perf", "Quiet"],
        [
            _alert("Drift", State.PENDING),
            _alert("Drift", State.FIRING),
            _alert("Perf", State.RESOLVED),
        ],
    )
    got = {dict(k)["alertname"]: v for k, v in _series(m, "backline_alert_state").items()}
    assert got == {"Drift": 2.0, "Perf": 0.0, "Quiet": 0.0}
    m.alert_states("fraud", ["Drift"], [_alert("Drift", State.PENDING)])
    got = {dict(k)["alertname"]: v for k, v in _series(m, "backline_alert_state").items()}
    assert got == {"Drift": 1.0}


def test_gauges_hold_what_was_published_and_refuse_impossible_values() -> None:
    m = _filled(MonitorMetrics())
    assert _series(m, "backline_label_coverage") == {(("model", "fraud"),): 0.4}
    perf = _series(m, "backline_performance")
    assert perf[(("kind", "realised"), ("metric", "auc_pr"), ("model", "fraud"))] == 0.5
    stamps = _series(m, "backline_monitor_window_end_timestamp_seconds")
    assert stamps == {(("model", "fraud"),): T0.timestamp()}
    with pytest.raises(InvalidArgument, match="between 0 and 1"):
        m.label_coverage("fraud", 1.5)
    with pytest.raises(InvalidArgument, match="must be one of realised"):
        m.performance("fraud", "auc_pr", "guessed", 0.5)
    with pytest.raises(InvalidArgument, match="at least 1"):
        MonitorMetrics(max_feature_labels=0)
