"""Evidently's DataDriftPreset report on the benchmark's frames (Evidently's own venv).

    python benchmarks/_drift_peers/evidently_drift.py --job JOB.json

Both frames are read into pandas first (not timed, like backline's Parquet reads); then the
timed call builds the two Datasets with the column types named in the job and runs the report
with its default drift methods and thresholds (for more than 1,000 rows: normalised
Wasserstein distance > 0.1 for numeric columns, Jensen-Shannon distance > 0.1 for categorical
ones). include_tests=True makes Evidently state, per column, whether it found drift.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd
from common import emit, peak_mb, read_job, rss_mb


def main() -> None:
    import evidently
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    job = read_job()
    start_mb = rss_mb()
    reference = pd.read_parquet(job["reference"])
    current = pd.read_parquet(job["current"])
    loaded_mb = rss_mb()

    t0 = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=job["numeric"], categorical_columns=job["categorical"]
    )
    ref = Dataset.from_pandas(reference, data_definition=definition)
    cur = Dataset.from_pandas(current, data_definition=definition)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur, ref)
    seconds = time.perf_counter() - t0
    peak = peak_mb()

    scores, drifted = _columns(snapshot.dict(), job["numeric"] + job["categorical"])
    emit(
        {
            "seconds": seconds,
            "start_mb": start_mb,
            "loaded_mb": loaded_mb,
            "peak_call_mb": peak,
            "evidently": evidently.__version__,
            "scores": scores,
            "drifted": drifted,
        }
    )


def _columns(snapshot: dict[str, Any], names: list[str]) -> tuple[dict[str, float], list[str]]:
    """Per column: the drift score (its ValueDrift metric), and whether Evidently's test of that
    metric failed, i.e. it found drift (score above the method's threshold)."""
    scores: dict[str, float] = {}
    ids: dict[str, str] = {}
    for metric in snapshot["metrics"]:
        config = metric.get("config") or {}
        if config.get("type", "").endswith("ValueDrift") and config.get("column") in names:
            scores[config["column"]] = float(metric["value"])
            ids[metric["id"]] = config["column"]
    drifted = {
        ids[test["metric_config"]["metric_id"]]
        for test in snapshot["tests"]
        if test["metric_config"]["metric_id"] in ids and test["status"] == "FAIL"
    }
    if len(scores) != len(names):
        missing = sorted(set(names) - set(scores))
        raise RuntimeError(f"Evidently's snapshot has no ValueDrift for {missing}")
    return scores, sorted(drifted)


if __name__ == "__main__":
    main()
