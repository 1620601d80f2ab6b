"""Performance with delayed labels (backline.monitor.performance).

What is proven here:
- join_labels gives each prediction the label known at `as_of`, latest arrival winning, for
  string and integer ids, every timestamp unit and any time zone (hypothesis, against a
  brute-force join in plain Python with its own time arithmetic);
- realised metrics equal brute-force definitions (thresholds by loop, ROC-AUC by pairs), and
  the sparse many-draws path equals the dense one;
- the Monte-Carlo sampler draws each row with its own probability, independently;
- cohorts count coverage over arrived labels and wait for the threshold;
- on synthetic worlds: stationary data stays inside the estimate's interval, covariate shift
  moves the estimate with the realised value, concept drift is flagged.
"""

from __future__ import annotations

import calendar
import math
import time
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor import calibration
from backline.monitor.calibration import IsotonicCalibrator, Ranking, _draw_positives
from backline.monitor.performance import (
    cohort_performance,
    cohorts_to_arrow,
    estimate_performance,
    flag_concept_drift,
    join_labels,
    realised_metrics,
)
from backline.package import metrics as package_metrics

NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
T0 = datetime(2026, 1, 1, tzinfo=UTC)

# ---------------------------------------------------------------------------------------------
# join_labels


def ns_of(moment: datetime) -> int:
    """Nanoseconds since the epoch, by calendar arithmetic (not the module's timedelta path)."""
    return calendar.timegm(moment.utctimetuple()) * 10**9 + moment.microsecond * 1000


def brute_join(
    pred_ids: list[object], labels: list[tuple[object, int | None, object]], as_of_ns: int
) -> list[bool | None]:
    """labels: (id, time in ns, value). Latest time <= as_of wins; a tie goes to the later row."""
    best: dict[object, tuple[int, int, bool]] = {}
    for row, (key, when, value) in enumerate(labels):
        if key is None or when is None or value is None or when > as_of_ns:
            continue
        if key not in best or (when, row) >= best[key][:2]:
            best[key] = (when, row, bool(value))
    return [None if k is None or k not in best else best[k][2] for k in pred_ids]


def sometimes_none(values: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly values, about one in eight None."""
    return st.tuples(st.integers(0, 7), values).map(lambda pair: None if pair[0] == 0 else pair[1])


ZONES = ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/St_Johns", "+05:45", "-03:00"]
ID_KINDS = [
    (pa.string(), pa.string()),
    (pa.large_string(), pa.string()),
    (pa.string(), pa.large_string()),
    (pa.int64(), pa.int64()),
    (pa.int32(), pa.int64()),
    (pa.uint64(), pa.uint32()),
]


@settings(max_examples=150, deadline=None)
@given(
    kinds=st.sampled_from(ID_KINDS),
    unit=st.sampled_from(["s", "ms", "us", "ns"]),
    zone=st.sampled_from(ZONES),
    as_of_zone=st.sampled_from(ZONES),
    pred_keys=st.lists(sometimes_none(st.integers(0, 6)), max_size=25),
    label_rows=st.lists(
        st.tuples(
            sometimes_none(st.integers(0, 8)),
            sometimes_none(st.integers(-20, 20)),
            sometimes_none(st.booleans()),
        ),
        max_size=30,
    ),
    as_of_step=st.integers(-20, 20),
    jitter_us=st.sampled_from([-1, 0, 1, 999, 1000]),
    dictionary=st.booleans(),
)
def test_join_labels_matches_a_brute_force_join(
    kinds: tuple[pa.DataType, pa.DataType],
    unit: str,
    zone: str,
    as_of_zone: str,
    pred_keys: list[int | None],
    label_rows: list[tuple[int | None, int | None, bool | None]],
    as_of_step: int,
    jitter_us: int,
    dictionary: bool,
) -> None:
    pred_type, label_type = kinds
    as_text = pa.types.is_string(pred_type) or pa.types.is_large_string(pred_type)

    def key(k: int | None) -> object:
        return None if k is None else (f"tx_{k:03d}" if as_text else k)

    # times on a coarse grid (steps of 0.25 s plus a sub-unit offset) so ties and boundaries occur
    base = ns_of(T0) // NS_PER[unit]
    step = max(1, 250_000_000 // NS_PER[unit])
    times = [None if t is None else base + t * step + 7 % step for _, t, _ in label_rows]
    as_of_utc = datetime.fromtimestamp(0, UTC) + timedelta(
        microseconds=(base * NS_PER[unit] // 1000) + as_of_step * step * NS_PER[unit] // 1000
    )
    as_of_utc += timedelta(microseconds=jitter_us)
    tz = ZoneInfo(as_of_zone) if "/" in as_of_zone or as_of_zone == "UTC" else None
    if tz is None:
        sign = 1 if as_of_zone[0] == "+" else -1
        hours, minutes = map(int, as_of_zone[1:].split(":"))
        tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
    as_of = as_of_utc.astimezone(tz)

    ids = pa.array([key(k) for k in pred_keys], pred_type)
    if dictionary:
        ids = ids.dictionary_encode()
    predictions = pa.table({"transaction_id": ids, "score": np.arange(len(pred_keys), dtype=float)})
    labels = pa.table(
        {
            "transaction_id": pa.array([key(k) for k, _, _ in label_rows], label_type),
            "label_time": pa.array(times, pa.timestamp(unit, tz=zone)),
            "is_fraud": pa.array([v for _, _, v in label_rows], pa.bool_()),
        }
    )
    joined = join_labels(
        predictions,
        labels,
        id_column="transaction_id",
        label_column="is_fraud",
        label_time_column="label_time",
        as_of=as_of,
    )
    expected = brute_join(
        [key(k) for k in pred_keys],
        [
            (key(k), None if t is None else t * NS_PER[unit], v)
            for (k, _, v), t in zip(label_rows, times, strict=True)
        ],
        ns_of(as_of),
    )
    assert joined.column("label").to_pylist() == expected
    assert joined.column_names == ["transaction_id", "score", "label"]
    assert joined.column("score").to_pylist() == list(range(len(pred_keys)))  # order kept


@settings(max_examples=150, deadline=None)
@given(
    unit=st.sampled_from(["s", "ms", "us", "ns"]),
    pred_keys=st.lists(
        st.tuples(sometimes_none(st.integers(0, 3)), sometimes_none(st.integers(0, 3))),
        max_size=25,
    ),
    label_rows=st.lists(
        st.tuples(
            st.tuples(sometimes_none(st.integers(0, 4)), sometimes_none(st.integers(0, 4))),
            st.integers(-10, 10),
            st.booleans(),
        ),
        max_size=30,
    ),
    as_of_step=st.integers(-10, 10),
)
def test_join_labels_on_a_composite_key_matches_a_brute_force_join(
    unit: str,
    pred_keys: list[tuple[int | None, int | None]],
    label_rows: list[tuple[tuple[int | None, int | None], int, bool]],
    as_of_step: int,
) -> None:
    """A (string, integer) key: a label belongs to the prediction whose every part is equal; a
    null part matches nothing; the same parts in another order are another key."""

    def key(k: tuple[int | None, int | None]) -> tuple[object, object] | None:
        card, seq = k
        if card is None or seq is None:
            return None  # never matches (brute_join skips a None key)
        return (f"card_{card}", seq)

    base = ns_of(T0) // NS_PER[unit]
    times = [base + t * max(1, 10**9 // NS_PER[unit]) for _, t, _ in label_rows]
    as_of = T0 + timedelta(seconds=as_of_step)
    predictions = pa.table(
        {
            "card_id": pa.array(
                [None if c is None else f"card_{c}" for c, _ in pred_keys], pa.string()
            ),
            "seq": pa.array([s for _, s in pred_keys], pa.int64()),
        }
    )
    labels = pa.table(
        {
            # the label table's key parts arrive as other widths: large_string, int32
            "card_id": pa.array(
                [None if c is None else f"card_{c}" for (c, _), _, _ in label_rows],
                pa.large_string(),
            ),
            "seq": pa.array([s for (_, s), _, _ in label_rows], pa.int32()),
            "t": pa.array(times, pa.timestamp(unit, "UTC")),
            "y": pa.array([v for _, _, v in label_rows], pa.bool_()),
        }
    )
    joined = join_labels(
        predictions,
        labels,
        id_column=("card_id", "seq"),
        label_column="y",
        label_time_column="t",
        as_of=as_of,
    )
    expected = brute_join(
        [key(k) for k in pred_keys],
        [(key(k), t * NS_PER[unit], v) for (k, _, v), t in zip(label_rows, times, strict=True)],
        ns_of(as_of),
    )
    assert joined.column("label").to_pylist() == expected


def test_join_labels_rejects_an_empty_or_repeated_composite_key() -> None:
    table = pa.table({"id": [1], "t": pa.array([0], pa.timestamp("s", "UTC")), "y": [True]})
    for bad in ((), ("id", "id")):
        with pytest.raises(InvalidArgument, match="must name one column or several distinct"):
            join_labels(
                table, table, id_column=bad, label_column="y", label_time_column="t", as_of=T0
            )


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_join_labels_as_of_between_two_ticks_of_the_column(unit: str) -> None:
    """A label at tick T has arrived at T and after, not a microsecond before."""
    tick = ns_of(T0) // NS_PER[unit]
    predictions = pa.table({"id": [7]})
    labels = pa.table({"id": [7], "t": pa.array([tick], pa.timestamp(unit, "UTC")), "y": [True]})

    def label(as_of: datetime) -> object:
        joined = join_labels(
            predictions,
            labels,
            id_column="id",
            label_column="y",
            label_time_column="t",
            as_of=as_of,
        )
        return joined.column("label")[0].as_py()

    us = timedelta(microseconds=1)
    assert [label(T0 - us), label(T0), label(T0 + us)] == [None, True, True]


def test_join_labels_boundary_is_inclusive_to_the_nanosecond() -> None:
    as_of = datetime(2026, 2, 1, 12, 0, 0, 5, tzinfo=UTC)  # ...:00.000005
    at = ns_of(as_of)
    predictions = pa.table({"id": ["a", "b", "c"]})
    labels = pa.table(
        {
            "id": ["a", "b", "c"],
            "t": pa.array([at, at + 1, at - 1], pa.timestamp("ns", tz="UTC")),
            "y": [True, True, False],
        }
    )
    joined = join_labels(
        predictions, labels, id_column="id", label_column="y", label_time_column="t", as_of=as_of
    )
    assert joined.column("label").to_pylist() == [True, None, False]


def test_join_labels_latest_arrival_wins_and_later_revisions_are_invisible() -> None:
    predictions = pa.table({"id": [1, 2, 3]})
    day = 86_400
    labels = pa.table(
        {
            # id 1's reversal (day 20) comes first in the table: time decides, not row order
            "id": [1, 2, 2, 1, 2],
            "t": pa.array(
                [20 * day, 5 * day, 5 * day, 10 * day, 40 * day], pa.timestamp("s", "UTC")
            ),
            "y": [0, 0, 1, 1, 0],  # 0/1 integers are labels too
        }
    )

    def at(days: int) -> list[object]:
        joined = join_labels(
            predictions,
            labels,
            id_column="id",
            label_column="y",
            label_time_column="t",
            as_of=datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=days),
        )
        return joined.column("label").to_pylist()

    assert at(4) == [None, None, None]
    assert at(10) == [True, True, None]  # id 2: two labels at day 5, the later row wins
    assert at(25) == [False, True, None]  # id 1's chargeback reversed on appeal at day 20
    assert at(40) == [False, False, None]
    assert at(41) == at(40)


def test_join_labels_negative_after_turns_matured_silence_into_negatives() -> None:
    scored = pa.array([0, 10, 30], pa.timestamp("s", "UTC"))
    predictions = pa.table({"id": ["a", "b", "c"], "scored_at": scored})
    labels = pa.table({"id": ["b"], "t": pa.array([15], pa.timestamp("s", "UTC")), "y": [True]})
    as_of = datetime(1970, 1, 1, 0, 0, 40, tzinfo=UTC)
    kw = {"id_column": "id", "label_column": "y", "label_time_column": "t", "as_of": as_of}
    assert join_labels(predictions, labels, **kw).column("label").to_pylist() == [None, True, None]

    def labelled(seconds: int) -> list[object]:
        joined = join_labels(predictions, labels, negative_after=timedelta(seconds=seconds), **kw)
        return joined.column("label").to_pylist()

    # scored at 0, 10 (labelled) and 30 s; as of 40 s
    assert labelled(10) == [False, True, False]  # c: scored exactly 10 s before: matured
    assert labelled(11) == [False, True, None]
    assert labelled(40) == [False, True, None]
    assert labelled(41) == [None, True, None]


def test_join_labels_errors_say_what_and_how() -> None:
    predictions = pa.table({"id": ["a"], "label": [True]})
    labels = pa.table({"id": ["a"], "t": pa.array([0], pa.timestamp("s", "UTC")), "y": [True]})
    now = datetime(2026, 1, 1, tzinfo=UTC)
    kw = {"id_column": "id", "label_column": "y", "label_time_column": "t", "as_of": now}
    with pytest.raises(SchemaError, match=r"already have a column 'label'.*output_column"):
        join_labels(predictions, labels, **kw)
    predictions = predictions.drop_columns(["label"])
    with pytest.raises(SchemaError, match="no column 'missing'"):
        join_labels(predictions, labels, **{**kw, "label_column": "missing"})
    with pytest.raises(InvalidArgument, match="no time zone"):
        join_labels(predictions, labels, **{**kw, "as_of": datetime(2026, 1, 1)})
    naive = labels.set_column(1, "t", pa.array([0], pa.timestamp("s")))
    with pytest.raises(SchemaError, match="assume_timezone"):
        join_labels(predictions, naive, **kw)
    ints = labels.set_column(0, "id", pa.array([1]))
    with pytest.raises(SchemaError, match="both be strings or both integers"):
        join_labels(predictions, ints, **kw)
    twos = labels.set_column(2, "y", pa.array([2]))
    with pytest.raises(SchemaError, match="holds 2"):
        join_labels(predictions, twos, **kw)
    text = labels.set_column(2, "y", pa.array(["fraud"]))
    with pytest.raises(SchemaError, match="booleans or 0/1"):
        join_labels(predictions, text, **kw)
    with pytest.raises(InvalidArgument, match="negative"):
        join_labels(predictions, labels, negative_after=timedelta(days=-1), **kw)


# ---------------------------------------------------------------------------------------------
# metrics


def brute_metrics(y: np.ndarray, s: np.ndarray, fpr: float) -> tuple[float, float, float]:
    """Average precision and recall at FPR by looping over thresholds; ROC-AUC over all pairs."""
    pos, neg = y.sum(), (1 - y).sum()
    ap, prev_recall, best_recall = 0.0, 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        flagged = s >= t
        tp, fp = float(np.sum(flagged & (y == 1))), float(np.sum(flagged & (y == 0)))
        recall = tp / pos if pos else math.nan
        if pos:
            ap += (recall - prev_recall) * tp / (tp + fp)
            prev_recall = recall
        if neg and fp / neg <= fpr and pos:
            best_recall = max(best_recall, recall)
    pairs = [
        1.0 if a > b else 0.5 if a == b else 0.0
        for a in s[y == 1].tolist()
        for b in s[y == 0].tolist()
    ]
    auc = float(np.mean(pairs)) if pairs else math.nan
    return (ap if pos else math.nan), auc, (best_recall if pos and neg else math.nan)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 12)), min_size=1, max_size=40),
    st.sampled_from([0.0, 0.05, 0.1, 0.3, 0.5]),
)
def test_realised_metrics_equal_brute_force(rows: list[tuple[bool, int]], fpr: float) -> None:
    y = np.array([r[0] for r in rows], float)
    s = np.array([r[1] for r in rows], float) / 12  # few distinct values: ties everywhere
    m = realised_metrics(y, s, target_fpr=fpr)
    ap, auc, recall = brute_metrics(y, s, fpr)
    np.testing.assert_allclose(
        [m.auc_pr, m.roc_auc, m.recall_at_fpr], [ap, auc, recall], atol=1e-12
    )
    assert (m.rows, m.positives) == (y.size, int(y.sum()))
    if m.positives and m.positives < m.rows:  # agrees with the package's evaluation too
        assert (m.recall_at_fpr, m.threshold) == package_metrics.recall_at_fpr(y, s, fpr)
        assert m.ece == pytest.approx(package_metrics.expected_calibration_error(y, s))


def test_realised_metrics_calibration_needs_probabilities() -> None:
    m = realised_metrics([0, 1, 1], [-2.0, 3.0, 5.0])
    assert m.roc_auc == 1.0 and math.isnan(m.ece) and math.isnan(m.brier)
    with pytest.raises(InvalidArgument, match="one 0/1 label per score"):
        realised_metrics([0, 1], [0.1])
    with pytest.raises(InvalidArgument, match="target_fpr"):
        realised_metrics([0, 1], [0.1, 0.2], target_fpr=1.5)
    with pytest.raises(InvalidArgument, match="NaN or"):
        realised_metrics([0, 1], [0.1, math.nan])


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 60),
    st.integers(1, 8),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0.0, 0.01, 0.2]),
)
def test_sparse_metrics_equal_dense_metrics(n: int, draws: int, seed: int, fpr: float) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, n) / 6
    ranked = Ranking.of(scores)
    y = rng.random((draws, n)) < rng.random()
    draw, position = np.nonzero(y)
    dense = ranked.metrics(y, fpr)
    sparse = ranked.sparse_metrics(draw.astype(np.int64), position.astype(np.int64), draws, fpr)
    float32 = ranked.metrics(y, fpr, np.float32)
    for name, values in sparse.items():
        np.testing.assert_allclose(values, dense[name], atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(float32[name], dense[name], atol=1e-5, equal_nan=True)
    np.testing.assert_array_equal(float32["threshold"], dense["threshold"])
    for row in range(draws):  # and row by row, against the one-vector path realised uses
        one = realised_metrics(y[row], scores[ranked.order], target_fpr=fpr)
        assert one.auc_pr == pytest.approx(dense["auc_pr"][row], nan_ok=True, abs=1e-12)


def test_sampler_draws_each_row_with_its_probability_independently() -> None:
    rng = np.random.default_rng(3)
    # non-increasing: certain rows, dense rows, many halving blocks, tiny and zero probabilities
    p = np.r_[np.ones(5), np.linspace(0.6, 0.11, 40), np.geomspace(0.1, 1e-7, 2000), np.zeros(50)]
    draws = 4000
    draw, row = _draw_positives(p, draws, rng)
    key = draw * p.size + row
    assert np.all(np.diff(key) > 0)  # ordered by draw, then row; no row twice in a draw
    hits = np.bincount(row, minlength=p.size)
    assert np.all(hits[:5] == draws) and np.all(hits[-50:] == 0)
    # per stretch of rows: observed positives within 4.5 sd of the expected count
    for a, b in [(5, 45), (45, 100), (100, 400), (400, 1000), (1000, 2045)]:
        expected = draws * p[a:b].sum()
        sd = math.sqrt(draws * (p[a:b] * (1 - p[a:b])).sum())
        assert abs(hits[a:b].sum() - expected) < 4.5 * sd + 1, (a, b)
    # independence: positives per draw have the variance of a sum of independent Bernoullis
    counts = np.bincount(draw, minlength=draws)
    assert counts.var() == pytest.approx((p * (1 - p)).sum(), rel=0.1)


# ---------------------------------------------------------------------------------------------
# estimation


def sigmoid(v: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-v))


def world(
    rng: np.random.Generator, n: int, *, shift: float = 0.0, new_fraud: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels. The model's score is a monotone but miscalibrated view of the true
    risk. `shift` moves the inputs (covariate shift: P(y|x) unchanged). `new_fraud` adds fraud
    the model cannot see among low-risk inputs (concept drift: scores unchanged)."""
    x = rng.normal(shift, 1.0, n)
    risk = -4.0 + 1.4 * x
    y = rng.random(n) < sigmoid(risk)
    if new_fraud:
        y |= (x < 0.0) & (rng.random(n) < new_fraud)
    return sigmoid(0.6 * risk + 0.8), y


@pytest.fixture(scope="module")
def calibrator() -> IsotonicCalibrator:
    scores, labels = world(np.random.default_rng(100), 60_000)
    return IsotonicCalibrator.fit(scores, labels)


def test_estimate_is_deterministic_and_matches_dense_monte_carlo(
    calibrator: IsotonicCalibrator,
) -> None:
    scores, _ = world(np.random.default_rng(1), 4_000)
    one = estimate_performance(scores, calibrator, draws=400, seed=5)
    assert estimate_performance(scores, calibrator, draws=400, seed=5) == one
    assert estimate_performance(scores, calibrator, draws=400, seed=6) != one
    # the same expectation by plain dense sampling, one uniform per row and draw
    ranked = Ranking.of(scores)
    p = calibrator.predict(scores)[ranked.order]
    y = np.random.default_rng(9).random((2_000, scores.size)) < p
    dense = ranked.metrics(y, 0.01)
    for name in ("auc_pr", "roc_auc", "recall_at_fpr"):
        estimate = getattr(one, name)
        assert estimate.lower < estimate.expected < estimate.upper
        spread = estimate.upper - estimate.lower
        assert abs(estimate.expected - np.nanmean(dense[name])) < 0.1 * spread, name
        lo, hi = np.nanquantile(dense[name], [0.05, 0.95])
        assert abs(estimate.lower - lo) < 0.15 * spread and abs(estimate.upper - hi) < 0.15 * spread
    assert one.positive_rate.expected == pytest.approx(calibrator.predict(scores).mean())


@pytest.mark.parametrize("rate", [0.01, 0.3])
def test_sparse_and_dense_drawing_agree(rate: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rare positives are drawn sparsely, common ones densely: both give the same estimate."""
    rng = np.random.default_rng(8)
    scores = np.round(rng.random(3_000), 3)  # with ties
    probs = np.clip(scores * 2 * rate, 0, 1)
    found = {}
    for path, cutoff in (("sparse", 1.0), ("dense", -1.0)):
        monkeypatch.setattr(calibration, "_SPARSE", cutoff)
        found[path] = estimate_performance(probs, None, draws=600, seed=3)
    for name in ("auc_pr", "roc_auc", "recall_at_fpr", "positive_rate"):
        a, b = getattr(found["sparse"], name), getattr(found["dense"], name)
        spread = a.upper - a.lower
        assert abs(a.expected - b.expected) < 0.1 * spread, name
        assert abs(a.lower - b.lower) < 0.2 * spread and abs(a.upper - b.upper) < 0.2 * spread


def test_estimate_argument_errors(calibrator: IsotonicCalibrator) -> None:
    with pytest.raises(InvalidArgument, match="draws"):
        estimate_performance([0.1], calibrator, draws=1)
    with pytest.raises(InvalidArgument, match="levels"):
        estimate_performance([0.1], calibrator, levels=(0.9, 0.1))
    with pytest.raises(InvalidArgument, match=r"\[0, 1\]"):
        estimate_performance([0.5, 2.0], None)
    empty = estimate_performance(np.zeros(0), calibrator)
    assert math.isnan(empty.auc_pr.expected) and empty.rows == 0


def test_estimate_of_100k_rows_is_fast(calibrator: IsotonicCalibrator) -> None:
    scores, _ = world(np.random.default_rng(2), 100_000)
    estimate_performance(scores[:1000], calibrator)  # warm up
    took = []
    for _ in range(2):  # the better of two, so one stall of a shared machine does not fail it
        started = time.perf_counter()
        estimate_performance(scores, calibrator, draws=300)
        took.append(time.perf_counter() - started)
    assert min(took) < 2.0  # 0.26 s on the two-core development machine under load


def realised_against_estimate(
    calibrator: IsotonicCalibrator, cohorts: int, rows: int, seed: int, **change: float
) -> list[tuple[float, float, float, float, bool]]:
    """(realised AUC-PR, expected, lower, upper, flagged) per cohort of a world."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(cohorts):
        scores, labels = world(rng, rows, **change)
        realised = realised_metrics(labels, scores)
        estimate = estimate_performance(scores, calibrator, draws=200, seed=i)
        flag = flag_concept_drift(realised, estimate)
        e = estimate.auc_pr
        out.append((realised.auc_pr, e.expected, e.lower, e.upper, bool(flag)))
    return out


def test_stationary_cohorts_fall_inside_the_interval(calibrator: IsotonicCalibrator) -> None:
    results = realised_against_estimate(calibrator, 40, 5_000, seed=11)
    inside = np.mean([lo <= r <= hi for r, _, lo, hi, _ in results])
    flagged = np.mean([f for *_, f in results])
    assert inside >= 0.8  # 0.9 if calibration were perfect
    assert flagged <= 0.125  # about 0.05 by construction


def test_covariate_shift_moves_the_estimate_with_the_realised_value(
    calibrator: IsotonicCalibrator,
) -> None:
    before = realised_against_estimate(calibrator, 15, 5_000, seed=12)
    after = realised_against_estimate(calibrator, 15, 5_000, seed=13, shift=0.8)
    moved_realised = np.mean([r for r, *_ in after]) - np.mean([r for r, *_ in before])
    moved_estimate = np.mean([e for _, e, *_ in after]) - np.mean([e for _, e, *_ in before])
    assert moved_realised > 0.08  # the shift really changed performance...
    assert abs(moved_estimate - moved_realised) < 0.25 * moved_realised  # ...and was foreseen
    assert np.mean([lo <= r <= hi for r, _, lo, hi, _ in after]) >= 0.75
    assert np.mean([f for *_, f in after]) <= 0.2


def test_concept_drift_is_flagged(calibrator: IsotonicCalibrator) -> None:
    results = realised_against_estimate(calibrator, 15, 10_000, seed=14, new_fraud=0.05)
    assert np.mean([f for *_, f in results]) >= 0.9
    assert all(r < e for r, e, *_ in results)


def test_flag_concept_drift_checks_what_it_is_asked_and_skips_nan(
    calibrator: IsotonicCalibrator,
) -> None:
    scores, labels = world(np.random.default_rng(4), 10_000, new_fraud=0.08)
    realised = realised_metrics(labels, scores)
    estimate = estimate_performance(scores, calibrator, draws=100)
    flag = flag_concept_drift(realised, estimate, metrics=("auc_pr", "roc_auc", "positive_rate"))
    assert flag and set(flag.metrics) >= {"auc_pr", "roc_auc"}
    assert "positive_rate" not in flag.metrics  # more fraud: realised is above, not below
    no_positives = realised_metrics(np.zeros(scores.size), scores)
    assert not flag_concept_drift(no_positives, estimate)
    with pytest.raises(InvalidArgument, match="same target_fpr"):
        flag_concept_drift(realised_metrics(labels, scores, target_fpr=0.02), estimate)
    with pytest.raises(InvalidArgument, match="no estimate for 'ece'"):
        flag_concept_drift(realised, estimate, metrics=("ece",))


# ---------------------------------------------------------------------------------------------
# cohorts


def joined_table(
    scored: list[datetime], scores: list[float], labels: list[bool | None], unit: str = "us"
) -> pa.Table:
    return pa.table(
        {
            "scored_at": pa.array(scored, pa.timestamp("us", "UTC")).cast(
                pa.timestamp(unit, "UTC")
            ),
            "score": pa.array(scores, pa.float64()),
            "label": pa.array(labels, pa.bool_()),
        }
    )


def test_cohorts_count_arrived_labels_and_wait_for_coverage() -> None:
    day = timedelta(days=1)
    scored = [T0 + timedelta(hours=h) for h in (1, 2, 3, 4)] + [T0 + day + timedelta(hours=5)] * 4
    scores = [0.9, 0.2, 0.1, 0.7, 0.8, 0.3, 0.6, 0.1]
    labels: list[bool | None] = [True, False, False, None, True, False, None, None]
    for unit in ("s", "ns"):
        cohorts = cohort_performance(
            joined_table(scored, scores, labels, unit), window=day, min_coverage=0.75
        )
        first, second = cohorts
        assert (first.start, first.end, second.start) == (T0, T0 + day, T0 + day)
        assert (first.rows, first.labelled, first.coverage, first.mature) == (4, 3, 0.75, True)
        assert (second.rows, second.labelled, second.coverage, second.mature) == (4, 2, 0.5, False)
        assert second.realised is None and first.realised is not None
        # realised on the labelled rows only (the unlabelled 0.7 is not a negative)
        assert first.realised.rows == 3 and first.realised.auc_pr == 1.0
        assert first.estimate is None and first.concept_drift is None


def test_cohort_windows_follow_the_origin_and_skip_empty_windows() -> None:
    scored = [T0 + timedelta(hours=h) for h in (1, 7, 13, 50)]
    table = joined_table(scored, [0.1, 0.2, 0.3, 0.4], [True, False, True, False])
    origin = T0 + timedelta(hours=6)
    cohorts = cohort_performance(table, window=timedelta(hours=12), origin=origin)
    starts = [c.start - T0 for c in cohorts]
    assert starts == [timedelta(hours=h) for h in (-6, 6, 42)]
    assert [c.rows for c in cohorts] == [1, 2, 1]


def test_cohort_estimates_and_drift_flags(calibrator: IsotonicCalibrator) -> None:
    rng = np.random.default_rng(21)
    parts = []
    for d, new_fraud in enumerate((0.0, 0.0, 0.08)):
        scores, labels = world(rng, 8_000, new_fraud=new_fraud)
        shown = np.where(rng.random(scores.size) < 0.95, labels, None)  # 95% arrived
        when = [T0 + timedelta(days=d, seconds=int(s)) for s in rng.integers(0, 86_400, 8_000)]
        parts.append(joined_table(when, list(scores), list(shown)))
    table = pa.concat_tables(parts)
    cohorts = cohort_performance(table, window=timedelta(days=1), calibrator=calibrator)
    assert [c.mature for c in cohorts] == [True, True, True]
    assert all(c.estimate is not None and c.estimate.rows == 8_000 for c in cohorts)
    assert [bool(c.concept_drift) for c in cohorts] == [False, False, True]
    # a cohort's numbers do not depend on the other cohorts in the table
    alone = cohort_performance(parts[1], window=timedelta(days=1), calibrator=calibrator)
    assert alone[0] == cohorts[1]
    flat = cohorts_to_arrow(cohorts)
    assert flat.num_rows == 3 and flat.column("concept_drift").to_pylist() == [False, False, True]
    assert flat.column("estimated_auc_pr_lower").to_pylist()[0] == cohorts[0].estimate.auc_pr.lower
    immature = cohort_performance(table, window=timedelta(days=1), min_coverage=0.99)
    assert all(c.realised is None and c.concept_drift is None for c in immature)


def test_cohort_argument_errors() -> None:
    table = joined_table([T0], [0.5], [True], unit="s")
    with pytest.raises(InvalidArgument, match="whole number of s"):
        cohort_performance(table, window=timedelta(milliseconds=1500))
    with pytest.raises(InvalidArgument, match="min_coverage"):
        cohort_performance(table, window=timedelta(days=1), min_coverage=0)
    with pytest.raises(SchemaError, match="no column 'label'"):
        cohort_performance(table.drop_columns(["label"]), window=timedelta(days=1))
    nan = table.set_column(1, "score", pa.array([math.nan]))
    with pytest.raises(SchemaError, match="NaN"):
        cohort_performance(nan, window=timedelta(days=1))
    null_time = table.set_column(0, "scored_at", pa.array([None], pa.timestamp("s", "UTC")))
    with pytest.raises(SchemaError, match="null 'scored_at'"):
        cohort_performance(null_time, window=timedelta(days=1))
    # a join result with an integer label column and dictionary ids still works
    ints = table.set_column(2, "label", pc.cast(table.column("label"), pa.int8()))
    assert cohort_performance(ints, window=timedelta(days=1))[0].labelled == 1


def test_realised_metrics_of_nothing_are_nan() -> None:
    m = realised_metrics([], [])
    assert m.rows == 0 and math.isnan(m.auc_pr) and math.isnan(m.positive_rate)


def test_cohort_arguments_are_checked_before_any_work() -> None:
    table = joined_table([T0], [0.5], [None])  # immature: realised metrics never computed
    with pytest.raises(InvalidArgument, match=r"drift_metrics.*'ece'"):
        cohort_performance(table, window=timedelta(days=1), drift_metrics=("ece",))
    with pytest.raises(InvalidArgument, match="target_fpr"):
        cohort_performance(table, window=timedelta(days=1), target_fpr=-0.1)
    with pytest.raises(InvalidArgument, match="no time zone"):
        cohort_performance(table, window=timedelta(days=1), origin=datetime(2026, 1, 1))
