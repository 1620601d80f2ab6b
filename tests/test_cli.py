"""The command line as a user meets it: discovery, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backline.cli import main
from backline.data.generator import CHANNELS, CURRENCIES


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    return subprocess.run(
        [sys.executable, "-m", "backline.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_init_generate_ingest_sql_from_a_subfolder(tmp_path: Path) -> None:
    assert run("init", str(tmp_path / "proj")).returncode == 0
    data = tmp_path / "proj" / "data"
    gen = run(
        "generate", "--out", str(data), "--days", "5", "--cards", "200", "--seed", "3", "--json"
    )
    assert gen.returncode == 0, gen.stderr
    summary = json.loads(gen.stdout)
    assert summary["transactions"] == summary["labels"] > 0
    # commands find the project from any folder inside it
    ingest = run("ingest", "transactions", "transactions.csv", "--json", cwd=data)
    assert ingest.returncode == 0, ingest.stderr
    result = json.loads(ingest.stdout)
    assert result["rows_in"] == summary["transactions"] == result["rows_accepted"]
    sql = run("sql", "SELECT count(*) AS n FROM transactions", "--format", "json", cwd=data)
    assert json.loads(sql.stdout) == {"n": summary["transactions"]}


def test_outside_a_project_the_error_says_how_to_make_one(tmp_path: Path) -> None:
    proc = run("sql", "SELECT 1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "no backline.toml" in proc.stderr and "backline init" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "--out", "x", "--days", "0"], "--days must be positive"),
        (["generate", "--out", "x", "--start", "01/02/2026"], "--start '01/02/2026' is not a date"),
        (["generate", "--out", "x", "--drift", "2026-01-05:amount_scale=big"], "big"),
        (["generate", "--out", "x", "--drift", "2026-01-05:teleport=1"], "teleport"),
        (["generate", "--out", "x", "--format", "xml"], "invalid choice: 'xml'"),
        (["ingest"], "the following arguments are required"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "p")]) == 0
    assert main(["init", str(tmp_path / "p")]) == 2
    assert "already holds a backline project" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "p"), "--force"]) == 0


def test_unusable_offline_store_is_exit_2(
    project: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BACKLINE_OFFLINE_URI", f"file://{blocker}/store")
    data = tmp_path / "t.csv"
    data.write_text("transaction_id\n")
    assert main(["--project", str(project), "ingest", "transactions", str(data)]) == 2
    err = capsys.readouterr().err
    assert "offline.uri" in err and "cannot create" in err


def test_example_schema_admits_what_the_generator_writes(project: Path) -> None:
    from backline.core.config import load_config

    tx = load_config(project, env={}).sources["transactions"]
    assert set(CURRENCIES) <= set(tx.column("currency").allowed or ())
    assert set(CHANNELS) == set(tx.column("channel").allowed or ())


def test_every_command_has_help() -> None:
    import argparse

    from backline.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> int:
        checked = 0
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                assert helped == set(action.choices), f"{path}: subcommands without help"
                for name, sub in action.choices.items():
                    checked += walk(sub, f"{path} {name}")
            elif action.dest != "help":
                assert action.help, f"{path}: option {action.dest} has no help text"
                checked += 1
        return checked

    assert walk(build_parser(), "backline") > 20


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = run(
        "demo",
        "--dir",
        str(tmp_path / "demo"),
        "--cards",
        "600",
        "--days",
        "24",
        "--steps",
        "60",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for expected in (
        "ingested     transactions",
        "fraud by channel",
        "invalid_encoding",
        "9. trained",
        "10. gate",
        "malformed_row",
    ):
        assert expected in proc.stdout, expected


def test_features_commands_end_to_end(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    assert (
        run(
            "generate",
            "--out",
            str(root / "data"),
            "--days",
            "6",
            "--cards",
            "150",
            "--format",
            "parquet",
            cwd=root,
        ).returncode
        == 0
    )
    assert run("ingest", "transactions", "data/transactions.parquet", cwd=root).returncode == 0
    plan = run("features", "plan", "--json", cwd=root)
    assert {c["action"] for c in json.loads(plan.stdout)} == {"create"}
    # nothing is applied yet: history refuses, naming the fix
    import pyarrow as pa
    import pyarrow.parquet as pq

    tx = pq.read_table(root / "data" / "transactions.parquet").slice(0, 50)
    pq.write_table(
        pa.table(
            {
                "card_id": tx["card_id"],
                "merchant_id": tx["merchant_id"],
                "amount": tx["amount"],
                "event_timestamp": tx["event_time"],
            }
        ),
        root / "entities.parquet",
    )
    refused = run(
        "features",
        "history",
        "--entities",
        "entities.parquet",
        "--service",
        "fraud_v1",
        "--out",
        "train.parquet",
        cwd=root,
    )
    assert refused.returncode == 2 and "backline features apply" in refused.stderr
    assert run("features", "apply", cwd=root).returncode == 0
    made = run(
        "features",
        "history",
        "--entities",
        "entities.parquet",
        "--service",
        "fraud_v1",
        "--out",
        "train.parquet",
        cwd=root,
    )
    assert made.returncode == 0, made.stderr
    train = pq.read_table(root / "train.parquet")
    assert (
        train.num_rows == 50
        and "count_10m" in train.column_names
        and "amount_to_mean_30d" in train.column_names
    )
    end = "2026-01-07T00:00:00Z"
    mat = run("features", "materialize", "--end", end, "--json", cwd=root)
    assert mat.returncode == 0, mat.stderr
    assert sum(v["entities"] for v in json.loads(mat.stdout)["views"]) > 0
    card = tx["card_id"][0].as_py()
    merchant = tx["merchant_id"][0].as_py()
    got = run(
        "features",
        "get",
        "--service",
        "fraud_v1",
        f"card_id={card}",
        f"merchant_id={merchant}",
        "--request",
        "amount=20",
        "--at",
        end,
        "--json",
        cwd=root,
    )
    assert got.returncode == 0, got.stderr
    values = json.loads(got.stdout)
    assert values["card_id"] == card and values["count_30d"] >= 1
    bad = run("features", "get", "--service", "fraud_v1", "card_id", cwd=root)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    assert run("features", "materialize", cwd=root).returncode == 2
