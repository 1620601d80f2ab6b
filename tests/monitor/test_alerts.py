"""Alert rules: the [monitor] config, the state machine's exact semantics, restarts, retraining.

The state machine is pure (windows in, transitions out), so its properties are checked on
hypothesis-generated metric sequences: an alert never fires before `for + 1` breaching windows
in a row, never resolves while breaching, always fires or resolves once the streak is long
enough, ignores windows without data, and a restart from saved state equals never stopping.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from backline.core.config import (
    AlertRuleSpec,
    MonitorSection,
    NotifierSpec,
    declared_constraints,
    load_config,
    toml_key,
)
from backline.core.errors import ConfigError, IntegrityError, InvalidArgument, StoreError
from backline.monitor.alerts import (
    Alert,
    AlertEngine,
    RetrainTrigger,
    State,
    Transition,
    fingerprint,
    parse_series,
    series,
)

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(i: int) -> datetime:
    return T0 + timedelta(hours=i)


def rule(**kw: Any) -> AlertRuleSpec:
    fields: dict[str, Any] = {"name": "R", "metric": "m", "op": ">", "threshold": 1.0}
    fields.update(kw)
    return AlertRuleSpec(**fields)


def feed(engine: AlertEngine, values: list[float | None], metric: str = "m") -> list[Transition]:
    out: list[Transition] = []
    for i, v in enumerate(values):
        out += engine.observe(at(i), {} if v is None else {metric: v})
    return out


def edges(changes: list[Transition]) -> list[tuple[int, str, str]]:
    """(window index, before, after) of each change."""
    return [(int((c.window_end - T0) / timedelta(hours=1)), c.before, c.after) for c in changes]


# ---------------------------------------------------------------------------------------------
# [monitor] in backline.toml
# ---------------------------------------------------------------------------------------------


def _load(tmp_path: Path, text: str) -> MonitorSection:
    (tmp_path / "backline.toml").write_text(text)
    return load_config(tmp_path, env={}).monitor


def _error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    (tmp_path / "backline.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env=env or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_docs_example_loads_through_the_config_loader(tmp_path: Path) -> None:
    docs = (ROOT / "docs" / "alerts.md").read_text()
    block = re.search(r"```toml\n(.*?)```", docs, re.S)
    assert block
    monitor = _load(tmp_path, block[1])
    assert monitor.window == timedelta(hours=1) and monitor.window_rows is None
    assert monitor.retrain_cooldown == timedelta(days=1)
    drift = monitor.alerts[0]
    assert (drift.name, drift.metric, drift.op, drift.threshold) == (
        "FeatureDrift",
        "drift.features_drifted",
        ">=",
        1.0,
    )
    assert (drift.for_, drift.keep_firing_for, drift.labels) == (1, 2, {"team": "fraud"})
    assert [r.retrain for r in monitor.alerts] == [False, False, True, False]
    assert [n.kind for n in monitor.notify] == ["alertmanager", "webhook", "log"]
    assert monitor.notify[1].timeout == timedelta(seconds=5)


def test_defaults_and_a_window_of_rows(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == MonitorSection()
    monitor = _load(tmp_path, "[monitor]\nwindow = 10000\n")
    assert (monitor.window_rows, monitor.window_span) == (10000, None)
    monitor = load_config(tmp_path, env={"BACKLINE_MONITOR_WINDOW": "30m"}).monitor
    assert monitor.window_span == timedelta(minutes=30)


RULE = '[[monitor.alerts]]\nname = "Drift"\nmetric = "drift.score"\nop = ">"\nthreshold = 1\n'
NOTIFY = '[[monitor.notify]]\nkind = "webhook"\nurl = "http://127.0.0.1:9000/hook"\n'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            RULE.replace('op = ">"', 'op = "gt"'),
            "backline.toml: monitor.alerts[0].op = 'gt' must be one of >, >=, <, <=.",
        ),
        (
            RULE + "for = -1\n",
            "backline.toml: monitor.alerts[0].for = -1 must be at least 0.",
        ),
        (
            RULE + "keep_firing_for = -2\n",
            "backline.toml: monitor.alerts[0].keep_firing_for = -2 must be at least 0.",
        ),
        (
            RULE + "fro = 2\n",
            "backline.toml: unknown key 'monitor.alerts[0].fro'. Did you mean 'for'? Valid keys: "
            "name, metric, op, threshold, for, keep_firing_for, severity, labels, annotations, "
            "retrain.",
        ),
        (
            RULE.replace("threshold = 1\n", ""),
            "backline.toml: [monitor.alerts[0]] is missing 'threshold'. Add it, for example "
            "threshold = 1.",
        ),
        (
            RULE.replace("threshold = 1", 'threshold = "high"'),
            "backline.toml: monitor.alerts[0].threshold = 'high' must be a number. Fix that value.",
        ),
        (
            RULE + RULE,
            "backline.toml: two [[monitor.alerts]] are named 'Drift'; each rule keeps its own "
            "state under its name. Rename one (e.g. add Warning/Critical).",
        ),
        (
            RULE.replace("drift.score", "Drift Score"),
            "backline.toml: [[monitor.alerts]] name = 'Drift': metric = 'Drift Score' must be "
            'lower-case words joined by . or _, e.g. metric = "drift.features_drifted".',
        ),
        (
            RULE + 'labels = { alertname = "x" }\n',
            "backline.toml: [[monitor.alerts]] name = 'Drift': labels sets 'alertname', which the "
            "rule's own name and severity keys set. Remove it from labels.",
        ),
        (
            RULE + "labels = { team = 3 }\n",
            "backline.toml: monitor.alerts[0].labels.team = 3 must be a string in quotes. Fix "
            "that value.",
        ),
        (
            "[monitor]\nalerts = 3\n",
            "backline.toml: monitor.alerts = 3 must be tables, each written [[monitor.alerts]]. "
            "Fix that value.",
        ),
        (
            NOTIFY.replace("webhook", "slack"),
            "backline.toml: monitor.notify[0].kind = 'slack' must be one of alertmanager, "
            "webhook, log.",
        ),
        (
            NOTIFY.replace("http://127.0.0.1:9000/hook", "localhost:9000/hook"),
            "backline.toml: [[monitor.notify]] kind = \"webhook\": url = 'localhost:9000/hook' is "
            'not an http:// or https:// URL with a host. Write it as url = "http://HOST:PORT/PATH".',
        ),
        (
            '[[monitor.notify]]\nkind = "alertmanager"\n',
            'backline.toml: [[monitor.notify]] kind = "alertmanager" needs url, e.g. '
            'url = "http://127.0.0.1:9093".',
        ),
        (
            '[[monitor.notify]]\nkind = "alertmanager"\nurl = "http://am:9093/api/v2/alerts"\n',
            'backline.toml: [[monitor.notify]] kind = "alertmanager": url = '
            "'http://am:9093/api/v2/alerts' should be Alertmanager's base URL; backline adds "
            '/api/v2/alerts. Write url = "http://am:9093".',
        ),
        (
            '[[monitor.notify]]\nkind = "log"\n',
            'backline.toml: [[monitor.notify]] kind = "log" needs path, the file alerts are '
            'appended to, e.g. path = ".backline/alerts.jsonl".',
        ),
        (
            NOTIFY + "retries = 11\n",
            "backline.toml: monitor.notify[0].retries = 11 must be at least 0 and at most 10.",
        ),
        (
            "[monitor]\nwindow = 0\n",
            "backline.toml: monitor.window = 0 must be a positive row count such as 10000, or a "
            'duration such as "1h".',
        ),
        (
            '[monitor]\nwindow = "soon"\n',
            "backline.toml: monitor.window = 'soon' must be a duration such as '1h' or a row "
            "count such as 10000. Fix that value.",
        ),
        (
            '[monitor]\nexternal_url = "reports"\n',
            "backline.toml: monitor.external_url = 'reports' is not an http:// or https:// URL. "
            'Write it as "https://HOST/PATH", or leave it empty.',
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_key_value_and_fix(
    tmp_path: Path, text: str, expected: str
) -> None:
    assert _error(tmp_path, text) == expected


def test_rules_cannot_come_from_the_environment(tmp_path: Path) -> None:
    message = _error(tmp_path, "", env={"BACKLINE_MONITOR_ALERTS": "x"})
    assert message == (
        "environment variable BACKLINE_MONITOR_ALERTS: monitor.alerts is a list of tables; "
        "write it in backline.toml as [[monitor.alerts]] tables, not in a variable."
    )


def test_the_error_lines_docs_show_are_the_loaders(tmp_path: Path) -> None:
    """docs/configuration.md's example errors for [monitor] are what the loader says."""
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs.split("## Alert rules and notifiers", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"^error: (.*)$", section, re.M)
    inputs = [
        RULE.replace('op = ">"', 'op = ">=="'),
        RULE + RULE.replace("Drift", "Drift2") + "for = -1\n",
        NOTIFY.replace("webhook", "slack"),
        NOTIFY.replace("http://127.0.0.1:9000/hook", "localhost:9000/hook"),
    ]
    assert [_error(tmp_path, text) for text in inputs] == shown


def test_docs_list_every_declared_constraint_of_rules_and_notifiers() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs.split("## Alert rules and notifiers", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `(monitor\.[\w.]+)` \| (.+?) \|$", section, flags=re.M))
    expected = {
        f"monitor.{where}.{toml_key(key)}": text
        for where, cls in (("alerts", AlertRuleSpec), ("notify", NotifierSpec))
        for key, text in declared_constraints(cls).items()
    }
    assert rows == expected


def test_docs_tables_list_every_key_of_rules_and_notifiers() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs.split("## Alert rules and notifiers", 1)[1].split("\n## ", 1)[0]
    keys = {
        k
        for cell in re.findall(r"^\| (`[^|]+`) \|", section, re.M)
        for k in re.findall(r"`(\w+)`", cell)
    }
    for cls in (AlertRuleSpec, NotifierSpec):
        for name in typing.get_type_hints(cls):
            assert toml_key(name) in keys, name


# ---------------------------------------------------------------------------------------------
# The state machine, by example
# ---------------------------------------------------------------------------------------------


def test_for_n_fires_on_the_n_plus_first_breaching_window() -> None:
    engine = AlertEngine([rule(**{"for_": 2})])
    changes = feed(engine, [5, 5, 5, 5])
    assert edges(changes) == [(0, "inactive", "pending"), (2, "pending", "firing")]
    fired = changes[1].alert
    assert fired.state is State.FIRING and fired.starts_at == at(2) and fired.ends_at is None


def test_for_zero_fires_at_once_and_a_broken_streak_goes_back_to_inactive() -> None:
    engine = AlertEngine([rule(), rule(name="Slow", for_=3)])
    changes = feed(engine, [5, 5, 0, 5])
    by_rule = {name: [e for c, e in zip(changes, edges(changes), strict=True) if c.rule == name]
               for name in ("R", "Slow")}  # fmt: skip
    assert by_rule["R"] == [(0, "inactive", "firing"), (2, "firing", "resolved"),
                            (3, "resolved", "firing")]  # fmt: skip
    assert by_rule["Slow"] == [(0, "inactive", "pending"), (2, "pending", "inactive"),
                               (3, "inactive", "pending")]  # fmt: skip
    cancelled = next(c for c in changes if c.after is State.INACTIVE)
    assert not cancelled.notify  # a pending alert that never fired is never sent


def test_keep_firing_for_holds_through_clear_windows_and_a_breach_restarts_the_count() -> None:
    engine = AlertEngine([rule(keep_firing_for=2)])
    #              fire  clear clear breach clear clear clear
    changes = feed(engine, [5, 0, 0, 5, 0, 0, 0])
    assert edges(changes) == [(0, "inactive", "firing"), (6, "firing", "resolved")]
    resolved = changes[-1].alert
    assert resolved.state is State.RESOLVED
    assert (resolved.starts_at, resolved.ends_at) == (at(0), at(6))


@pytest.mark.parametrize(
    ("op", "threshold", "breaching", "clear"),
    [(">", 1, 1.5, 1.0), (">=", 1, 1.0, 0.5), ("<", 1, 0.5, 1.0), ("<=", 1, 1.0, 1.5)],
)
def test_each_op_compares_value_op_threshold(
    op: str, threshold: float, breaching: float, clear: float
) -> None:
    engine = AlertEngine([rule(op=op, threshold=threshold)])
    assert edges(feed(engine, [clear, breaching, clear])) == [
        (1, "inactive", "firing"),
        (2, "firing", "resolved"),
    ]


def test_a_window_without_the_metric_or_with_nan_changes_nothing() -> None:
    engine = AlertEngine([rule(for_=1, keep_firing_for=1)])
    values: list[float | None] = [5, None, math.nan, 5, None, 0, math.nan, None, 0]
    assert edges(feed(engine, values)) == [
        (0, "inactive", "pending"),
        (3, "pending", "firing"),  # the 2nd breaching window with data
        (8, "firing", "resolved"),  # the 2nd clear window with data
    ]


def test_a_window_already_seen_is_ignored() -> None:
    engine = AlertEngine([rule(for_=1)])
    assert edges(engine.observe(at(0), {"m": 5})) == [(0, "inactive", "pending")]
    assert engine.observe(at(0), {"m": 5}) == []  # replayed after a crash
    assert engine.observe(at(0) - timedelta(minutes=1), {"m": 5}) == []
    assert engine.state_of("R") is State.PENDING
    assert edges(engine.observe(at(1), {"m": 5})) == [(1, "pending", "firing")]


def test_each_label_set_is_its_own_alert_with_merged_labels_and_filled_annotations() -> None:
    drift = rule(
        name="Drift",
        metric="drift.score",
        threshold=0.5,
        severity="critical",
        labels={"team": "fraud", "model": "overridden"},
        annotations={"summary": "$feature: $metric = $value > $threshold ($missing)"},
        retrain=True,
    )
    engine = AlertEngine([drift], labels={"model": "fraud"}, generator_url="http://r/x")
    changes = engine.observe(
        at(0),
        {
            series("drift.score", feature="amount"): 0.75,
            series("drift.score", feature="country"): 0.1,
            "other.metric": 9.0,
        },
    )
    assert len(changes) == 1
    alert = changes[0].alert
    assert dict(alert.labels) == {
        "alertname": "Drift",
        "severity": "critical",
        "model": "overridden",  # the rule's labels over the engine's
        "team": "fraud",
        "feature": "amount",
    }
    assert alert.annotations == {"summary": "amount: drift.score = 0.75 > 0.5 ($missing)"}
    assert (alert.retrain, alert.generator_url, alert.value) == (True, "http://r/x", 0.75)
    assert engine.state_of("Drift", feature="amount") is State.FIRING
    assert engine.state_of("Drift", feature="country") is State.INACTIVE
    changes = engine.observe(at(1), {series("drift.score", feature="country"): 0.9})
    assert [(c.alert.labels["feature"], c.after) for c in changes] == [("country", "firing")]
    assert engine.state_of("Drift", feature="amount") is State.FIRING  # no data: held
    assert sorted(a.labels["feature"] for a in engine.firing()) == ["amount", "country"]


def test_transitions_carry_the_wall_time_the_engine_noticed_them() -> None:
    wall = datetime(2026, 3, 1, 12, tzinfo=UTC)
    engine = AlertEngine([rule()], clock=lambda: wall)
    (change,) = engine.observe(at(0), {"m": 5})
    assert (change.window_end, change.noticed_at) == (at(0), wall)


def test_bad_input_is_refused_with_the_value_and_the_fix() -> None:
    engine = AlertEngine([rule()])
    with pytest.raises(InvalidArgument, match="has no timezone"):
        engine.observe(datetime(2026, 1, 1), {"m": 1})
    with pytest.raises(InvalidArgument, match=r"metric 'm' = 'high' is not a number"):
        engine.observe(at(0), {"m": "high"})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument, match=r"metric key 'm\{x=1\}'"):
        engine.observe(at(0), {"m{x=1}": 1.0})
    with pytest.raises(InvalidArgument, match="no alert rule named 'Nope'"):
        engine.state_of("Nope")
    with pytest.raises(InvalidArgument, match="two alert rules are named 'R'"):
        AlertEngine([rule(), rule()])


@settings(max_examples=150, deadline=None)
@given(
    metric=st.from_regex(r"[a-z_][a-z0-9_]{0,5}(\.[a-z_][a-z0-9_]{0,5}){0,2}", fullmatch=True),
    labels=st.dictionaries(
        st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,6}", fullmatch=True),
        st.text(max_size=8),
        max_size=3,
    ),
)
def test_series_keys_round_trip_any_label_value(metric: str, labels: dict[str, str]) -> None:
    key = series(metric, **labels)
    assert parse_series(key) == (metric, labels)


def test_fingerprint_is_prometheus_fnv1a_of_the_sorted_label_set() -> None:
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis: the empty set
    a = fingerprint({"alertname": "X", "model": "fraud"})
    assert a == fingerprint({"model": "fraud", "alertname": "X"})
    assert a != fingerprint({"alertname": "X", "model": "fraud2"})
    assert re.fullmatch(r"[0-9a-f]{16}", a)


# ---------------------------------------------------------------------------------------------
# The state machine, by property
# ---------------------------------------------------------------------------------------------

_ALLOWED = {
    (State.INACTIVE, State.PENDING),
    (State.INACTIVE, State.FIRING),
    (State.RESOLVED, State.PENDING),
    (State.RESOLVED, State.FIRING),
    (State.PENDING, State.FIRING),
    (State.PENDING, State.INACTIVE),
    (State.FIRING, State.RESOLVED),
}
_VALUES = st.one_of(st.none(), st.just(math.nan), st.sampled_from([0.0, 0.5, 1.0]))


def _runs(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """Sequences made of runs (a value repeated 1-6 times), so streaks as long as `for` and
    `keep_firing_for` (up to 4) come up often, not only by chance."""
    runs = st.lists(st.tuples(element, st.integers(1, 6)), min_size=1, max_size=10)
    return runs.map(lambda rs: [v for v, n in rs for _ in range(n)])


_RULES = st.builds(
    lambda op, f, k: rule(op=op, threshold=0.5, for_=f, keep_firing_for=k),
    st.sampled_from([">", ">=", "<", "<="]),
    st.integers(0, 4),
    st.integers(0, 4),
)


def _breach(r: AlertRuleSpec, v: float) -> bool:
    return {">": v > 0.5, ">=": v >= 0.5, "<": v < 0.5, "<=": v <= 0.5}[r.op]


@settings(max_examples=300, deadline=None)
@given(r=_RULES, values=_runs(_VALUES))
def test_fire_and_resolve_exactly_when_the_streaks_say(
    r: AlertRuleSpec, values: list[float | None]
) -> None:
    engine = AlertEngine([r])
    flags: list[bool] = []  # breaching, per window with data
    state = State.INACTIVE
    for i, v in enumerate(values):
        changes = engine.observe(at(i), {} if v is None else {"m": v})
        if v is None or math.isnan(v):
            assert changes == [] and engine.state_of("R") is state  # no data: nothing moves
            continue
        flags.append(_breach(r, v))
        after = engine.state_of("R")
        if changes:
            (c,) = changes
            assert (c.before, c.after) == (state, after) and (state, after) in _ALLOWED
        else:
            assert after is state
        streak_b = len(flags) - next(
            (j + 1 for j in reversed(range(len(flags))) if not flags[j]), 0
        )
        streak_c = len(flags) - next((j + 1 for j in reversed(range(len(flags))) if flags[j]), 0)
        if after is State.FIRING and state is not State.FIRING:
            assert streak_b >= r.for_ + 1, "fired before for + 1 breaching windows in a row"
        if after is State.RESOLVED and state is State.FIRING:
            assert not flags[-1], "resolved on a breaching window"
            assert streak_c >= r.keep_firing_for + 1, "resolved inside keep_firing_for"
        if streak_b >= r.for_ + 1:
            assert after is State.FIRING, "for + 1 breaching windows in a row and not firing"
        if streak_c >= r.keep_firing_for + 1:
            assert after in (State.INACTIVE, State.RESOLVED), "still active after the hysteresis"
        if after is State.FIRING:
            assert streak_b >= 1 or streak_c <= r.keep_firing_for
        state = after


@settings(max_examples=200, deadline=None)
@given(
    r=_RULES,
    values=_runs(st.one_of(_VALUES, st.dictionaries(st.sampled_from("ab"), _VALUES))),
)
@example(r=rule(threshold=0.5, keep_firing_for=2), values=[1.0, 0.0, 0.0, 0.0])
def test_a_restart_after_any_window_equals_never_stopping(
    r: AlertRuleSpec, values: list[Any]
) -> None:
    """One engine runs straight through; another is saved to JSON and restored after every
    window (so every cut point is a restart). Both see the same changes and end equal."""

    def metrics(v: Any) -> dict[str, float]:
        if isinstance(v, dict):
            return {series("m", f=k): x for k, x in v.items() if x is not None}
        return {} if v is None else {"m": v}

    def seen(changes: list[Transition]) -> list[tuple[Any, ...]]:
        return [(c.before, c.after, c.window_end, tuple(sorted(c.alert.labels.items())),
                 c.alert.starts_at, c.alert.ends_at, c.alert.value) for c in changes]  # fmt: skip

    whole = AlertEngine([r], labels={"model": "fraud"})
    restarted = AlertEngine([r], labels={"model": "fraud"})
    for i, v in enumerate(values):
        text = restarted.to_json()
        json.loads(text)  # plain JSON
        restarted = AlertEngine.from_json([r], text, labels={"model": "fraud"})
        assert seen(restarted.observe(at(i), metrics(v))) == seen(whole.observe(at(i), metrics(v)))
        assert restarted.alerts() == whole.alerts()
    assert restarted.to_json() == whole.to_json()


def test_saved_state_of_a_removed_rule_is_dropped_and_a_new_rule_starts_inactive() -> None:
    engine = AlertEngine([rule(name="Old"), rule(name="Kept", for_=3)])
    engine.observe(at(0), {"m": 5})
    restored = AlertEngine.from_json(
        [rule(name="Kept", for_=3), rule(name="New")], engine.to_json()
    )
    assert restored.state_of("Kept") is State.PENDING
    assert restored.state_of("New") is State.INACTIVE
    assert "Old" not in json.loads(restored.to_json())["rules"]
    assert restored.observe(at(0), {"m": 5}) == []  # the last window came back too


def test_unreadable_or_newer_state_is_refused_with_the_fix() -> None:
    rules = [rule()]
    with pytest.raises(IntegrityError, match="Delete the state file"):
        AlertEngine.from_json(rules, "{not json")
    with pytest.raises(IntegrityError, match="Delete the state file"):
        AlertEngine.from_json(rules, json.dumps({"version": 1, "rules": {}}))
    good = json.loads(AlertEngine(rules).to_json())
    good["rules"]["R"] = {'{a="b"}': {"state": "exploded"}}
    with pytest.raises(IntegrityError):
        AlertEngine.from_json(rules, json.dumps(good))
    with pytest.raises(StoreError, match="newer backline"):
        AlertEngine.from_json(rules, json.dumps({"version": 99, "rules": {}, "last_window": None}))


# ---------------------------------------------------------------------------------------------
# Retraining
# ---------------------------------------------------------------------------------------------


def _alert(state: State = State.FIRING, retrain: bool = True, name: str = "Perf") -> Alert:
    return Alert(
        labels={"alertname": name, "severity": "critical"},
        annotations={},
        state=state,
        starts_at=T0,
        ends_at=None,
        value=1.0,
        retrain=retrain,
    )


def test_retrain_asks_once_per_cooldown_and_only_for_firing_retrain_alerts() -> None:
    calls: list[tuple[datetime, list[str]]] = []
    now = [T0]
    trigger = RetrainTrigger(
        timedelta(hours=6),
        on_retrain=lambda alerts: calls.append((now[0], [a.name for a in alerts])),
        clock=lambda: now[0],
    )
    assert not trigger.consider([_alert(retrain=False), _alert(State.PENDING)])
    assert trigger.consider([_alert(retrain=False, name="Drift"), _alert()])
    assert calls == [(T0, ["Perf"])]
    now[0] = T0 + timedelta(hours=5, minutes=59)
    assert not trigger.consider([_alert()])  # inside the cooldown
    now[0] = T0 + timedelta(hours=6)
    assert trigger.consider([_alert()])  # still firing once it has passed: asked again
    assert [c[0] for c in calls] == [T0, T0 + timedelta(hours=6)]


def test_a_hook_that_raises_does_not_start_the_cooldown() -> None:
    attempts: list[int] = []

    def hook(alerts: Any) -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("scheduler down")

    trigger = RetrainTrigger(timedelta(days=1), on_retrain=hook, clock=lambda: T0)
    with pytest.raises(RuntimeError):
        trigger.consider([_alert()])
    assert trigger.last_at is None
    assert trigger.consider([_alert()]) and trigger.last_at == T0
    with pytest.raises(InvalidArgument, match="must not be negative"):
        RetrainTrigger(timedelta(seconds=-1), on_retrain=hook)


@settings(max_examples=200, deadline=None)
@given(
    cooldown=st.integers(0, 10),
    steps=st.lists(st.tuples(st.integers(0, 6), st.booleans()), max_size=40),
    saved=st.integers(0, 40),
)
def test_the_hook_never_fires_twice_within_a_cooldown_and_never_misses_a_chance(
    cooldown: int, steps: list[tuple[int, bool]], saved: int
) -> None:
    calls: list[datetime] = []  # when the hook ran
    hits: list[int] = []

    def make(last_at: datetime | None) -> RetrainTrigger:
        return RetrainTrigger(
            timedelta(minutes=cooldown), on_retrain=lambda a: hits.append(1), last_at=last_at
        )

    trigger = make(None)
    now = T0
    for i, (gap, firing) in enumerate(steps):
        if i == saved:  # a restart: only last_at survives
            trigger = make(trigger.last_at)
        now += timedelta(minutes=gap)
        could = firing and (not calls or now - calls[-1] >= timedelta(minutes=cooldown))
        before = len(hits)
        asked = trigger.consider([_alert()] if firing else [], now=now)
        assert asked == could == (len(hits) == before + 1)
        if asked:
            calls.append(now)
    for a, b in itertools.pairwise(calls):
        assert b - a >= timedelta(minutes=cooldown)
