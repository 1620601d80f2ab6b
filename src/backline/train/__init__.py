"""Training: point-in-time training sets, the fraud MLP, and a checkpointed, resumable trainer
that also runs as N workers under torchrun. The preprocessing math and the metrics live in
`backline.package` (a server scores with the same code); `Preprocessor` and `HoldoutMetrics`
are re-exported here because training fits and reports them.

    from backline.train import run_training
    result = run_training(cfg, max_steps=500)        # what `backline train` calls
    result.metrics.auc_pr, result.parameter_sha256, result.run_dir

Names are imported on first use, so a worker process (`python -m backline.train.worker`)
does not pay for DuckDB and the feature store when it only trains. See docs/training.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backline.package.metrics import HoldoutMetrics
    from backline.package.preprocess import Preprocessor
    from backline.train.dataset import TrainingSet, build_training_set
    from backline.train.loop import FitResult, TrainingInterrupted, TrainSpec, fit
    from backline.train.model import FraudMLP, ModelConfig
    from backline.train.run import TrainingFailed, TrainResult, load_model, run_training

_WHERE = {
    "TrainingSet": "dataset",
    "build_training_set": "dataset",
    "FitResult": "loop",
    "TrainingInterrupted": "loop",
    "TrainSpec": "loop",
    "fit": "loop",
    "HoldoutMetrics": "backline.package.metrics",
    "FraudMLP": "model",
    "ModelConfig": "model",
    "Preprocessor": "backline.package.preprocess",
    "TrainingFailed": "run",
    "TrainResult": "run",
    "load_model": "run",
    "run_training": "run",
}
__all__ = [
    "FitResult",
    "FraudMLP",
    "HoldoutMetrics",
    "ModelConfig",
    "Preprocessor",
    "TrainResult",
    "TrainSpec",
    "TrainingFailed",
    "TrainingInterrupted",
    "TrainingSet",
    "build_training_set",
    "fit",
    "load_model",
    "run_training",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'backline.train' has no attribute {name!r}")
    where = _WHERE[name]
    module = where if "." in where else f"backline.train.{where}"
    return getattr(importlib.import_module(module), name)
