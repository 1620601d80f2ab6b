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
    got_json = json.loads(got.stdout)
    assert got_json["entity"] == {"card_id": card, "merchant_id": merchant}
    assert got_json["values"]["count_30d"] >= 1 and got_json["status"]["count_30d"] == "ok"
    assert got_json["at"] == "2026-01-07T00:00:00+00:00"
    bad = run("features", "get", "--service", "fraud_v1", "card_id", cwd=root)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr
    assert run("features", "materialize", cwd=root).returncode == 2


def test_project_option_after_the_subcommand(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    after = run("doctor", "--project", str(root), "--json", cwd=tmp_path)
    before = run("--project", str(root), "doctor", "--json", cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == json.loads(before.stdout)
    nested = run("models", "list", "--project", str(root), cwd=tmp_path)
    assert nested.returncode == 0, nested.stderr


def test_piped_tables_are_not_cut_to_80_columns(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    wide = "x" * 150
    got = run("sql", f"SELECT '{wide}' AS a, 'end-of-row' AS b", cwd=root)
    assert got.returncode == 0, got.stderr
    assert wide in got.stdout and "end-of-row" in got.stdout and "…" not in got.stdout


def test_doctor_json_and_a_train_section_naming_no_source(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    ok = run("doctor", "--json", cwd=root)
    report = json.loads(ok.stdout)
    assert ok.returncode == 0 and report["ok"] is True
    assert [c["check"] for c in report["checks"]][-1] == "train"
    toml = root / "backline.toml"
    toml.write_text(
        toml.read_text().replace('label_source = "labels"', 'label_source = "chargebacks"')
    )
    bad = run("doctor", "--json", cwd=root)
    report = json.loads(bad.stdout)
    assert bad.returncode == 2 and report["ok"] is False
    (train,) = [c for c in report["checks"] if c["check"] == "train"]
    assert "train.label_source = 'chargebacks'" in train["detail"]
    assert "transactions, labels" in train["detail"]
    plain = run("doctor", cwd=root)
    assert plain.returncode == 2 and "fail train: train.label_source" in plain.stderr


def test_init_empty_is_a_working_project_without_the_example(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    made = run("init", "--empty", str(root))
    assert made.returncode == 0, made.stderr
    assert "declare your sources" in made.stdout
    assert "[sources." not in "\n".join(
        line
        for line in (root / "backline.toml").read_text().splitlines()
        if not line.startswith("#")
    )
    doctor = run("doctor", "--json", cwd=root)
    assert doctor.returncode == 0, doctor.stderr
    assert json.loads(doctor.stdout)["sources"] == []
    assert run("features", "plan", cwd=root).returncode == 0
    # the commented example source works once uncommented
    toml = root / "backline.toml"
    text = toml.read_text()
    block = text[
        text.index("# [sources.events]") : text.index("# ----", text.index("# [sources.events]"))
    ]
    toml.write_text(text + "\n" + "\n".join(line.removeprefix("# ") for line in block.splitlines()))
    (root / "events.csv").write_text(
        "event_id,user_id,value,event_time\ne1,u1,1.5,2026-01-01T00:00:00Z\n"
    )
    ingested = run("ingest", "events", "events.csv", "--json", cwd=root)
    assert ingested.returncode == 0, ingested.stderr
    assert json.loads(ingested.stdout)["rows_accepted"] == 1


def test_features_commands_refuse_mistakes(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    twice = run("features", "get", "--service", "fraud_v1", "card_id=a", "card_id=b", cwd=root)
    assert twice.returncode == 2 and "card_id is given twice" in twice.stderr
    req = run(
        "features", "get", "--service", "fraud_v1", "card_id=a", "merchant_id=m",
        "--request", "amount=1", "--request", "amount=2", cwd=root,
    )  # fmt: skip
    assert req.returncode == 2 and "--request amount is given twice" in req.stderr
    missing = run(
        "features", "history", "--entities", "nope.parquet", "--service", "fraud_v1",
        "--out", "t.parquet", cwd=root,
    )  # fmt: skip
    assert missing.returncode == 2 and "backline features entities" in missing.stderr
    suffix = run("features", "entities", "--service", "fraud_v1", "--out", "e.txt", cwd=root)
    assert suffix.returncode == 2 and ".parquet or .csv" in suffix.stderr


def test_features_entities_writes_what_history_needs(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    gen = run("generate", "--out", "data", "--days", "3", "--cards", "60", "--format",
              "parquet", cwd=root)  # fmt: skip
    assert gen.returncode == 0, gen.stderr
    assert run("ingest", "transactions", "data/transactions.parquet", cwd=root).returncode == 0
    assert run("features", "apply", "--json", cwd=root).returncode == 0
    # the labels source has no card_id: a clear error naming the column and the fix
    wrong = run("features", "entities", "--service", "fraud_v1", "--source", "labels",
                "--out", "e.parquet", cwd=root)  # fmt: skip
    assert wrong.returncode == 2 and "'merchant_id'" in wrong.stderr and "--source" in wrong.stderr
    made = run("features", "entities", "--service", "fraud_v1", "--start", "2026-01-02",
               "--end", "2026-01-03", "--limit", "40", "--out", "e.csv", "--json", cwd=root)  # fmt: skip
    assert made.returncode == 0, made.stderr
    summary = json.loads(made.stdout)
    assert summary["rows"] == 40 and summary["source"] == "transactions"
    assert summary["columns"] == ["card_id", "merchant_id", "event_timestamp", "amount"]
    hist = run("features", "history", "--entities", "e.csv", "--service", "fraud_v1",
               "--out", "t.parquet", "--json", cwd=root)  # fmt: skip
    assert hist.returncode == 0, hist.stderr
    assert json.loads(hist.stdout)["rows"] == 40
    times = pq.read_table(root / "t.parquet")["event_timestamp"].to_pylist()
    assert times == sorted(times)
    assert all("2026-01-02" <= t.isoformat() < "2026-01-03" for t in times)


def test_ingesting_an_empty_file_says_nothing_went_in(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    assert run("init", str(root)).returncode == 0
    (root / "empty.csv").write_bytes(b"")
    got = run("ingest", "transactions", "empty.csv", cwd=root)
    assert got.returncode == 0, got.stderr
    assert "Nothing ingested" in got.stdout and "0 bytes" in got.stdout
    assert "Committed" not in got.stdout
