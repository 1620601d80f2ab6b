"""Train -> package -> register, and gate: the stages wired together for `backline train`.

    registered = train_and_register(cfg)              # a new registered model version
    record = gate(cfg, "fraud", registered.version.version)

The training run (resumable, `backline.train`) produces weights and the preprocessing spec;
the serving package (`backline.package.export`) turns them into a pickle-free folder with its
parity and latency measured; the registry records it as an immutable version with its lineage
and the reference profile monitoring will compare live traffic with.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from backline.core.actor import audit_actor
from backline.core.config import Config
from backline.core.errors import NotFoundError, StoreError
from backline.core.files import atomic_path
from backline.core.uris import check_reachable
from backline.monitor.profile import ReferenceProfile, profile_from_arrow
from backline.monitor.reference import MonitorReference
from backline.package.export import package
from backline.package.preprocess import Preprocessor
from backline.package.reader import (
    ServingPackage,
    _sha256,
    load_package,
    read_package,
)
from backline.registry import Registry, open_registry
from backline.registry.lineage import Lineage, config_hash, git_commit, library_versions
from backline.registry.records import GateRecord, ModelVersion
from backline.registry.schema import content_digest
from backline.train.dataset import TrainingSet, build_training_set
from backline.train.loop import TrainProgress
from backline.train.run import TrainResult, load_model, run_training

SCORE = "__score"


@dataclass(frozen=True)
class Registered:
    """What `backline train` made: the run, its serving package, the registered version."""

    train: TrainResult
    package: ServingPackage
    version: ModelVersion
    already_registered: bool = False
    """True when this run's package was registered before (same files, training set and
    checkpoint): `version` is that earlier version, and nothing new was written."""


def train_and_register(
    cfg: Config,
    *,
    model_name: str = "fraud",
    service: str | None = None,
    max_steps: int | None = None,
    resume: str = "auto",
    nproc: int = 1,
    device: str = "cpu",
    actor: str | None = None,
    progress: bool = True,
    on_progress: Callable[[TrainProgress], None] | None = None,
) -> Registered:
    """Train (or resume, or find finished) the run, package it, and register it once.

    Every store this needs (offline folder and catalog, registry database, artifact folder) is
    checked first, so a registry that is down fails in a second, not after training. A run whose
    package is already registered returns that version (`already_registered=True`).

    `progress`: on a terminal, stderr shows each stage and a training bar (steps, loss,
    samples/s, ETA). `on_progress` receives those figures after every step (nproc=1).
    """
    stage = _Stages(progress)
    with stage("checking the stores"):
        check_stores(cfg)
    with stage("building the training set and training"):
        result = run_training(
            cfg,
            service=service,
            max_steps=max_steps,
            resume=resume,
            nproc=nproc,
            device=device,
            progress=progress,
            on_progress=on_progress,
        )
    with stage("writing and measuring the serving package"):
        registered = package_and_register(cfg, result, model_name, actor)
    return registered


def package_and_register(
    cfg: Config,
    result: TrainResult,
    model_name: str,
    actor: str | None,
    training_set: TrainingSet | None = None,
) -> Registered:
    """Package a finished run, fit its monitoring reference, and register it once.
    `training_set`: the run's own set when the caller holds it (checked by digest), so it is
    not built again."""
    ts = (
        training_set
        if training_set is not None and training_set.digest == result.training_set_digest
        else _training_set(cfg, result)
    )
    model = load_model(result.run_dir)
    pre = Preprocessor.from_json(result.preprocess_path.read_text())
    folder = result.run_dir / "package"
    pkg = (
        read_package(folder)
        if (folder / "package.json").exists()
        else package(
            model, pre, ts.holdout, folder, target_fpr=cfg.train.target_fpr, label_column=ts.label
        )
    )
    files = {**pkg.artifacts(), MONITOR_ARTIFACT: _monitor_artifact(ts, folder, result.run_dir)}
    with open_registry(cfg) as registry:
        existing = _registered(registry, model_name, files, result)
    if existing is not None:
        return Registered(result, pkg, existing, already_registered=True)
    lineage = Lineage(
        training_set_digest=result.training_set_digest,
        feature_versions=dict(result.feature_views),
        data_start=ts.event_time_range[0],
        data_end=ts.event_time_range[1],
        code_commit=git_commit(cfg.root),
        config_hash=config_hash(cfg),
        library_versions=library_versions(),
        metrics={
            k: float(v)
            for k, v in dataclasses.asdict(result.metrics).items()
            if isinstance(v, int | float)
        },
        checkpoint_id=result.checkpoint.name,
        reference_profile=_reference_profile(ts, folder),
    )
    with open_registry(cfg) as registry:
        version = registry.register(
            model_name,
            files,
            lineage,
            actor=audit_actor(actor),
            description=f"run {result.run_id}: {result.steps} steps on {ts.train.num_rows:,} examples",
        )
    return Registered(result, pkg, version)


def gate(
    cfg: Config, model_name: str, version: int | str, *, remeasure: bool | None = None
) -> GateRecord:
    """Evaluate a version against the champion on the current holdout and record the result.

    `remeasure` as in `gate_version`: by default one request is timed again when the latency
    measured at packaging is over gate.max_latency_ms, and the fresh figure is judged.
    """
    from backline.pipeline.gate import gate_version

    ts = build_training_set(cfg, service=cfg.train.service)
    with open_registry(cfg) as registry:
        return gate_version(cfg, registry, model_name, version, ts.holdout, remeasure=remeasure)


class _Stages:
    """A spinner on stderr naming the current stage; nothing unless it is a terminal."""

    def __init__(self, enabled: bool) -> None:
        self._console = None
        if enabled and sys.stderr.isatty():
            from rich.console import Console

            self._console = Console(stderr=True)

    @contextmanager
    def __call__(self, text: str) -> Iterator[None]:
        if self._console is None:
            yield
            return
        if text.endswith("training"):  # the training bar draws itself; a spinner would fight it
            self._console.print(f"[dim]{text}...[/]")
            yield
            return
        with self._console.status(text):
            yield


def check_stores(cfg: Config) -> None:
    """Raise StoreError naming the first store `train_and_register` could not use: the offline
    store's folder and catalog, the registry database (connected, schema created or upgraded)
    and the registry's artifact folder."""
    check_reachable(cfg.store_uri("offline"))
    check_reachable(cfg.catalog_uri)
    with open_registry(cfg) as registry:
        folder = registry.store.root
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StoreError(
            f"registry artifact folder {folder}: {probe} is not a writable folder, so a trained "
            "model could not be stored. Fix its permissions, or move the project."
        )


def _registered(
    registry: Registry, model_name: str, files: dict[str, Path], result: TrainResult
) -> ModelVersion | None:
    """The version that already holds this run's files (the package and the monitoring
    reference: content digest), from the same training set and checkpoint, if any."""
    digest = content_digest((name, _sha256(path)) for name, path in files.items())
    try:
        versions = registry.list_versions(model_name)
    except NotFoundError:
        return None
    for mv in versions:
        lin = mv.lineage
        if (
            mv.content_digest == digest
            and lin.training_set_digest == result.training_set_digest
            and lin.checkpoint_id == result.checkpoint.name
        ):
            return mv
    return None


def _training_set(cfg: Config, result: TrainResult) -> TrainingSet:
    ts = build_training_set(cfg, service=result.service, cutoff=result.cutoff)
    if ts.digest != result.training_set_digest:
        raise StoreError(
            f"the training set of run {result.run_id} cannot be rebuilt (digest {ts.digest[:12]} "
            f"!= {result.training_set_digest[:12]}): the offline store or features changed since. "
            "Train again to register a version."
        )
    return ts


MONITOR_ARTIFACT = "monitor.json"
"""The version's monitoring reference beyond its profile (`backline.monitor.reference`)."""

MONITOR_SAMPLE_ROWS = 20_000
"""Training rows the multivariate drift detector is fitted on (a seeded sample)."""


def _monitor_artifact(ts: TrainingSet, folder: Path, run_dir: Path) -> Path:
    """Write the version's monitoring reference: a calibrator of its scores fitted on the
    holdout (to estimate performance before labels arrive) and a multivariate drift detector
    fitted on a sample of its numeric training inputs. Deterministic for a given run, so
    registering the same run again finds the same files."""
    scores = np.asarray(load_package(folder).score(ts.holdout), dtype=np.float64)
    labels = np.asarray(ts.holdout.column(ts.label).to_numpy(zero_copy_only=False), dtype=bool)
    train = ts.train.select(list(ts.numeric_features))
    if train.num_rows > MONITOR_SAMPLE_ROWS:
        rng = np.random.default_rng(0)
        take = np.sort(rng.choice(train.num_rows, MONITOR_SAMPLE_ROWS, replace=False))
        train = train.take(pa.array(take))
    reference = MonitorReference.fit(
        holdout_scores=scores, holdout_labels=labels, training_rows=train
    )
    path = run_dir / MONITOR_ARTIFACT
    with atomic_path(path) as tmp:
        tmp.write_text(reference.to_json(), encoding="utf-8")
    return path


def _reference_profile(ts: TrainingSet, folder: Path) -> ReferenceProfile:
    """Binned training distributions of every input feature and of the model's scores."""
    features = [*ts.numeric_features, *ts.categorical_features]
    scores = load_package(folder).score(ts.train)
    table = ts.train.select(features).append_column(
        SCORE, pa.array(np.asarray(scores, dtype=np.float64))
    )
    return profile_from_arrow(table, SCORE)
