"""`backline train` end to end: training set -> model -> serving package -> registered version -> gate."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from backline.cli import main
from backline.core.config import Config, load_config
from backline.core.errors import GateFailed, StoreError
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated
from backline.data.ingest import ingest
from backline.features.repository import apply, load_definitions
from backline.package.metrics import average_precision
from backline.package.reader import label_array, load_package
from backline.pipeline.gate import fetch_package
from backline.pipeline.train import gate, train_and_register
from backline.registry import open_registry
from backline.train.dataset import build_training_set


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = init_project(tmp_path_factory.mktemp("pipeline") / "proj")
    cfg = load_config(root, env={})
    data = generate(GeneratorConfig(days=24, cards=600, seed=11))
    paths = write_generated(data, root / "data", fmt="parquet")
    ingest(cfg, "transactions", paths["transactions"])
    ingest(cfg, "labels", paths["labels"])
    apply(cfg, load_definitions(cfg))
    # the latency budget is out of reach: no verdict here may depend on the machine's load
    # (tests/registry/test_latency.py checks the budget with known figures)
    return dataclasses.replace(
        cfg,
        train=dataclasses.replace(cfg.train, max_steps=40, checkpoint_every=20, batch_size=256),
        gate=dataclasses.replace(cfg.gate, max_latency_ms=1e6),
    )


def test_train_registers_a_version_with_lineage_and_a_gate(trained_project: Config) -> None:
    cfg = trained_project
    released = train_and_register(cfg, progress=False)
    version = released.version
    assert version.model == "fraud" and version.version == 1
    lineage = version.lineage
    assert lineage.training_set_digest == released.train.training_set_digest
    assert set(lineage.feature_versions) == {
        "card_velocity",
        "card_amounts",
        "card_diversity",
        "card_last_seen",
        "merchant_volume",
    }
    assert (
        lineage.data_start is not None
        and lineage.data_end is not None
        and lineage.data_start < lineage.data_end
    )
    assert lineage.metrics["auc_pr"] == pytest.approx(released.train.metrics.auc_pr)
    assert {"torch", "pyarrow", "duckdb"} <= set(lineage.library_versions)
    profile = lineage.reference_profile
    assert profile is not None and profile.score is not None
    assert profile.row_count == released.train.train_examples
    names = {a.name for a in version.artifacts}
    assert {"model.pt", "preprocess.json", "signature.json", "package.json"} <= names
    assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    with open_registry(cfg) as registry, pytest.raises(GateFailed, match="no gate record"):
        registry.promote("fraud", 1, actor="test")
    record = gate(cfg, "fraud", 1)
    assert record.passed and record.champion_version is None
    checks = {c.name: c for c in record.checks}
    assert set(checks) == {"auc_pr_floor", "recall_at_fpr_floor", "latency_p99_ms", "artifact_mb"}
    # the figure judged is the one recorded when packaged (structure, not speed)
    latency = checks["latency_p99_ms"]
    assert latency.value == released.package.latency_p99_ms > 0 and latency.threshold == 1e6
    assert "measured when packaged" in latency.detail
    assert checks["artifact_mb"].value == released.package.total_bytes / 1e6
    with open_registry(cfg) as registry:
        registry.promote("fraud", 1, actor="test", reason="first model")
        assert registry.get("fraud", "champion").version == 1


def test_a_second_version_is_gated_against_the_champion(
    trained_project: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = dataclasses.replace(
        trained_project, train=dataclasses.replace(trained_project.train, seed=1)
    )
    released = train_and_register(cfg, progress=False)
    assert released.version.version == 2
    record = gate(cfg, "fraud", 2)
    assert record.champion_version == 1
    assert "non_inferiority" in {c.name for c in record.checks}
    # the CLI reports the same verdict, and its exit code is what CI looks at
    code = main(["--project", str(cfg.root), "models", "gate", "fraud", "2", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == (0 if payload["passed"] else 1)


def _scores_and_labels(cfg: Config, version: int, folder: Path) -> dict[str, tuple[Any, Any]]:
    """(labels, scores) of a registered version on each split of the current training set."""
    ts = build_training_set(cfg, service=cfg.train.service)
    with open_registry(cfg) as registry:
        scorer = load_package(fetch_package(registry, "fraud", version, folder))
    return {
        split: (label_array(table, ts.label, split), scorer.score(table))
        for split, table in (("train", ts.train), ("holdout", ts.holdout))
    }


@pytest.mark.slow
def test_cli_gate_judges_the_holdout_as_the_library_does(
    trained_project: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`models gate` evaluates on the holdout: its AUC-PR is the holdout's, not the training
    split's, and a floor between the two decides the verdict as the holdout says."""
    cfg = trained_project
    with open_registry(cfg) as registry:
        if not registry.list_models():  # run on its own: register a first version
            train_and_register(cfg, progress=False)
    splits = _scores_and_labels(load_config(cfg.root, env={}), 1, tmp_path / "v1")
    auc = {split: average_precision(y, s) for split, (y, s) in splits.items()}
    # the precondition of this test: the two splits tell a different story
    assert abs(auc["train"] - auc["holdout"]) > 0.005, auc
    between = (auc["train"] + auc["holdout"]) / 2
    on_holdout = auc["holdout"] >= between  # the opposite of what the training split says

    def cli_gate(min_auc_pr: float) -> tuple[int, dict[str, Any]]:
        monkeypatch.setenv("BACKLINE_GATE_MIN_AUC_PR", repr(min_auc_pr))
        monkeypatch.setenv("BACKLINE_GATE_MAX_LATENCY_MS", "1e6")  # no wall-clock verdicts
        code = main(["--project", str(cfg.root), "models", "gate", "fraud", "1", "--json"])
        payload = json.loads(capsys.readouterr().out)
        return code, {c["name"]: c for c in payload["checks"]} | {"passed": payload["passed"]}

    for floor, passed, with_library in [
        (auc["holdout"], True, True),  # exactly at the holdout's AUC-PR
        (between, on_holdout, True),
        (max(auc.values()) + 0.01, False, False),  # a fail, whichever split is ahead
    ]:
        code, got = cli_gate(floor)
        assert got["auc_pr_floor"]["value"] == pytest.approx(auc["holdout"], abs=1e-12)
        assert (got["auc_pr_floor"]["passed"], got["passed"], code) == (passed, passed, 1 - passed)
        if not with_library:
            continue
        # the library, on the same version, the same holdout and the same config, agrees
        env = {"BACKLINE_GATE_MIN_AUC_PR": repr(floor), "BACKLINE_GATE_MAX_LATENCY_MS": "1e6"}
        record = gate(load_config(cfg.root, env=env), "fraud", 1)
        assert record.passed is passed
        for check in record.checks:
            mine = got[check.name]
            assert (mine["threshold"], mine["passed"]) == (check.threshold, check.passed)
            assert mine["value"] == pytest.approx(check.value, abs=1e-12)


def test_cli_train_json(
    tmp_path: Path, trained_project: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--project", str(trained_project.root), "train", "--max-steps", "20", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["model"] == "fraud"
        and summary["steps"] == 20
        and 0 <= summary["metrics"]["auc_pr"] <= 1
    )


def test_a_registry_that_is_down_fails_before_any_training(
    trained_project: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import backline.pipeline.train as pipeline

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("training started although the registry is down")

    monkeypatch.setattr(pipeline, "run_training", must_not_run)
    monkeypatch.setattr(pipeline, "build_training_set", must_not_run)
    down = "postgresql://postgres@127.0.0.1:1/test"
    cfg = dataclasses.replace(
        trained_project, registry=dataclasses.replace(trained_project.registry, uri=down)
    )
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1"):
        train_and_register(cfg, progress=False)
    # the command line: one line, exit code 2, and still no training
    monkeypatch.setenv("BACKLINE_REGISTRY_URI", down)
    assert main(["--project", str(cfg.root), "train", "--max-steps", "5"]) == 2
    assert "127.0.0.1:1" in capsys.readouterr().err


def test_an_unwritable_artifact_folder_fails_before_any_training(
    trained_project: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    import backline.pipeline.train as pipeline

    monkeypatch.setattr(pipeline, "run_training", lambda *a, **k: pytest.fail("trained"))
    (trained_project.root / ".backline" / "artifacts").mkdir(parents=True, exist_ok=True)
    real_access = os.access  # the tests run as root, for whom every folder is writable
    monkeypatch.setattr(
        pipeline.os,
        "access",
        lambda path, mode: "artifacts" not in str(path) and real_access(path, mode),
    )
    with pytest.raises(StoreError, match="artifact folder"):
        train_and_register(trained_project, progress=False)


def test_running_a_finished_train_again_registers_nothing_new(trained_project: Config) -> None:
    cfg = dataclasses.replace(
        trained_project,
        train=dataclasses.replace(trained_project.train, seed=2, max_steps=20),
    )
    steps: list[int] = []
    first = train_and_register(cfg, progress=False, on_progress=lambda p: steps.append(p.step))
    assert not first.already_registered and first.train.samples_per_second > 0
    assert steps == list(range(1, 21))  # progress after every step
    again = train_and_register(cfg, progress=False, on_progress=lambda p: steps.append(p.step))
    assert again.already_registered and len(steps) == 20
    assert again.version == first.version
    assert again.train.resumed_from == again.train.steps == 20  # nothing was trained this time
    # the throughput of the process that trained, not 0 samples/s (also the time after)
    assert again.train.samples_per_second == first.train.samples_per_second
    assert again.train.final_loss == first.train.final_loss
    third = train_and_register(cfg, progress=False)
    assert third.train.samples_per_second == first.train.samples_per_second
    with open_registry(cfg) as registry:
        same = [
            mv
            for mv in registry.list_versions("fraud")
            if mv.content_digest == first.version.content_digest
        ]
    assert [mv.version for mv in same] == [first.version.version]
