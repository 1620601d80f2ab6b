"""A multivariate drift detector: PCA reconstruction error, for joint shifts the marginals miss.

Per-feature tests compare one feature's distribution at a time. Two correlated features whose
correlation flips sign keep both marginals exactly, and no per-feature test can see it. This
detector learns the reference's correlation structure from a sample of reference rows (the
registry stores only marginal profiles, so the rows come from the training set):

    detector = PCADriftDetector.fit(training_rows, ["amount", "count_10m", "avg_1d"])
    stored = detector.to_json()                      # kept beside the version's profile
    result = PCADriftDetector.from_json(stored).check(prediction_log_rows)
    result.statistic, result.threshold, result.drifted   # 1.75, 1.03, True

**Model.** Each numeric column is first mapped to normal scores through the reference's own
quantiles (`KNOTS` of them, linear in between; values beyond the reference's range get its
extreme score), then standardised; a null, NaN or infinite value becomes the mean and
contributes nothing. Fraud amounts are heavy-tailed: on raw values one large amount would
dominate a window's error, and its threshold would be unreliable. Normal scores keep the
correlation structure (a Gaussian copula) and make row errors nearly chi-square. PCA keeps
the leading components that explain `variance` of the total (default 0.9), at least one
component fewer than there are columns. A row's error is its squared distance from that subspace, measured in
each dropped component's own standard deviation and averaged over them, so it is about 1 for a
reference row in every direction alike: the direction in which two correlated features barely
vary apart is as sensitive as any other. (A variance below 1e-6 of the mean is raised to
that, so an exact linear dependency does not divide by zero.) A row's error is capped at the
reference's 99.5th percentile, so a handful of odd rows cannot move a window's mean on their
own; a real change of structure moves most rows. Constant columns carry no structure and are
left out.

**Statistic and threshold.** The statistic is the window's mean error divided by the
reference's (1.0: as in the reference). It alarms when it is above a threshold calibrated, like
the per-feature tests, under a two-sample null, and also at least `1 + effect_floor` (default
1.05: 5% more error than the reference, so a large window cannot alarm on a trifle). The
components are fitted on max(50 d, 5000) of the reference rows (at most half); the errors come
from all the others, because a PCA underestimates the error of the rows it was fitted on. The
bootstrap draws both a window of the checked size and a reference of the held-out size from
those errors (Poisson resampling). The threshold is the (1 - alpha) quantile of their ratio,
from the bootstrap's mean, variance, skewness and kurtosis by the Cornish-Fisher expansion,
since alpha = 0.0002 is beyond what `n_boot` draws resolve directly. It is computed once per
window size (on the same grid as `DriftDetector`) and cached. Only an increase alarms: rows
that fit the reference's structure better than the reference itself are not a failure.

The per-window false-alarm budget is shared: with `DriftDetector(q=0.001)` on the same
windows, the default alpha adds at most one alarm in 5,000 stationary windows. The held-out
rows are a sample too, so give the fit more reference rows than a window has when you can:
a given reference's own noise then moves the threshold little.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor.drift import calibration_size
from backline.monitor.profile import _as_float
from backline.monitor.window import ColumnOf, log_column

FORMAT = 1
"""Version of the JSON form."""

MIN_VARIANCE = 1e-6
"""Smallest residual variance, as a share of the mean component variance."""

MIN_FIT_ROWS = 5000
FIT_ROWS_PER_COLUMN = 50
"""The components are fitted on max(50 d, 5000) reference rows (at most half of them); every
other row calibrates the threshold, where more rows mean less reference noise."""

KNOTS = 129
"""Reference quantiles per column for the normal-score transform."""

ERROR_CAP = 0.995
"""Row errors are capped at this quantile of the reference's."""

MAX_STORED_ERRORS = 2048
"""Held-out row errors kept (and stored) for calibration: plenty for the mean of a window."""


@dataclass(frozen=True)
class MultivariateResult:
    """The multivariate check of one window."""

    statistic: float
    """The window's mean reconstruction error over the reference's (1.0: as in the reference)."""

    threshold: float
    """The calibrated threshold for this window's size: above it, the statistic is significant."""

    floor: float
    """1 + effect_floor: the statistic must also reach this to alarm."""

    drifted: bool
    rows: int


@dataclass(frozen=True)
class _Model:
    """Everything the check needs, as fitted (and as stored)."""

    columns: tuple[str, ...]
    knots: np.ndarray
    """(d, k): each column's reference quantiles, ascending."""

    scores: np.ndarray
    """(d, k): the normal score at each knot."""

    mean: np.ndarray
    """(d,): mean of the normal scores."""

    scale: np.ndarray
    """(d,): standard deviation of the normal scores."""

    basis: np.ndarray
    """(d, r): the dropped principal directions."""

    residual_variance: np.ndarray
    """(r,): the reference's variance along each dropped direction."""

    cap: float
    """Row errors above this are counted as this."""

    errors: np.ndarray
    """Capped errors of held-out reference rows (at most MAX_STORED_ERRORS of them)."""

    holdout_rows: int
    holdout_mean: float


class PCADriftDetector:
    """PCA reconstruction error against a reference sample (see the module docstring). Make one
    with `fit` or `from_json`."""

    def __init__(
        self, model: _Model, *, alpha: float, effect_floor: float, n_boot: int, seed: int
    ) -> None:
        _check_settings(alpha, effect_floor, n_boot)
        d, r = len(model.columns), model.basis.shape[1] if model.basis.ndim == 2 else -1
        consistent = (
            model.knots.shape == model.scores.shape
            and model.knots.ndim == 2
            and model.knots.shape[0] == d
            and model.mean.shape == (d,)
            and model.scale.shape == (d,)
            and bool(np.all(model.scale > 0))
            and model.basis.shape == (d, r)
            and r >= 1
            and model.residual_variance.shape == (r,)
            and bool(np.all(model.residual_variance > 0))
            and model.errors.ndim == 1
            and model.errors.size > 0
            and model.holdout_mean > 0
            and model.holdout_rows >= 1
            and model.cap > 0
        )
        if not consistent:
            raise SchemaError(
                f"PCADriftDetector: an inconsistent model ({d} columns, knots "
                f"{model.knots.shape}, basis {model.basis.shape}, residual variance "
                f"{model.residual_variance.shape}, {model.errors.size} errors, holdout mean "
                f"{model.holdout_mean}). Fit it again with PCADriftDetector.fit."
            )
        self.model = model
        self.alpha = alpha
        self.effect_floor = effect_floor
        self.n_boot = n_boot
        self.seed = seed
        self._thresholds: dict[int, float] = {}

    @classmethod
    def fit(
        cls,
        reference_rows: pa.Table | np.ndarray,
        columns: Sequence[str] | None = None,
        *,
        variance: float = 0.9,
        alpha: float = 0.0002,
        effect_floor: float = 0.05,
        n_boot: int = 2000,
        seed: int = 0,
    ) -> PCADriftDetector:
        """Fit on reference rows: an Arrow table (default columns: every numeric one) or a
        matrix with one row per reference row and `columns` naming its columns."""
        _check_settings(alpha, effect_floor, n_boot)
        if not 0 < variance < 1:
            raise InvalidArgument(
                f"PCADriftDetector.fit: variance = {variance!r} must be between 0 and 1 (the "
                "share of the reference's variance the kept components explain; default 0.9)."
            )
        names, matrix = _reference_matrix(reference_rows, columns)
        rows = matrix.shape[0]
        knots, scores = _normal_score_knots(matrix)
        z = _scores(matrix, knots, scores)
        finite = np.isfinite(z)
        counts = np.maximum(finite.sum(axis=0), 1)
        mean = np.where(finite, z, 0.0).sum(axis=0) / counts
        spread = np.sqrt(np.where(finite, (z - mean) ** 2, 0.0).sum(axis=0) / counts)
        varying = spread > 1e-12
        if varying.sum() < 2:
            raise InvalidArgument(
                f"PCADriftDetector.fit: {int(varying.sum())} of the columns "
                f"{', '.join(names)} vary in the reference rows; a joint shift needs at least "
                "two varying numeric columns."
            )
        d = int(varying.sum())
        if rows < 2 * d + 20:
            raise InvalidArgument(
                f"PCADriftDetector.fit: {rows} reference rows for {d} columns is too few; pass "
                f"at least {2 * d + 20} (thousands are better: half fit the components, half "
                "calibrate the threshold)."
            )
        names = [n for n, keep in zip(names, varying, strict=True) if keep]
        knots, scores = knots[varying], scores[varying]
        mean, spread = mean[varying], spread[varying]
        z = _standardise(z[:, varying], mean, spread)
        order = np.random.default_rng(seed).permutation(rows)
        fitted = min(rows // 2, max(FIT_ROWS_PER_COLUMN * d, MIN_FIT_ROWS))
        fit_rows, held_rows = z[order[:fitted]], z[order[fitted:]]
        # (m, d) -> singular values s (d,) and directions vt (d, d), largest first
        _, s, vt = np.linalg.svd(fit_rows - fit_rows.mean(axis=0), full_matrices=False)
        eigen = s**2 / max(fit_rows.shape[0] - 1, 1)
        share = np.cumsum(eigen) / eigen.sum()
        kept = min(int(np.searchsorted(share, variance) + 1), d - 1)
        basis = vt[kept:].T
        residual = np.maximum(eigen[kept:], MIN_VARIANCE * eigen.mean())
        raw = _row_errors(held_rows, basis, residual)
        cap = float(np.quantile(raw, ERROR_CAP))
        held = np.minimum(raw, cap)
        sample = held
        if held.size > MAX_STORED_ERRORS:
            sample = np.random.default_rng(seed).choice(held, MAX_STORED_ERRORS, replace=False)
        model = _Model(
            columns=tuple(names),
            knots=knots,
            scores=scores,
            mean=mean,
            scale=spread,
            basis=basis,
            residual_variance=residual,
            cap=cap,
            errors=sample,
            holdout_rows=int(held.size),
            holdout_mean=float(held.mean()),
        )
        return cls(model, alpha=alpha, effect_floor=effect_floor, n_boot=n_boot, seed=seed)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.model.columns

    @property
    def kept_components(self) -> int:
        return len(self.model.columns) - self.model.basis.shape[1]

    def statistic(self, rows: pa.Table | np.ndarray, *, column_of: ColumnOf | None = None) -> float:
        """The window's mean row error over the reference's (see the module docstring)."""
        errors = self._errors(self._window_matrix(rows, column_of))
        return float(errors.mean() / self.model.holdout_mean) if errors.size else 1.0

    def threshold(self, rows: int) -> float:
        """The alarm threshold of the statistic for windows of `rows` rows (cached per size)."""
        size = calibration_size(rows)
        if size not in self._thresholds:
            self._thresholds[size] = self._calibrate(size)
        return self._thresholds[size]

    def check(
        self, window_rows: pa.Table | np.ndarray, *, column_of: ColumnOf | None = None
    ) -> MultivariateResult:
        """Compare one window of served rows with the reference. A table's columns are found
        as `profile_window` finds them (`feature__<name>`, else `<name>`, or `column_of`)."""
        errors = self._errors(self._window_matrix(window_rows, column_of))
        n = int(errors.size)
        floor = 1.0 + self.effect_floor
        if n == 0:
            return MultivariateResult(1.0, math.inf, floor, False, 0)
        statistic = float(errors.mean() / self.model.holdout_mean)
        threshold = self.threshold(n)
        drifted = statistic > threshold and statistic >= floor
        return MultivariateResult(statistic, threshold, floor, drifted, n)

    def to_json(self) -> str:
        m = self.model
        return json.dumps(
            {
                "format": FORMAT,
                "kind": "pca",
                "columns": list(m.columns),
                "knots": m.knots.tolist(),
                "scores": m.scores.tolist(),
                "mean": m.mean.tolist(),
                "scale": m.scale.tolist(),
                "basis": m.basis.tolist(),
                "residual_variance": m.residual_variance.tolist(),
                "cap": m.cap,
                "errors": m.errors.tolist(),
                "holdout_rows": m.holdout_rows,
                "holdout_mean": m.holdout_mean,
                "alpha": self.alpha,
                "effect_floor": self.effect_floor,
                "n_boot": self.n_boot,
                "seed": self.seed,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> PCADriftDetector:
        try:
            obj: Any = json.loads(text)
            if obj["format"] != FORMAT or obj["kind"] != "pca":
                raise ValueError(
                    f"format {obj['format']!r} kind {obj['kind']!r}; this backline reads "
                    f"format {FORMAT} kind 'pca'"
                )

            def array(key: str) -> np.ndarray:
                return np.asarray(obj[key], dtype=np.float64)

            model = _Model(
                columns=tuple(str(c) for c in obj["columns"]),
                knots=array("knots"),
                scores=array("scores"),
                mean=array("mean"),
                scale=array("scale"),
                basis=array("basis"),
                residual_variance=array("residual_variance"),
                cap=float(obj["cap"]),
                errors=array("errors"),
                holdout_rows=int(obj["holdout_rows"]),
                holdout_mean=float(obj["holdout_mean"]),
            )
            alpha, floor = float(obj["alpha"]), float(obj["effect_floor"])
            n_boot, seed = int(obj["n_boot"]), int(obj["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(
                f"a stored multivariate drift detector does not parse ({type(exc).__name__}: "
                f"{exc}). Fit it again with PCADriftDetector.fit."
            ) from None
        return cls(model, alpha=alpha, effect_floor=floor, n_boot=n_boot, seed=seed)

    def _window_matrix(self, rows: pa.Table | np.ndarray, column_of: ColumnOf | None) -> np.ndarray:
        columns = self.model.columns
        if isinstance(rows, pa.Table):
            matrix = [_as_float(rows.column(log_column(rows, c, column_of)), c) for c in columns]
            return np.column_stack(matrix).reshape(rows.num_rows, len(columns))
        matrix_ = np.asarray(rows, dtype=np.float64)
        if matrix_.ndim != 2 or matrix_.shape[1] != len(columns):
            raise InvalidArgument(
                f"PCADriftDetector: a window matrix of shape {matrix_.shape}; it needs one "
                f"column per fitted column, in order: {', '.join(columns)}."
            )
        return matrix_

    def _errors(self, matrix: np.ndarray) -> np.ndarray:
        m = self.model
        z = _standardise(_scores(matrix, m.knots, m.scores), m.mean, m.scale)
        return np.minimum(_row_errors(z, m.basis, m.residual_variance), m.cap)

    def _calibrate(self, rows: int) -> float:
        m = self.model
        rng = np.random.default_rng([self.seed, rows])
        pool = m.errors.size
        window = _poisson_means(m.errors, rows / pool, self.n_boot, rng)
        reference = _poisson_means(m.errors, m.holdout_rows / pool, self.n_boot, rng)
        ratio = window / reference
        ratio = ratio[np.isfinite(ratio)]
        centre, sd = float(ratio.mean()), float(ratio.std())
        if sd == 0:
            return centre
        skew, kurt = float(stats.skew(ratio)), float(stats.kurtosis(ratio))
        # Means of errors are right-skewed; a left skew here is bootstrap noise, and never
        # lowers the threshold below the normal quantile.
        z = float(stats.norm.isf(self.alpha))
        return centre + sd * max(cornish_fisher(self.alpha, skew, kurt), z)


def cornish_fisher(alpha: float, skew: float, excess_kurtosis: float) -> float:
    """The upper `alpha` quantile, in standard deviations from the mean, of a near-normal law
    with this skewness and excess kurtosis (the Cornish-Fisher expansion)."""
    z = float(stats.norm.isf(alpha))
    return (
        z
        + (z**2 - 1) * skew / 6
        + (z**3 - 3 * z) * excess_kurtosis / 24
        - (2 * z**3 - 5 * z) * skew**2 / 36
    )


def _check_settings(alpha: float, effect_floor: float, n_boot: int) -> None:
    if not 0 < alpha < 1:
        raise InvalidArgument(
            f"PCADriftDetector: alpha = {alpha!r} must be between 0 and 1 (the per-window "
            "false-alarm rate; default 0.0002)."
        )
    if not (math.isfinite(effect_floor) and effect_floor >= 0):
        raise InvalidArgument(
            f"PCADriftDetector: effect_floor = {effect_floor!r} must be a finite number >= 0 "
            "(the smallest relative rise of the error that may alarm; default 0.05)."
        )
    if n_boot < 200:
        raise InvalidArgument(
            f"PCADriftDetector: n_boot = {n_boot} is too few to calibrate a threshold; use at "
            "least 200 (default 2000)."
        )


def _reference_matrix(
    rows: pa.Table | np.ndarray, columns: Sequence[str] | None
) -> tuple[list[str], np.ndarray]:
    if isinstance(rows, pa.Table):
        if columns is None:
            columns = [
                f.name
                for f in rows.schema
                if pa.types.is_integer(f.type)
                or pa.types.is_floating(f.type)
                or pa.types.is_decimal(f.type)
            ]
        missing = [c for c in columns if c not in rows.column_names]
        if missing:
            raise SchemaError(
                f"PCADriftDetector.fit: columns {missing} are not in the reference rows. Their "
                f"columns: {', '.join(rows.column_names)}."
            )
        if not columns:
            raise InvalidArgument(
                "PCADriftDetector.fit: the reference rows have no numeric column; name the "
                "columns to use with columns=[...]."
            )
        matrix = np.column_stack([_as_float(rows.column(c), c) for c in columns])
        return list(columns), matrix.reshape(rows.num_rows, len(columns))
    matrix = np.asarray(rows, dtype=np.float64)
    if matrix.ndim != 2 or columns is None or len(columns) != matrix.shape[1]:
        raise InvalidArgument(
            f"PCADriftDetector.fit: a matrix of shape {matrix.shape} needs columns=[...] with "
            "one name per matrix column (the names served rows are read by)."
        )
    return list(columns), matrix


def _normal_score_knots(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: KNOTS reference quantiles and their normal scores. A value that fills
    several knots (a point mass) gets the score of the middle of its probability range."""
    probs = np.linspace(0.0, 1.0, KNOTS)
    knots = np.zeros((matrix.shape[1], KNOTS))
    scores = np.zeros((matrix.shape[1], KNOTS))
    for j in range(matrix.shape[1]):
        column = matrix[:, j]
        finite = column[np.isfinite(column)]
        if finite.size == 0:
            continue  # all scores 0: the column does not vary and is dropped
        edge = 0.5 / finite.size
        raw = np.quantile(finite, probs)
        values, first = np.unique(raw, return_index=True)
        last = np.append(first[1:], KNOTS) - 1
        middle = (probs[first] + probs[last]) / 2
        z = stats.norm.ppf(np.clip(middle, edge, 1 - edge))
        # pad to KNOTS with the last knot, so every column has the same shape
        knots[j] = np.concatenate((values, np.full(KNOTS - values.size, values[-1])))
        scores[j] = np.concatenate((z, np.full(KNOTS - z.size, z[-1])))
    return knots, scores


def _scores(matrix: np.ndarray, knots: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = np.empty(matrix.shape, dtype=np.float64)
    for j in range(matrix.shape[1]):
        out[:, j] = np.interp(matrix[:, j], knots[j], scores[j])  # NaN stays NaN
    return out


def _standardise(matrix: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    z = (matrix - mean) / scale
    return np.where(np.isfinite(z), z, 0.0)


def _row_errors(z: np.ndarray, basis: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Each row's squared distance from the kept subspace, per dropped direction in units of
    that direction's reference variance, averaged over the dropped directions."""
    projected = z @ basis  # (n, r)
    return np.mean(projected**2 / variance, axis=1)


def _poisson_means(
    errors: np.ndarray, rate: float, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """Bootstrap means of about rate * len(errors) draws: each stored error is drawn a
    Poisson(rate) number of times, which for many draws is the multinomial bootstrap."""
    means = np.empty(n_boot)
    chunk = max(1, 4_000_000 // errors.size)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        counts = rng.poisson(rate, size=(stop - start, errors.size)).astype(np.float64)
        total = counts.sum(axis=1)
        means[start:stop] = np.where(total > 0, counts @ errors / np.maximum(total, 1), np.nan)
    return means
