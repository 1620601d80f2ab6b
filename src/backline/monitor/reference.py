"""A model version's monitoring reference beyond its profile: what estimating its performance
and catching joint drift need from training time.

    reference = MonitorReference.fit(holdout_scores=s, holdout_labels=y, training_rows=table)
    text = reference.to_json()               # stored with the version ("monitor.json")
    MonitorReference.from_json(text).calibrator.predict(scores)

The registry keeps the binned profile of every input in the version's lineage
(`backline.monitor.profile`); two more things are fitted when a version is trained, because
only then are the rows at hand:

- `calibrator`: isotonic calibration of the version's scores on its holdout, so a cohort's
  performance can be estimated before its labels arrive (`backline.monitor.calibration`);
- `multivariate`: a PCA drift detector fitted on a sample of the numeric training inputs, for
  joint shifts that per-feature tests miss (`backline.monitor.multivariate`).

Either may be missing (a holdout without both classes, no numeric inputs); the monitor then
skips what needs it and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from backline.core.errors import InvalidArgument, SchemaError
from backline.monitor.calibration import IsotonicCalibrator
from backline.monitor.multivariate import MIN_FIT_ROWS, PCADriftDetector

FORMAT = 1


@dataclass(frozen=True)
class MonitorReference:
    calibrator: IsotonicCalibrator | None
    multivariate: PCADriftDetector | None
    holdout_rows: int = 0
    skipped: tuple[str, ...] = ()
    """Why a part is missing, one line each."""

    @classmethod
    def fit(
        cls,
        *,
        holdout_scores: np.ndarray,
        holdout_labels: np.ndarray,
        training_rows: pa.Table,
    ) -> MonitorReference:
        skipped: list[str] = []
        calibrator = None
        labels = np.asarray(holdout_labels, dtype=bool)
        if labels.size and labels.any() and not labels.all():
            calibrator = IsotonicCalibrator.fit(np.asarray(holdout_scores, np.float64), labels)
        else:
            skipped.append(
                "calibrator: the holdout needs both classes to calibrate scores "
                f"({int(labels.sum())} positive of {labels.size})"
            )
        multivariate = None
        if training_rows.num_columns and training_rows.num_rows >= MIN_FIT_ROWS:
            try:
                multivariate = PCADriftDetector.fit(training_rows)
            except (InvalidArgument, SchemaError) as exc:
                skipped.append(f"multivariate: {exc}")
        else:
            skipped.append(
                f"multivariate: {training_rows.num_rows} training rows of "
                f"{training_rows.num_columns} numeric columns (needs {MIN_FIT_ROWS} rows)"
            )
        return cls(calibrator, multivariate, int(labels.size), tuple(skipped))

    def to_json(self) -> str:
        obj: dict[str, Any] = {
            "format": FORMAT,
            "holdout_rows": self.holdout_rows,
            "skipped": list(self.skipped),
            "calibrator": None if self.calibrator is None else self.calibrator.to_json(),
            "multivariate": None if self.multivariate is None else self.multivariate.to_json(),
        }
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MonitorReference:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f"a version's monitor.json is not JSON ({exc}).") from None
        if not isinstance(obj, dict) or obj.get("format") != FORMAT:
            raise SchemaError(
                f"a version's monitor.json has format {obj.get('format') if isinstance(obj, dict) else None!r}; "
                f"this backline reads format {FORMAT}. Upgrade backline, or train the version again."
            )
        cal = obj.get("calibrator")
        mv = obj.get("multivariate")
        return cls(
            calibrator=None if cal is None else IsotonicCalibrator.from_json(cal),
            multivariate=None if mv is None else PCADriftDetector.from_json(mv),
            holdout_rows=int(obj.get("holdout_rows", 0)),
            skipped=tuple(str(s) for s in obj.get("skipped", [])),
        )
