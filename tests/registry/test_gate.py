"""The promotion gate: checks, the paired bootstrap, the evaluation digest, and the registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from backline.core.config import Config, GateSection
from backline.core.errors import GateFailed, NotFoundError, SchemaError
from backline.package import latency
from backline.package.export import package
from backline.package.metrics import average_precision, recall_at_fpr
from backline.package.preprocess import Preprocessor
from backline.pipeline.gate import (
    evaluate_gate,
    evaluation_digest,
    gate_version,
    paired_bootstrap,
)
from backline.registry import GateCheck, GateRecord, open_registry
from tests.registry.conftest import lineage, make_files
from tests.registry.test_export import CATEGORICAL, NUMERIC, make_table, train_model
from tests.registry.test_latency import FreshMeasurement

WHEN = datetime(2026, 3, 1, 12, tzinfo=UTC)
GATE = GateSection(bootstrap_samples=300)


class ColumnScorer:
    """Scores a row with one of its own columns: synthetic models for the gate."""

    def __init__(self, column: str) -> None:
        self.column = column

    def score(self, table: pa.Table) -> np.ndarray:
        return np.asarray(table.column(self.column).to_numpy(), dtype=np.float64)


def scored_rows(n: int = 4000, seed: int = 0) -> pa.Table:
    """Labels and the scores of several models; shared noise makes the models correlated, as
    two versions of one model are."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    shared = rng.normal(size=n)
    champion = 1.5 * y + shared + 0.7 * rng.normal(size=n)
    return pa.table(
        {
            "is_fraud": y,
            "champion": champion,
            "better": 2.5 * y + shared + 0.7 * rng.normal(size=n),
            "worse": 0.9 * y + shared + 0.7 * rng.normal(size=n),
            "tie": champion + 1e-3 * rng.normal(size=n),
        }
    )


def gate(candidate: str, champion: str | None = "champion", **kwargs: object) -> GateRecord:
    options: dict[str, object] = {
        "label_column": "is_fraud",
        "gate_cfg": GATE,
        "target_fpr": 0.01,
        "artifact_bytes": 2_000_000,
        "latency_p99_ms": 1.0,
        "evaluated_at": WHEN,
    }
    options.update(kwargs)
    table = options.pop("table", None) or scored_rows()
    assert isinstance(table, pa.Table)
    return evaluate_gate(
        ColumnScorer(candidate),
        ColumnScorer(champion) if champion else None,
        table,
        **options,  # type: ignore[arg-type]
    )


def checks(record: GateRecord) -> dict[str, GateCheck]:
    return {c.name: c for c in record.checks}


# --- the decision ------------------------------------------------------------------------------


def test_clearly_better_candidate_passes() -> None:
    record = gate("better", champion_version=3)
    assert record.passed
    assert list(checks(record)) == [
        "auc_pr_floor",
        "recall_at_fpr_floor",
        "non_inferiority",
        "latency_p99_ms",
        "artifact_mb",
    ]
    ni = checks(record)["non_inferiority"]
    assert ni.value > 0 and ni.threshold == -0.01
    assert "vs v3" in ni.detail and "95% CI" in ni.detail
    assert record.champion_version == 3
    assert record.eval_set_digest == evaluation_digest(scored_rows())


def test_clearly_worse_candidate_fails_non_inferiority() -> None:
    record = gate("worse")
    assert not record.passed
    failed = [c.name for c in record.checks if not c.passed]
    assert failed == ["non_inferiority"]
    assert checks(record)["non_inferiority"].value < -0.01


def test_tie_within_margin_passes() -> None:
    record = gate("tie")
    ni = checks(record)["non_inferiority"]
    assert ni.passed and -0.01 < ni.value <= 0.0
    assert record.passed
    # with no margin a tie cannot show its lower bound above 0
    strict = gate("tie", gate_cfg=dataclasses.replace(GATE, non_inferiority_margin=0.0))
    assert not checks(strict)["non_inferiority"].passed


def test_without_champion_only_absolute_checks_and_budgets() -> None:
    record = gate("worse", champion=None)
    assert record.passed and record.champion_version is None
    assert "non_inferiority" not in checks(record)


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        ({"gate_cfg": dataclasses.replace(GATE, min_auc_pr=0.99)}, "auc_pr_floor"),
        ({"gate_cfg": dataclasses.replace(GATE, min_recall_at_fpr=0.99)}, "recall_at_fpr_floor"),
        ({"latency_p99_ms": 5.001}, "latency_p99_ms"),
        ({"artifact_bytes": 50_000_001}, "artifact_mb"),
    ],
)
def test_thresholds_and_budgets_fail_when_exceeded(change: dict[str, object], failing: str) -> None:
    record = gate("better", **change)
    assert not record.passed
    assert [c.name for c in record.checks if not c.passed] == [failing]


def test_budgets_at_the_limit_pass() -> None:
    record = gate("better", latency_p99_ms=5.0, artifact_bytes=50_000_000)
    assert checks(record)["latency_p99_ms"].passed and checks(record)["artifact_mb"].passed


def _values(table: pa.Table, *columns: str) -> list[np.ndarray]:
    return [np.asarray(table.column(c).to_numpy(), dtype=np.float64) for c in columns]


@pytest.mark.parametrize(
    ("name", "exact"),
    [
        ("auc_pr_floor", lambda y, s, _gate: ("min_auc_pr", average_precision(y, s))),
        (
            "recall_at_fpr_floor",
            lambda y, s, _gate: ("min_recall_at_fpr", recall_at_fpr(y, s, 0.01)[0]),
        ),
        ("latency_p99_ms", lambda _y, _s, _gate: ("max_latency_ms", 1.0)),
        ("artifact_mb", lambda _y, _s, _gate: ("max_artifact_mb", 2.0)),
    ],
)
def test_each_limit_passes_exactly_at_the_limit_and_fails_just_past_it(
    name: str, exact: Callable[[np.ndarray, np.ndarray, GateSection], tuple[str, float]]
) -> None:
    """Floors are `>=` and budgets `<=`: the limit itself passes, one ulp past it fails."""
    rows = scored_rows()
    y, s = _values(rows, "is_fraud", "better")
    field, value = exact(y, s, GATE)  # the candidate's own figure (latency 1.0 ms, 2.0 MB)
    at = checks(gate("better", gate_cfg=dataclasses.replace(GATE, **{field: value})))[name]
    assert at.value == value and at.threshold == value and at.passed
    floor = name.endswith("_floor")
    past = np.nextafter(value, np.inf if floor else -np.inf)  # the figure is just short of it
    record = gate("better", gate_cfg=dataclasses.replace(GATE, **{field: float(past)}))
    assert not checks(record)[name].passed and not record.passed
    assert [c.name for c in record.checks if not c.passed] == [name]


def noisy_rows(n: int = 600, seed: int = 5) -> pa.Table:
    """A candidate a little better than the champion on the point estimate, on few rows and with
    noise of its own, so the paired interval of the difference is wide."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    shared = rng.normal(size=n)
    return pa.table(
        {
            "is_fraud": y,
            "champion": 1.5 * y + shared + 0.5 * rng.normal(size=n),
            "noisy": 1.9 * y + shared + 1.0 * rng.normal(size=n),
        }
    )


def test_non_inferiority_is_judged_on_the_interval_not_the_point_estimate() -> None:
    rows = noisy_rows()
    y, cand, champ = _values(rows, "is_fraud", "noisy", "champion")
    ci = paired_bootstrap(
        y, cand, champ, samples=GATE.bootstrap_samples, confidence=GATE.confidence, seed=0
    )
    # the case this test is about: the point estimate is ahead, the lower bound far behind
    assert ci.difference > 0 and ci.low < -0.03, ci

    record = gate("noisy", table=rows, champion_version=1)
    ni = checks(record)["non_inferiority"]
    assert (ni.value, ni.threshold) == (ci.low, -0.01)
    assert not ni.passed and not record.passed  # the point estimate alone would pass it
    assert f"{ci.difference:+.4f}" in ni.detail and f"[{ci.low:+.4f}, {ci.high:+.4f}]" in ni.detail

    # a margin wider than the lower bound passes; the bound itself does not (it must exceed)
    for margin, passed in [
        (0.01, False),
        (-ci.low, False),
        (float(np.nextafter(-ci.low, np.inf)), True),
        (-ci.low + 0.01, True),
    ]:
        cfg = dataclasses.replace(GATE, non_inferiority_margin=margin)
        assert checks(gate("noisy", table=rows, gate_cfg=cfg))["non_inferiority"].passed is passed

    # the reverse: a candidate a little behind on the point estimate, with a tight interval
    # (its scores are the champion's, a little lower on the positives) whose lower bound is
    # within the margin, passes
    rows = scored_rows()
    y, champ = _values(rows, "is_fraud", "champion")
    behind = champ - 0.02 * y + 0.02 * np.random.default_rng(9).normal(size=y.size)
    rows = rows.append_column("behind", pa.array(behind))
    ci = paired_bootstrap(
        y, behind, champ, samples=GATE.bootstrap_samples, confidence=GATE.confidence, seed=0
    )
    assert -0.01 < ci.low <= ci.difference < 0, ci
    ni = checks(gate("behind", table=rows))["non_inferiority"]
    assert ni.passed and ni.value == ci.low


def test_same_seed_same_record_other_seed_other_interval() -> None:
    assert gate("tie", seed=7) == gate("tie", seed=7)
    a = checks(gate("tie", seed=7))["non_inferiority"]
    b = checks(gate("tie", seed=8))["non_inferiority"]
    assert a.value != b.value


def test_bad_evaluation_sets_and_scorers() -> None:
    rows = scored_rows()
    negatives = rows.filter(pa.compute.invert(rows.column("is_fraud")))
    with pytest.raises(SchemaError, match="needs both classes"):
        gate("better", table=negatives)
    with pytest.raises(SchemaError, match="no label column 'label'"):
        gate("better", label_column="label")

    class Broken:
        def score(self, table: pa.Table) -> np.ndarray:
            return np.full(table.num_rows - 1, 0.5)

    with pytest.raises(SchemaError, match="candidate returned scores of shape"):
        evaluate_gate(
            Broken(),
            None,
            rows,
            label_column="is_fraud",
            gate_cfg=GATE,
            target_fpr=0.01,
            artifact_bytes=1,
            latency_p99_ms=1.0,
        )


# --- the paired bootstrap ----------------------------------------------------------------------


def test_bootstrap_equals_resampling_rows_by_hand() -> None:
    """Weights from row counts give the same AUC-PR as materializing each resample."""
    rows = scored_rows(n=300, seed=4)
    y = np.asarray(rows.column("is_fraud").to_numpy(), dtype=float)
    a = np.round(rows.column("better").to_numpy(), 1)  # ties between rows
    b = rows.column("champion").to_numpy()
    ci = paired_bootstrap(y, a, b, samples=200, confidence=0.8, seed=11)
    draws = np.random.default_rng(11).integers(0, y.size, size=(200, y.size))
    diffs = [
        average_precision(y[d], a[d]) - average_precision(y[d], b[d])
        for d in draws
        if y[d].sum() > 0
    ]
    low, high = np.quantile(diffs, [0.1, 0.9])
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)
    assert ci.difference == pytest.approx(average_precision(y, a) - average_precision(y, b))
    assert ci.samples - ci.degenerate == len(diffs)


def test_bootstrap_interval_covers_the_true_difference_at_its_rate() -> None:
    """On synthetic populations with a known AUC-PR difference, a 90% interval holds it in
    about 90% of evaluation sets (seeded, so the outcome is fixed; the band is generous)."""

    def draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        y = rng.random(n) < 0.1
        shared = rng.normal(size=n)
        a = 1.6 * y + shared + 0.8 * rng.normal(size=n)
        b = 1.3 * y + shared + 0.8 * rng.normal(size=n)
        return y.astype(float), a, b

    rng = np.random.default_rng(123)
    y, a, b = draw(rng, 2_000_000)  # the population's difference, to about 1e-3
    true = average_precision(y, a) - average_precision(y, b)
    trials = 200
    covered = 0
    for trial in range(trials):
        ci = paired_bootstrap(*draw(rng, 1000), samples=200, confidence=0.9, seed=trial)
        covered += ci.low <= true <= ci.high
    assert 0.80 <= covered / trials <= 0.97


# --- the evaluation set's digest ---------------------------------------------------------------


def test_digest_names_the_content() -> None:
    rows = scored_rows(n=500)
    digest = evaluation_digest(rows)
    rechunked = pa.Table.from_batches(rows.to_batches(max_chunksize=37))
    assert evaluation_digest(rechunked) == digest
    changed = rows.set_column(1, "champion", pa.array(rows.column("champion").to_numpy() + 1e-9))
    assert evaluation_digest(changed) != digest
    assert evaluation_digest(rows.rename_columns(["y", *rows.column_names[1:]])) != digest
    nulls = pa.table({"x": pa.array([0, None]), "s": pa.array(["", None])})
    zeros = pa.table({"x": pa.array([0, 0]), "s": pa.array(["", ""])})
    assert evaluation_digest(nulls) != evaluation_digest(zeros)
    split = pa.table({"s": ["ab", "c"]})
    assert evaluation_digest(split) != evaluation_digest(pa.table({"s": ["a", "bc"]}))


# --- against the registry ----------------------------------------------------------------------


def test_gate_version_records_against_the_champion(
    cfg: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dataclasses.replace(cfg, gate=GateSection(bootstrap_samples=200, max_latency_ms=1e3))
    fresh = FreshMeasurement(0.25)  # the gate's own timing, a stand-in: no verdict on the machine
    monkeypatch.setattr(latency, "measure_request_latency", fresh)
    train, evaluation = make_table(6000, seed=1), make_table(1500, seed=3)
    pre = Preprocessor.fit(train, NUMERIC, CATEGORICAL, min_count=5)
    options = {"target_fpr": 0.01, "label_column": "is_fraud", "onnx": False, "latency_runs": 10}
    weak = package(
        train_model(pre, train, steps=3, seed=5), pre, evaluation, tmp_path / "weak", **options
    )
    strong = package(
        train_model(pre, train, steps=150, seed=0), pre, evaluation, tmp_path / "strong", **options
    )
    with open_registry(cfg) as registry:
        registry.register("fraud", weak.artifacts(), lineage(), actor="trainer")
        registry.register("fraud", strong.artifacts(), lineage(), actor="trainer")

        first = gate_version(cfg, registry, "fraud", 1, evaluation)
        assert first.passed and first.champion_version is None
        assert fresh.calls == []  # the packaged figure is within budget: judged as packaged
        assert "measured when packaged" in checks(first)["latency_p99_ms"].detail
        assert "non_inferiority" not in checks(first)
        assert registry.gate_of("fraud", 1) == first
        registry.promote("fraud", 1, actor="ci")

        second = gate_version(cfg, registry, "fraud", 2, evaluation)
        assert second.passed and second.champion_version == 1
        assert checks(second)["non_inferiority"].value > 0
        assert second.eval_set_digest == evaluation_digest(evaluation)
        size = checks(second)["artifact_mb"]
        assert size.value == pytest.approx(strong.total_bytes / 1e6)
        assert registry.gate_of("fraud", 2) == second
        registry.promote("fraud", 2, actor="ci")

        # the weak version, gated again now that v2 is champion, is clearly inferior
        again = gate_version(cfg, registry, "fraud", 1, evaluation)
        assert not again.passed and again.champion_version == 2
        with pytest.raises(GateFailed, match="failed its gate"):
            registry.promote("fraud", 1, actor="ci")

        registry.register(
            "plain", make_files(tmp_path / "f", {"model.pt": b"PK.."}), lineage(), actor="t"
        )
        with pytest.raises(NotFoundError, match="has no serving package"):
            gate_version(cfg, registry, "plain", 1, evaluation)

        # `models gate --remeasure`: timed again even though the packaged figure passes
        assert fresh.calls == []
        remeasured = gate_version(cfg, registry, "fraud", 2, evaluation, remeasure=True)
        check = checks(remeasured)["latency_p99_ms"]
        assert check.value == 0.25 and "re-measured at the gate on request" in check.detail
        assert len(fresh.calls) == 1 and registry.gate_of("fraud", 2) == remeasured
