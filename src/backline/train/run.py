"""`backline train`: training set -> preprocessing -> model -> holdout metrics, in a run folder.

    result = run_training(cfg)                               # train.* from backline.toml
    result = run_training(cfg, max_steps=500, nproc=2)       # two workers under torchrun
    result.metrics.auc_pr, result.parameter_sha256, result.run_dir

A run is named by what decides its numbers: the training set's content digest and a hash of
the training spec and preprocessing. Running the same command again (resume="auto") finds the
same folder and continues from its newest good checkpoint, or, if it had finished, only
evaluates again. resume="never" deletes the run's checkpoints and loss log first.

    ROOT/.backline/runs/<service>-<data digest[:10]>-<config hash[:8]>/
        run.json            what was trained: service, digests, cutoff, splits, feature versions
        spec.json           the TrainSpec the workers read
        preprocess.json     THE preprocessing artifact (see preprocess.py for its math)
        model.json          ModelConfig: rebuilds FraudMLP before loading model.pt
        data/train.pt       preprocessed training examples (tensors; weights_only load)
        checkpoints/        step-NNNNNNNNN/{model.pt, optimizer.pt, trainer.pt, manifest.json}
        loss.log            "STEP LOSS_HEX" per step
        fit.json            what the last training process did
        metrics.json        holdout metrics of the final model, and the run summary
        .lock               one trainer per run at a time
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from backline.core.config import Config
from backline.core.errors import ConfigError, InvalidArgument, StoreError, TrainingFailed
from backline.core.files import write_text_atomic
from backline.package.metrics import HoldoutMetrics, evaluate
from backline.package.preprocess import Preprocessor
from backline.train.checkpoint import CheckpointDamaged, CheckpointStore, load_checkpoint
from backline.train.dataset import TrainingSet, build_training_set
from backline.train.distributed import DistContext, check_device, launch
from backline.train.loop import (
    FIT_RESULT,
    LOSS_LOG,
    SPEC_FILE,
    TRAIN_DATA,
    FitResult,
    TensorData,
    TrainingInterrupted,
    TrainProgress,
    TrainSpec,
    fit,
    prepare_run_dir,
    reset_run_dir,
)
from backline.train.model import ModelConfig, pos_weight
from backline.train.state import parameter_sha256

RUNS_DIR = Path(".backline") / "runs"
RESUME_MODES = ("auto", "never")


@dataclass(frozen=True)
class TrainResult:
    """What `backline train` produced."""

    run_id: str
    run_dir: Path
    service: str
    steps: int
    """Optimizer steps the final model has taken (train.max_steps or --max-steps)."""
    resumed_from: int | None
    """Checkpoint step this invocation resumed from; None when it started from scratch."""
    world_size: int
    device: str
    seconds: float
    """Wall time of this invocation's training (not the training-set build)."""
    samples_per_second: float
    """Examples per second while the run trained. An invocation that found the run finished
    reports the figure of the process that trained it (NaN if that is lost), never 0."""
    checkpoint_block_seconds: float
    """How long training stood still for periodic checkpoints (they are written in a thread)."""
    final_loss: float | None
    parameter_sha256: str
    """sha256 of the final parameters (see loop.parameter_sha256): equal runs, equal hash."""
    metrics: HoldoutMetrics
    train_examples: int
    holdout_examples: int
    training_set_digest: str
    cutoff: datetime
    feature_views: Mapping[str, str]
    checkpoint: Path
    """The final checkpoint folder."""
    model_path: Path
    """The final weights: a state_dict, torch.load(path, weights_only=True)."""
    model_config_path: Path
    preprocess_path: Path
    metrics_path: Path
    loss_log: Path
    notes: tuple[str, ...] = ()
    """Warnings worth showing: skipped damaged checkpoints, a changed world size."""


def run_training(
    cfg: Config,
    *,
    service: str | None = None,
    max_steps: int | None = None,
    resume: str = "auto",
    nproc: int = 1,
    device: str = "cpu",
    progress: bool = True,
    on_progress: Callable[[TrainProgress], None] | None = None,
    training_set: TrainingSet | None = None,
) -> TrainResult:
    """Build the training set, fit the preprocessing, train (resumably), evaluate the holdout.

    `training_set`: one already built (the pipeline's training_set step), used instead of
    building it again; its service wins over `service`.
    `progress` draws a bar on stderr when it is a terminal (steps, loss, samples/s, ETA);
    `on_progress` receives the same figures after every step (one process only: nproc=1).
    """
    if resume not in RESUME_MODES:
        raise InvalidArgument(f"--resume {resume!r} is not a mode; use auto or never.")
    if nproc < 1:
        raise InvalidArgument(f"--nproc {nproc}: run at least one worker.")
    if max_steps is not None and max_steps < 1:
        raise InvalidArgument(f"--max-steps {max_steps}: train at least one step.")
    check_device(device, nproc)
    t = cfg.train
    ts = training_set if training_set is not None else build_training_set(cfg, service=service)
    pre = Preprocessor.fit(
        ts.train, ts.numeric_features, ts.categorical_features, min_count=t.min_category_count
    )
    x_num, x_cat = pre.transform(ts.train)
    y = ts.labels("train")
    model_cfg = ModelConfig(
        n_numeric=pre.n_numeric_inputs,
        vocab_sizes=pre.vocab_sizes,
        embedding_dim=t.embedding_dim,
        hidden=tuple(t.hidden),
        dropout=t.dropout,
    )
    spec = TrainSpec(
        model=model_cfg,
        max_steps=max_steps or t.max_steps,
        batch_size=t.batch_size,
        learning_rate=t.learning_rate,
        pos_weight=pos_weight(torch.from_numpy(y)),
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_steps,
        seed=t.seed,
        checkpoint_every=t.checkpoint_every,
        keep_checkpoints=t.keep_checkpoints,
    )
    if spec.batch_size * nproc > len(y):
        raise ConfigError(
            f"train.batch_size = {spec.batch_size} x {nproc} worker(s) is more than the {len(y)} "
            f"training examples. Lower train.batch_size to at most {len(y) // nproc}."
        )
    run_id = make_run_id(ts, spec, pre)
    run_dir = cfg.root / RUNS_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir):
        if resume == "never":
            reset_run_dir(run_dir)
        _write_run_files(run_dir, ts, spec, pre, run_id)
        if not (run_dir / TRAIN_DATA).exists():
            tensors = TensorData(
                torch.from_numpy(x_num), torch.from_numpy(x_cat), torch.from_numpy(y)
            )
            prepare_run_dir(run_dir, spec, tensors)
        previous = _previous_fit(run_dir)
        if nproc == 1:
            if device == "cuda":
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.cuda.set_device(0)
            ctx = DistContext(device="cuda:0" if device == "cuda" else "cpu")
            data = TensorData.load(run_dir / TRAIN_DATA)
            fitted = fit(spec, data, run_dir, ctx=ctx, progress=progress, on_progress=on_progress)
        else:
            fitted = _fit_distributed(run_dir, nproc, t.max_restarts, device, progress)
        fitted = _carry_figures(run_dir, fitted, previous)
        return _finish(cfg, run_dir, run_id, ts, pre, spec, fitted, device)


def make_run_id(ts: TrainingSet, spec: TrainSpec, pre: Preprocessor) -> str:
    """<service>-<data digest[:10]>-<config hash[:8]>: same data and config, same run."""
    config = hashlib.sha256(f"{spec.digest()}\0{pre.digest()}".encode()).hexdigest()
    return f"{ts.service}-{ts.digest[:10]}-{config[:8]}"


def load_model(run_dir: Path) -> torch.nn.Module:
    """The final model of a finished run, in eval mode, from its newest good checkpoint."""
    spec = TrainSpec.from_json((run_dir / SPEC_FILE).read_text())
    loaded, _ = CheckpointStore(run_dir / "checkpoints", keep=spec.keep_checkpoints).load_latest()
    if loaded is None or loaded.step != spec.max_steps:
        at = "no good checkpoint" if loaded is None else f"a checkpoint at step {loaded.step}"
        raise StoreError(
            f"run {run_dir.name} has {at}, not a finished model at step {spec.max_steps}. Run "
            "`backline train` again to finish it."
        )
    model = spec.model.build()
    model.load_state_dict(loaded.payloads["model.pt"])
    return model.eval()


@contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    with open(run_dir / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"run {run_dir.name} is being trained by another process ({run_dir / '.lock'} is "
                "held). Wait for it to finish, or stop it; its checkpoints will be resumed."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_run_files(
    run_dir: Path, ts: TrainingSet, spec: TrainSpec, pre: Preprocessor, run_id: str
) -> None:
    info = {
        "format": "backline.run/1",
        "run_id": run_id,
        "service": ts.service,
        "training_set_digest": ts.digest,
        "spec_digest": spec.digest(),
        "preprocess_sha256": pre.digest(),
        "cutoff": ts.cutoff.isoformat(),
        "event_time_range": [t.isoformat() for t in ts.event_time_range],
        "holdout_start": ts.holdout_start.isoformat(),
        "train_examples": ts.train.num_rows,
        "holdout_examples": ts.holdout.num_rows,
        "unlabelled_examples": ts.unlabelled,
        "numeric_features": list(ts.numeric_features),
        "categorical_features": list(ts.categorical_features),
        "label": ts.label,
        "feature_views": dict(ts.feature_views),
    }
    for name, text in (
        ("run.json", json.dumps(info, indent=1) + "\n"),
        (SPEC_FILE, spec.to_json()),
        ("preprocess.json", pre.to_json()),
        ("model.json", spec.model.to_json()),
    ):
        path = run_dir / name
        if not path.exists() or path.read_text() != text:
            write_text_atomic(path, text)


def _previous_fit(run_dir: Path) -> FitResult | None:
    try:
        return FitResult.from_json((run_dir / FIT_RESULT).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _carry_figures(run_dir: Path, fitted: FitResult, previous: FitResult | None) -> FitResult:
    """A process that found the run finished trained no step: it reports the throughput and
    final loss of the process that trained (NaN and None if those are lost), not 0 samples/s,
    and keeps them in fit.json for the next time."""
    if fitted.resumed_from != fitted.steps:
        return fitted
    if previous is not None and previous.steps == fitted.steps and previous.samples_per_second > 0:
        rate, loss = previous.samples_per_second, previous.final_loss
    else:
        rate, loss = math.nan, fitted.final_loss
    carried = replace(fitted, samples_per_second=rate, final_loss=loss)
    write_text_atomic(run_dir / FIT_RESULT, carried.to_json())
    return carried


def _fit_distributed(
    run_dir: Path, nproc: int, max_restarts: int, device: str, progress: bool
) -> FitResult:
    (run_dir / FIT_RESULT).unlink(missing_ok=True)
    done = launch(run_dir, nproc=nproc, max_restarts=max_restarts, device=device, progress=progress)
    fit_file = run_dir / FIT_RESULT
    if done.returncode != 0 or not fit_file.exists():
        if done.stopped:
            raise TrainingInterrupted(
                f"training under torchrun was stopped by SIGTERM; checkpoints are in "
                f"{run_dir / 'checkpoints'}. Run the same command again to resume."
            )
        raise TrainingFailed(
            f"the {nproc} training workers failed (torchrun exit code {done.returncode}) after "
            f"up to {max_restarts} restarts; torchrun's log above says why. Fix that and run the "
            "same command again: it resumes from the newest good checkpoint."
        )
    return FitResult.from_json(fit_file.read_text())


def _finish(
    cfg: Config,
    run_dir: Path,
    run_id: str,
    ts: TrainingSet,
    pre: Preprocessor,
    spec: TrainSpec,
    fitted: FitResult,
    device: str,
) -> TrainResult:
    if fitted.checkpoint is None:  # pragma: no cover - fit always leaves one at max_steps
        raise StoreError(f"training in {run_dir} ended without a checkpoint; run it again.")
    checkpoint = Path(fitted.checkpoint)
    try:
        state = load_checkpoint(checkpoint).payloads["model.pt"]
    except CheckpointDamaged as exc:
        raise StoreError(
            f"the final checkpoint {checkpoint} does not verify ({exc}). Run the same command "
            "again: it resumes from the newest good checkpoint."
        ) from None
    model = spec.model.build()
    model.load_state_dict(state)
    model.eval()
    digest = parameter_sha256(model)
    if digest != fitted.parameter_sha256:  # pragma: no cover - would be a bug in checkpointing
        raise StoreError(
            f"checkpoint {checkpoint} does not hold the parameters training ended with"
        )
    x_num, x_cat = pre.transform(ts.holdout)
    probs = predict_proba(model, x_num, x_cat)
    metrics = evaluate(ts.labels("holdout"), probs, target_fpr=cfg.train.target_fpr)
    summary = {
        "run_id": run_id,
        "steps": fitted.steps,
        "parameter_sha256": digest,
        "checkpoint": str(checkpoint),
        "finished_at": datetime.now(UTC).isoformat(),
        "metrics": metrics.to_dict(),
    }
    metrics_path = run_dir / "metrics.json"
    write_text_atomic(metrics_path, json.dumps(summary, indent=1) + "\n")
    return TrainResult(
        run_id=run_id,
        run_dir=run_dir,
        service=ts.service,
        steps=fitted.steps,
        resumed_from=fitted.resumed_from,
        world_size=fitted.world_size,
        device=device,
        seconds=fitted.seconds,
        samples_per_second=fitted.samples_per_second,
        checkpoint_block_seconds=fitted.checkpoint_block_seconds,
        final_loss=fitted.final_loss,
        parameter_sha256=digest,
        metrics=metrics,
        train_examples=ts.train.num_rows,
        holdout_examples=ts.holdout.num_rows,
        training_set_digest=ts.digest,
        cutoff=ts.cutoff,
        feature_views=ts.feature_views,
        checkpoint=checkpoint,
        model_path=checkpoint / "model.pt",
        model_config_path=run_dir / "model.json",
        preprocess_path=run_dir / "preprocess.json",
        metrics_path=metrics_path,
        loss_log=run_dir / LOSS_LOG,
        notes=fitted.notes,
    )


@torch.no_grad()
def predict_proba(
    model: torch.nn.Module, x_num: np.ndarray, x_cat: np.ndarray, batch: int = 65536
) -> np.ndarray:
    """Fraud probabilities, shape (N,), float64, scored in batches on the CPU."""
    out = []
    for start in range(0, x_num.shape[0], batch):
        logits = model(
            torch.from_numpy(x_num[start : start + batch]),
            torch.from_numpy(x_cat[start : start + batch]),
        )  # (b,)
        out.append(torch.sigmoid(logits).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)
