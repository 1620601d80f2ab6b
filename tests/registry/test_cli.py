"""`backline models ...` through `add_commands` on a parser shaped like backline's own."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from backline.cli.models import add_commands
from backline.core.config import Config
from backline.core.errors import (
    BacklineError,
    GateFailed,
    InvalidArgument,
    NotFoundError,
)
from backline.registry import Registry
from backline.registry.records import parse_model_spec as parse_spec
from tests.registry.conftest import gate, lineage, make_files


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="backline")
    top.add_argument("--project", metavar="DIR", help="project folder")
    add_commands(top.add_subparsers(dest="command", metavar="COMMAND"))
    return top


def run(project: Path, *argv: str) -> int:
    args = parser().parse_args(["--project", str(project), *argv])
    return int(args.func(args))


def run_json(project: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    capsys.readouterr()
    assert run(project, *argv, "--json") == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def cli_env(reg_cfg: Config, monkeypatch: pytest.MonkeyPatch) -> Config:
    """The CLI reads the environment: point it at the registry under test."""
    monkeypatch.setenv("BACKLINE_REGISTRY_URI", reg_cfg.registry.uri)
    return reg_cfg


@pytest.fixture
def two_versions(
    registry: Registry, files: dict[str, Path], tmp_path: Path, cli_env: Config
) -> Registry:
    registry.register("fraud", files, lineage(), actor="trainer", description="baseline")
    changed = make_files(tmp_path / "v2", {"model.pt": b"PK\x03\x04 v2", "spec.json": b"{}"})
    registry.register("fraud", changed, lineage(metrics={"auc_pr": 0.83}), actor="trainer")
    registry.record_gate("fraud", 1, gate())
    return registry


def test_every_option_has_help() -> None:
    def walk(p: argparse.ArgumentParser, path: str) -> None:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{path} {choice.dest} has no help"
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                assert action.help, f"{path} {action.option_strings or action.dest} has no help"

    walk(parser(), "backline")


def test_list_show_and_diff(
    two_versions: Registry, reg_cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    project = reg_cfg.root
    assert run(project, "models", "list") == 0
    assert "fraud" in capsys.readouterr().out
    listed = run_json(project, capsys, "models", "list")
    assert isinstance(listed, list) and listed[0]["name"] == "fraud"
    assert listed[0]["versions"] == 2

    assert run(project, "models", "show", "fraud") == 0
    text = capsys.readouterr().out
    assert "v1" in text and "v2" in text
    shown = run_json(project, capsys, "models", "show", "fraud")
    assert [v["version"] for v in shown["versions"]] == [1, 2]

    assert run(project, "models", "show", "fraud:1") == 0
    text = capsys.readouterr().out
    assert "fraud v1" in text and "baseline" in text and "gate: passed" in text
    one = run_json(project, capsys, "models", "show", "fraud:latest")
    assert one["version"]["version"] == 2 and one["gate"] is None
    assert one["version"]["lineage"]["metrics"] == {"auc_pr": 0.83}

    assert run(project, "models", "diff", "fraud", "1", "2") == 0
    assert "model.pt" in capsys.readouterr().out
    d = run_json(project, capsys, "models", "diff", "fraud", "1", "latest")
    assert d["metrics"][0]["name"] == "auc_pr"
    assert d["metrics"][0]["delta"] == pytest.approx(0.03)
    assert [a["name"] for a in d["artifacts"]] == ["model.pt"]


def test_promote_rollback_aliases_audit(
    two_versions: Registry, reg_cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    project = reg_cfg.root
    with pytest.raises(GateFailed, match="v2 has no gate record"):
        run(project, "models", "promote", "fraud", "2")
    with pytest.raises(InvalidArgument, match="needs a reason"):
        run(project, "models", "promote", "fraud", "2", "--force")
    event = run_json(project, capsys, "models", "promote", "fraud", "1", "--actor", "ci")
    assert event == {**event, "action": "promote", "new_version": 1, "actor": "ci"}
    assert run(project, "models", "promote", "fraud", "2", "--force", "--reason", "hotfix") == 0
    assert "force-promote" in capsys.readouterr().out
    assert run(project, "models", "alias", "fraud", "challenger", "2", "--reason", "shadow") == 0
    back = run_json(project, capsys, "models", "rollback", "fraud", "--reason", "bad precision")
    assert back["old_version"] == 2 and back["new_version"] == 1

    pointers = run_json(project, capsys, "models", "aliases", "fraud")
    assert [(a["alias"], a["version"]) for a in pointers] == [
        ("challenger", 2),
        ("champion", 1),
    ]
    assert run(project, "models", "aliases", "fraud") == 0
    assert "challenger" in capsys.readouterr().out
    log = run_json(project, capsys, "models", "audit", "fraud", "--alias", "champion")
    assert [e["action"] for e in log] == ["promote", "force-promote", "rollback"]
    assert log[1]["reason"] == "hotfix"
    assert run(project, "models", "audit", "fraud") == 0
    assert "bad precision" in capsys.readouterr().out
    assert run_json(project, capsys, "models", "gc") == {"orphan_files": 0, "temp_files": 0}


def test_errors_are_backline_errors(
    registry: Registry, reg_cfg: Config, cli_env: Config, tmp_path: Path
) -> None:
    project = reg_cfg.root
    with pytest.raises(NotFoundError, match="no model 'fraud'"):
        run(project, "models", "show", "fraud@champion")
    with pytest.raises(InvalidArgument, match="is not MODEL, MODEL:VERSION or MODEL@ALIAS"):
        run(project, "models", "show", "fraud@")
    with pytest.raises(BacklineError, match=r"no backline\.toml"):
        run(tmp_path / "elsewhere", "models", "list")
    with pytest.raises(SystemExit) as exit_info:  # argparse: a missing required option
        run(project, "models", "rollback", "fraud")
    assert exit_info.value.code == 2


def test_parse_spec() -> None:
    assert parse_spec("fraud") == ("fraud", None)
    assert parse_spec("fraud:3") == ("fraud", "3")
    assert parse_spec("fraud@champion") == ("fraud", "champion")
    for bad in (":3", "fraud@", "", "@champion"):
        with pytest.raises(InvalidArgument, match="is not MODEL, MODEL:VERSION or MODEL@ALIAS"):
            parse_spec(bad)
