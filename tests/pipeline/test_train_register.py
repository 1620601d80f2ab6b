"""`backline train` end to end: training set -> model -> serving package -> registered version -> gate."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from backline.cli import main
from backline.core.config import Config, load_config
from backline.core.errors import GateFailed
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated
from backline.data.ingest import ingest
from backline.features.repository import apply, load_definitions
from backline.pipeline.train import gate, train_and_register
from backline.registry import open_registry


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = init_project(tmp_path_factory.mktemp("pipeline") / "proj")
    cfg = load_config(root, env={})
    data = generate(GeneratorConfig(days=24, cards=600, seed=11))
    paths = write_generated(data, root / "data", fmt="parquet")
    ingest(cfg, "transactions", paths["transactions"])
    ingest(cfg, "labels", paths["labels"])
    apply(cfg, load_definitions(cfg))
    return dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, max_steps=40, checkpoint_every=20, batch_size=256)
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
