"""Drift benchmark: false alarms, detection of injected drifts, and speed against Evidently and
NannyML.

    .venv/bin/python benchmarks/drift.py                       # everything (about 30 minutes)
    .venv/bin/python benchmarks/drift.py --quick --only stationary,injected   # seconds
    .venv/bin/python benchmarks/drift.py --only evidently,nannyml --runs 3 --json out.json

Parts (`--only`, comma separated):

stationary  Replays >= 1,000 windows of 1k, 10k and 100k rows from the same generator as the
            reference: every row is generated and profiled (`profile_window`) and the window is
            checked (`DriftDetector.check`, default q = 0.001 and floors). A window alarms when
            any feature drifts. The multivariate detector (`PCADriftDetector`, fitted on the
            reference rows) is checked on the same windows and reported apart.
            Target: at most 1 false alarm per 1,000 windows at every size.
injected    The same generator with one change: a 0.25, 0.5 and 1 sigma mean shift of one of
            the 50 features, a 5% category swap, and a covariance rotation that keeps every
            marginal (a correlated pair turned by 90 degrees: correlation +0.7 -> -0.7). Power
            is the share of drifted windows in which the changed feature is flagged (the
            multivariate detector, for the rotation); delay is the number of drifted windows
            until the first detection. Concept drift: backline's synthetic card data
            (`backline.data.generator`, drift spec new_fraud=account_takeover) scored by a
            logistic model trained before the drift, and a synthetic P(y|x) change; a daily
            cohort is flagged when realised AUC-PR falls below the estimate's interval
            (`flag_concept_drift`), counted once labels are in.
            Target: a 0.5 sigma shift detected within 2 windows of 10k rows with >= 95% power.
evidently   Speed and peak memory of Evidently's DataDriftPreset report on a reference of 1M x 50
            and a current frame of 1M x 50 with drifts injected, against backline's path
            (reference profile, window profile, check) in a fresh process each, and which
            features each flags. Targets: >= 200x faster, at <= 1/4 of Evidently's peak memory.
nannyml     Performance estimation before labels: NannyML's CBPE and backline's
            `estimate_performance`, both given the same reference (scores + labels) and the same
            analysis windows (scores only), against the realised values. Targets: estimation
            error no worse than NannyML's, >= 10x faster.

The synthetic frame: 44 numeric features (normal, lognormal, Student-t and Pareto heavy tails,
Poisson and lognormal counts; a Gaussian copula ties some pairs together) and 6 categoricals
(3 to 200 values, one boolean); nulls from 0.1% to 20% in about half the columns. Peers are
never backline dependencies: Evidently and NannyML are installed by this script, with pip, into
their own venvs under benchmarks/.peers/ and run as worker processes (benchmarks/_drift_peers/).
Peak memory is each worker process's own VmHWM. The machine is shared and noisy: read the ratios
and the load average printed with them. The exit code is 0 even when a target is missed, 1 only
when a part could not run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import special

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / "_drift_peers"
WORK = HERE / ".data" / "drift"
EVIDENTLY_REQUIREMENTS = ["evidently==0.7.23", "pandas==2.3.3"]  # 0.7.23 breaks on pandas 3
NANNYML_REQUIREMENTS = [
    "nannyml==0.13.1",
    "pandas==2.3.3",
    "statsmodels==0.15.0",
]  # plots import it
PARTS = ("stationary", "injected", "evidently", "nannyml")
GENERATOR_VERSION = 1
"""Bump when the synthetic frame changes: cached Parquet frames are keyed by it."""


# ------------------------------------------------------------------------------------------
# The synthetic 50-feature frame
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One generated feature. Numeric kinds read a latent standard normal (the copula)."""

    name: str
    kind: str
    """normal, lognormal, student_t, pareto, lncount (latent); poisson; categorical; boolean."""

    a: float = 0.0
    b: float = 1.0
    null_rate: float = 0.0
    probs: tuple[float, ...] = ()


def _columns() -> tuple[Column, ...]:
    nulls = (0.0, 0.01, 0.0, 0.05, 0.001, 0.0, 0.2, 0.0, 0.01, 0.0)
    cols: list[Column] = []

    def add(kind: str, a: float, b: float) -> None:
        i = len(cols)
        cols.append(Column(f"f{i:02d}", kind, a, b, nulls[i % len(nulls)]))

    for i in range(15):
        add("normal", 10.0 * (i % 4) - 5.0, 0.5 + i)  # means -5..25, sds 0.5..14.5
    for i in range(12):
        add("lognormal", 1.0 + 0.3 * i, 0.4 + 0.1 * i)  # amounts of various skew
    for i in range(4):
        add("student_t", float(i), 1.0 + i)  # t with 3 degrees of freedom
    for i in range(4):
        add("pareto", 1.2 + 0.5 * i, 1.0 + 10 * i)  # tail index 1.2..2.7
    for lam in (0.3, 1.0, 3.0, 10.0, 40.0):
        add("poisson", lam, 0.0)
    for i in range(4):
        add("lncount", 0.5 + 0.7 * i, 0.8)  # floor(lognormal): over-dispersed counts

    def zipf(k: int, s: float) -> tuple[float, ...]:
        w = 1.0 / np.arange(1, k + 1) ** s
        return tuple(float(x) for x in w / w.sum())

    cats = [
        ("c0", (0.6, 0.3, 0.1), 0.0),
        ("c1", zipf(5, 0.5), 0.01),
        ("c2", zipf(12, 1.0), 0.0),
        ("c3", zipf(40, 0.8), 0.05),
        ("c4", zipf(200, 1.1), 0.0),  # more values than the profile keeps: an "other" bucket
    ]
    for name, probs, rate in cats:
        cols.append(Column(name, "categorical", null_rate=rate, probs=probs))
    cols.append(Column("c5", "boolean", a=0.2, null_rate=0.001))
    return tuple(cols)


COLUMNS = _columns()
NAMES = [c.name for c in COLUMNS]
LATENT = [
    c.name for c in COLUMNS if c.kind in ("normal", "lognormal", "student_t", "pareto", "lncount")
]
NUMERIC = [c.name for c in COLUMNS if c.kind not in ("categorical", "boolean")]
CATEGORICAL = [c.name for c in COLUMNS if c.kind in ("categorical", "boolean")]
PAIRS = (
    ("f00", "f01", 0.7),  # the pair the rotation turns
    ("f02", "f15", 0.5),
    ("f03", "f27", 0.4),
    ("f16", "f17", 0.6),
    ("f05", "f40", 0.5),
    ("f06", "f31", -0.3),
    ("f18", "f41", 0.3),
    ("f10", "f11", 0.8),
)
"""(a, b, rho): the latent normal of b is rho * latent(a) + sqrt(1 - rho^2) * its own noise."""
ROTATED = ("f00", "f01")
SHIFTED = "f07"
"""The feature the single-feature mean shifts move (normal, sd 7.5, 1% nulls)."""
SWAPPED = "c0"
"""The categorical the swap changes: a share of all rows moves from its top value to the next."""
assert len(COLUMNS) == 50 and SHIFTED in LATENT and COLUMNS[NAMES.index(SHIFTED)].kind == "normal"


@dataclass(frozen=True)
class Drift:
    """Changes applied while generating (all empty: the stationary generator)."""

    label: str = "none"
    shifts: tuple[tuple[str, float], ...] = ()
    """(normal feature, shift in its standard deviations)."""

    swaps: tuple[tuple[str, float], ...] = ()
    """(categorical, share of all rows moved from its most common value to the second)."""

    rotate: bool = False
    """Turn the ROTATED pair by 90 degrees: correlation rho -> -rho, marginals unchanged."""


NO_DRIFT = Drift()


def _null_mask(n: int, rate: float, rng: np.random.Generator) -> np.ndarray | None:
    """iid Bernoulli(rate) nulls by geometric gaps: exact, and cheap for small rates."""
    if rate <= 0:
        return None
    mask = np.zeros(n, dtype=bool)
    start = 0
    while True:
        draws = int(n * rate + 6 * math.sqrt(n * rate) + 16)
        at = start + np.cumsum(rng.geometric(rate, draws)) - 1
        inside = at[at < n]
        mask[inside] = True
        if inside.size < at.size:
            return mask
        start = int(at[-1]) + 1


def generate(n: int, rng: np.random.Generator, drift: Drift = NO_DRIFT) -> pa.Table:
    """n rows of the 50-feature frame as an Arrow table (categoricals dictionary-encoded)."""
    latent = {name: i for i, name in enumerate(LATENT)}
    z = rng.standard_normal((len(LATENT), n))  # (features, rows): one contiguous row each
    for a, b, rho in PAIRS:
        if drift.rotate and (a, b) == ROTATED:
            rho = -rho
        z[latent[b]] = rho * z[latent[a]] + math.sqrt(1 - rho * rho) * z[latent[b]]
    shifts = dict(drift.shifts)
    swaps = dict(drift.swaps)
    arrays: dict[str, pa.Array] = {}
    for col in COLUMNS:
        values: np.ndarray
        if col.name in latent:
            x = z[latent[col.name]]
            if col.kind == "normal":
                values = col.a + col.b * (x + shifts.get(col.name, 0.0))
            elif col.kind == "lognormal":
                values = np.exp(col.a + col.b * x)
            elif col.kind == "student_t":
                values = col.a + col.b * x / np.sqrt(rng.chisquare(3, n) / 3)
            elif col.kind == "pareto":
                values = col.b * special.ndtr(-x) ** (-1.0 / col.a)
            else:  # lncount
                values = np.floor(np.exp(col.a + col.b * x)).astype(np.int64)
        elif col.kind == "poisson":
            values = rng.poisson(col.a, n)
        elif col.kind == "boolean":
            values = rng.random(n) < col.a
        else:
            probs = np.asarray(col.probs)
            values = np.searchsorted(np.cumsum(probs[:-1]), rng.random(n), side="right")
            share = swaps.get(col.name, 0.0)
            if share:
                top, second = np.argsort(-probs)[:2]
                move = (values == top) & (rng.random(n) < share / probs[top])
                values[move] = second
            values = values.astype(np.int32)
        mask = _null_mask(n, col.null_rate, rng)
        if col.kind == "categorical":
            dictionary = pa.array([f"{col.name}_v{k:03d}" for k in range(len(col.probs))])
            indices = pa.array(values, mask=mask)
            arrays[col.name] = pa.DictionaryArray.from_arrays(indices, dictionary)
        else:
            arrays[col.name] = pa.array(values, mask=mask)
    return pa.table(arrays)


# ------------------------------------------------------------------------------------------
# Shared helpers
# ------------------------------------------------------------------------------------------


def log(text: str = "") -> None:
    print(text, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def size_label(rows: int) -> str:
    return f"{rows // 1000}k" if rows % 1000 == 0 and rows < 1_000_000 else f"{rows / 1e6:g}M"


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median with min and max, for timings over runs."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def fmt_spread(s: dict[str, float], unit: str = "s", digits: int = 2) -> str:
    return f"{s['median']:.{digits}f} {unit} (min {s['min']:.{digits}f}, max {s['max']:.{digits}f})"


@dataclass
class Verdict:
    target: str
    measured: str
    ok: bool | None
    """None: informational, or not measured."""


@dataclass
class Results:
    verdicts: list[Verdict] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def judge(self, target: str, measured: str, ok: bool | None) -> None:
        self.verdicts.append(Verdict(target, measured, ok))


class Monitor:
    """The reference side: profile, per-feature detector and multivariate detector."""

    def __init__(self, reference_rows: pa.Table, *, seed: int) -> None:
        from backline.monitor.drift import DriftDetector
        from backline.monitor.multivariate import PCADriftDetector
        from backline.monitor.profile import profile_from_arrow

        t0 = time.perf_counter()
        self.reference = profile_from_arrow(reference_rows)
        self.profile_s = time.perf_counter() - t0
        self.detector = DriftDetector(self.reference, seed=seed)
        t0 = time.perf_counter()
        self.pca = PCADriftDetector.fit(reference_rows, NUMERIC, seed=seed)
        self.pca_fit_s = time.perf_counter() - t0

    def check(self, rows: pa.Table) -> tuple[tuple[str, ...], bool, float]:
        """(features that drifted, multivariate alarm, multivariate statistic)."""
        from backline.monitor.window import profile_window

        report = self.detector.check(profile_window(rows, self.reference))
        mv = self.pca.check(rows)
        return report.drifted, mv.drifted, mv.statistic


# ------------------------------------------------------------------------------------------
# Part 1: stationary replay
# ------------------------------------------------------------------------------------------


def part_stationary(args: argparse.Namespace, monitor: Monitor, results: Results) -> None:
    log("\n== stationary replay: windows from the reference's own generator ==")
    out: dict[str, Any] = {}
    for rows in args.sizes:
        label = size_label(rows)
        windows = args.windows
        alarms, mv_alarms, either = 0, 0, 0
        flagged: dict[str, int] = {}
        t0 = time.perf_counter()
        gen_s = check_s = 0.0
        for w in range(windows):
            g0 = time.perf_counter()
            table = generate(rows, np.random.default_rng([args.seed, 1, rows, w]))
            g1 = time.perf_counter()
            drifted, mv, _ = monitor.check(table)
            check_s += time.perf_counter() - g1
            gen_s += g1 - g0
            alarms += bool(drifted)
            mv_alarms += mv
            either += bool(drifted) or mv
            for name in drifted:
                flagged[name] = flagged.get(name, 0) + 1
            done = w + 1
            if done % max(1, windows // 10) == 0 or done == windows:
                log(
                    f"  {label} rows: {done}/{windows} windows, per-feature alarms {alarms}, "
                    f"multivariate alarms {mv_alarms}, {time.perf_counter() - t0:.0f} s elapsed"
                )
        rate = 1000 * alarms / windows
        log(
            f"  {label} rows/window: false-alarm windows (any feature) {alarms}/{windows} = "
            f"{rate:.2f} per 1,000; multivariate {mv_alarms}/{windows}; either "
            f"{either}/{windows}; features that alarmed: {flagged or 'none'}"
        )
        log(
            f"  {label} rows/window: generating {1000 * gen_s / windows:.1f} ms, profile + check "
            f"(per-feature and multivariate) {1000 * check_s / windows:.1f} ms per window; {load()}"
        )
        out[label] = {
            "rows": rows,
            "windows": windows,
            "false_alarm_windows": alarms,
            "per_1000": rate,
            "multivariate_alarms": mv_alarms,
            "either_alarms": either,
            "flagged": flagged,
            "generate_ms": 1000 * gen_s / windows,
            "check_ms": 1000 * check_s / windows,
        }
        results.judge(
            f"stationary, {label} rows/window: false alarms <= 1 per 1,000 windows",
            f"{alarms}/{windows} ({rate:.2f} per 1,000; with multivariate {either})",
            alarms <= windows / 1000,
        )
    results.data["stationary"] = out


# ------------------------------------------------------------------------------------------
# Part 2: injected drifts
# ------------------------------------------------------------------------------------------


INJECTED = (
    Drift("mean shift 0.25 sd", shifts=((SHIFTED, 0.25),)),
    Drift("mean shift 0.5 sd", shifts=((SHIFTED, 0.5),)),
    Drift("mean shift 1 sd", shifts=((SHIFTED, 1.0),)),
    Drift("category swap 5%", swaps=((SWAPPED, 0.05),)),
    Drift("covariance rotation", rotate=True),
)


def detection_stats(hits: Sequence[bool]) -> dict[str, Any]:
    """Per-window power; the share of consecutive pairs with a detection (detected within 2
    windows of the change); delays: windows until the first detection, restarted after each."""
    n = len(hits)
    pairs = [hits[i] or hits[i + 1] for i in range(0, n - 1, 2)]
    delays, run = [], 0
    for hit in hits:
        run += 1
        if hit:
            delays.append(run)
            run = 0
    return {
        "windows": n,
        "power": sum(hits) / n if n else math.nan,
        "within_2": sum(pairs) / len(pairs) if pairs else math.nan,
        "pairs": len(pairs),
        "median_delay": statistics.median(delays) if delays else None,
        "max_delay": max(delays) if delays else None,
        "undetected_tail": run,
    }


def part_injected(args: argparse.Namespace, monitor: Monitor, results: Results) -> None:
    log("\n== injected drifts: windows after the change ==")
    out: dict[str, Any] = {}
    for k, drift in enumerate(INJECTED):
        for rows in args.sizes:
            label = size_label(rows)
            trials = args.trials if rows <= 10_000 else args.trials_large
            hits: list[bool] = []
            other: list[bool] = []
            t0 = time.perf_counter()
            for w in range(trials):
                table = generate(rows, np.random.default_rng([args.seed, 2, k, rows, w]), drift)
                drifted, mv, _ = monitor.check(table)
                if drift.rotate:
                    hits.append(mv)
                    other.append(bool(drifted))
                else:
                    target = SHIFTED if drift.shifts else SWAPPED
                    hits.append(target in drifted)
                    other.append(bool(set(drifted) - {target}))
            found = detection_stats(hits)
            found["other_alarms"] = sum(other)
            out[f"{drift.label} @ {label}"] = found
            what = "multivariate" if drift.rotate else f"{SHIFTED if drift.shifts else SWAPPED}"
            also = "per-feature alarms" if drift.rotate else "windows flagging another feature"
            log(
                f"  {drift.label:20s} {label:>4s} rows: power {found['power']:.1%} "
                f"({what} flagged in {sum(hits)}/{trials} windows), detected within 2 windows "
                f"{found['within_2']:.1%}, median delay {found['median_delay']} window(s); "
                f"{also}: {sum(other)}; {time.perf_counter() - t0:.0f} s"
            )
    results.data["injected"] = out
    key = "mean shift 0.5 sd @ 10k"
    if key in out:
        f = out[key]
        results.judge(
            "0.5 sd shift in 1 of 50 features, 10k rows: detected within 2 windows, >= 95%",
            f"{f['within_2']:.1%} of {f['pairs']} pairs (per-window power {f['power']:.1%})",
            f["within_2"] >= 0.95,
        )
    key = "covariance rotation @ 10k"
    if key in out:
        f = out[key]
        results.judge(
            "covariance rotation (marginals kept), 10k rows: multivariate detects within 2 "
            "windows, >= 95%",
            f"{f['within_2']:.1%} (per-window power {f['power']:.1%})",
            f["within_2"] >= 0.95,
        )
    concept = concept_drift_generator(args)
    synthetic = concept_drift_synthetic(args)
    results.data["concept_drift"] = {"generator": concept, "synthetic": synthetic}
    for name, found in (("generator new_fraud", concept), ("synthetic P(y|x)", synthetic)):
        results.judge(
            f"concept drift ({name}): realised AUC-PR below the estimate within 2 cohorts",
            f"delay {found['delay']} cohort(s), power {found['power']:.0%} after, "
            f"{found['false_flags']}/{found['before']} flagged before",
            found["delay"] is not None and found["delay"] <= 2,
        )


# --- concept drift ------------------------------------------------------------------------


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return np.asarray(special.expit(v))


def _logistic_fit(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, steps: int = 25) -> np.ndarray:
    """Logistic regression by Newton's method with a small ridge (x has an intercept column)."""
    beta = np.zeros(x.shape[1])
    for _ in range(steps):
        p = _sigmoid(x @ beta)
        grad = x.T @ (p - y) + ridge * beta
        hess = (x * (p * (1 - p))[:, None]).T @ x + ridge * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.max(np.abs(step)) < 1e-6:
            break
    return beta


def _transaction_features(tx: pa.Table, train_until: int) -> np.ndarray:
    """A fraud model's inputs from generated transactions: amount, category, channel, country,
    currency, abroad, hour, card velocity (1 h, 10 min), a device new to the card, and the
    amount against the card's usual amount before `train_until` (us since the epoch)."""
    import pyarrow.compute as pc

    n = tx.num_rows
    when = tx.column("event_time").cast(pa.int64()).to_numpy()
    amount = np.log1p(np.maximum(tx.column("amount").to_numpy(), 0.0))
    parts: list[np.ndarray] = [np.ones(n), amount]

    def codes(name: str) -> np.ndarray:
        encoded = pc.dictionary_encode(tx.column(name)).combine_chunks()
        return np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.int64)

    for name in ("merchant_category", "channel", "country", "currency"):
        c = codes(name)
        onehot = np.zeros((n, int(c.max()) + 1))
        onehot[np.arange(n), c] = 1.0
        parts.extend(onehot[:, 1:].T)  # the first level is the baseline
    country, currency = codes("country"), codes("currency")
    home = np.zeros(country.max() + 1, dtype=np.int64)
    for k in range(home.size):  # a country's home currency: its most common one
        home[k] = np.bincount(currency[country == k]).argmax()
    parts.append((currency != home[country]).astype(float))
    hour = (when // 3_600_000_000) % 24
    parts += [np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)]

    card = codes("card_id")
    order = np.lexsort((when, card))
    key = card[order].astype(np.float64) * 1e15 + when[order]  # card-major time order
    for window_us in (3_600_000_000, 600_000_000):
        before = np.searchsorted(key, key - window_us, side="left")
        velocity = np.empty(n)
        velocity[order] = np.arange(n) - before
        parts.append(np.log1p(velocity))
    device = codes("device_id")
    pair = card[order] * (device.max() + 1) + device[order]
    _, first = np.unique(pair, return_index=True)
    new = np.ones(n)
    new[first] = 0.0  # the card's first use of a device is "new"; later ones are not
    seen = np.ones(n)
    seen[order] = new
    parts.append(1.0 - seen)
    train = when < train_until
    sums = np.bincount(card[train], weights=amount[train], minlength=card.max() + 1)
    counts = np.bincount(card[train], minlength=card.max() + 1)
    usual = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    relative = amount - usual[card]
    parts.append(np.where(np.isfinite(relative), relative, 0.0))
    parts.append(np.isfinite(relative).astype(float))
    x = np.column_stack(parts)
    scale = x[:, 1:].std(axis=0)
    x[:, 1:] = (x[:, 1:] - x[:, 1:].mean(axis=0)) / np.where(scale > 0, scale, 1.0)
    return x


def concept_drift_generator(args: argparse.Namespace) -> dict[str, Any]:
    """Daily cohorts of backline's synthetic card data with a new_fraud drift on day D."""
    import pyarrow.compute as pc

    from backline.data.generator import GeneratorConfig, parse_drift
    from backline.data.generator import generate as generate_cards
    from backline.monitor.calibration import IsotonicCalibrator, estimate_performance
    from backline.monitor.performance import flag_concept_drift, realised_metrics

    days, train_days, calib_days = args.cd_days, args.cd_days // 3, args.cd_days // 6
    drift_day = train_days + calib_days + (days - train_days - calib_days) // 2
    start = datetime(2026, 1, 1, tzinfo=UTC)
    day_d = start + timedelta(days=drift_day)
    spec = f"{day_d:%Y-%m-%d}:new_fraud=account_takeover:{args.cd_value}"
    t0 = time.perf_counter()
    data = generate_cards(
        GeneratorConfig(
            days=days, cards=args.cd_cards, seed=args.seed, start=start, drift=parse_drift(spec)
        )
    )
    tx = data.transactions
    labels = data.labels
    at = pc.index_in(tx.column("transaction_id"), labels.column("transaction_id"))
    y = labels.column("is_fraud").take(at).to_numpy(zero_copy_only=False).astype(float)
    us = tx.column("event_time").cast(pa.int64()).to_numpy()
    day = (us - int(start.timestamp() * 1e6)) // 86_400_000_000
    x = _transaction_features(tx, int((start + timedelta(days=train_days)).timestamp() * 1e6))
    train = day < train_days
    beta = _logistic_fit(x[train], y[train])
    scores = _sigmoid(x @ beta)
    calib = (day >= train_days) & (day < train_days + calib_days)
    calibrator = IsotonicCalibrator.fit(scores[calib], y[calib])
    flags: list[tuple[int, bool, float, float]] = []
    for d in range(train_days + calib_days, days):
        rows = day == d
        realised = realised_metrics(y[rows], scores[rows])
        estimate = estimate_performance(scores[rows], calibrator, seed=d)
        flag = bool(flag_concept_drift(realised, estimate))
        flags.append((d, flag, realised.auc_pr, estimate.auc_pr.lower))
    before = [f for f in flags if f[0] < drift_day]
    after = [f for f in flags if f[0] >= drift_day]
    delay = next((i + 1 for i, f in enumerate(after) if f[1]), None)
    out = {
        "spec": spec,
        "rows": tx.num_rows,
        "rows_per_day": tx.num_rows / days,
        "fraud_rate_before": float(y[(day < drift_day)].mean()),
        "fraud_rate_after": float(y[day >= drift_day].mean()),
        "before": len(before),
        "false_flags": sum(f[1] for f in before),
        "after": len(after),
        "power": sum(f[1] for f in after) / max(len(after), 1),
        "delay": delay,
        "cohorts": [
            {"day": d, "flagged": f, "realised_auc_pr": r, "estimate_lower": lo}
            for d, f, r, lo in flags
        ],
    }
    log(
        f"  concept drift, generator ({spec}, {args.cd_cards:,} cards, "
        f"{out['rows_per_day']:,.0f} rows/day, fraud {out['fraud_rate_before']:.2%} -> "
        f"{out['fraud_rate_after']:.2%}): flagged {out['false_flags']}/{len(before)} daily "
        f"cohorts before D, {sum(f[1] for f in after)}/{len(after)} after; delay {delay} "
        f"cohort(s) once labels are in; {time.perf_counter() - t0:.0f} s"
    )
    for d, f, r, lo in flags:
        if d in (drift_day - 1, drift_day, drift_day + 1):
            log(
                f"    day {d - drift_day:+d}: realised AUC-PR {r:.3f}, estimate lower bound "
                f"{lo:.3f}, {'flagged' if f else 'not flagged'}"
            )
    return out


def scored_world(
    rng: np.random.Generator, n: int, *, shift: float = 0.0, new_fraud: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels: one input x, true log-odds -4.2 + 1.5 x (about 3% fraud), and a model
    whose score orders rows rightly but is miscalibrated. `shift` moves x (covariate shift);
    `new_fraud` adds fraud among low-x rows the score cannot see (concept drift)."""
    x = rng.normal(shift, 1.0, n)
    logit = -4.2 + 1.5 * x
    y = rng.random(n) < _sigmoid(logit)
    if new_fraud:
        y |= (x < 0.0) & (rng.random(n) < new_fraud)
    return _sigmoid(0.7 * logit + 1.0), y.astype(np.int8)


def expected_metrics(window_scores: list[np.ndarray], seed: int, draws: int = 200) -> dict:
    """Per window, the mean realised ROC-AUC and AUC-PR over label draws from the world's true
    probabilities (known here: score = sigmoid(0.7 logit + 1)): what an estimator should find,
    free of the one draw of labels the realised value is."""
    from backline.monitor.performance import realised_metrics

    rng = np.random.default_rng([seed, 6])
    out: dict[str, list[float]] = {"roc_auc": [], "average_precision": []}
    for scores in window_scores:
        truth = _sigmoid((special.logit(scores) - 1.0) / 0.7)
        found = [realised_metrics(rng.random(scores.size) < truth, scores) for _ in range(draws)]
        out["roc_auc"].append(float(np.mean([f.roc_auc for f in found])))
        out["average_precision"].append(float(np.mean([f.auc_pr for f in found])))
    return out


def concept_drift_synthetic(args: argparse.Namespace) -> dict[str, Any]:
    from backline.monitor.calibration import IsotonicCalibrator, estimate_performance
    from backline.monitor.performance import flag_concept_drift, realised_metrics

    rng = np.random.default_rng([args.seed, 3])
    calibrator = IsotonicCalibrator.fit(*scored_world(rng, 50_000))
    cohorts = args.cd_cohorts
    flags = []
    for i in range(2 * cohorts):
        scores, labels = scored_world(rng, 10_000, new_fraud=0.03 if i >= cohorts else 0.0)
        realised = realised_metrics(labels, scores)
        estimate = estimate_performance(scores, calibrator, seed=i)
        flags.append(bool(flag_concept_drift(realised, estimate)))
    before, after = flags[:cohorts], flags[cohorts:]
    delay = next((i + 1 for i, f in enumerate(after) if f), None)
    out = {
        "before": cohorts,
        "false_flags": sum(before),
        "after": cohorts,
        "power": sum(after) / cohorts,
        "delay": delay,
    }
    log(
        f"  concept drift, synthetic P(y|x) (3% new fraud among low-risk rows, cohorts of 10k): "
        f"flagged {sum(before)}/{cohorts} cohorts before, {sum(after)}/{cohorts} after; delay "
        f"{delay} cohort(s)"
    )
    return out


# ------------------------------------------------------------------------------------------
# Peers: worker processes
# ------------------------------------------------------------------------------------------


def run_job(python: Path | str, worker: str, job: dict[str, Any], work: Path, label: str) -> dict:
    from _peers import run_worker

    path = work / f"job_{label}.json"
    path.write_text(json.dumps(job))
    done = run_worker(
        python,
        [str(PEERS_DIR / worker), "--job", str(path)],
        env={"PYTHONUNBUFFERED": "1", "NML_DISABLE_USAGE_LOGGING": "1"},
        timeout=3600,
    )
    data = dict(done.data)
    data["wall_s"] = done.wall_s
    return data


def frames(args: argparse.Namespace, reference_rows: pa.Table) -> tuple[Path, Path, Drift]:
    """reference.parquet (the run's reference rows) and current.parquet (drifts injected)."""
    import pyarrow.parquet as pq

    from _peers import digest

    drift = Drift(
        "several",
        shifts=(("f07", 0.25), ("f08", 0.5), ("f09", 1.0)),
        swaps=((SWAPPED, 0.05),),
        rotate=True,
    )
    work = WORK / digest(GENERATOR_VERSION, args.reference_rows, args.frame_rows, args.seed)
    ref, cur = work / "reference.parquet", work / "current.parquet"
    if not (ref.exists() and cur.exists()):
        work.mkdir(parents=True, exist_ok=True)
        pq.write_table(reference_rows, ref)
        current = generate(args.frame_rows, np.random.default_rng([args.seed, 4]), drift)
        pq.write_table(current, cur)
    return ref, cur, drift


def part_evidently(
    args: argparse.Namespace, reference_rows: pa.Table, results: Results, python: Path
) -> None:
    from _peers import package_version

    log("\n== speed and memory against Evidently's DataDriftPreset ==")
    ref, cur, drift = frames(args, reference_rows)
    work = ref.parent
    injected = sorted({*(n for n, _ in drift.shifts), *(n for n, _ in drift.swaps)})
    log(
        f"  frames: reference {args.reference_rows:,} x 50, current {args.frame_rows:,} x 50 "
        f"with f07 +0.25 sd, f08 +0.5 sd, f09 +1 sd, {SWAPPED} 5% swap, {ROTATED} rotated; "
        f"Evidently {package_version(python, 'evidently')}"
    )
    job = {
        "reference": str(ref),
        "current": str(cur),
        "numeric": NUMERIC,
        "categorical": CATEGORICAL,
    }
    ours, theirs = [], []
    for run in range(args.runs):
        found = run_job(sys.executable, "backline_drift.py", job, work, f"backline_{run}")
        ours.append(found)
        log(
            f"  run {run + 1}: backline reference profile {found['reference_profile_s']:.2f} s, "
            f"window profile {found['window_profile_s']:.2f} s, first check (calibrates) "
            f"{found['check_s']:.2f} s, later check {found['check_cached_s']:.3f} s, "
            f"peak RSS {found['peak_rss_mb']:,.0f} MB; {load()}"
        )
    for run in range(args.runs):
        found = run_job(python, "evidently_drift.py", job, work, f"evidently_{run}")
        theirs.append(found)
        log(
            f"  run {run + 1}: Evidently report {found['seconds']:.1f} s, peak RSS "
            f"{found['peak_call_mb']:,.0f} MB (frames loaded: {found['loaded_mb']:,.0f} MB); "
            f"{load()}"
        )
    window = spread([o["window_profile_s"] + o["check_s"] for o in ours])
    full = spread([o["reference_profile_s"] + o["window_profile_s"] + o["check_s"] for o in ours])
    steady = spread([o["window_profile_s"] + o["check_cached_s"] for o in ours])
    ev = spread([t["seconds"] for t in theirs])
    ours_mb = spread([o["peak_rss_mb"] for o in ours])
    ev_mb = spread([t["peak_call_mb"] for t in theirs])
    ratio_window = ev["median"] / window["median"]
    ratio_full = ev["median"] / full["median"]
    ratio_mb = ev_mb["median"] / ours_mb["median"]
    ours_flags = sorted(set(ours[0]["drifted"]))
    ev_flags = sorted(set(theirs[0]["drifted"]))
    log(f"  Evidently report time: {fmt_spread(ev)}")
    log(f"  backline window profile + check (reference profile stored): {fmt_spread(window)}")
    log(f"  backline including the reference profile build: {fmt_spread(full)}")
    log(
        f"  backline window profile + a later check (calibration cached, as in a running "
        f"monitor): {fmt_spread(steady)} -> {ev['median'] / steady['median']:.0f}x"
    )
    log(
        f"  speed ratio Evidently / backline: {ratio_window:.0f}x per window, {ratio_full:.0f}x "
        "including the reference profile"
    )
    log(
        f"  peak RSS: Evidently {fmt_spread(ev_mb, 'MB', 0)}, backline {fmt_spread(ours_mb, 'MB', 0)}"
        f" -> backline uses 1/{ratio_mb:.1f} of Evidently's"
    )
    log(f"  injected: {injected} (+ rotation of {ROTATED}, invisible to per-feature tests)")
    log(
        f"  flagged by backline: {ours_flags}; by Evidently: {ev_flags}; same: {ours_flags == ev_flags}"
    )
    scores = theirs[0]["scores"]
    for name in injected:
        log(
            f"    {name}: backline effect {ours[0]['effects'].get(name, math.nan):.3f}, "
            f"Evidently score {scores.get(name, math.nan):.3f}"
        )
    results.data["evidently"] = {
        "evidently_s": ev,
        "backline_window_s": window,
        "backline_with_reference_s": full,
        "backline_steady_s": steady,
        "evidently_peak_mb": ev_mb,
        "backline_peak_mb": ours_mb,
        "ratio_window": ratio_window,
        "ratio_with_reference": ratio_full,
        "memory_ratio": ratio_mb,
        "backline_flags": ours_flags,
        "evidently_flags": ev_flags,
        "runs": {"backline": ours, "evidently": theirs},
        "evidently_version": theirs[0]["evidently"],
    }
    frame = f"{size_label(args.frame_rows)} x 50"
    results.judge(
        f"vs Evidently, {frame}: >= 200x faster (window profile + first check; reference "
        "profile stored)",
        f"{ratio_window:.0f}x ({ev['median']:.1f} s vs {window['median']:.2f} s)",
        ratio_window >= 200,
    )
    results.judge(
        f"vs Evidently, {frame}: >= 200x faster including the reference profile build",
        f"{ratio_full:.0f}x ({ev['median']:.1f} s vs {full['median']:.2f} s)",
        ratio_full >= 200,
    )
    results.judge(
        f"vs Evidently, {frame}: window profile + later check, calibration cached (information)",
        f"{ev['median'] / steady['median']:.0f}x ({steady['median']:.2f} s)",
        None,
    )
    results.judge(
        "vs Evidently: peak memory <= 1/4 of Evidently's",
        f"1/{ratio_mb:.1f} ({ours_mb['median']:,.0f} MB vs {ev_mb['median']:,.0f} MB)",
        ratio_mb >= 4,
    )
    results.judge(
        "vs Evidently: both flag the same features on the injected-drift frame (information)",
        "same" if ours_flags == ev_flags else f"backline {ours_flags}, Evidently {ev_flags}",
        None,
    )


def part_nannyml(args: argparse.Namespace, results: Results, python: Path) -> None:
    import pyarrow.parquet as pq

    from _peers import package_version
    from backline.monitor.performance import realised_metrics

    log("\n== performance estimation against NannyML's CBPE ==")
    work = WORK / "nannyml"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([args.seed, 5])
    size, windows = args.cbpe_window, args.cbpe_windows
    scores, labels = scored_world(rng, args.cbpe_reference)
    pred = (scores >= 0.5).astype(np.int8)
    pq.write_table(
        pa.table({"score": scores, "pred": pred, "label": labels}), work / "reference.parquet"
    )
    shifts = [0.0 if i < windows // 2 else 0.8 for i in range(windows)]
    parts = [scored_world(rng, size, shift=s) for s in shifts]
    a_scores = np.concatenate([p[0] for p in parts])
    pq.write_table(
        pa.table({"score": a_scores, "pred": (a_scores >= 0.5).astype(np.int8)}),
        work / "analysis.parquet",
    )
    realised = [realised_metrics(p[1], p[0]) for p in parts]
    truth = {
        "roc_auc": [r.roc_auc for r in realised],
        "average_precision": [r.auc_pr for r in realised],
    }
    log(
        f"  reference {args.cbpe_reference:,} rows (scores + labels, {labels.mean():.1%} "
        f"positive); {windows} analysis windows of {size:,} rows ({windows // 2} stationary, "
        f"{windows - windows // 2} with the input shifted 0.8 sd); NannyML "
        f"{package_version(python, 'nannyml')}"
    )
    job = {
        "reference": str(work / "reference.parquet"),
        "analysis": str(work / "analysis.parquet"),
        "window_rows": size,
        "metrics": ["roc_auc", "average_precision"],
    }
    ours, theirs = [], []
    for run in range(args.runs):
        ours.append(run_job(sys.executable, "backline_estimate.py", job, work, f"bl_{run}"))
        try:
            theirs.append(run_job(python, "nannyml_cbpe.py", job, work, f"nml_{run}"))
        except RuntimeError as exc:
            if "average_precision" not in str(exc) or job["metrics"] == ["roc_auc"]:
                raise
            log("  NannyML's CBPE does not estimate average_precision here; ROC-AUC only")
            job["metrics"] = ["roc_auc"]
            theirs.append(run_job(python, "nannyml_cbpe.py", job, work, f"nml_{run}"))
        log(
            f"  run {run + 1}: backline {ours[-1]['seconds']:.3f} s, NannyML "
            f"{theirs[-1]['seconds']:.2f} s (fit + estimate, in-process); {load()}"
        )
    starts = theirs[0]["chunk_starts"]
    if starts != list(range(0, size * windows, size)):
        raise RuntimeError(f"NannyML's chunks start at {starts[:5]}..., not at the windows")
    expected = expected_metrics([p[0] for p in parts], args.seed)
    errors: dict[str, dict[str, float]] = {}
    for metric in job["metrics"]:
        truth_m = np.asarray(truth[metric])
        mean_m = np.asarray(expected[metric])
        ours_e = np.asarray(ours[0]["estimates"][metric])
        theirs_e = np.asarray(theirs[0]["estimates"][metric])
        errors[metric] = {
            "backline_mae": float(np.abs(ours_e - truth_m).mean()),
            "nannyml_mae": float(np.abs(theirs_e - truth_m).mean()),
            "backline_max": float(np.abs(ours_e - truth_m).max()),
            "nannyml_max": float(np.abs(theirs_e - truth_m).max()),
            "backline_mae_expected": float(np.abs(ours_e - mean_m).mean()),
            "nannyml_mae_expected": float(np.abs(theirs_e - mean_m).mean()),
        }
        e = errors[metric]
        log(
            f"  {metric}: mean |estimate - realised| over {windows} windows: backline "
            f"{e['backline_mae']:.4f} (max {e['backline_max']:.4f}), NannyML "
            f"{e['nannyml_mae']:.4f} (max {e['nannyml_max']:.4f})"
        )
        log(
            f"  {metric}: mean |estimate - expected realised value under the true "
            f"probabilities| (no label noise): backline {e['backline_mae_expected']:.4f}, "
            f"NannyML {e['nannyml_mae_expected']:.4f}"
        )
    ours_s = spread([o["seconds"] for o in ours])
    theirs_s = spread([t["seconds"] for t in theirs])
    ratio = theirs_s["median"] / ours_s["median"]
    log(
        f"  time: NannyML {fmt_spread(theirs_s, 's', 3)}, backline {fmt_spread(ours_s, 's', 3)} "
        f"-> {ratio:.1f}x"
    )
    log(
        f"  peak RSS: NannyML {theirs[0]['peak_call_mb']:,.0f} MB, backline "
        f"{ours[0]['peak_call_mb']:,.0f} MB"
    )
    judged = "average_precision" if "average_precision" in errors else "roc_auc"
    e = errors[judged]
    results.data["nannyml"] = {
        "errors": errors,
        "backline_s": ours_s,
        "nannyml_s": theirs_s,
        "ratio": ratio,
        "truth": truth,
        "runs": {"backline": ours, "nannyml": theirs},
    }
    name = "AUC-PR (average precision)" if judged == "average_precision" else "ROC-AUC"
    results.judge(
        f"vs NannyML CBPE: {name} estimation error no worse than NannyML's",
        f"mean abs error {e['backline_mae']:.4f} vs {e['nannyml_mae']:.4f}",
        e["backline_mae"] <= e["nannyml_mae"],
    )
    if judged != "roc_auc":
        r = errors["roc_auc"]
        results.judge(
            "vs NannyML CBPE: ROC-AUC estimation error no worse than NannyML's",
            f"mean abs error {r['backline_mae']:.4f} vs {r['nannyml_mae']:.4f}",
            r["backline_mae"] <= r["nannyml_mae"],
        )
    results.judge(
        "vs NannyML CBPE: >= 10x faster (fit + estimate)",
        f"{ratio:.1f}x ({theirs_s['median']:.2f} s vs {ours_s['median']:.3f} s)",
        ratio >= 10,
    )


# ------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------


def print_table(results: Results) -> None:
    log("\n== targets ==")
    rows = [("target", "measured", "")]
    for v in results.verdicts:
        rows.append(
            (v.target, v.measured, "info" if v.ok is None else ("PASS" if v.ok else "FAIL"))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(2)]
    for r in rows:
        log(f"  {r[2]:4s}  {r[0].ljust(widths[0])}  {r[1]}")
    for part in results.failed:
        log(f"  ERROR {part}: could not run (see above)")
    judged = [v.ok for v in results.verdicts if v.ok is not None]
    log(f"\n{sum(judged)} PASS, {len(judged) - sum(judged)} FAIL, {len(results.failed)} not run")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version for the tests")
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"parts, comma separated ({','.join(PARTS)})"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each timed part (3)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sizes", default="1000,10000,100000", help="rows per window")
    parser.add_argument("--windows", type=int, default=1000, help="stationary windows per size")
    parser.add_argument(
        "--trials", type=int, default=200, help="drifted windows per drift and size up to 10k"
    )
    parser.add_argument(
        "--trials-large", type=int, default=100, help="drifted windows per drift at larger sizes"
    )
    parser.add_argument("--reference-rows", type=int, default=1_000_000, help="reference rows (1M)")
    parser.add_argument(
        "--frame-rows", type=int, default=1_000_000, help="current frame rows for Evidently (1M)"
    )
    parser.add_argument(
        "--cd-cards", type=int, default=5000, help="cards in the concept-drift data"
    )
    parser.add_argument("--cd-days", type=int, default=48, help="days of concept-drift data")
    parser.add_argument("--cd-value", type=float, default=0.3, help="new_fraud share (0.3)")
    parser.add_argument(
        "--cd-cohorts", type=int, default=20, help="synthetic cohorts before and after"
    )
    parser.add_argument("--cbpe-reference", type=int, default=50_000)
    parser.add_argument("--cbpe-window", type=int, default=10_000)
    parser.add_argument("--cbpe-windows", type=int, default=20)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.windows, args.trials, args.trials_large = "1000,10000", 30, 10, 4
        args.reference_rows, args.frame_rows, args.runs = 100_000, 100_000, 1
        args.cd_cards, args.cd_days, args.cd_cohorts = 1500, 24, 4
        args.cbpe_reference, args.cbpe_windows = 20_000, 4
    args.sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part(s) {unknown}; choose from {','.join(PARTS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    import _peers

    log("backline drift benchmark")
    log(f"command: {shlex.join([sys.executable, *sys.argv])}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    log(
        f"machine: {cpus} CPUs, Python {sys.version.split()[0]}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {load()}"
    )
    if args.quick:
        log("quick: small sizes and few windows, a smoke run; its verdicts are not the figures")
    results = Results()
    results.data["args"] = {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }
    results.data["started"] = datetime.now(UTC).isoformat()

    reference_rows: pa.Table | None = None
    monitor: Monitor | None = None
    if {"stationary", "injected", "evidently"} & set(args.parts):
        t0 = time.perf_counter()
        reference_rows = generate(args.reference_rows, np.random.default_rng([args.seed, 0]))
        log(
            f"reference: {args.reference_rows:,} rows x {len(COLUMNS)} features "
            f"({len(NUMERIC)} numeric, {len(CATEGORICAL)} categorical), generated in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    if {"stationary", "injected"} & set(args.parts):
        assert reference_rows is not None
        monitor = Monitor(reference_rows, seed=args.seed)
        log(
            f"reference profile built in {monitor.profile_s:.2f} s; multivariate detector fitted "
            f"in {monitor.pca_fit_s:.2f} s ({monitor.pca.kept_components} of "
            f"{len(monitor.pca.columns)} components kept)"
        )

    steps: list[tuple[str, Callable[[], None]]] = []
    if "stationary" in args.parts:
        steps.append(("stationary", lambda: part_stationary(args, monitor, results)))  # type: ignore[arg-type]
    if "injected" in args.parts:
        steps.append(("injected", lambda: part_injected(args, monitor, results)))  # type: ignore[arg-type]
    if "evidently" in args.parts:

        def evidently() -> None:
            python = _peers.ensure_venv("evidently", EVIDENTLY_REQUIREMENTS, log=log)
            part_evidently(args, reference_rows, results, python)  # type: ignore[arg-type]

        steps.append(("evidently", evidently))
    if "nannyml" in args.parts:

        def nannyml() -> None:
            python = _peers.ensure_venv("nannyml", NANNYML_REQUIREMENTS, log=log)
            part_nannyml(args, results, python)

        steps.append(("nannyml", nannyml))

    for name, step in steps:
        try:
            step()
        except Exception:
            traceback.print_exc()
            log(f"!! part {name} could not run")
            results.failed.append(name)

    print_table(results)
    log(f"finished {datetime.now(UTC):%H:%M} UTC, {load()}")
    if args.json:
        results.data["verdicts"] = [vars(v) for v in results.verdicts]
        results.data["failed"] = results.failed
        args.json.write_text(json.dumps(results.data, indent=2, default=str))
        log(f"figures written to {args.json}")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
