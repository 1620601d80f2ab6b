"""The pipeline's steps: what each reads (its input digests) and what it does.

    GRAPH.names   # ingest, validate, materialize, training_set, train, evaluate, gate, promote
    STEPS["train"].inputs(ctx)      # {"training_set": "9c1e...", "config": "41aa...", ...}
    STEPS["train"].run(ctx)         # trains, packages, registers; returns its outputs (JSON)

Each step is a thin wrapper over the library call that does the work; none holds logic of its
own beyond picking its inputs. Inputs are what the step's result depends on, read from the
stores as they are now (landing files, committed batches, applied feature versions, config),
plus the recorded outputs of the steps it needs. A step whose digests match its last
successful run is fresh and does not run (`backline.pipeline.plan`).

    step          needs                     inputs                                   outputs
    ingest        -                         each landing file's content hash         batch ids
    validate      ingest                    committed batches, features.py, applied  rows per source, view versions
    materialize   validate                  committed batches, applied, online.uri   per view: rows, entities
    training_set  validate                  batches of the entity and label sources,
                                            applied versions, train.* set keys       training-set digest, rows
    train         training_set              training-set digest, [train], model      run id, registered version
    evaluate      train                     candidate, its baseline champion,
                                            [gate], evaluation set                   the gate record (not recorded)
    gate          evaluate                  the evaluation                           recorded; GateFailed if it failed
    promote       gate, materialize         the gate's outcome                       champion (the server swaps)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backline.core.config import Config
from backline.core.errors import GateFailed, InputError, NotFoundError, SchemaError, StoreError
from backline.pipeline.plan import Graph, Step

if TYPE_CHECKING:
    from backline.registry import Registry
    from backline.train.dataset import TrainingSet

ACTOR = "pipeline"
"""Who the registry's audit log names for versions the pipeline registers and promotes."""

GRAPH = Graph(
    (
        Step("ingest", (), "ingest new files from the landing folder, one batch per file"),
        Step("validate", ("ingest",), "check the store is fit to train on and features applied"),
        Step("materialize", ("validate",), "apply new batches to the online store"),
        Step("training_set", ("validate",), "build the point-in-time training set"),
        Step("train", ("training_set",), "train, package and register a candidate version"),
        Step("evaluate", ("train",), "score the candidate against the champion on the holdout"),
        Step("gate", ("evaluate",), "record the gate outcome; stop if the candidate failed"),
        Step("promote", ("gate", "materialize"), "make the candidate the champion"),
    )
)

Outputs = dict[str, Any]


@dataclass
class Context:
    """What steps share within one run: the config, the outputs known so far, and objects
    that are costly to make twice (the training set, the registry connection)."""

    cfg: Config
    pipeline: str
    logical_time: datetime
    outputs: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """Per step: its outputs from this run, or from its last successful run."""
    _training_set: TrainingSet | None = None
    _registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from backline.registry import open_registry

            self._registry = open_registry(self.cfg)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()
            self._registry = None

    def training_set(self) -> TrainingSet:
        """The training set the training_set step made: the one in memory, or built again
        and checked against the digest it recorded."""
        from backline.train.dataset import build_training_set

        want = self.outputs.get("training_set", {}).get("digest")
        if self._training_set is None or self._training_set.digest != want:
            ts = build_training_set(self.cfg)
            if want is not None and ts.digest != want:
                raise StoreError(
                    f"the training set no longer matches the one the training_set step built "
                    f"(digest {ts.digest[:12]} != {str(want)[:12]}): the store or the features "
                    "changed during the run. Run the pipeline again."
                )
            self._training_set = ts
        return self._training_set

    def keep_training_set(self, ts: TrainingSet) -> None:
        self._training_set = ts


@dataclass(frozen=True)
class StepImpl:
    """How one step reads its inputs and does its work."""

    inputs: Callable[[Context], dict[str, str]]
    run: Callable[[Context], Outputs]


def digest(value: object) -> str:
    """A short content digest of a JSON-able value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- what the stores hold now -------------------------------------------------------------------


def landing_files(cfg: Config) -> dict[str, list[Path]]:
    """Per source, the data files under LANDING/<source>/ in name order."""
    from backline.data.readers import list_inputs

    root = cfg.pipeline.landing_dir(cfg.root)
    found: dict[str, list[Path]] = {}
    for name, spec in cfg.sources.items():
        folder = root / name
        if not folder.is_dir():
            continue
        try:
            found[name] = [f for f, _ in list_inputs(folder, spec.format)]
        except InputError:  # an empty folder: nothing has landed yet
            continue
    return found


def _batches(cfg: Config) -> dict[str, str]:
    """`batches/<source>` -> digest of its committed batches (ids and content hashes)."""
    from backline.data.offline_store import OfflineStore

    per: dict[str, list[tuple[str, str]]] = {}
    for b in OfflineStore.open(cfg).batches():
        per.setdefault(b.source, []).append((b.batch_id, b.content_hash))
    return {f"batches/{s}": digest(sorted(v)) for s, v in sorted(per.items())}


def _features(cfg: Config) -> dict[str, str]:
    """features.py's bytes and the applied definition versions."""
    from backline.features.repository import FEATURES_FILE, applied_versions

    path = cfg.root / FEATURES_FILE
    text = path.read_bytes() if path.is_file() else b""
    applied = sorted(f"{k}/{n}={v}" for (k, n), v in applied_versions(cfg).items())
    return {"features.py": hashlib.sha256(text).hexdigest()[:16], "applied": digest(applied)}


def _upstream(ctx: Context, step: str) -> dict[str, str]:
    """The digest of a needed step's recorded outputs, when it has any."""
    outputs = ctx.outputs.get(step)
    return {} if outputs is None else {f"{step}.outputs": digest(outputs)}


# -- ingest -------------------------------------------------------------------------------------


def _ingest_inputs(ctx: Context) -> dict[str, str]:
    from backline.data.readers import content_hash

    root = ctx.cfg.pipeline.landing_dir(ctx.cfg.root)
    return {
        str(f.relative_to(root)): content_hash([f], f)  # the hash the catalog keeps per batch
        for files in landing_files(ctx.cfg).values()
        for f in files
    }


def _ingest(ctx: Context) -> Outputs:
    from backline.data.ingest import ingest

    batches: dict[str, list[str]] = {}
    new_rows: dict[str, int] = {}
    committed = 0
    for source, files in landing_files(ctx.cfg).items():
        for f in files:  # one batch per file: a new file never re-reads the old ones
            result = ingest(ctx.cfg, source, f)
            if result.batch_id:
                batches.setdefault(source, []).append(result.batch_id)
            new_rows[source] = new_rows.get(source, 0) + result.rows_new
            committed += result.status == "committed"
    return {"batches": batches, "new_batches": committed, "new_rows": new_rows}


# -- validate -----------------------------------------------------------------------------------


def _validate_inputs(ctx: Context) -> dict[str, str]:
    return {**_batches(ctx.cfg), **_features(ctx.cfg)}


def _validate(ctx: Context) -> Outputs:
    from backline.data.offline_store import OfflineStore
    from backline.features.repository import load_definitions, require_applied

    cfg = ctx.cfg
    accepted: dict[str, int] = {}
    quarantined: dict[str, int] = {}
    for b in OfflineStore.open(cfg).batches():
        accepted[b.source] = accepted.get(b.source, 0) + b.rows_accepted
        quarantined[b.source] = quarantined.get(b.source, 0) + b.rows_quarantined
    landing = cfg.pipeline.landing_dir(cfg.root)
    for role, source in (
        ("train.entity_source", cfg.train.entity_source),
        ("train.label_source", cfg.train.label_source),
    ):
        cfg.source(source)  # an unknown source: NotFoundError with a suggestion
        if not accepted.get(source):
            raise SchemaError(
                f"source {source!r} ({role}) has no accepted rows to train on. Put its files "
                f"under {landing / source}/ (or run `backline ingest {source} FILE`), then run "
                "the pipeline again."
            )
    defs = load_definitions(cfg)
    defs.service(cfg.train.service)  # an unknown service: NotFoundError with a suggestion
    views = require_applied(cfg, defs, list(defs.views))
    return {"rows": accepted, "quarantined": quarantined, "views": views}


# -- materialize --------------------------------------------------------------------------------


def _materialize_inputs(ctx: Context) -> dict[str, str]:
    return {
        **_batches(ctx.cfg),
        "applied": _features(ctx.cfg)["applied"],
        "online.uri": digest(ctx.cfg.online.uri),
    }


def _materialize(ctx: Context) -> Outputs:
    from backline.features.materialize import materialize
    from backline.features.repository import load_definitions

    result = materialize(ctx.cfg, load_definitions(ctx.cfg), incremental=True)
    return {
        "views": {
            v.view: {"rows": v.rows, "entities": v.entities, "batches": v.batches}
            for v in result.views
        }
    }


# -- training set -------------------------------------------------------------------------------

_SET_KEYS = ("service", "entity_source", "label_source", "label_column", "label_time", "cutoff")


def _training_set_inputs(ctx: Context) -> dict[str, str]:
    t = ctx.cfg.train
    batches = _batches(ctx.cfg)
    mine = {
        k: v
        for k, v in batches.items()
        if k in (f"batches/{t.entity_source}", f"batches/{t.label_source}")
    }
    config = {k: getattr(t, k) for k in _SET_KEYS} | {"holdout": str(t.holdout)}
    return {**mine, "applied": _features(ctx.cfg)["applied"], "config": digest(config)}


def _training_set(ctx: Context) -> Outputs:
    from backline.train.dataset import build_training_set

    ts = build_training_set(ctx.cfg)
    ctx.keep_training_set(ts)
    return {
        "digest": ts.digest,
        "service": ts.service,
        "cutoff": ts.cutoff.isoformat(),
        "train_rows": ts.train.num_rows,
        "holdout_rows": ts.holdout.num_rows,
        "feature_views": dict(ts.feature_views),
    }


# -- train --------------------------------------------------------------------------------------


def _train_inputs(ctx: Context) -> dict[str, str]:
    found = ctx.outputs.get("training_set", {}).get("digest")
    train = {f.name: str(getattr(ctx.cfg.train, f.name)) for f in dataclasses.fields(ctx.cfg.train)}
    inputs = {"config": digest(train), "model": ctx.cfg.pipeline.model}
    if found is not None:
        inputs["training_set"] = str(found)
    return inputs


def _train(ctx: Context) -> Outputs:
    from backline.pipeline.train import package_and_register
    from backline.train.run import run_training

    ts = ctx.training_set()
    result = run_training(ctx.cfg, training_set=ts, progress=False)
    registered = package_and_register(ctx.cfg, result, ctx.cfg.pipeline.model, ACTOR, ts)
    version = registered.version
    m = result.metrics
    return {
        "run_id": result.run_id,
        "model": version.model,
        "version": version.version,
        "content_digest": version.content_digest,
        "already_registered": registered.already_registered,
        "steps": result.steps,
        "metrics": {"auc_pr": m.auc_pr, "roc_auc": m.roc_auc, "recall_at_fpr": m.recall_at_fpr},
    }


# -- evaluate, gate, promote --------------------------------------------------------------------


def _candidate(ctx: Context) -> tuple[str, int] | None:
    out = ctx.outputs.get("train")
    return None if out is None else (str(out["model"]), int(out["version"]))


def baseline(registry: Registry, model: str, version: int) -> int | None:
    """The champion a candidate is judged against: the current one, or, once the candidate
    is the champion itself, the one its gate compared it with. So a promotion does not make
    the candidate's own evaluation stale."""
    from backline.registry import CHAMPION

    try:
        champion = next((a.version for a in registry.aliases(model) if a.alias == CHAMPION), None)
    except NotFoundError:  # no such model yet: nothing to compare with
        return None
    if champion != version:
        return champion
    record = registry.gate_of(model, version)
    return None if record is None else record.champion_version


def _evaluate_inputs(ctx: Context) -> dict[str, str]:
    found = _candidate(ctx)
    if found is None:
        return {}
    model, version = found
    cfg = ctx.cfg
    rule = {**dataclasses.asdict(cfg.gate), "target_fpr": cfg.train.target_fpr}
    rule["label_column"] = cfg.train.label_column
    return {
        "candidate": f"{model}:{version}:{ctx.outputs['train'].get('content_digest', '')}",
        "baseline": str(baseline(ctx.registry, model, version)),
        "gate": digest(rule),
        "evaluation": str(ctx.outputs.get("training_set", {}).get("digest", "")),
    }


def _evaluate(ctx: Context) -> Outputs:
    from backline.pipeline.gate import evaluate_version
    from backline.registry.records import check_to_obj

    found = _candidate(ctx)
    assert found is not None  # train ran before (the plan orders it)
    model, version = found
    record = evaluate_version(ctx.cfg, ctx.registry, model, version, ctx.training_set().holdout)
    return {
        "model": model,
        "version": version,
        "passed": record.passed,
        "champion_version": record.champion_version,
        "eval_set_digest": record.eval_set_digest,
        "evaluated_at": record.evaluated_at.isoformat(),
        "checks": [check_to_obj(c) for c in record.checks],
    }


def _gate(ctx: Context) -> Outputs:
    from backline.core.durations import parse_utc
    from backline.registry.records import GateRecord, check_from_obj

    out = ctx.outputs["evaluate"]
    model, version = str(out["model"]), int(out["version"])
    record = GateRecord(
        passed=bool(out["passed"]),
        checks=tuple(check_from_obj(c) for c in out["checks"]),
        evaluated_at=parse_utc(str(out["evaluated_at"])),
        eval_set_digest=str(out["eval_set_digest"]),
        champion_version=out["champion_version"],
    )
    ctx.registry.record_gate(model, version, record)
    if not record.passed:
        failed = "; ".join(
            f"{c.name} {c.value:.4g} (threshold {c.threshold:.4g})"
            for c in record.checks
            if not c.passed
        )
        raise GateFailed(
            f"{model} v{version} did not pass the gate: {failed}. It stays a candidate; see "
            f"`backline models show {model}:{version}`, change the data, features or [train] "
            "and run the pipeline again (or promote it by hand with --force --reason)."
        )
    return {"model": model, "version": version, "passed": True}


def _promote(ctx: Context) -> Outputs:
    from backline.registry import CHAMPION

    out = ctx.outputs["gate"]
    model, version = str(out["model"]), int(out["version"])
    registry = ctx.registry
    champion = next((a.version for a in registry.aliases(model) if a.alias == CHAMPION), None)
    if champion == version:  # promoted before (a resumed run): nothing to move
        return {"model": model, "champion": version, "previous": None, "promoted": False}
    registry.promote(
        model,
        version,
        actor=ACTOR,
        reason=f"pipeline {ctx.pipeline} run at {ctx.logical_time.isoformat()}",
    )
    return {"model": model, "champion": version, "previous": champion, "promoted": True}


STEPS: dict[str, StepImpl] = {
    "ingest": StepImpl(_ingest_inputs, _ingest),
    "validate": StepImpl(_validate_inputs, _validate),
    "materialize": StepImpl(_materialize_inputs, _materialize),
    "training_set": StepImpl(_training_set_inputs, _training_set),
    "train": StepImpl(_train_inputs, _train),
    "evaluate": StepImpl(_evaluate_inputs, _evaluate),
    "gate": StepImpl(lambda ctx: _upstream(ctx, "evaluate"), _gate),
    "promote": StepImpl(lambda ctx: _upstream(ctx, "gate"), _promote),
}
