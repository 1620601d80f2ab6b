"""Classifier metrics in plain numpy: labels are 0/1, scores are probabilities (or any scores
where higher means more likely positive; only the calibration error needs probabilities).

    average_precision(y, p)       AUC-PR as a step function over distinct thresholds
    roc_auc(y, p)                 probability a random positive outranks a random negative (ties 1/2)
    recall_at_fpr(y, p, 0.01)     best recall with false-positive rate <= 0.01, and its threshold
    expected_calibration_error(y, p, bins=10)

Ties are handled by thresholds: a threshold t predicts positive for every score >= t, so tied
scores always move together. Metrics that need both classes return NaN when one is absent.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike


@dataclass(frozen=True)
class HoldoutMetrics:
    """How the model did on the time-based holdout."""

    examples: int
    positives: int
    auc_pr: float
    """Average precision; the base rate (positives / examples) is what a random model gets."""
    roc_auc: float
    recall_at_fpr: float
    """Share of fraud caught at the threshold where at most `target_fpr` of legit is flagged."""
    target_fpr: float
    threshold: float
    """The score threshold (predict fraud if probability >= it) that gives recall_at_fpr."""
    ece: float
    """Expected calibration error over 10 equal-width probability bins."""
    log_loss: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(labels: ArrayLike, probs: ArrayLike, *, target_fpr: float) -> HoldoutMetrics:
    y, p = _check(labels, probs)
    recall, threshold = recall_at_fpr(y, p, target_fpr)
    eps = 1e-12
    clipped = np.clip(p, eps, 1 - eps)
    log_loss = float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return HoldoutMetrics(
        examples=int(y.size),
        positives=int(y.sum()),
        auc_pr=average_precision(y, p),
        roc_auc=roc_auc(y, p),
        recall_at_fpr=recall,
        target_fpr=target_fpr,
        threshold=threshold,
        ece=expected_calibration_error(y, p),
        log_loss=log_loss,
    )


def _check(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels have {y.size} values but scores have {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("labels must be 0 or 1")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    return y, s


def _curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (true positives, false positives) at each distinct threshold, highest first,
    and the thresholds. Index i predicts positive for every score >= thresholds[i]."""
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # the last position of each run of equal scores: tied scores cross a threshold together
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(1 - y_sorted)[last]
    return tp, fp, s_sorted[last]


def average_precision(labels: ArrayLike, scores: ArrayLike) -> float:
    """sum over thresholds of (recall_i - recall_{i-1}) * precision_i."""
    y, s = _check(labels, scores)
    positives = y.sum()
    if positives == 0 or y.size == 0:
        return math.nan
    tp, fp, _ = _curve(y, s)
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Mann-Whitney U / (n_pos * n_neg), with tied scores given their average rank."""
    y, s = _check(labels, scores)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; a run of equal values all get the mean of the ranks they span."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
    group = np.cumsum(starts) - 1  # group id of each sorted position
    bounds = np.r_[np.nonzero(starts)[0], values.size]  # [first position of each group, ..., n]
    mean_rank = (bounds[:-1] + 1 + bounds[1:]) / 2.0  # mean of ranks first+1 .. next_first
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = mean_rank[group]
    return ranks


def recall_at_fpr(labels: ArrayLike, scores: ArrayLike, max_fpr: float) -> tuple[float, float]:
    """(best recall with FPR <= max_fpr, the threshold giving it). With no threshold that
    admits a positive at that FPR, recall is 0 and the threshold is +inf."""
    y, s = _check(labels, scores)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan, math.nan
    tp, fp, thresholds = _curve(y, s)
    ok = fp / n_neg <= max_fpr
    if not ok.any():
        return 0.0, math.inf
    # recall only grows as the threshold falls, so the lowest admissible threshold is best
    best = int(np.nonzero(ok)[0][-1])
    return float(tp[best] / n_pos), float(thresholds[best])


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, bins: int = 10) -> float:
    """sum over equal-width bins b of (n_b / N) * |mean label in b - mean probability in b|.
    Bin b holds probabilities in [b/bins, (b+1)/bins); 1.0 goes in the last bin."""
    y, p = _check(labels, probs)
    if y.size == 0:
        return math.nan
    if (p < 0).any() or (p > 1).any():
        raise ValueError("probabilities must lie in [0, 1]")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins)
    label_sum = np.bincount(index, weights=y, minlength=bins)
    prob_sum = np.bincount(index, weights=p, minlength=bins)
    used = counts > 0
    gap = np.abs(label_sum[used] - prob_sum[used]) / counts[used]
    return float(np.sum(counts[used] / y.size * gap))
