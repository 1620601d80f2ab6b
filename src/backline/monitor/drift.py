"""Per-feature drift: statistics on binned counts, and a detector that does not cry wolf.

A window's profile (`backline.monitor.window`) and the version's reference profile count rows
in the same bins, so every statistic here is a function of two count vectors:

    detector = DriftDetector(reference)            # q = 0.001, EffectFloors() by default
    report = detector.check(profile_window(hour_of_rows, reference))
    report.drifted                                 # ('amount',)
    report.feature("amount").effect                # 0.52: the mean moved about half a sd
    report.feature("amount").p_value               # 1e-40: calibrated by bootstrap

A feature drifts only when two things hold:
1. **Significance.** The 2 x K chi-square test of homogeneity (reference counts against
   window counts, over every bin plus the null bucket, or every kept category plus "other"
   plus null) has a bootstrap-calibrated p-value, and Benjamini-Hochberg at level `q` across
   all features of the window (and the score) rejects it.
2. **Relevance.** Its effect clears a floor (`EffectFloors`): for a numeric feature and the
   score, the normalised Wasserstein distance (in reference standard deviations), for a
   categorical one the total variation distance (the share of rows that would have to change
   category); for any feature, a change in its share of nulls.
On large windows nearly every real-world difference is significant, so significance alone
cries wolf; the floor says how large a change matters. On small windows a large effect can be
noise, and the calibrated test stops it.

**Calibration, and why the null is two-sample.** The reference is itself a finite sample: its
quantile edges sit where its own noise put them, so the true share of a bin differs from the
reference's by about sqrt(p(1-p)/N). At 100k-row windows from a 100k-row training set that
noise is as large as the window's own, and a test that treats the reference as the truth sees
"drift" in stationary data. The bootstrap therefore draws both sides: reference counts
~ Multinomial(N, p_ref) and window counts ~ Multinomial(n, p_ref), `n_boot` times per feature,
and computes the statistic on each pair. That is the exact null of the binned statistic
(multinomial sampling is what binned counts are), cheap (no rows are touched), and it covers
sparse bins where the chi-square approximation is poor. Buckets the window expects fewer than
5 rows in are pooled before testing (at small windows a rare category would otherwise make a
heavy-tailed statistic). The calibration depends on the window's row count only, so it is
computed once per size and cached; sizes are rounded to a grid of 8 steps per doubling (9%)
because the statistic's null barely moves within that.

An empirical p-value resolves down to 1/(n_boot + 1) only, while Benjamini-Hochberg at
q = 0.001 over 50 features needs about 2e-5. Beyond the 99th percentile of the bootstrap (the
anchor), the p-value decays exponentially from the empirical tail there, at the hazard rate
of a gamma law fitted to the bootstrap's mean and variance (Satterthwaite's scaled
chi-square) at the anchor. The two pieces join, the p-value only falls as the statistic
grows, and the tail does not lean on the gamma's shape far from where the bootstrap saw it.

**The statistics** (`FeatureDrift` reports them all; only chi-square and the effect decide):
- PSI: sum (w - r) ln(w / r) over proportions, with half a count added to every bucket of both
  sides (a Jeffreys prior), so an empty bucket gives a finite value instead of infinity.
- Jensen-Shannon distance, base 2: the square root of the JS divergence, in [0, 1].
- KS on the binned CDFs (numeric): the largest gap between the cumulative shares of the finite
  values at the reference's edges.
- chi-square: the 2 x K homogeneity statistic sum (n R_i - N W_i)^2 / (N n (R_i + W_i)).
- normalised Wasserstein (numeric): the area between the two CDFs, each linear within a bin
  over the reference's range, divided by the standard deviation of the reference's binned
  distribution (its mass spread evenly within each bin). Numerator and denominator see the
  same binning, so a 1-sigma mean shift of a normal reads about 1 (0.9-1.0 with 10 bins).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime

import numpy as np
from scipy import stats

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor.profile import CategoricalProfile, NumericProfile, ReferenceProfile
from backline.monitor.window import (
    CategoricalWindow,
    NumericWindow,
    WindowProfile,
    bins_digest,
)

PSI_SMOOTHING = 0.5
"""Counts added to every bucket of both sides before PSI takes logarithms."""

MIN_EXPECTED = 5.0
"""Buckets the window expects fewer rows in than this are pooled for the chi-square test."""

TAIL_FROM = 0.01
"""Beyond this upper share of the bootstrap, p-values come from the fitted gamma tail."""

Counts = Sequence[float] | np.ndarray
"""A count vector: a list, a tuple or a 1-d array."""


@dataclass(frozen=True)
class EffectFloors:
    """How large a change must be to alarm, whatever its significance."""

    wasserstein: float = 0.1
    """Numeric features and the score: normalised Wasserstein distance, in reference standard
    deviations (0.1: a tenth of a sd; a 0.25-sigma mean shift reads about 0.23)."""

    categorical: float = 0.02
    """Categorical features: total variation distance, the share of rows that would have to
    change category (a 5% swap between two categories reads 0.05)."""

    null_share: float = 0.02
    """Any feature: a change of its share of null rows (two points, e.g. 1% -> 3%)."""

    def __post_init__(self) -> None:
        for name in ("wasserstein", "categorical", "null_share"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise InvalidArgument(
                    f"EffectFloors.{name} = {value!r} must be a finite number >= 0 (0 turns the "
                    "floor off, leaving significance alone to decide)."
                )


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's comparison of a window with the reference."""

    name: str
    kind: str
    """'numeric', 'categorical' or 'score' (the model's output: prediction drift)."""

    psi: float
    js: float
    """Jensen-Shannon distance, base 2, in [0, 1]."""

    ks: float | None
    """KS on the binned CDFs; None for a categorical feature, or without finite values."""

    chi2: float
    """The 2 x K homogeneity statistic the p-value is for (after pooling rare buckets)."""

    wasserstein: float | None
    """Normalised Wasserstein distance (reference sd units); None where `ks` is None."""

    null_shift: float
    """The window's null share minus the reference's."""

    out_of_range: float
    """Share of the window's rows outside the reference's [min, max] (numeric; else 0)."""

    p_value: float
    """Bootstrap-calibrated p-value of `chi2` under the two-sample null."""

    adjusted_p: float
    """Benjamini-Hochberg adjusted p-value across the window's features."""

    significant: bool
    effect: float
    """`wasserstein` for numerics and the score, total variation for categoricals."""

    floor: float
    """The floor `effect` is held against."""

    drifted: bool
    """Significant, and the effect (or the null share's change) clears its floor."""


@dataclass(frozen=True)
class DriftReport:
    """Every feature's drift in one window, and which of them alarm."""

    row_count: int
    first_scored_at: datetime | None
    last_scored_at: datetime | None
    model_versions: tuple[int, ...]
    q: float
    features: tuple[FeatureDrift, ...] = field(default_factory=tuple)
    """One per reference feature, in the reference's order, then the score (kind 'score')."""

    @property
    def drifted(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features if f.drifted)

    def feature(self, name: str) -> FeatureDrift:
        for drift in self.features:
            if drift.name == name:
                return drift
        raise KeyError(name)

    def to_json(self) -> str:
        obj = asdict(self)
        for key in ("first_scored_at", "last_scored_at"):
            value = obj[key]
            obj[key] = value.isoformat() if value is not None else None
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------
# statistics on count vectors


def psi(reference: Counts, window: Counts) -> float:
    """Population stability index, with PSI_SMOOTHING counts added to every bucket."""
    r, w = _pair(reference, window)
    p = (r + PSI_SMOOTHING) / (r.sum() + PSI_SMOOTHING * r.size)
    q = (w + PSI_SMOOTHING) / (w.sum() + PSI_SMOOTHING * w.size)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: Counts, window: Counts) -> float:
    """Jensen-Shannon distance in base 2: 0 for equal shares, 1 for disjoint ones."""
    r, w = _pair(reference, window)
    if r.sum() == 0 or w.sum() == 0:
        return 0.0
    p, q = r / r.sum(), w / w.sum()
    m = (p + q) / 2
    divergence = 0.5 * _kl_bits(p, m) + 0.5 * _kl_bits(q, m)
    return float(math.sqrt(min(max(divergence, 0.0), 1.0)))


def ks_binned(reference: Counts, window: Counts) -> float:
    """Largest gap between the cumulative shares of two ordered count vectors."""
    r, w = _pair(reference, window)
    if r.sum() == 0 or w.sum() == 0:
        return 0.0
    return float(np.max(np.abs(np.cumsum(r / r.sum() - w / w.sum()))))


def chi_square(reference: Counts, window: Counts) -> float:
    """The 2 x K chi-square statistic of homogeneity; buckets empty on both sides are skipped."""
    r, w = _pair(reference, window)
    return float(_homogeneity(r[None, :], w[None, :], r.sum(), w.sum())[0])


def total_variation(reference: Counts, window: Counts) -> float:
    """Half the L1 distance between the shares: the share of mass that would have to move."""
    r, w = _pair(reference, window)
    if r.sum() == 0 or w.sum() == 0:
        return 0.0
    return float(0.5 * np.abs(r / r.sum() - w / w.sum()).sum())


def wasserstein_binned(edges: Counts, reference: Counts, window: Counts) -> float:
    """Normalised Wasserstein-1 distance between two histograms on the same bins (see the
    module docstring): the area between their CDFs, linear within each bin, over the
    reference's binned standard deviation. 0 when the reference has no spread."""
    e = np.asarray(edges, dtype=np.float64)
    r, w = _pair(reference, window)
    if e.size != r.size + 1:
        raise InvalidArgument(
            f"wasserstein_binned: {e.size} edges for {r.size} bins; pass one edge more than bins."
        )
    if r.sum() == 0 or w.sum() == 0:
        return 0.0
    p, q = r / r.sum(), w / w.sum()
    width = np.diff(e)
    centre = (e[:-1] + e[1:]) / 2
    mean = float(np.sum(p * centre))
    variance = float(np.sum(p * (width**2 / 12 + (centre - mean) ** 2)))
    if variance <= 0:
        return 0.0
    gap = np.concatenate(([0.0], np.cumsum(p - q)))
    gap[-1] = 0.0  # both CDFs reach 1 at the last edge; this removes rounding
    a, b = gap[:-1], gap[1:]
    size = np.abs(a) + np.abs(b)
    crossing = a * b < 0
    # Within a bin the gap is linear from a to b: a trapezoid, or two triangles if it crosses 0.
    safe = np.where(size > 0, size, 1.0)
    area = np.where(crossing, width * (a**2 + b**2) / (2 * safe), width * size / 2)
    return float(area.sum() / math.sqrt(variance))


def benjamini_hochberg(pvalues: Counts, q: float) -> np.ndarray:
    """Which hypotheses the Benjamini-Hochberg step-up procedure rejects at FDR level `q`:
    the k smallest p-values, for the largest k with p_(k) <= k q / m."""
    if not 0 < q < 1:
        raise InvalidArgument(f"benjamini_hochberg: q = {q!r} must be between 0 and 1.")
    p = _pvalues(pvalues)
    m = p.size
    ordered = np.sort(p)
    passing = np.flatnonzero(ordered <= np.arange(1, m + 1) * q / m)
    if passing.size == 0:
        return np.zeros(m, dtype=bool)
    return p <= ordered[passing[-1]]


def bh_adjusted(pvalues: Counts) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: hypothesis i is rejected at level q exactly when
    its adjusted p-value is <= q (up to rounding)."""
    p = _pvalues(pvalues)
    m = p.size
    if m == 0:
        return p.copy()
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    # Step-up: the adjusted value of rank k is the smallest scaled value at ranks >= k.
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# ---------------------------------------------------------------------------------------------
# the detector


@dataclass(frozen=True)
class _Feature:
    """The reference side of one feature, laid out as the test sees it."""

    name: str
    kind: str
    reference: np.ndarray
    """Counts per bucket: bins then null (numeric), or categories, other, null."""

    edges: np.ndarray | None
    """Bin edges of the ordered buckets (numeric with a range), else None."""


@dataclass(frozen=True)
class _Calibration:
    groups: np.ndarray
    """Bucket -> test group (rare buckets pooled)."""

    boot: np.ndarray
    """Sorted bootstrap statistics under the two-sample null."""

    anchor: float
    """Statistic at which the fitted tail takes over."""

    anchor_p: float
    shape: float
    scale: float
    hazard: float
    """The fitted gamma's hazard rate at the anchor: how fast the tail beyond it decays."""


class DriftDetector:
    """Decides which features of a window drifted from `reference` (see the module docstring).

    `q` is the Benjamini-Hochberg level across one window's features. On stationary data
    every null hypothesis is true, the false discovery rate equals the chance of any alarm,
    and so `q` is the per-window false-alarm budget (0.001: one window in a thousand at most,
    before the floors make it rarer still).
    """

    def __init__(
        self,
        reference: ReferenceProfile,
        *,
        q: float = 0.001,
        floors: EffectFloors | None = None,
        n_boot: int = 2000,
        seed: int = 0,
    ) -> None:
        if not 0 < q < 1:
            raise InvalidArgument(
                f"DriftDetector: q = {q!r} must be between 0 and 1 (0.001 allows about one "
                "false alarm per 1,000 stationary windows)."
            )
        if n_boot < 200:
            raise InvalidArgument(
                f"DriftDetector: n_boot = {n_boot} is too few to calibrate a tail; use at least "
                "200 (default 2000)."
            )
        if reference.row_count <= 0:
            raise InvalidArgument(
                "DriftDetector: the reference profile has no rows, so there is nothing to "
                "compare with. Register the version with a non-empty training set."
            )
        self.reference = reference
        self.q = q
        self.floors = floors if floors is not None else EffectFloors()
        self.n_boot = n_boot
        self.seed = seed
        self.bins_digest = bins_digest(reference)
        self._features = [_layout(f, "numeric") for f in reference.features]
        if reference.score is not None:
            self._features.append(_layout(reference.score, "score"))
        self._cache: dict[int, list[_Calibration]] = {}

    def calibrate(self, rows: int) -> int:
        """Calibrate for windows of `rows` rows now (check does it on first use); returns the
        size on the calibration grid that windows of that size share."""
        size = calibration_size(rows)
        if size not in self._cache:
            rng = np.random.default_rng([self.seed, size])
            self._cache[size] = [
                _calibrate(f.reference, size, self.n_boot, rng) for f in self._features
            ]
        return size

    def check(self, window: WindowProfile) -> DriftReport:
        """Compare one window with the reference; see `DriftReport.drifted`."""
        if window.bins_digest != self.bins_digest:
            raise SchemaError(
                f"DriftDetector.check: the window was counted on other bins (digest "
                f"{window.bins_digest}) than this detector's reference ({self.bins_digest}). "
                "Profile the window with profile_window(rows, reference) against the reference "
                "of the model version that served it."
            )
        n = window.row_count
        layout = [*window.features, *([window.score] if window.score is not None else [])]
        calibration = self._cache[self.calibrate(n)] if n > 0 else None
        measured = []
        for i, (spec, counts) in enumerate(zip(self._features, layout, strict=True)):
            cal = calibration[i] if calibration is not None else None
            measured.append(self._measure(spec, counts, cal))
        adjusted = bh_adjusted([m.p_value for m in measured])
        features = []
        for m, adj in zip(measured, adjusted, strict=True):
            significant = bool(adj <= self.q)
            relevant = m.effect >= m.floor or abs(m.null_shift) >= self.floors.null_share
            features.append(
                replace(
                    m,
                    adjusted_p=float(adj),
                    significant=significant,
                    drifted=significant and relevant,
                )
            )
        return DriftReport(
            row_count=n,
            first_scored_at=window.first_scored_at,
            last_scored_at=window.last_scored_at,
            model_versions=window.model_versions,
            q=self.q,
            features=tuple(features),
        )

    def _measure(
        self,
        spec: _Feature,
        counts: NumericWindow | CategoricalWindow,
        cal: _Calibration | None,
    ) -> FeatureDrift:
        """Every statistic of one feature; the decision fields are filled in by `check`."""
        window, out_of_range = _window_vector(counts)
        r = spec.reference
        n, big_n = float(window.sum()), float(r.sum())
        if spec.edges is not None:
            finite_r, finite_w = r[:-1], window[:-1]
            has_finite = finite_w.sum() > 0 and finite_r.sum() > 0
            ks = ks_binned(finite_r, finite_w) if has_finite else None
            wasserstein = wasserstein_binned(spec.edges, finite_r, finite_w) if has_finite else None
        else:
            ks = wasserstein = None
        if spec.kind == "categorical":
            effect, floor = total_variation(r, window), self.floors.categorical
        else:
            effect, floor = (wasserstein or 0.0), self.floors.wasserstein
        if cal is None or n == 0:
            chi2, p_value = 0.0, 1.0
        else:
            groups = int(cal.groups.max()) + 1
            pooled_r = np.bincount(cal.groups, weights=r, minlength=groups)
            pooled_w = np.bincount(cal.groups, weights=window, minlength=groups)
            chi2 = float(_homogeneity(pooled_r[None, :], pooled_w[None, :], big_n, n)[0])
            p_value = _p_value(chi2, cal)
        return FeatureDrift(
            name=spec.name,
            kind=spec.kind,
            psi=psi(r, window),
            js=js_distance(r, window),
            ks=ks,
            chi2=chi2,
            wasserstein=wasserstein,
            null_shift=float(window[-1] / n - r[-1] / big_n) if n > 0 else 0.0,
            out_of_range=out_of_range / n if n > 0 else 0.0,
            p_value=p_value,
            adjusted_p=p_value,
            significant=False,
            effect=float(effect),
            floor=float(floor),
            drifted=False,
        )


def calibration_size(rows: int) -> int:
    """The window size calibrations are computed at: `rows` itself up to 64, then the nearest
    point of a grid with 8 steps per doubling."""
    if rows <= 64:
        return max(int(rows), 1)
    return round(2 ** (round(math.log2(rows) * 8) / 8))


def _layout(feature: NumericProfile | CategoricalProfile, kind: str) -> _Feature:
    if isinstance(feature, NumericProfile):
        if len(feature.edges) >= 2:
            counts = [*feature.counts, feature.null_count]
            edges = np.asarray(feature.edges, dtype=np.float64)
        else:  # no finite training value: one bucket for any served number
            counts, edges = [0, feature.null_count], None
        return _Feature(feature.name, kind, np.asarray(counts, dtype=np.float64), edges)
    counts = [*feature.counts, feature.other_count, feature.null_count]
    return _Feature(feature.name, "categorical", np.asarray(counts, dtype=np.float64), None)


def _window_vector(counts: NumericWindow | CategoricalWindow) -> tuple[np.ndarray, int]:
    if isinstance(counts, NumericWindow):
        if len(counts.edges) >= 2:
            vector = [*counts.counts, counts.null_count]
        else:
            vector = [counts.above, counts.null_count]
        return np.asarray(vector, dtype=np.float64), counts.below + counts.above
    vector = [*counts.counts, counts.other_count, counts.null_count]
    return np.asarray(vector, dtype=np.float64), 0


def _pool(shares: np.ndarray, rows: int) -> np.ndarray:
    """Bucket -> group: buckets the window expects < MIN_EXPECTED rows in share one group, which
    joins the smallest regular bucket when it is itself still too small. Buckets the reference
    never saw keep their own group: a value appearing there is evidence, not noise."""
    expected = shares * rows
    rare = (expected > 0) & (expected < MIN_EXPECTED)
    groups = np.arange(shares.size)
    if rare.sum() >= 1:
        first = int(np.flatnonzero(rare)[0])
        groups[rare] = first
        regular = np.flatnonzero(expected >= MIN_EXPECTED)
        if expected[rare].sum() < MIN_EXPECTED and regular.size:
            smallest = int(regular[np.argmin(expected[regular])])
            groups[groups == first] = smallest
    _, dense = np.unique(groups, return_inverse=True)
    return dense.astype(np.int64)


def _calibrate(
    reference: np.ndarray, rows: int, n_boot: int, rng: np.random.Generator
) -> _Calibration:
    total = int(reference.sum())
    shares = reference / total
    groups = _pool(shares, rows)
    n_groups = int(groups.max()) + 1
    onehot = np.zeros((shares.size, n_groups))
    onehot[np.arange(shares.size), groups] = 1.0
    r = rng.multinomial(total, shares, size=n_boot) @ onehot
    w = rng.multinomial(rows, shares, size=n_boot) @ onehot
    boot = np.sort(_homogeneity(r, w, float(total), float(rows)))
    mean, variance = float(boot.mean()), float(boot.var())
    rank = max(math.ceil(TAIL_FROM * n_boot), 1)
    anchor = float(boot[n_boot - rank])
    anchor_p = (1 + n_boot - int(np.searchsorted(boot, anchor, side="left"))) / (n_boot + 1)
    if mean > 0 and variance > 0:
        shape, scale = mean**2 / variance, variance / mean
    else:  # a degenerate null (one bucket holds everything): the asymptotic chi-square
        shape, scale = max(n_groups - 1, 1) / 2, 2.0
    log_hazard = stats.gamma.logpdf(anchor, shape, scale=scale) - stats.gamma.logsf(
        anchor, shape, scale=scale
    )
    hazard = float(np.exp(log_hazard)) if np.isfinite(log_hazard) else 1 / scale
    return _Calibration(groups, boot, anchor, anchor_p, shape, scale, hazard)


def _p_value(statistic: float, cal: _Calibration) -> float:
    if statistic <= cal.anchor:
        exceed = cal.boot.size - int(np.searchsorted(cal.boot, statistic, side="left"))
        return (1 + exceed) / (cal.boot.size + 1)
    return float(cal.anchor_p * math.exp(-cal.hazard * (statistic - cal.anchor)))


def _homogeneity(r: np.ndarray, w: np.ndarray, big_n: float, n: float) -> np.ndarray:
    """Row-wise 2 x K homogeneity statistic for reference rows `r` (total N) and window rows
    `w` (total n): sum over buckets of (n R - N W)^2 / (N n (R + W))."""
    if big_n <= 0 or n <= 0:
        return np.zeros(r.shape[0])
    both = r + w
    safe = np.where(both > 0, both, 1.0)
    return np.sum((n * r - big_n * w) ** 2 / (big_n * n * safe), axis=1)


def _pair(reference: Counts, window: Counts) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(reference, dtype=np.float64)
    w = np.asarray(window, dtype=np.float64)
    if r.shape != w.shape or r.ndim != 1:
        raise InvalidArgument(
            f"drift statistics compare two count vectors of the same length; got {r.shape} and "
            f"{w.shape}. Count both on the reference's bins (profile_window)."
        )
    if np.any(r < 0) or np.any(w < 0):
        raise InvalidArgument("drift statistics need counts >= 0; a negative count was given.")
    return r, w


def _pvalues(pvalues: Counts) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise InvalidArgument(
            "benjamini_hochberg: p-values must be a flat sequence of numbers in [0, 1]; "
            f"got {pvalues!r}."
        )
    return p


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    mask = p > 0
    return float(np.sum(p[mask] * np.log2(p[mask] / m[mask])))
