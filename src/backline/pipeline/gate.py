"""The promotion gate: may this candidate replace the champion?

    record = gate_version(cfg, registry, "fraud", 7, evaluation)     # evaluates and records
    record.passed, [c.name for c in record.checks if not c.passed]

    record = evaluate_gate(candidate, champion, evaluation, label_column="is_fraud",
                           gate_cfg=cfg.gate, target_fpr=0.01, artifact_bytes=pkg.total_bytes,
                           latency_p99_ms=pkg.latency_p99_ms)        # pure: nothing recorded

Both models score the same evaluation rows, named by `evaluation_digest`. The checks:

    auc_pr_floor          candidate AUC-PR >= gate.min_auc_pr
    recall_at_fpr_floor   candidate recall at train.target_fpr >= gate.min_recall_at_fpr
    non_inferiority       only with a champion: the lower end of the paired bootstrap
                          confidence interval of AUC-PR(candidate) - AUC-PR(champion)
                          > -gate.non_inferiority_margin
    latency_p99_ms        p99 of one request with the served variant <= gate.max_latency_ms:
                          the best round's p99 (package.latency), as packaged, or re-measured
                          here when that figure is over budget (or on request)
    artifact_mb           the serving package's size / 1e6 <= gate.max_artifact_mb

The bootstrap resamples evaluation rows with replacement (gate.bootstrap_samples times, seeded)
and scores both models on each resample, so the interval accounts for the two models being
judged on the same, correlated, rows. The interval is two-sided at gate.confidence; its lower
end is the non-inferiority bound.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pyarrow as pa

from backline.core.config import Config, GateSection
from backline.core.errors import NotFoundError, SchemaError
from backline.package import latency
from backline.package.metrics import average_precision, recall_at_fpr
from backline.package.reader import (
    MANIFEST_FILE,
    Scorer,
    ServingPackage,
    label_array,
    load_package,
    read_package,
)
from backline.registry.records import GateCheck, GateRecord

if TYPE_CHECKING:  # the registry store needs SQLAlchemy; evaluate_gate does not
    from backline.registry.store import Registry, VersionRef

DIGEST_FORMAT = b"backline.evaluation-set/1"
#: Cells (resamples x rows) of one block of bootstrap weights; bounds the memory to ~100 MB.
_BLOCK_CELLS = 4_000_000


class TableScorer(Protocol):
    """Anything that turns rows into scores: a loaded serving package (`export.Scorer`)."""

    def score(self, table: pa.Table) -> np.ndarray: ...


@dataclass(frozen=True)
class BootstrapInterval:
    """Paired bootstrap of AUC-PR(candidate) - AUC-PR(champion)."""

    difference: float
    """On the evaluation set itself."""
    low: float
    high: float
    confidence: float
    samples: int
    """Resamples drawn."""
    degenerate: int
    """Resamples left out because they held no positive label."""
    seed: int


def evaluate_gate(
    candidate: TableScorer,
    champion: TableScorer | None,
    evaluation: pa.Table,
    *,
    label_column: str,
    gate_cfg: GateSection,
    target_fpr: float,
    artifact_bytes: int,
    latency_p99_ms: float,
    champion_version: int | None = None,
    seed: int = 0,
    evaluated_at: datetime | None = None,
    latency_detail: str | None = None,
) -> GateRecord:
    """Score `evaluation` with both models and check the candidate against `gate_cfg`.

    `latency_detail` says how `latency_p99_ms` was measured; it goes into the check's detail.
    """
    labels = label_array(evaluation, label_column, "evaluation set")
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        raise SchemaError(
            f"the evaluation set has {labels.size} rows and {positives} positive label(s); the "
            "gate needs both classes. Evaluate on a window that holds labelled fraud and legit "
            "rows."
        )
    digest = evaluation_digest(evaluation)
    rows = f"{labels.size:,} rows ({positives:,} positive)"
    cand = _scores(candidate, evaluation, "candidate")
    cand_auc = average_precision(labels, cand)
    recall, threshold = recall_at_fpr(labels, cand, target_fpr)
    checks = [
        GateCheck(
            "auc_pr_floor",
            cand_auc,
            gate_cfg.min_auc_pr,
            cand_auc >= gate_cfg.min_auc_pr,
            f"AUC-PR {cand_auc:.4f} on {rows}; floor gate.min_auc_pr = {gate_cfg.min_auc_pr}",
        ),
        GateCheck(
            "recall_at_fpr_floor",
            recall,
            gate_cfg.min_recall_at_fpr,
            recall >= gate_cfg.min_recall_at_fpr,
            f"recall {recall:.4f} at FPR <= {target_fpr} (score >= {threshold:.4g}); floor "
            f"gate.min_recall_at_fpr = {gate_cfg.min_recall_at_fpr}",
        ),
    ]
    if champion is not None:
        champ = _scores(champion, evaluation, "champion")
        ci = paired_bootstrap(
            labels,
            cand,
            champ,
            samples=gate_cfg.bootstrap_samples,
            confidence=gate_cfg.confidence,
            seed=seed,
        )
        margin = gate_cfg.non_inferiority_margin
        champ_auc = cand_auc - ci.difference
        against = f"v{champion_version}" if champion_version is not None else "the champion"
        checks.append(
            GateCheck(
                "non_inferiority",
                ci.low,
                -margin,
                ci.low > -margin,
                f"AUC-PR {cand_auc:.4f} vs {against} {champ_auc:.4f}: difference "
                f"{ci.difference:+.4f}, {ci.confidence:.0%} CI [{ci.low:+.4f}, {ci.high:+.4f}] "
                f"from {ci.samples - ci.degenerate} paired resamples (seed {seed}); the lower "
                f"end must exceed -{margin}",
            )
        )
    size_mb = artifact_bytes / 1e6
    checks += [
        GateCheck(
            "latency_p99_ms",
            latency_p99_ms,
            gate_cfg.max_latency_ms,
            latency_p99_ms <= gate_cfg.max_latency_ms,
            f"p99 {latency_p99_ms:.3f} ms for one request"
            + (f" ({latency_detail})" if latency_detail else "")
            + f"; budget gate.max_latency_ms = {gate_cfg.max_latency_ms}",
        ),
        GateCheck(
            "artifact_mb",
            size_mb,
            gate_cfg.max_artifact_mb,
            size_mb <= gate_cfg.max_artifact_mb,
            f"serving package {artifact_bytes:,} bytes; budget gate.max_artifact_mb = "
            f"{gate_cfg.max_artifact_mb}",
        ),
    ]
    return GateRecord(
        passed=all(c.passed for c in checks),
        checks=tuple(checks),
        evaluated_at=evaluated_at or datetime.now(UTC),
        eval_set_digest=digest,
        champion_version=champion_version,
    )


def _scores(scorer: TableScorer, table: pa.Table, who: str) -> np.ndarray:
    scores = np.asarray(scorer.score(table), dtype=np.float64)
    if scores.shape != (table.num_rows,):
        raise SchemaError(
            f"the {who} returned scores of shape {scores.shape} for {table.num_rows} rows; a "
            "scorer must return one score per row."
        )
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise SchemaError(
            f"the {who} returned {bad} non-finite score(s) on the evaluation set; its serving "
            "package is broken. Re-export it."
        )
    return scores


# ---------------------------------------------------------------------------------------------
# paired bootstrap


def paired_bootstrap(
    labels: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray,
    *,
    samples: int,
    confidence: float,
    seed: int,
) -> BootstrapInterval:
    """Percentile interval of AUC-PR(candidate) - AUC-PR(champion) over paired resamples.

    A resample is a vector of row counts (how often each row was drawn), so both models are
    judged on exactly the same draw, and each AUC-PR is a weighted sum over the rows sorted
    once per model: O(n) per resample instead of a sort.
    """
    y = np.asarray(labels, dtype=np.float64)
    n = y.size
    rng = np.random.default_rng(seed)
    models = [_SortedScores(y, np.asarray(s, dtype=np.float64)) for s in (candidate, champion)]
    diffs = np.empty(samples, dtype=np.float64)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, samples, block):
        b = min(block, samples - start)
        draws = rng.integers(0, n, size=(b, n))
        offsets = (np.arange(b) * n)[:, None]
        counts = np.bincount((draws + offsets).ravel(), minlength=b * n).reshape(b, n)
        diffs[start : start + b] = models[0].auc_pr(counts) - models[1].auc_pr(counts)
    kept = diffs[np.isfinite(diffs)]
    tail = (1 - confidence) / 2
    low, high = np.quantile(kept, [tail, 1 - tail]) if kept.size else (math.nan, math.nan)
    return BootstrapInterval(
        difference=average_precision(y, candidate) - average_precision(y, champion),
        low=float(low),
        high=float(high),
        confidence=confidence,
        samples=samples,
        degenerate=samples - kept.size,
        seed=seed,
    )


class _SortedScores:
    """One model's scores sorted once, highest first, with the ends of runs of tied scores
    (tied rows cross a threshold together, as in backline.package.metrics)."""

    def __init__(self, y: np.ndarray, scores: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")
        self.order = order
        self.y = y[order]
        ordered = scores[order]
        self.last = np.r_[np.nonzero(np.diff(ordered))[0], ordered.size - 1]

    def auc_pr(self, counts: np.ndarray) -> np.ndarray:
        """AUC-PR per row of `counts` (B, n): how often each row was drawn."""
        w = counts[:, self.order].astype(np.float64)
        tp = np.cumsum(w * self.y, axis=1)[:, self.last]  # (B, thresholds)
        drawn = np.cumsum(w, axis=1)[:, self.last]  # rows at or above each threshold
        positives = tp[:, -1:]
        precision = np.divide(tp, drawn, out=np.zeros_like(tp), where=drawn > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp / positives
        gained = np.diff(recall, axis=1, prepend=0.0)
        out = np.sum(gained * precision, axis=1)
        out[positives[:, 0] == 0] = math.nan
        return out


# ---------------------------------------------------------------------------------------------
# the evaluation set's digest


def evaluation_digest(table: pa.Table) -> str:
    """sha256 of the rows and columns, independent of chunking and Arrow's bytes."""
    h = hashlib.sha256(DIGEST_FORMAT)
    h.update(f"\0{table.num_rows}\0".encode())
    for name in table.column_names:
        column = table.column(name)
        h.update(f"{name}\0{column.type}\0".encode())
        array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
        h.update(np.packbits(valid).tobytes())
        kind = array.type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            values = array.fill_null("").to_pylist()
            h.update(np.asarray([len(v.encode()) for v in values], dtype="<i8").tobytes())
            h.update("".join(values).encode())
        elif pa.types.is_floating(kind):
            filled = array.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(filled, dtype="<f8").tobytes())
        elif pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_temporal(kind):
            if pa.types.is_temporal(kind):
                array = array.cast(pa.int64())
            elif pa.types.is_boolean(kind):
                array = array.cast(pa.int8())
            filled = array.fill_null(0).to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(filled, dtype="<i8").tobytes())
        else:
            h.update(repr(array.to_pylist()).encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# against the registry


def gate_version(
    cfg: Config,
    registry: Registry,
    model_name: str,
    version: VersionRef,
    evaluation: pa.Table,
    *,
    seed: int = 0,
    remeasure: bool | None = None,
) -> GateRecord:
    """Evaluate a registered version against the current champion and record the outcome.

    Both serving packages come from the registry (verified against their sha256); the
    candidate's own package.json supplies its size and the latency it was packaged with.
    `remeasure`: True times one request again here, on the candidate loaded as a server loads
    it; None (the default) does so only when the packaged figure is over gate.max_latency_ms;
    False always judges the packaged figure. The check's detail says which figure was used.
    """
    record = evaluate_version(
        cfg, registry, model_name, version, evaluation, seed=seed, remeasure=remeasure
    )
    registry.record_gate(model_name, registry.get(model_name, version).version, record)
    return record


def evaluate_version(
    cfg: Config,
    registry: Registry,
    model_name: str,
    version: VersionRef,
    evaluation: pa.Table,
    *,
    seed: int = 0,
    remeasure: bool | None = None,
) -> GateRecord:
    """What `gate_version` records, without recording it: the pipeline's evaluate step, whose
    gate step records it (`Registry.record_gate`) and stops the run when it did not pass."""
    from backline.registry.store import CHAMPION

    candidate = registry.get(model_name, version)
    champion_number = next(
        (a.version for a in registry.aliases(model_name) if a.alias == CHAMPION), None
    )
    with tempfile.TemporaryDirectory(prefix="backline-gate-") as tmp:
        cand_dir = fetch_package(registry, model_name, candidate.version, Path(tmp) / "candidate")
        pkg = read_package(cand_dir)
        scorer = load_package(cand_dir)
        p99, detail = request_latency(
            scorer, pkg, evaluation, cfg.gate.max_latency_ms, remeasure=remeasure
        )
        champion = None
        if champion_number is not None:
            champ_dir = fetch_package(registry, model_name, champion_number, Path(tmp) / "champion")
            champion = load_package(champ_dir)
        return evaluate_gate(
            scorer,
            champion,
            evaluation,
            label_column=cfg.train.label_column,
            gate_cfg=cfg.gate,
            target_fpr=cfg.train.target_fpr,
            artifact_bytes=pkg.total_bytes,
            latency_p99_ms=p99,
            latency_detail=detail,
            champion_version=champion_number,
            seed=seed,
        )


def request_latency(
    scorer: Scorer,
    pkg: ServingPackage,
    evaluation: pa.Table,
    budget_ms: float,
    *,
    remeasure: bool | None = None,
) -> tuple[float, str]:
    """(p99 ms, how it was obtained) of one request with the candidate's served variant.

    The packaged figure, unless `remeasure` is True, or None and that figure is over
    `budget_ms`: then one request is timed again here (measure_request_latency) on the first
    evaluation row, and the fresh figure is the one judged.
    """
    stored = pkg.request_latency
    over = stored.p99_ms > budget_ms
    if remeasure is False or (remeasure is None and not over):
        return stored.p99_ms, f"measured when packaged, {latency.describe(stored)}"
    fresh = latency.measure_request_latency(scorer, evaluation)
    why = (
        "on request"
        if remeasure
        else f"because the packaged figure, {stored.p99_ms:.3f} ms, was over budget"
    )
    return (
        fresh.p99_ms,
        f"re-measured at the gate {why}; now {latency.describe(fresh)}; when packaged "
        f"{latency.describe(stored)}",
    )


def fetch_package(registry: Registry, model_name: str, version: VersionRef, dest: Path) -> Path:
    """Copy a version's serving package out of the artifact store into `dest` (a new folder)."""
    mv = registry.get(model_name, version)
    if MANIFEST_FILE not in {a.name for a in mv.artifacts}:
        raise NotFoundError(
            f"{model_name} v{mv.version} has no serving package (no {MANIFEST_FILE!r} among "
            f"its artifacts: {', '.join(a.name for a in mv.artifacts)}). Register the files of "
            "the folder `package` wrote, under their own names."
        )
    dest.mkdir(parents=True)
    manifest = dest / MANIFEST_FILE
    shutil.copyfile(registry.artifact_path(model_name, mv.version, MANIFEST_FILE), manifest)
    for item in read_package(dest).files:
        source = registry.artifact_path(model_name, mv.version, item.name)
        shutil.copyfile(source, dest / item.name)
    return dest
