"""Calibrated probabilities, and the performance they predict before labels arrive.

A model's scores rank transactions; probabilities say how many of them will be fraud. With
probabilities that hold (of the transactions given 0.30, about 30% turn out to be fraud), the
metrics a cohort will show once its labels arrive can be estimated from its scores alone, in
the manner of NannyML's confidence-based performance estimation (CBPE):

    calibrator = IsotonicCalibrator.fit(holdout_scores, holdout_labels)
    probs = calibrator.predict(production_scores)          # same order as the scores
    estimate = estimate_performance(production_scores, calibrator, target_fpr=0.01)
    estimate.auc_pr        # MetricEstimate(expected=0.41, lower=0.37, upper=0.45)
    expected_calibration_error(labels, probs, bins=10), brier_score(labels, probs)

Calibration. A trained model's scores are rarely probabilities (class weights, dropout, an early
stop), so a monotone map is fitted on reference data with known labels, usually the model's
holdout. `isotonic_regression` is pool-adjacent-violators: the non-decreasing fit with the least
(weighted) squared error. Isotonic, not Platt (a logistic curve), because it assumes nothing
about the shape of the miscalibration; being monotone, it never reorders scores, so AUC and
recall at a threshold mean the same before and after. Between the reference's scores the map
interpolates linearly between neighbouring blocks; outside their range it keeps the end values.
A block of reference scores with no positives maps to 0 (one with only positives to 1): fit on
enough data that the extremes hold a few of each.

Estimation. `estimate_performance` draws every row's label as Bernoulli(calibrated probability)
a few hundred times and computes AUC-PR, ROC-AUC and recall at a false-positive rate for each
draw, against the rows' real scores. The mean is the estimate and the quantiles its interval:
the spread a realised value on these rows would show if the probabilities hold. Fraud is rare,
so the draws are made sparsely (`_draw_positives`) and the metrics computed from the positives
alone (`Ranking.sparse_metrics`): the cost grows with draws x positives, not draws x rows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from backline.core.errors import InvalidArgument

__all__ = [
    "ESTIMATED",
    "IsotonicCalibrator",
    "MetricEstimate",
    "PerformanceEstimate",
    "brier_score",
    "estimate_performance",
    "expected_calibration_error",
    "isotonic_regression",
]

ESTIMATED = ("auc_pr", "roc_auc", "recall_at_fpr", "positive_rate")
"""Metrics `estimate_performance` estimates (and concept-drift checks can compare)."""
_DENSE = 0.1
"""In sparse drawing, rows with a probability above this still get one uniform per draw."""
_SPARSE = 0.08
"""Positives are drawn sparsely while the expected positive rate is at most this; above it,
one uniform per row and draw is cheaper than bookkeeping per positive."""
_CELLS = 1 << 20
"""Draws x rows held at once by dense drawing (4 MB of float32)."""


def isotonic_regression(
    y: npt.ArrayLike, weights: npt.ArrayLike | None = None
) -> npt.NDArray[np.float64]:
    """The non-decreasing sequence f minimising sum(w * (y - f)**2), in the order `y` is given.

    Pool adjacent violators: walk left to right keeping blocks of pooled points; whenever a block's
    mean is not above the mean of the block before it, merge the two. Each point is merged at most
    once, so this is linear in len(y). Equal means are merged too, which gives fewer blocks and
    the same fit.
    """
    values = np.asarray(y, dtype=np.float64).ravel()
    w = np.ones_like(values) if weights is None else np.asarray(weights, np.float64).ravel()
    if w.shape != values.shape:
        raise InvalidArgument(
            f"isotonic_regression: {values.size} values but {w.size} weights; pass one weight "
            "per value."
        )
    if not (np.isfinite(values).all() and np.isfinite(w).all() and (w > 0).all()):
        raise InvalidArgument(
            "isotonic_regression: values and weights must be finite and weights positive."
        )
    sums, totals, starts = _pool(values.tolist(), w.tolist())
    means = np.asarray(sums) / np.asarray(totals)
    lengths = np.diff(np.append(np.asarray(starts, dtype=np.intp), values.size))
    return np.repeat(means, lengths)


def _pool(y: list[float], w: list[float]) -> tuple[list[float], list[float], list[int]]:
    """Blocks after pooling: weighted sums, total weights and start positions."""
    sums: list[float] = []
    totals: list[float] = []
    starts: list[int] = []
    for i, (yi, wi) in enumerate(zip(y, w, strict=True)):
        s, t, start = yi * wi, wi, i
        # merge while the previous block's mean >= this one's (cross-multiplied: t > 0)
        while sums and sums[-1] * t >= s * totals[-1]:
            s += sums.pop()
            t += totals.pop()
            start = starts.pop()
        sums.append(s)
        totals.append(t)
        starts.append(start)
    return sums, totals, starts


@dataclass(frozen=True)
class IsotonicCalibrator:
    """A monotone map from model score to probability, fitted on labelled reference data.

    `knots` are ascending scores and `values` the probabilities there; `predict` interpolates
    linearly between knots and holds the end values outside them. Store it with `to_json`.
    """

    knots: tuple[float, ...]
    values: tuple[float, ...]
    reference_rows: int
    reference_positives: int

    @classmethod
    def fit(cls, scores: npt.ArrayLike, labels: npt.ArrayLike) -> IsotonicCalibrator:
        """Fit on reference `scores` (finite) and their 0/1 (or bool) `labels`.

        Rows with the same score are pooled first, so they get one probability."""
        s = _finite_scores(scores, "IsotonicCalibrator.fit")
        y = _binary(labels, "IsotonicCalibrator.fit")
        if y.shape != s.shape:
            raise InvalidArgument(
                f"IsotonicCalibrator.fit: {s.size} scores but {y.size} labels; pass one label "
                "per score."
            )
        positives = int(y.sum())
        if positives == 0 or positives == y.size:
            raise InvalidArgument(
                f"IsotonicCalibrator.fit: the reference has {positives} positives among {y.size} "
                "rows; it needs both classes. Use a larger or longer reference window."
            )
        unique, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
        label_sums = np.bincount(inverse, weights=y, minlength=unique.size)
        sums, totals, starts = _pool((label_sums / counts).tolist(), counts.astype(float).tolist())
        means = np.asarray(sums) / np.asarray(totals)
        first = np.asarray(starts, dtype=np.intp)
        ends = np.append(first[1:], unique.size) - 1
        # each block contributes its first and last score; a one-score block contributes one knot
        knots = np.column_stack((unique[first], unique[ends])).ravel()
        values = np.repeat(means, 2)
        keep = np.r_[True, knots[1:] != knots[:-1]]
        return cls(
            knots=tuple(float(k) for k in knots[keep]),
            values=tuple(float(v) for v in values[keep]),
            reference_rows=int(y.size),
            reference_positives=positives,
        )

    def predict(self, scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Calibrated probabilities for `scores` (finite), in the same order."""
        s = _finite_scores(scores, "IsotonicCalibrator.predict")
        return np.interp(s, np.asarray(self.knots), np.asarray(self.values))

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "isotonic",
                "knots": self.knots,
                "values": self.values,
                "reference_rows": self.reference_rows,
                "reference_positives": self.reference_positives,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> IsotonicCalibrator:
        obj = json.loads(text)
        if not isinstance(obj, dict) or obj.get("kind") != "isotonic":
            raise InvalidArgument(
                "IsotonicCalibrator.from_json: not a calibrator written by to_json "
                '(expected {"kind": "isotonic", ...}).'
            )
        return cls(
            knots=tuple(float(k) for k in obj["knots"]),
            values=tuple(float(v) for v in obj["values"]),
            reference_rows=int(obj["reference_rows"]),
            reference_positives=int(obj["reference_positives"]),
        )


def expected_calibration_error(
    labels: npt.ArrayLike, probs: npt.ArrayLike, bins: int = 10
) -> float:
    """sum over equal-width bins b of (n_b / N) * |mean label in b - mean probability in b|.

    Bin b holds probabilities in [b/bins, (b+1)/bins); 1.0 goes in the last bin. Fixed bins, not
    quantile bins, so two cohorts' values compare: the same probabilities land in the same bins.
    NaN for no rows."""
    y, p = _pair(labels, probs, "expected_calibration_error")
    if bins < 1:
        raise InvalidArgument(f"expected_calibration_error: bins = {bins}; use at least 1.")
    if y.size == 0:
        return math.nan
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    gap = np.abs(
        np.bincount(index, weights=y, minlength=bins)
        - np.bincount(index, weights=p, minlength=bins)
    )
    # sum_b (n_b / N) * |sum_y_b - sum_p_b| / n_b = sum_b |sum_y_b - sum_p_b| / N
    return float(gap[counts > 0].sum() / y.size)


def brier_score(labels: npt.ArrayLike, probs: npt.ArrayLike) -> float:
    """Mean squared difference between probability and outcome (0 is perfect); NaN for no rows."""
    y, p = _pair(labels, probs, "brier_score")
    return float(np.mean((p - y) ** 2)) if y.size else math.nan


# ---------------------------------------------------------------------------------------------
# Metrics over many label vectors at once


@dataclass(frozen=True)
class Ranking:
    """Scores sorted highest first, cut at each distinct score (a threshold: predict positive
    for every score >= it, so tied scores always move together).

    Realised metrics (`performance.realised_metrics`, one label vector) and estimated ones
    (many drawn vectors) go through this class, so they cannot disagree on a definition."""

    order: npt.NDArray[np.intp]
    ends: npt.NDArray[np.intp]
    """Last sorted position of each run of equal scores (a threshold group)."""
    above: npt.NDArray[np.float64]
    """Rows scored >= each threshold (ends + 1)."""
    thresholds: npt.NDArray[np.float64]
    group: npt.NDArray[np.int64]
    """Threshold group of each sorted position."""
    ranks: npt.NDArray[np.float64]
    """Ascending rank of each sorted position, ties given their mean rank (Mann-Whitney)."""

    @classmethod
    def of(cls, scores: npt.NDArray[np.float64]) -> Ranking:
        n = scores.size
        order = np.argsort(-scores, kind="stable")
        ranked = scores[order]
        new = np.ones(n, dtype=bool)
        new[1:] = ranked[1:] != ranked[:-1]
        ends = np.append(np.flatnonzero(new)[1:], n)[: new.sum()] - 1
        group = np.cumsum(new, dtype=np.int64) - 1
        above = (ends + 1).astype(np.float64)
        below_group = np.r_[0.0, above[:-1]]
        # a group spanning sorted positions [below, above) holds ascending ranks
        # n - above + 1 .. n - below; each member gets their mean
        ranks = (n - (above + below_group) / 2 + 0.5)[group]
        return cls(order, ends, above, ranked[ends], group, ranks)

    @property
    def tied(self) -> bool:
        return bool(self.ends.size < self.group.size)

    def metrics(
        self,
        y_sorted: npt.NDArray[np.bool_],
        target_fpr: float,
        dtype: type[np.floating[Any]] = np.float64,
    ) -> dict[str, npt.NDArray[np.float64]]:
        """Per row of `y_sorted` (D, n), labels in sorted order: AUC-PR, ROC-AUC, recall at
        `target_fpr` and its threshold, positive rate; NaN where a metric needs an absent class.
        Label counts are exact in float32 up to 2**24 rows; float32 sums lose about 1e-6, which
        Monte-Carlo noise dwarfs, at half the memory traffic."""
        draws, n = y_sorted.shape
        if n == 0:
            nan = np.full(draws, math.nan)
            return {name: nan for name in (*ESTIMATED, "threshold")}
        y = y_sorted.astype(dtype)
        pos = y_sorted.sum(axis=1).astype(np.float64)
        neg = n - pos
        # Mann-Whitney: the positives' rank sum counts the rows each outranks, ties as 1/2
        rank_sum = (y @ self.ranks.astype(dtype)).astype(np.float64)
        # positives scored >= each position (an integer cumsum is much faster than a float one)
        counts = np.cumsum(y_sorted, axis=1, dtype=np.int64 if n >= 2**31 else np.int32)
        d_tp = y
        if self.tied:
            counts = counts[:, self.ends]
        tp = counts.astype(dtype)
        if self.tied:
            d_tp = np.diff(tp, axis=1, prepend=0)
        # step-wise average precision: sum of (recall step) * (precision there)
        precision_sum = ((d_tp * tp) @ (1.0 / self.above).astype(dtype)).astype(np.float64)
        # false-positive rate only grows as the threshold falls, so the admissible thresholds
        # are a prefix; the last of them has the best recall
        fp = self.above.astype(dtype) - tp
        admitted = (fp <= _most_false_positives(neg, target_fpr)[:, None].astype(dtype)).sum(1)
        last = np.maximum(admitted - 1, 0)
        hit = admitted > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            auc_pr = precision_sum / pos
            roc_auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
            recall = np.where(hit, tp[np.arange(draws), last] / pos, 0.0)
        threshold = np.where(hit, self.thresholds[last], math.inf)
        both = (pos > 0) & (neg > 0)
        return {
            "auc_pr": np.where(pos > 0, auc_pr, math.nan),
            "roc_auc": np.where(both, roc_auc, math.nan),
            "recall_at_fpr": np.where(both, recall, math.nan),
            "threshold": np.where(both, threshold, math.nan),
            "positive_rate": pos / n,
        }

    def sparse_metrics(
        self,
        draw: npt.NDArray[np.int64],
        position: npt.NDArray[np.int64],
        draws: int,
        target_fpr: float,
    ) -> dict[str, npt.NDArray[np.float64]]:
        """`metrics` for `draws` label vectors given as their positives only: (draw, sorted
        position) pairs ordered by draw, then position. Work grows with the positives, not
        with draws x rows. Sums over positives instead of thresholds: each positive of a
        threshold's group adds that group's term once."""
        n = self.group.size
        pos = np.bincount(draw, minlength=draws).astype(np.float64)
        neg = n - pos
        if draw.size == 0:  # no draw has a positive
            nan = np.full(draws, math.nan)
            return {name: nan for name in ESTIMATED} | {"positive_rate": pos / max(n, 1)}
        group = self.group[position]
        # positives sharing a draw and a group are tied: all count as reached together
        new = np.ones(draw.size, dtype=bool)
        new[1:] = (draw[1:] != draw[:-1]) | (group[1:] != group[:-1])
        last = np.append(np.flatnonzero(new)[1:], draw.size) - 1
        run = np.cumsum(new) - 1
        offsets = np.r_[0, np.cumsum(pos)[:-1]].astype(np.int64)
        tp = (last - offsets[draw[last]] + 1).astype(np.float64)[run]  # positives >= threshold
        above = self.above[group]
        with np.errstate(divide="ignore", invalid="ignore"):
            auc_pr = np.bincount(draw, tp / above, draws) / pos
            rank_sum = np.bincount(draw, self.ranks[position], draws)
            roc_auc = (rank_sum - pos * (pos + 1) / 2) / (pos * neg)
            # a positive is caught at the best admissible threshold iff its own group's
            # false-positive count is admissible (that count only grows down the ranking)
            caught = above - tp <= _most_false_positives(neg, target_fpr)[draw]
            recall = np.bincount(draw, caught.astype(np.float64), draws) / pos
        both = (pos > 0) & (neg > 0)
        return {
            "auc_pr": np.where(pos > 0, auc_pr, math.nan),
            "roc_auc": np.where(both, roc_auc, math.nan),
            "recall_at_fpr": np.where(both, recall, math.nan),
            "positive_rate": pos / n,
        }


def _most_false_positives(
    negatives: npt.NDArray[np.float64], target_fpr: float
) -> npt.NDArray[np.float64]:
    """Per entry, the largest whole f with f / negatives <= target_fpr as computed in float64
    (so a count compare gives exactly what the rate compare would). -1 with no negatives."""
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.floor(target_fpr * negatives)
        f = np.where((f + 1) / negatives <= target_fpr, f + 1, f)  # rounding put f one low
        f = np.where(f / negatives > target_fpr, f - 1, f)  # or one high
    return np.where(negatives > 0, f, -1.0)


def _sampled_metrics(
    ranked: Ranking,
    p: npt.NDArray[np.float64],
    draws: int,
    rng: np.random.Generator,
    target_fpr: float,
) -> dict[str, npt.NDArray[np.float64]]:
    """Metrics of `draws` label vectors y[i] ~ Bernoulli(p[i]), `p` in `ranked` order.

    Rare positives (fraud) are drawn sparsely and the metrics summed over positives; common
    ones get a uniform per row and draw, in chunks of about _CELLS, in float32."""
    if p.size == 0 or p.mean() <= _SPARSE:
        draw, position = _draw_positives(p, draws, rng)
        return ranked.sparse_metrics(draw, position, draws, target_fpr)
    p32 = p.astype(np.float32)
    step = max(1, _CELLS // p.size)
    parts = []
    for start in range(0, draws, step):
        # consecutive draws read consecutive stretches of the stream: chunking changes nothing
        y = rng.random((min(step, draws - start), p.size), dtype=np.float32) < p32
        parts.append(ranked.metrics(y, target_fpr, np.float32))
    return {name: np.concatenate([part[name] for part in parts]) for name in ESTIMATED}


def _draw_positives(
    p: npt.NDArray[np.float64], draws: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Independent labels y[d, i] ~ Bernoulli(p[i]) for `draws` draws, returned as the
    positives: (draw, i) pairs ordered by draw, then i. `p` must be non-increasing.

    Drawing one uniform per row and draw costs draws x rows; with fraud's ~1% positives almost
    all of that is wasted. Rows with p > _DENSE do get one uniform each. The rest are cut into
    blocks where p lies in (q/2, q], q the block's first value. In a block of L rows, each row
    is a candidate with probability q: the candidates of a draw are a uniform subset of size
    Binomial(L, q). Each candidate is then kept with probability p[i] / q (at least 1/2), so
    row i is positive with probability q * p[i] / q = p[i], independently. Rows with p = 0 are
    never drawn.
    """
    n = p.size
    draw_parts: list[npt.NDArray[np.int64]] = []
    row_parts: list[npt.NDArray[np.int64]] = []
    start = int(np.searchsorted(-p, -_DENSE, side="left"))  # rows with p > _DENSE
    if start:
        d, i = np.nonzero(rng.random((draws, start)) < p[:start])
        draw_parts.append(d.astype(np.int64))
        row_parts.append(i.astype(np.int64))
    while start < n and p[start] > 0.0:
        q = float(p[start])
        # halve while it is worth it; one last block holds the tiniest probabilities
        end = n if q < 1e-6 else int(np.searchsorted(-p, -q / 2, side="right"))
        size = end - start
        d = np.repeat(np.arange(draws, dtype=np.int64), rng.binomial(size, q, draws))
        i = start + rng.integers(0, size, d.size)
        while True:  # make each draw's candidates distinct: redraw the repeats
            key = d * n + i
            order = np.argsort(key)
            repeat = order[1:][key[order][1:] == key[order][:-1]]
            if repeat.size == 0:
                break
            i[repeat] = start + rng.integers(0, size, repeat.size)
        d, i = d[order], i[order]  # by draw, then row
        keep = rng.random(d.size) * q < p[i]
        draw_parts.append(d[keep])
        row_parts.append(i[keep])
        start = end
    if not draw_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    draw, row = np.concatenate(draw_parts), np.concatenate(row_parts)
    # each part is ordered by (draw, row) and covers rows after the part before it, so a
    # stable sort by draw alone orders everything (a radix sort for 16-bit keys)
    small = np.int16 if draws <= np.iinfo(np.int16).max else np.int64
    order = np.argsort(draw.astype(small), kind="stable")
    return draw[order], row[order]


# ---------------------------------------------------------------------------------------------
# Estimated metrics (confidence-based, before labels)


@dataclass(frozen=True)
class MetricEstimate:
    """The expected value of a metric and the interval it should fall in."""

    expected: float
    lower: float
    upper: float


@dataclass(frozen=True)
class PerformanceEstimate:
    """What the realised metrics of a set of rows should be if the calibrated probabilities
    hold: the mean over label draws, and the quantiles `levels` of the draws."""

    rows: int
    draws: int
    levels: tuple[float, float]
    target_fpr: float
    auc_pr: MetricEstimate
    roc_auc: MetricEstimate
    recall_at_fpr: MetricEstimate
    positive_rate: MetricEstimate
    """Expected value exact (mean calibrated probability); interval from the draws."""

    def metric(self, name: str) -> MetricEstimate:
        if name not in ESTIMATED:
            raise InvalidArgument(
                f"no estimate for {name!r}; estimated metrics: {', '.join(ESTIMATED)}."
            )
        estimate: MetricEstimate = getattr(self, name)
        return estimate


def estimate_performance(
    scores: npt.ArrayLike,
    calibrator: IsotonicCalibrator | None,
    *,
    target_fpr: float = 0.01,
    draws: int = 300,
    levels: tuple[float, float] = (0.05, 0.95),
    seed: int | Sequence[int] = 0,
) -> PerformanceEstimate:
    """Estimate AUC-PR, ROC-AUC, recall at `target_fpr` and the positive rate of unlabelled rows.

    Each row's label is drawn `draws` times as Bernoulli(calibrated probability), the metrics are
    computed for every draw against the rows' scores, and their mean and `levels` quantiles are
    returned. The interval is the spread a realised value on these rows would show if the
    probabilities were right: it shrinks as rows grow. It does not include the calibrator's own
    error (a small reference widens it in truth but not here). `calibrator=None` takes `scores`
    as calibrated probabilities already. Deterministic in `seed`.
    """
    check_fpr(target_fpr)
    if draws < 2:
        raise InvalidArgument(f"estimate_performance: draws = {draws}; use at least 2 (e.g. 300).")
    lo, hi = levels
    if not 0.0 <= lo < hi <= 1.0:
        raise InvalidArgument(
            f"estimate_performance: levels = {levels}; pass two quantiles 0 <= low < high <= 1, "
            "e.g. (0.05, 0.95)."
        )
    s = _finite_scores(scores, "estimate_performance")
    p = s if calibrator is None else calibrator.predict(s)
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise InvalidArgument(
            "estimate_performance: without a calibrator, scores must be probabilities in [0, 1]; "
            f"got {p.min():g} to {p.max():g}. Pass IsotonicCalibrator.fit(reference...)."
        )
    ranked = Ranking.of(s)
    found = _sampled_metrics(
        ranked, p[ranked.order], draws, np.random.default_rng(seed), target_fpr
    )
    names = ("auc_pr", "roc_auc", "recall_at_fpr", "positive_rate")
    summary = {name: _summarise(found[name], levels) for name in names}
    rate = summary["positive_rate"]
    exact_rate = float(p.mean()) if p.size else math.nan
    return PerformanceEstimate(
        rows=int(s.size),
        draws=draws,
        levels=(lo, hi),
        target_fpr=target_fpr,
        auc_pr=summary["auc_pr"],
        roc_auc=summary["roc_auc"],
        recall_at_fpr=summary["recall_at_fpr"],
        positive_rate=MetricEstimate(exact_rate, rate.lower, rate.upper),
    )


def _summarise(values: npt.NDArray[np.float64], levels: tuple[float, float]) -> MetricEstimate:
    """Mean and quantiles over the draws where the metric exists (NaN draws have one class)."""
    ok = values[~np.isnan(values)]
    if ok.size == 0:
        return MetricEstimate(math.nan, math.nan, math.nan)
    lower, upper = np.quantile(ok, levels)
    return MetricEstimate(float(ok.mean()), float(lower), float(upper))


def check_fpr(target_fpr: float) -> None:
    """A target false-positive rate must lie in [0, 1)."""
    if not 0.0 <= target_fpr < 1.0:
        raise InvalidArgument(
            f"target_fpr = {target_fpr}; pass a false-positive rate in [0, 1), e.g. 0.01."
        )


# ---------------------------------------------------------------------------------------------
# Checks


def _pair(
    labels: npt.ArrayLike, probs: npt.ArrayLike, what: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    y = _binary(labels, what)
    p = _finite_scores(probs, what)
    if y.shape != p.shape:
        raise InvalidArgument(f"{what}: {y.size} labels but {p.size} probabilities.")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise InvalidArgument(
            f"{what}: probabilities must lie in [0, 1]; got values from {p.min():g} to "
            f"{p.max():g}. Calibrate raw scores first (IsotonicCalibrator)."
        )
    return y, p


def _finite_scores(scores: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    if not np.isfinite(s).all():
        bad = int((~np.isfinite(s)).sum())
        raise InvalidArgument(
            f"{what}: {bad} of {s.size} scores are NaN or infinite. Drop those rows first."
        )
    return s


def _binary(labels: npt.ArrayLike, what: str) -> npt.NDArray[np.float64]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    bad = ~((y == 0.0) | (y == 1.0))
    if bad.any():
        raise InvalidArgument(
            f"{what}: labels must be 0/1 or booleans; found {y[bad][0]!r}. Map them first."
        )
    return y
