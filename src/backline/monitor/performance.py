"""Model performance with delayed labels: join late labels, measure cohorts, estimate before labels.

Fraud labels (chargebacks) arrive days to weeks after a transaction is scored. This module turns
the prediction log plus whatever labels have arrived into per-cohort performance, and estimates
performance for cohorts whose labels are still on their way:

    joined = join_labels(predictions, labels, id_column="transaction_id",
                         label_column="is_fraud", label_time_column="label_time", as_of=now)
    calibrator = IsotonicCalibrator.fit(holdout_scores, holdout_labels)
    for c in cohort_performance(joined, window=timedelta(days=1), calibrator=calibrator):
        c.coverage                 # share of the cohort's predictions with a label by `now`
        c.estimate.auc_pr          # MetricEstimate(expected, lower, upper), before labels
        c.realised                 # RealisedMetrics once coverage >= min_coverage, else None
        c.concept_drift            # set once realised: realised AUC-PR below the interval

The pieces, each usable alone:

    join_labels           the label known for each prediction as of a time (latest arrival wins)
    realised_metrics      AUC-PR, ROC-AUC, recall at a false-positive rate, ECE, Brier, base rate
    estimate_performance  confidence-based estimate: expected metrics and an interval from
                          labels drawn as Bernoulli(calibrated probability)
    flag_concept_drift    realised below the estimate's lower bound
    cohort_performance    all of the above per window of `scored_at`

Why an estimate can catch concept drift: the estimate sees only scores. When inputs shift but
P(fraud | inputs) does not (covariate shift), calibrated probabilities stay right and the
estimate moves with the realised value. When P(fraud | inputs) changes (concept drift), the
probabilities are wrong in a way scores cannot show, and the realised value falls outside what
they predicted. docs/performance-monitoring.md has the assumptions and a worked example.

Every function takes and returns Arrow tables, numpy arrays and frozen dataclasses; nothing here
reads or writes a store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from backline.core.errors import BacklineError, InvalidArgument, SchemaError
from backline.monitor.calibration import (
    ESTIMATED,
    IsotonicCalibrator,
    MetricEstimate,
    PerformanceEstimate,
    Ranking,
    brier_score,
    check_fpr,
    estimate_performance,
    expected_calibration_error,
)

__all__ = [
    "CohortPerformance",
    "ConceptDrift",
    "DriftCheck",
    "MetricEstimate",
    "PerformanceEstimate",
    "RealisedMetrics",
    "cohort_performance",
    "cohorts_to_arrow",
    "estimate_performance",
    "flag_concept_drift",
    "join_labels",
    "realised_metrics",
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


# ---------------------------------------------------------------------------------------------
# Joining late labels


def join_labels(
    predictions: pa.Table,
    labels: pa.Table,
    *,
    id_column: str | Sequence[str],
    label_column: str,
    label_time_column: str,
    as_of: datetime,
    output_column: str = "label",
    negative_after: timedelta | None = None,
    time_column: str = "scored_at",
) -> pa.Table:
    """`predictions` with `output_column` added: each row's label as known at `as_of`.

    A label counts once it has arrived: `label_time <= as_of`. A row with no such label gets
    null (not yet known), never False. When an id has several labels (a chargeback reversed on
    appeal), the one with the latest `label_time` at or before `as_of` wins; among labels with
    the same time, the one further down `labels` wins (so a table in ingest order keeps the last
    ingested). Labels with a null id, time or value are ignored.

    `negative_after`: for sources where only positives are ever reported (chargebacks and
    nothing else), a row still unlabelled when its `time_column` is at least this long before
    `as_of` is taken as negative (False): the window in which a positive could have arrived has
    passed. Leave it None when negatives arrive as labels of their own, as in the example.

    `id_column` names the id, or several columns that together make it (a composite key such as
    ("card_id", "seq")): a label then belongs to the prediction whose every key column is
    equal, and a null in any of them matches nothing. Ids may be strings or integers (of either
    table's width); timestamps any unit and any time zone, compared as instants. Rows keep their
    order; predictions are never dropped.
    """
    if negative_after is not None and negative_after < timedelta(0):
        raise InvalidArgument(
            f"join_labels: negative_after = {negative_after} is negative; pass a duration "
            "such as timedelta(days=120), or None."
        )
    keys = (id_column,) if isinstance(id_column, str) else tuple(id_column)
    if not keys or len(set(keys)) != len(keys):
        raise InvalidArgument(
            f"join_labels: id_column = {id_column!r} must name one column or several distinct "
            "ones, e.g. 'transaction_id' or ('card_id', 'seq')."
        )
    with_time = (time_column,) if negative_after is not None else ()
    _require(predictions, (*keys, *with_time), "predictions")
    _require(labels, (*keys, label_column, label_time_column), "labels")
    if output_column in predictions.column_names:
        raise SchemaError(
            f"join_labels: predictions already have a column {output_column!r}. Drop it or pass "
            "another output_column=."
        )
    # Every id, in either table, gets a code: equal ids, equal codes; -1 for a null.
    codes = _key_codes(predictions, labels, keys)
    label_codes, pred_codes = codes[: labels.num_rows], codes[labels.num_rows :]
    times, unit, time_ok = _timestamps(labels, label_time_column, "labels")
    values, value_ok = _label_values(labels.column(label_column), label_column)
    keep = time_ok & value_ok & (label_codes >= 0)
    keep &= times <= _instant(as_of, unit, "as_of")
    kept = np.flatnonzero(keep)
    code, when = label_codes[kept], times[kept]
    # per code: the latest arrival, then among the labels that arrived then, the last row
    latest = np.full(int(codes.max(initial=-1)) + 1, np.iinfo(np.int64).min)
    np.maximum.at(latest, code, when)
    last_row = np.full(latest.size + 1, -1)  # the extra -1 at the end answers code -1 (null)
    at_latest = when == latest[code]
    np.maximum.at(last_row, code[at_latest], kept[at_latest])
    winner = last_row[pred_codes]  # -1: no label (yet)
    label = pa.array(values[np.maximum(winner, 0)] if values.size else winner > 0, mask=winner < 0)

    if negative_after is not None:
        scored, scored_unit, scored_ok = _timestamps(predictions, time_column, "predictions")
        matured = scored_ok & (scored <= _instant(as_of - negative_after, scored_unit, "as_of"))
        label = pc.if_else(pc.and_(pc.is_null(label), pa.array(matured)), False, label)
    return predictions.append_column(output_column, label)


def _require(table: pa.Table, columns: Sequence[str], what: str) -> None:
    for name in columns:
        if name not in table.column_names:
            raise SchemaError(
                f"{what} have no column {name!r}. Columns: {', '.join(table.column_names)}. "
                "Pass the right column name or rename the column."
            )


def _plain(column: pa.ChunkedArray) -> pa.Array:
    """One array, dictionary-decoded."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _matching_ids(
    pred: pa.ChunkedArray, lab: pa.ChunkedArray, name: str
) -> tuple[pa.Array, pa.Array]:
    """Both id columns in one Arrow type, so a hash lookup compares values, not types."""
    p, q = _plain(pred), _plain(lab)
    if p.type == q.type:
        return p, q
    stringy = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)
    if any(f(p.type) for f in stringy) and any(f(q.type) for f in stringy):
        return p.cast(pa.large_string()), q.cast(pa.large_string())
    if pa.types.is_integer(p.type) and pa.types.is_integer(q.type):
        unsigned64 = pa.types.is_uint64(p.type) or pa.types.is_uint64(q.type)
        target = pa.uint64() if unsigned64 else pa.int64()
        try:
            return p.cast(target), q.cast(target)
        except pa.ArrowInvalid:
            pass  # a negative id next to uint64 ids: fall through to the error
    raise SchemaError(
        f"join_labels: {name!r} is {p.type} in predictions but {q.type} in labels; ids must "
        "both be strings or both integers. Cast one of them first."
    )


def _key_codes(
    predictions: pa.Table, labels: pa.Table, keys: Sequence[str]
) -> npt.NDArray[np.int64]:
    """Codes of the labels' keys followed by the predictions' (one hash pass per column over
    both tables); a composite key's code numbers its distinct tuples; -1 where any part is null."""
    columns = []
    for name in keys:
        pred_ids, label_ids = _matching_ids(predictions.column(name), labels.column(name), name)
        columns.append(_codes(pa.concat_arrays([label_ids, pred_ids])))
    if len(columns) == 1:
        return columns[0]
    parts = np.stack(columns, axis=1)
    whole = (parts >= 0).all(axis=1)
    codes = np.full(parts.shape[0], -1, dtype=np.int64)
    if whole.any():
        _, inverse = np.unique(parts[whole], axis=0, return_inverse=True)
        codes[whole] = inverse.reshape(-1)
    return codes


def _codes(ids: pa.Array) -> npt.NDArray[np.int64]:
    """Dictionary codes of `ids` (equal ids, equal codes); -1 for null."""
    indices = pc.dictionary_encode(ids).indices
    return np.asarray(pc.fill_null(indices, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def _valid(array: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(pc.is_valid(array).to_numpy(zero_copy_only=False), dtype=bool)


def _timestamps(
    table: pa.Table, name: str, what: str
) -> tuple[npt.NDArray[np.int64], str, npt.NDArray[np.bool_]]:
    """(values in the column's unit since the epoch, the unit, which are not null)."""
    column = _plain(table.column(name))
    kind = column.type
    if not pa.types.is_timestamp(kind) or kind.tz is None:
        raise SchemaError(
            f"{what}: column {name!r} has type {kind}; it must be a timestamp with a time zone. "
            "Attach one with pyarrow.compute.assume_timezone(column, 'UTC') if it holds UTC."
        )
    ints = column.cast(pa.int64())
    values = np.asarray(pc.fill_null(ints, 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    return values, kind.unit, _valid(ints)


def _instant(value: datetime, unit: str, what: str) -> int:
    """The largest count of `unit` since the epoch that is not after `value` (exact)."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidArgument(
            f"{what} = {value!r} has no time zone; backline never guesses one. Pass an aware "
            "datetime, e.g. datetime(2026, 3, 1, tzinfo=UTC)."
        )
    micros = (value - EPOCH) // timedelta(microseconds=1)
    if unit == "ns":
        return micros * 1_000
    return micros // (1_000_000 // _PER_SECOND[unit])


def _label_values(
    column: pa.ChunkedArray, name: str
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(labels as booleans, which are not null). Booleans, or numbers that are all 0 or 1."""
    array = _plain(column)
    ok = _valid(array)
    if pa.types.is_boolean(array.type):
        values = np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), bool)
        return values, ok
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
        raise SchemaError(
            f"label column {name!r} has type {array.type}; labels must be booleans or 0/1 "
            "numbers. Map them first, e.g. pyarrow.compute.equal(column, 'fraud')."
        )
    numbers = np.asarray(pc.fill_null(array, 0).to_numpy(zero_copy_only=False), np.float64)
    bad = ok & (numbers != 0) & (numbers != 1)
    if bad.any():
        raise SchemaError(
            f"label column {name!r} holds {numbers[bad][0]:g}; labels must be 0 or 1 (or "
            "booleans). Map the values first."
        )
    return numbers == 1, ok


# ---------------------------------------------------------------------------------------------
# Realised metrics


@dataclass(frozen=True)
class RealisedMetrics:
    """How the model did on rows whose labels are known."""

    rows: int
    """Labelled rows the metrics are computed on."""
    positives: int
    positive_rate: float
    auc_pr: float
    """Average precision, step-wise over distinct thresholds; NaN with no positives."""
    roc_auc: float
    """Chance a random positive outscores a random negative (ties count 1/2)."""
    recall_at_fpr: float
    """Best recall at a threshold flagging at most `target_fpr` of negatives."""
    threshold: float
    """The score threshold giving `recall_at_fpr` (+inf when none admits a positive)."""
    target_fpr: float
    ece: float
    """Expected calibration error on `bins` equal-width bins; NaN unless scores are in [0, 1]."""
    brier: float
    """Mean squared error of the scores as probabilities; NaN unless scores are in [0, 1]."""
    bins: int = 10

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def realised_metrics(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, target_fpr: float = 0.01, bins: int = 10
) -> RealisedMetrics:
    """Metrics of `scores` against known 0/1 (or bool) `labels`. Ranking metrics need only an
    order, so any score works; ECE and Brier need probabilities and are NaN otherwise."""
    check_fpr(target_fpr)
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = _scores(scores, "realised_metrics")
    if y.shape != s.shape or not ((y == 0) | (y == 1)).all():
        raise InvalidArgument(
            f"realised_metrics: got {y.size} labels for {s.size} scores; pass one 0/1 label per "
            "score."
        )
    ranked = Ranking.of(s)
    m = ranked.metrics(y[ranked.order][None, :] == 1, target_fpr)
    probability = s.size > 0 and s.min() >= 0.0 and s.max() <= 1.0
    return RealisedMetrics(
        rows=int(y.size),
        positives=int(y.sum()),
        positive_rate=float(m["positive_rate"][0]),
        auc_pr=float(m["auc_pr"][0]),
        roc_auc=float(m["roc_auc"][0]),
        recall_at_fpr=float(m["recall_at_fpr"][0]),
        threshold=float(m["threshold"][0]),
        target_fpr=target_fpr,
        ece=expected_calibration_error(y, s, bins) if probability else math.nan,
        brier=brier_score(y, s) if probability else math.nan,
        bins=bins,
    )


# ---------------------------------------------------------------------------------------------
# Concept drift


@dataclass(frozen=True)
class DriftCheck:
    """One metric compared: realised against the estimate's interval."""

    metric: str
    realised: float
    expected: float
    lower: float
    below: bool


@dataclass(frozen=True)
class ConceptDrift:
    """Whether realised performance fell below what the scores predicted. Truthy when it did."""

    drifted: bool
    checks: tuple[DriftCheck, ...]

    def __bool__(self) -> bool:
        return self.drifted

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics that fell below their interval."""
        return tuple(c.metric for c in self.checks if c.below)


def flag_concept_drift(
    realised: RealisedMetrics,
    estimate: PerformanceEstimate,
    *,
    metrics: Sequence[str] = ("auc_pr",),
) -> ConceptDrift:
    """Flag concept drift when a realised metric is below the lower end of its estimate.

    Compare the same rows: estimate the labelled rows' scores (`cohort_performance` does).
    A metric that cannot be computed (NaN, e.g. no positives) never flags. With the default
    levels (0.05, 0.95), each metric of a cohort whose probabilities hold is flagged about 5%
    of the time; an alert rule asking for N cohorts in a row keeps that from paging anyone.
    """
    if realised.target_fpr != estimate.target_fpr:
        raise InvalidArgument(
            f"flag_concept_drift: realised recall is at FPR {realised.target_fpr} but the "
            f"estimate at {estimate.target_fpr}; compute both with the same target_fpr."
        )
    checks = []
    for name in metrics:
        guess = estimate.metric(name)
        value = float(getattr(realised, name))
        below = not (math.isnan(value) or math.isnan(guess.lower)) and value < guess.lower
        checks.append(DriftCheck(name, value, guess.expected, guess.lower, below))
    return ConceptDrift(drifted=any(c.below for c in checks), checks=tuple(checks))


# ---------------------------------------------------------------------------------------------
# Cohorts


@dataclass(frozen=True)
class CohortPerformance:
    """One window of predictions (by `scored_at`): how many are labelled, and how they did."""

    start: datetime
    end: datetime
    """The window is start <= scored_at < end."""
    rows: int
    labelled: int
    """Rows with a known label (True or False) as of the join."""
    coverage: float
    """labelled / rows: itself a monitored metric; stalls when the label feed breaks."""
    mature: bool
    """coverage >= min_coverage: realised metrics are computed."""
    realised: RealisedMetrics | None
    estimate: PerformanceEstimate | None = None
    """Estimate for all the cohort's rows (with a calibrator), available from the first row."""
    concept_drift: ConceptDrift | None = None
    """Realised against an estimate of the labelled rows (mature cohorts with a calibrator)."""


def cohort_performance(
    joined: pa.Table,
    *,
    window: timedelta,
    calibrator: IsotonicCalibrator | None = None,
    min_coverage: float = 0.9,
    target_fpr: float = 0.01,
    bins: int = 10,
    draws: int = 300,
    levels: tuple[float, float] = (0.05, 0.95),
    drift_metrics: Sequence[str] = ("auc_pr",),
    seed: int = 0,
    score_column: str = "score",
    label_column: str = "label",
    time_column: str = "scored_at",
    origin: datetime = EPOCH,
) -> list[CohortPerformance]:
    """Per window of `time_column` (origin + k * window, e.g. UTC days), in time order; windows
    without rows are left out. `joined` is `join_labels`' output: a null label is not known yet.

    Coverage counts every row whose label is known, positive or negative, over all rows. Realised
    metrics wait until coverage reaches `min_coverage`, because labels that arrive early are not
    a random sample: chargebacks (positives) arrive in about 12 days, confirmations of legitimate
    transactions in 25-40, so a half-labelled cohort looks far more fraudulent than it is.

    With a calibrator, each cohort also gets an estimate (before any label), and a mature one a
    concept-drift check. Each cohort's draws are seeded by `seed` and its start, so a cohort's
    numbers do not depend on which other cohorts are in the table.
    """
    if not 0.0 < min_coverage <= 1.0:
        raise InvalidArgument(
            f"cohort_performance: min_coverage = {min_coverage}; pass a share in (0, 1], e.g. 0.9."
        )
    check_fpr(target_fpr)
    unknown = [name for name in drift_metrics if name not in ESTIMATED]
    if unknown:
        raise InvalidArgument(
            f"cohort_performance: drift_metrics {unknown} cannot be estimated; choose from "
            f"{', '.join(ESTIMATED)}."
        )
    _require(joined, (score_column, label_column, time_column), "joined predictions")
    times, unit, time_ok = _timestamps(joined, time_column, "joined predictions")
    if not time_ok.all():
        raise SchemaError(
            f"joined predictions: {int((~time_ok).sum())} rows have a null {time_column!r}; "
            "drop them first."
        )
    width = _whole_units(window, unit, time_column)
    scores = _scores(_plain(joined.column(score_column)), f"column {score_column!r}")
    values, known = _label_values(joined.column(label_column), label_column)
    cohort = (times - _instant(origin, unit, "origin")) // width
    order = np.argsort(cohort, kind="stable")
    keys, starts = np.unique(cohort[order], return_index=True)
    out = []
    for key, rows in zip(keys, np.split(order, starts[1:]), strict=True):
        begin = origin + window * int(key)
        labelled = rows[known[rows]]
        coverage = labelled.size / rows.size
        mature = labelled.size > 0 and coverage >= min_coverage
        realised = None
        if mature:
            realised = realised_metrics(
                values[labelled], scores[labelled], target_fpr=target_fpr, bins=bins
            )
        estimate = drift = None
        if calibrator is not None:
            cohort_seed = [seed, int(key) + 2**62]  # SeedSequence wants non-negative entropy
            estimate = estimate_performance(
                scores[rows], calibrator, target_fpr=target_fpr, draws=draws, levels=levels,
                seed=cohort_seed,
            )  # fmt: skip
            if realised is not None:
                same = estimate
                if labelled.size < rows.size:
                    same = estimate_performance(
                        scores[labelled], calibrator, target_fpr=target_fpr, draws=draws,
                        levels=levels, seed=[*cohort_seed, 1],
                    )  # fmt: skip
                drift = flag_concept_drift(realised, same, metrics=drift_metrics)
        out.append(
            CohortPerformance(
                start=begin,
                end=begin + window,
                rows=int(rows.size),
                labelled=int(labelled.size),
                coverage=coverage,
                mature=mature,
                realised=realised,
                estimate=estimate,
                concept_drift=drift,
            )
        )
    return out


def cohorts_to_arrow(cohorts: Sequence[CohortPerformance]) -> pa.Table:
    """One row per cohort, flat columns (NaN where not computed): for reports and gauges."""

    def get(obj: object, name: str) -> float:
        return math.nan if obj is None else float(getattr(obj, name))

    columns: dict[str, list[object]] = {
        "start": [c.start for c in cohorts],
        "end": [c.end for c in cohorts],
        "rows": [c.rows for c in cohorts],
        "labelled": [c.labelled for c in cohorts],
        "coverage": [c.coverage for c in cohorts],
        "mature": [c.mature for c in cohorts],
    }
    for name in ("positive_rate", "auc_pr", "roc_auc", "recall_at_fpr", "ece", "brier"):
        columns[f"realised_{name}"] = [get(c.realised, name) for c in cohorts]
    for name in ESTIMATED:
        for part in ("expected", "lower", "upper"):
            columns[f"estimated_{name}_{part}"] = [
                get(None if c.estimate is None else c.estimate.metric(name), part) for c in cohorts
            ]
    columns["concept_drift"] = [
        None if c.concept_drift is None else c.concept_drift.drifted for c in cohorts
    ]
    types = {"start": pa.timestamp("us", tz="UTC"), "end": pa.timestamp("us", tz="UTC")}
    types |= {"rows": pa.int64(), "labelled": pa.int64(), "mature": pa.bool_()}
    types["concept_drift"] = pa.bool_()
    return pa.table(
        {name: pa.array(v, types.get(name, pa.float64())) for name, v in columns.items()}
    )


# ---------------------------------------------------------------------------------------------
# Checks


def _scores(scores: npt.ArrayLike | pa.Array, what: str) -> npt.NDArray[np.float64]:
    """Finite float64 scores: a column with bad values is a SchemaError, an argument is an
    InvalidArgument."""
    error: type[BacklineError] = InvalidArgument
    if isinstance(scores, pa.Array):
        error = SchemaError
        scores = pc.cast(scores, pa.float64()).to_numpy(zero_copy_only=False)  # nulls -> NaN
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        raise error(
            f"{what}: {int((~np.isfinite(s)).sum())} of {s.size} scores are null, NaN or "
            "infinite. Drop those rows first."
        )
    return s


def _whole_units(window: timedelta, unit: str, column: str) -> int:
    micros = window // timedelta(microseconds=1)
    if unit == "ns" and micros > 0:
        return micros * 1_000
    size = 1_000_000 // _PER_SECOND.get(unit, 1)
    if micros <= 0 or micros % size:
        raise InvalidArgument(
            f"cohort window {window} must be positive and a whole number of {unit}, the unit "
            f"of {column!r}; e.g. timedelta(days=1)."
        )
    return micros // size
