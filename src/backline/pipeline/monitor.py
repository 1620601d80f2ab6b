"""The monitor's pass: new windows of the prediction log checked against the served version's
reference, late labels joined, alert rules stepped, notifiers called, retraining asked for.

    monitor = Monitor(cfg)                      # [monitor] of backline.toml
    result = monitor.run_once()                 # every window completed since the last pass
    result.windows[0].drifted                   # ('amount',)
    monitor.write_report(Path("report.html"))   # the HTML dashboard (backline.monitor.report)

What a pass does, per model that has predictions:

1. Reads the prediction log's rows since the last processed window (the server's log,
   docs/prediction-log.md) and cuts them into windows: spans of `scored_at` aligned to the
   epoch ("1h": each hour, "1d": each UTC day), or runs of N rows (a run is extended over rows
   that share its last `scored_at`, so the next pass can start at a time). A time window is
   processed once it is complete: a later row has been logged, or a whole window length of
   wall time has passed since its end. A row logged after its window was processed is not
   counted (the watermark only moves forward).
2. For each window and the version that served most of its rows: the version's reference
   profile (in its lineage) and monitoring reference (`monitor.json`: calibrator and
   multivariate detector, `backline.monitor.reference`) from the registry; the window's
   profile on the reference's bins; the drift tests (`backline.monitor.drift`); the joint
   test; latency percentiles.
3. Joins the labels that have arrived (the project's label source, on the entity source's
   primary key, `label_time <= now`) to the predictions of the last `LOOKBACK_WINDOWS`
   windows, and computes each window's label coverage, realised metrics once coverage passes
   `MIN_COVERAGE`, and the estimate before labels (`backline.monitor.performance`).
4. Publishes each window's metrics (the names below) to the alert rules of [monitor]
   (`backline.monitor.alerts`), sends state changes to the notifiers, and asks for retraining
   when a firing alert says `retrain = true` and the cooldown has passed.

Metrics a window publishes, for [[monitor.alerts]] rules:

    rows                       predictions in the window
    drift.features_drifted     input features that drifted (significant and over the floor)
    drift.share_drifted        the same, as a share of the inputs
    drift.score{feature=NAME}  each input's effect size (normalised Wasserstein for a number,
                               total variation for a category): one alert per feature
    drift.prediction           effect size of the model's score drift (normalised Wasserstein)
    drift.prediction_drifted   1 when the score's distribution drifted
    drift.multivariate         joint-shift statistic (1.0 = as in training), when fitted
    drift.multivariate_drifted 1 when it alarmed
    latency_p50_ms, latency_p99_ms
    label_coverage             labelled share of the newest window that ended at least
                               `label_window` (45 days) ago: below 1 means the label feed is late
    performance.auc_pr         realised AUC-PR of the newest mature window (coverage >= 0.9)
    performance.auc_pr_expected  the estimate for the same rows
    performance.auc_pr_drop    expected minus realised
    performance.concept_drift  1 when realised fell below the estimate's interval

Label and performance metrics ride on the last window of the pass that computed them (alert
rules see each window once, in order), and stay absent until there are labels to say
something: an alert on them holds its state meanwhile. State lives under
`.backline/monitor/<model>/`: `state.json` (the last processed window, the alert rules' states,
the retrain cooldown), `windows.jsonl` (one record per window, with its profile, so days can be
merged without rereading rows), `performance.json` (every recent window's label coverage and
performance), `alerts.jsonl` and `retrain-requests.jsonl` (what the scheduler picks up).

The pass reads the log's files directly, only the date partitions it needs, rather than the
`predictions` view of `backline sql`: the view binds every file of the log (one per flush per
server worker) each time it is opened, which grows with the log's age.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.config import Config
from backline.core.errors import NotFoundError, SchemaError
from backline.core.files import atomic_path
from backline.core.types import arrow_type
from backline.core.workspace import STATE_DIR
from backline.data.offline_store import PREDICTIONS_DIR, PREDICTIONS_PARTITION
from backline.monitor.alerts import (
    Alert,
    AlertEngine,
    RetrainTrigger,
    Transition,
    series,
    utc_now,
)
from backline.monitor.drift import DriftDetector, DriftReport
from backline.monitor.metrics import MonitorMetrics
from backline.monitor.notify import Notifier, build_notifiers, notify_all
from backline.monitor.performance import CohortPerformance, cohort_performance, join_labels
from backline.monitor.profile import CategoricalProfile, ReferenceProfile
from backline.monitor.reference import MonitorReference
from backline.monitor.report import (
    AlertEvent,
    Distribution,
    Estimate,
    FeatureDrift,
    Labels,
    ReportData,
    WindowRecord,
    write_report,
)
from backline.monitor.window import profile_window

MONITOR_ARTIFACT = "monitor.json"
LOOKBACK = timedelta(days=60)
"""How far back (in event time) the label join looks for predictions to label."""
LABEL_WINDOW = timedelta(days=45)
"""By when a window's labels should all have arrived (the fraud example: chargebacks within
about 12 days, confirmations of legitimate transactions within 40): `label_coverage` is
measured on the newest window this old."""
MIN_COVERAGE = 0.9
DISTRIBUTIONS = 6
"""Drifting features whose reference-against-window bins a record keeps for the report."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_COLUMNS = {"__score": "score"}
"""Reference names whose log column is not `feature__<name>` or `<name>`: the training
profile calls the model's output `__score` (backline.pipeline.train.SCORE), the log `score`."""
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A model name the state folder can be named after (no path separators, no '..')."""


@dataclass(frozen=True)
class WindowResult:
    start: datetime
    end: datetime
    version: int
    rows: int
    drift: DriftReport
    metrics: dict[str, float]

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.drift.features if f.drifted and f.kind != "score")


@dataclass
class PassResult:
    model: str
    windows: list[WindowResult] = field(default_factory=list)
    changes: list[Transition] = field(default_factory=list)
    firing: list[Alert] = field(default_factory=list)
    retrain_requested: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class _Version:
    profile: ReferenceProfile
    detector: DriftDetector
    reference: MonitorReference | None


class Monitor:
    """Runs monitoring passes over a project's prediction log (see the module docstring).

    `clock`: wall time (injected in tests). `on_retrain(model, alerts)`: called when retraining
    is asked for (after the request is written to `retrain-requests.jsonl`); if it raises, the
    pass goes on, says so in its notes, and the next window asks again. `label_window`: see
    LABEL_WINDOW."""

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], datetime] = utc_now,
        on_retrain: Callable[[str, Sequence[Alert]], object] | None = None,
        notifiers: Sequence[Notifier] | None = None,
        metrics: MonitorMetrics | None = None,
        label_window: timedelta = LABEL_WINDOW,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.on_retrain = on_retrain
        self.label_window = label_window
        section = cfg.monitor
        self.notifiers = (
            list(notifiers)
            if notifiers is not None
            else build_notifiers(section, root=cfg.root, clock=clock)
        )
        self.metrics = metrics or MonitorMetrics(section.max_feature_labels)
        self._versions: dict[tuple[str, int], _Version] = {}

    def folder(self, model: str) -> Path:
        return self.cfg.root / STATE_DIR / "monitor" / model

    # -- a pass --------------------------------------------------------------------------

    def models(self) -> list[str]:
        """The models the prediction log holds rows of."""
        files = self._log_files(None)
        if not files:
            return []
        with _duckdb() as con:
            rows = con.sql(
                "SELECT DISTINCT model FROM read_parquet(?, union_by_name = true) ORDER BY model",
                params=[files],
            ).fetchall()
        return [str(r[0]) for r in rows]

    def run_once(self, model: str | None = None) -> list[PassResult]:
        """One pass over every model with predictions (or just `model`)."""
        if model is None:
            return [self._pass(name) for name in self.models()]
        self.check_model(model)
        return [self._pass(model)]

    def check_model(self, model: str) -> None:
        """NotFoundError unless `model` has predictions or is registered (a model that has not
        served yet is fine: its pass finds nothing)."""
        if not _MODEL_NAME.fullmatch(model):
            raise NotFoundError(
                f"model name {model!r} is not a registered model's name (letters, digits, '_', "
                "'.', '-'). See `backline models list`."
            )
        logged = self.models()
        if model in logged:
            return
        from backline.registry import open_registry

        with open_registry(self.cfg) as registry:
            registered = [m.name for m in registry.list_models()]
        if model in registered:
            return
        known = sorted({*logged, *registered})
        hint = difflib.get_close_matches(model, known, n=1)
        raise NotFoundError(
            f"no model named {model!r}: it is not registered and has no predictions logged. "
            + (f"Did you mean {hint[0]!r}? " if hint else "")
            + (f"Models: {', '.join(known)}." if known else "No model is registered yet.")
        )

    def _pass(self, model: str) -> PassResult:
        folder = self.folder(model)
        folder.mkdir(parents=True, exist_ok=True)
        state = _load_state(folder / "state.json")
        section = self.cfg.monitor
        labels = {"model": model}
        engine = (
            AlertEngine.from_json(
                section.alerts,
                state["alerts"],
                clock=self.clock,
                labels=labels,
                generator_url=section.external_url,
            )
            if state.get("alerts")
            else AlertEngine(
                section.alerts, clock=self.clock, labels=labels, generator_url=section.external_url
            )
        )
        result = PassResult(model)

        def retrain(alerts: Sequence[Alert]) -> None:
            _append(
                folder / "retrain-requests.jsonl",
                {
                    "model": model,
                    "at": self.clock().isoformat(),
                    "alerts": [a.name for a in alerts],
                },
            )
            result.retrain_requested = True
            if self.on_retrain is not None:
                self.on_retrain(model, alerts)

        trigger = RetrainTrigger(
            section.retrain_cooldown,
            retrain,
            clock=self.clock,
            last_at=_time(state.get("retrain_at")),
        )
        after = _time(state.get("processed_until"))
        with _duckdb() as con:
            table = self._predictions(con, model, after)
            windows = self._windows(table, after)
            records: list[dict[str, Any]] = []
            for start, end, rows in windows:
                done = self._window(model, start, end, rows, result)
                if done is None:
                    continue
                result.windows.append(done[0])
                records.append(done[1])
            if windows:
                state["processed_until"] = windows[-1][1].isoformat()
            if result.windows:
                result.windows[-1].metrics.update(self._performance(con, model, result))
        events: list[dict[str, Any]] = []
        for window in result.windows:
            changes = engine.observe(window.end, window.metrics)
            result.changes += changes
            for change in changes:
                alert = change.alert
                events.append(
                    AlertEvent(
                        at=window.end,
                        name=alert.name,
                        state=str(change.after),
                        severity=alert.labels.get("severity", ""),
                        value=alert.value,
                        labels={k: v for k, v in alert.labels.items() if k != "alertname"},
                    ).to_dict()
                )
            firing = engine.firing()
            notify_all(self.notifiers, changes, firing, metrics=self.metrics)
            try:
                trigger.consider(firing, now=self.clock())
            except Exception as exc:  # the hook is the user's: the pass must go on
                result.notes.append(
                    f"the retrain hook failed ({exc!r}); the next window asks again"
                )
            self._gauges(model, window, engine.alerts())
        result.firing = engine.firing()
        self.metrics.pass_done(model, self.clock())
        for record in records:
            _append(folder / "windows.jsonl", record)
        for event in events:
            _append(folder / "alerts.jsonl", event)
        state["alerts"] = engine.to_json()
        state["retrain_at"] = trigger.last_at.isoformat() if trigger.last_at else None
        _save_state(folder / "state.json", state)
        return result

    # -- reading -------------------------------------------------------------------------

    def _log_files(self, since: datetime | None) -> list[str]:
        """The prediction log's files in the date partitions from `since` on (all without)."""
        root = self.cfg.store_uri("offline").path
        assert root is not None  # offline.uri is file:// (checked when the config loads)
        log = root / PREDICTIONS_DIR
        first = (
            None if since is None else f"{PREDICTIONS_PARTITION}={since.astimezone(UTC):%Y-%m-%d}"
        )
        files: list[str] = []
        for folder in sorted(log.glob(f"{PREDICTIONS_PARTITION}=*")):
            if first is None or folder.name >= first:
                files.extend(str(f) for f in sorted(folder.glob("*.parquet")))
        return files

    def _predictions(self, con: Any, model: str, after: datetime | None) -> pa.Table:
        files = self._log_files(after)
        if not files:
            return pa.table({})
        query = "SELECT * FROM read_parquet(?, union_by_name = true) WHERE model = ?"
        params: list[Any] = [files, model]
        if after is not None:
            query += " AND scored_at >= ?"
            params.append(after)
        return con.sql(query + " ORDER BY scored_at, request_id", params=params).to_arrow_table()

    def _windows(
        self, table: pa.Table, after: datetime | None
    ) -> list[tuple[datetime, datetime, pa.Table]]:
        """The complete windows in `table` (sorted by scored_at), as (start, end, rows)."""
        if table.num_rows == 0:
            return []
        times = table.column("scored_at").cast(pa.timestamp("us", tz="UTC"))
        us = np.asarray(pc.cast(times, pa.int64()).to_numpy(zero_copy_only=False), np.int64)
        section = self.cfg.monitor
        out: list[tuple[datetime, datetime, pa.Table]] = []
        if section.window_rows is not None:
            size, a = section.window_rows, 0
            while a + size <= len(us):
                # rows sharing the last row's time go with it (a batch is logged with one
                # time): the next pass starts at a time and must not split them
                b = int(np.searchsorted(us, us[a + size - 1], side="right"))
                out.append(
                    (_from_us(int(us[a])), _from_us(int(us[b - 1]) + 1), table.slice(a, b - a))
                )
                a = b
            return out
        span = section.window_span
        assert span is not None
        width = int(span.total_seconds() * 1_000_000)
        index = us // width
        now_us = int((self.clock() - EPOCH).total_seconds() * 1_000_000)
        last = int(index[-1])
        bounds = np.flatnonzero(np.diff(index)) + 1
        starts = np.concatenate([[0], bounds])
        ends = np.concatenate([bounds, [len(index)]])
        for a, b in zip(starts, ends, strict=True):
            k = int(index[a])
            end_us = (k + 1) * width
            if k == last and now_us < end_us + width:
                continue  # the newest window may still grow
            out.append((_from_us(k * width), _from_us(end_us), table.slice(int(a), int(b - a))))
        return out

    def _version(self, model: str, version: int) -> _Version | None:
        key = (model, version)
        if key not in self._versions:
            from backline.registry import open_registry

            with open_registry(self.cfg) as registry:
                try:
                    mv = registry.get(model, version)
                except NotFoundError:
                    return None
                profile = mv.lineage.reference_profile
                if profile is None:
                    return None
                reference = None
                try:
                    path = registry.artifact_path(model, version, MONITOR_ARTIFACT)
                    reference = MonitorReference.from_json(path.read_text(encoding="utf-8"))
                except (NotFoundError, OSError, SchemaError):
                    reference = None
            self._versions[key] = _Version(profile, DriftDetector(profile), reference)
        return self._versions[key]

    # -- one window ----------------------------------------------------------------------

    def _window(
        self, model: str, start: datetime, end: datetime, rows: pa.Table, result: PassResult
    ) -> tuple[WindowResult, dict[str, Any]] | None:
        versions = rows.column("model_version").to_numpy(zero_copy_only=False)
        values, counts = np.unique(versions, return_counts=True)
        version = int(values[int(np.argmax(counts))])
        served = rows.filter(pc.equal(rows.column("model_version"), version))
        ref = self._version(model, version)
        if ref is None:
            result.notes.append(
                f"{model} v{version}: no reference profile in the registry; window {start} skipped"
            )
            return None
        profile = profile_window(served, ref.profile, column_of=_COLUMNS)
        drift = ref.detector.check(profile)
        inputs = [f for f in drift.features if f.kind != "score"]
        score = next((f for f in drift.features if f.kind == "score"), None)
        metrics: dict[str, float] = {
            "rows": float(rows.num_rows),
            "drift.features_drifted": float(sum(f.drifted for f in inputs)),
            "drift.share_drifted": sum(f.drifted for f in inputs) / max(len(inputs), 1),
        }
        for f in inputs:
            if math.isfinite(f.effect):
                metrics[series("drift.score", feature=f.name)] = float(f.effect)
        if score is not None:
            metrics["drift.prediction"] = float(score.effect)
            metrics["drift.prediction_drifted"] = float(score.drifted)
        multivariate = threshold = None
        if ref.reference is not None and ref.reference.multivariate is not None:
            try:
                check = ref.reference.multivariate.check(served, column_of=_COLUMNS)
            except SchemaError as exc:
                result.notes.append(f"multivariate test skipped: {exc}")
            else:
                multivariate, threshold = check.statistic, check.threshold
                metrics["drift.multivariate"] = check.statistic
                metrics["drift.multivariate_drifted"] = float(check.drifted)
        latency = np.asarray(rows.column("latency_ms").to_numpy(zero_copy_only=False), float)
        percentiles = {}
        if latency.size:
            for name, q in (("p50", 50), ("p90", 90), ("p99", 99)):
                percentiles[name] = float(np.percentile(latency, q))
            metrics["latency_p50_ms"] = percentiles["p50"]
            metrics["latency_p99_ms"] = percentiles["p99"]
        window = WindowResult(start, end, version, rows.num_rows, drift, metrics)
        record = WindowRecord(
            start=start,
            end=end,
            model=model,
            model_version=str(version),
            rows=rows.num_rows,
            drift={
                f.name: FeatureDrift(
                    f.effect,
                    f.adjusted_p,
                    f.drifted,
                    "wasserstein" if f.wasserstein is not None else "total_variation",
                    f.floor,
                )
                for f in drift.features
                if f.kind != "score"
            },
            distributions=_distributions(ref.profile, profile, drift),
            score=_score_distribution(ref.profile, profile),
            latency_ms=percentiles,
            multivariate=multivariate,
            multivariate_threshold=threshold,
        )
        return window, {"record": record.to_dict(), "profile": json.loads(profile.to_json())}

    # -- labels --------------------------------------------------------------------------

    def _performance(self, con: Any, model: str, result: PassResult) -> dict[str, float]:
        """Label coverage and performance of the recent windows; the metrics to publish."""
        cfg = self.cfg
        labels_source = cfg.sources.get(cfg.train.label_source)
        entity = cfg.sources.get(cfg.train.entity_source)
        span = cfg.monitor.window_span or timedelta(hours=1)
        if labels_source is None or entity is None or not entity.primary_key:
            return {}
        keys = tuple(entity.primary_key)  # the label source shares the entity's key
        now = self.clock()
        since = result.windows[-1].end - LOOKBACK  # event time, like the log
        files = self._log_files(since)
        label_files = [str(f) for f in self._offline().files("data", labels_source.name)]
        label_columns = (*keys, cfg.train.label_column, cfg.train.label_time)
        try:
            predictions = con.sql(
                "SELECT scored_at, score, "
                + ", ".join(f'"{k}"' for k in keys)
                + " FROM read_parquet(?, union_by_name = "
                "true) WHERE model = ? AND scored_at >= ?",
                params=[files, model, since],
            ).to_arrow_table()
            if label_files:
                labels = con.sql(
                    "SELECT " + ", ".join(f'"{c}"' for c in label_columns) + " FROM "
                    "read_parquet(?, union_by_name = true)",
                    params=[label_files],
                ).to_arrow_table()
            else:
                labels = pa.table(
                    {
                        c: pa.array([], arrow_type(labels_source.column(c).type))
                        for c in label_columns
                    }
                )
        except duckdb.Error as exc:  # no id column in the log (clients did not send it), ...
            result.notes.append(f"label join skipped: {str(exc).splitlines()[0]}")
            return {}
        if predictions.num_rows == 0:
            return {}
        joined = join_labels(
            predictions,
            labels,
            id_column=keys,
            label_column=cfg.train.label_column,
            label_time_column=cfg.train.label_time,
            as_of=now,
        )
        ref = self._version(model, result.windows[-1].version)
        calibrator = ref.reference.calibrator if ref and ref.reference else None
        cohorts = cohort_performance(
            joined, window=span, calibrator=calibrator, min_coverage=MIN_COVERAGE
        )
        _save_json(self.folder(model) / "performance.json", [_cohort_obj(c) for c in cohorts])
        metrics: dict[str, float] = {}
        due = [c for c in cohorts if c.end <= now - self.label_window]
        if due:
            metrics["label_coverage"] = due[-1].coverage
            self.metrics.label_coverage(model, due[-1].coverage)
        mature = [c for c in cohorts if c.mature and c.realised is not None]
        if mature:
            c = mature[-1]
            assert c.realised is not None
            metrics["performance.auc_pr"] = c.realised.auc_pr
            if math.isfinite(c.realised.auc_pr):
                self.metrics.performance(model, "auc_pr", "realised", c.realised.auc_pr)
            if c.concept_drift is not None:
                check = c.concept_drift.checks[0]
                metrics["performance.auc_pr_expected"] = check.expected
                metrics["performance.auc_pr_drop"] = check.expected - check.realised
                metrics["performance.concept_drift"] = float(bool(c.concept_drift))
        return {k: v for k, v in metrics.items() if math.isfinite(v)}

    def _offline(self) -> Any:
        from backline.data.offline_store import OfflineStore

        return OfflineStore.open(self.cfg)

    def _gauges(self, model: str, window: WindowResult, alerts: Sequence[Alert]) -> None:
        m = self.metrics
        scores: dict[str, dict[str, float]] = {}
        for f in window.drift.features:
            tests = {"psi": f.psi, "js": f.js}
            if f.wasserstein is not None:
                tests["wasserstein"] = f.wasserstein
            scores[f.name] = {k: v for k, v in tests.items() if math.isfinite(v)}
        m.drift(model, scores)
        m.features_drifted(model, int(window.metrics.get("drift.features_drifted", 0)))
        m.alert_states(model, self.cfg.monitor.alerts, alerts)
        m.window_done(model, window.end)

    # -- the report ----------------------------------------------------------------------

    def report_data(self, model: str) -> ReportData:
        folder = self.folder(model)
        # a pass that crashed after writing its windows but before its state repeats them:
        # the last record of a window wins
        kept = {o["record"]["start"]: o["record"] for o in _read_lines(folder / "windows.jsonl")}
        records = [WindowRecord.from_dict(r) for r in kept.values()]
        cohorts = {c["start"]: c for c in _read_json(folder / "performance.json", [])}
        merged = []
        for record in records:
            cohort = cohorts.get(record.start.isoformat())
            if cohort is not None:
                record = _with_labels(record, cohort)
            merged.append(record)
        alerts = [AlertEvent.from_dict(o) for o in _read_lines(folder / "alerts.jsonl")]
        return ReportData(model, self.clock(), tuple(merged), tuple(alerts))

    def write_report(self, out: Path, model: str | None = None) -> Path:
        """Write the HTML dashboard of `model` (default: the first model logged)."""
        if model is not None:
            self.check_model(model)
        names = [model] if model else self.models()
        if not names:
            return write_report(ReportData("(no predictions yet)", self.clock()), out)
        return write_report(self.report_data(names[0]), out)


# -- records --------------------------------------------------------------------------------


def _distributions(
    reference: ReferenceProfile, window: Any, drift: DriftReport
) -> dict[str, Distribution]:
    ranked = sorted(
        (f for f in drift.features if f.kind != "score"),
        key=lambda f: (not f.drifted, -f.effect),
    )[:DISTRIBUTIONS]
    out: dict[str, Distribution] = {}
    for f in ranked:
        ref = reference.feature(f.name)
        cur = window.feature(f.name)
        if isinstance(ref, CategoricalProfile):
            out[f.name] = Distribution(
                reference=(*ref.counts, ref.other_count),
                current=(*cur.counts, cur.other_count),
                categories=(*ref.values, "other"),
            )
        elif ref.edges:
            out[f.name] = Distribution(reference=ref.counts, current=cur.counts, edges=ref.edges)
    return out


def _score_distribution(reference: ReferenceProfile, window: Any) -> Distribution | None:
    if reference.score is None or window.score is None or not reference.score.edges:
        return None
    return Distribution(
        reference=reference.score.counts, current=window.score.counts, edges=reference.score.edges
    )


def _cohort_obj(c: CohortPerformance) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "start": c.start.isoformat(),
        "end": c.end.isoformat(),
        "rows": c.rows,
        "labelled": c.labelled,
        "coverage": c.coverage,
        "mature": c.mature,
        "auc_pr": None if c.realised is None else _finite(c.realised.auc_pr),
    }
    if c.estimate is not None:
        e = c.estimate.auc_pr
        obj["estimate"] = {
            "value": _finite(e.expected),
            "low": _finite(e.lower),
            "high": _finite(e.upper),
        }
    obj["concept_drift"] = None if c.concept_drift is None else bool(c.concept_drift)
    return obj


def _with_labels(record: WindowRecord, cohort: dict[str, Any]) -> WindowRecord:
    from dataclasses import replace

    estimate = cohort.get("estimate")
    labels = Labels(
        coverage=cohort.get("coverage"),
        realised={"auc_pr": cohort.get("auc_pr")},
        estimated={}
        if estimate is None
        else {"auc_pr": Estimate(estimate["value"], estimate["low"], estimate["high"])},
    )
    return replace(record, labels=labels)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


@contextlib.contextmanager
def _duckdb() -> Iterator[Any]:
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        yield con
    finally:
        con.close()


# -- state files ----------------------------------------------------------------------------


def _from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def _time(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _load_state(path: Path) -> dict[str, Any]:
    state = _read_json(path, {})
    return state if isinstance(state, dict) else {}


def _save_state(path: Path, state: dict[str, Any]) -> None:
    _save_json(path, state)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"{path} is not JSON ({exc}); delete it to start monitoring that model afresh."
        ) from None


def _save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, sort_keys=True), encoding="utf-8")


def _append(path: Path, obj: Any) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")


def _read_lines(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
    return out
