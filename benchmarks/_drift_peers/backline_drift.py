"""backline's side of the data-drift speed comparison (project venv, a fresh process per run).

    python benchmarks/_drift_peers/backline_drift.py --job JOB.json

The job names reference.parquet and current.parquet. As in production, the two never need to
be in memory together: the reference profile is built from the training rows (at
registration), the rows are let go, and a window of served rows is profiled on its bins and
checked (twice: the first check at a window size calibrates the detector for that size, a
later one finds the calibration cached). Each step is timed on data already in memory (Parquet
reads are timed apart), as the peer is timed on DataFrames already loaded.
"""

from __future__ import annotations

import gc
import time

import pyarrow.parquet as pq
from common import emit, peak_mb, read_job, rss_mb

from backline.monitor.drift import DriftDetector
from backline.monitor.profile import profile_from_arrow
from backline.monitor.window import profile_window


def main() -> None:
    job = read_job()
    start_mb = rss_mb()

    t0 = time.perf_counter()
    reference_rows = pq.read_table(job["reference"])
    read_reference_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = profile_from_arrow(reference_rows)
    reference_s = time.perf_counter() - t0
    reference_peak_mb = peak_mb()
    del reference_rows
    gc.collect()

    t0 = time.perf_counter()
    current = pq.read_table(job["current"])
    read_current_s = time.perf_counter() - t0
    loaded_mb = rss_mb()
    t0 = time.perf_counter()
    window = profile_window(current, reference)
    window_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    detector = DriftDetector(reference)
    report = detector.check(window)  # the first check at a window size calibrates for it
    check_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    detector.check(window)  # a later window of that size: the calibration is cached
    check_cached_s = time.perf_counter() - t0

    emit(
        {
            "reference_profile_s": reference_s,
            "window_profile_s": window_s,
            "check_s": check_s,
            "check_cached_s": check_cached_s,
            "read_reference_s": read_reference_s,
            "read_current_s": read_current_s,
            "rows": current.num_rows,
            "start_mb": start_mb,
            "reference_peak_mb": reference_peak_mb,
            "current_loaded_mb": loaded_mb,
            "drifted": list(report.drifted),
            "effects": {f.name: f.effect for f in report.features},
        }
    )


if __name__ == "__main__":
    main()
