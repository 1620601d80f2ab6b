"""backline's side of the performance-estimation comparison (project venv, a fresh process).

    python benchmarks/_drift_peers/backline_estimate.py --job JOB.json

The same frames NannyML gets: the timed call fits the isotonic calibrator on the reference's
scores and labels and estimates every analysis window from its scores alone
(`estimate_performance`, 300 label draws per window).
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
from common import emit, peak_mb, read_job, rss_mb

from backline.monitor.calibration import IsotonicCalibrator, estimate_performance


def main() -> None:
    job = read_job()
    start_mb = rss_mb()
    reference = pq.read_table(job["reference"])
    analysis = pq.read_table(job["analysis"], columns=["score"])
    ref_scores = reference.column("score").to_numpy()
    ref_labels = reference.column("label").to_numpy()
    scores = analysis.column("score").to_numpy()
    loaded_mb = rss_mb()
    size = job["window_rows"]

    t0 = time.perf_counter()
    calibrator = IsotonicCalibrator.fit(ref_scores, ref_labels)
    found = [
        estimate_performance(scores[start : start + size], calibrator, seed=i)
        for i, start in enumerate(range(0, scores.size, size))
    ]
    seconds = time.perf_counter() - t0
    peak = peak_mb()
    emit(
        {
            "seconds": seconds,
            "start_mb": start_mb,
            "loaded_mb": loaded_mb,
            "peak_call_mb": peak,
            "estimates": {
                "roc_auc": [e.roc_auc.expected for e in found],
                "average_precision": [e.auc_pr.expected for e in found],
            },
            "intervals": {
                "average_precision": [[e.auc_pr.lower, e.auc_pr.upper] for e in found],
            },
            "windows": len(found),
            "rows": int(np.asarray(scores).size),
        }
    )


if __name__ == "__main__":
    main()
