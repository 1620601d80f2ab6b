"""NannyML's confidence-based performance estimation (CBPE) on the benchmark's windows.

    python benchmarks/_drift_peers/nannyml_cbpe.py --job JOB.json

The reference frame holds scores and labels, the analysis frame scores only (labels have not
arrived), one chunk per window of `window_rows` rows. The timed call is CBPE's fit on the
reference and its estimate of the analysis chunks. CBPE needs a predicted class as well as the
score (for metrics we do not ask for); it gets score >= 0.5.
"""

from __future__ import annotations

import os
import time

import pandas as pd
from common import emit, peak_mb, read_job, rss_mb

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")


def main() -> None:
    import nannyml as nml

    job = read_job()
    start_mb = rss_mb()
    reference = pd.read_parquet(job["reference"])
    analysis = pd.read_parquet(job["analysis"])
    analysis = analysis[["score", "pred"]]
    loaded_mb = rss_mb()

    t0 = time.perf_counter()
    estimator = nml.CBPE(
        y_pred_proba="score",
        y_pred="pred",
        y_true="label",
        problem_type="classification_binary",
        metrics=job["metrics"],
        chunk_size=job["window_rows"],
    )
    estimator.fit(reference)
    result = estimator.estimate(analysis)
    seconds = time.perf_counter() - t0
    peak = peak_mb()

    frame = result.filter(period="analysis").to_df()
    estimates = {m: [float(v) for v in frame[(m, "value")]] for m in job["metrics"]}
    starts = [int(v) for v in frame[("chunk", "start_index")]]
    emit(
        {
            "seconds": seconds,
            "start_mb": start_mb,
            "loaded_mb": loaded_mb,
            "peak_call_mb": peak,
            "nannyml": nml.__version__,
            "estimates": estimates,
            "chunk_starts": starts,
        }
    )


if __name__ == "__main__":
    main()
