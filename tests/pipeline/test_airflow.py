"""`backline pipeline export --airflow`: the DAG file, and a real Airflow that loads and runs it.

The fast tests read the file's text (it must not need Airflow to be written). The slow one
installs Apache Airflow into its own venv (never a backline dependency: `.airflow/venv`, made
once and kept; CI makes it on every fresh clone), loads the exported DAG with `DagBag`, and
runs it with `airflow dags test` against a small project:
- a user error (feature definitions not applied) fails the `validate` task at its first try,
  without using up retries, and the tasks after it never run;
- after the fix, the same logical date runs every task; the pipeline's run record shows each
  step succeeded once and the candidate promoted;
- the same logical date once more: every task succeeds and no step runs again (run keys).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from backline.cli import main
from backline.core.config import load_config
from backline.pipeline.airflow import dag_id, render_dag

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = "apache-airflow==3.3.2"
VENV = ROOT / ".airflow" / "venv"


def _constants(text: str) -> dict[str, Any]:
    """The file's top-level NAME = literal assignments."""
    found = {}
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                found[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return found


def test_the_dag_maps_schedule_retries_and_steps_from_backline_toml(project: Path) -> None:
    env = {
        "BACKLINE_SCHEDULE_CRON": "30 6 * * 1-5",
        "BACKLINE_SCHEDULE_TIMEZONE": "Europe/London",
        "BACKLINE_SCHEDULE_MAX_ATTEMPTS": "4",
        "BACKLINE_SCHEDULE_BACKOFF_BASE": "45s",
        "BACKLINE_SCHEDULE_BACKOFF_MAX": "20m",
        "BACKLINE_SCHEDULE_CATCHUP": "true",
        "BACKLINE_SCHEDULE_UNTIL": "gate",
    }
    cfg = load_config(project, env=env)
    text = render_dag(cfg, command=["/opt/bl/bin/backline"], start=date(2026, 1, 5))
    compile(text, "dag.py", "exec")
    found = _constants(text)
    # `until = gate`: gate and what it needs; materialize only feeds promote
    assert found["STEPS"] == ["ingest", "validate", "training_set", "train", "evaluate", "gate"]
    assert found["NEEDS"]["gate"] == ["evaluate"] and "promote" not in found["NEEDS"]
    assert (found["CRON"], found["TIMEZONE"]) == ("30 6 * * 1-5", "Europe/London")
    assert found["BACKLINE"] == ["/opt/bl/bin/backline"]
    assert found["PROJECT"] == str(project.resolve())
    assert "'retries': 3," in text
    assert "'retry_delay': timedelta(seconds=45)," in text
    assert "'max_retry_delay': timedelta(seconds=1200)," in text
    assert "catchup=True," in text
    assert "start_date=pendulum.datetime(2026, 1, 5, tz=TIMEZONE)," in text
    assert "{{ (logical_date or dag_run.run_after).isoformat() }}" in text

    plain = render_dag(load_config(project, env={"BACKLINE_SCHEDULE_CRON": ""}), command=["bl"])
    assert _constants(plain)["CRON"] == "" and "'retries': 2," in plain
    assert len(_constants(plain)["STEPS"]) == 8


def test_export_writes_the_file_and_bad_input_exits_2(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--project", str(project), "pipeline", "export"]
    assert main([*args, "--airflow", str(tmp_path / "dags"), "--start", "2026-01-01"]) == 0
    path = tmp_path / "dags" / "backline_fraud.py"
    assert f"Wrote {path}" in capsys.readouterr().out
    assert dag_id(load_config(project, env={})) == "backline_fraud"
    assert path.read_text().startswith('"""Airflow DAG for the backline project')

    (tmp_path / "a-file").write_text("")
    for extra, message in (
        (["--airflow", str(tmp_path / "a-file")], "that is a file"),
        (["--airflow", str(tmp_path / "d"), "--start", "2026-13-01"], "is not a date"),
        (["--airflow", str(tmp_path / "d"), "--backline-command", "'open"], "quote it"),
    ):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err


# -- a real Airflow --------------------------------------------------------------------------


def _airflow_venv() -> Path:
    """The venv holding Airflow, made on first use (about a minute and 300 MB)."""
    stamp = VENV / "installed.txt"
    if stamp.exists() and stamp.read_text() == AIRFLOW:
        return VENV
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run([*pip, AIRFLOW], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip install {AIRFLOW} failed:\n{done.stderr[-3000:]}"
    stamp.write_text(AIRFLOW)
    return VENV


def _airflow(venv: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "airflow"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _backline(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "backline"
    return subprocess.run(
        [str(exe), "--project", str(project), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


LOAD = """
import json, sys
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
dag = bag.dags.get("backline_fraud")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "dags": sorted(bag.dags),
    "tasks": [t.task_id for t in dag.tasks] if dag else [],
    "upstream": {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} if dag else {},
    "retries": {t.task_id: t.retries for t in dag.tasks} if dag else {},
}))
"""


def _task_states(log: str) -> dict[str, str]:
    """task_id -> the last state `airflow dags test` printed for it."""
    states: dict[str, str] = {}
    for line in log.splitlines():
        if "[DAG TEST] end task task_id=" in line:
            task = line.split("task_id=", 1)[1].split()[0]
            states[task] = "done"
    return states


@pytest.mark.slow
@pytest.mark.airflow
@pytest.mark.timeout(1200)  # the first run installs Airflow (a minute or two)
def test_a_real_airflow_loads_the_dag_and_runs_it_idempotently(tmp_path: Path) -> None:
    venv = _airflow_venv()
    project = tmp_path / "proj"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BACKLINE_", "AIRFLOW"))}
    env |= {
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "BACKLINE_TRAIN_MAX_STEPS": "60",
    }
    assert main(["init", str(project)]) == 0
    data = tmp_path / "data"
    assert main(["generate", "--out", str(data), "--days", "21", "--cards", "1500"]) == 0
    for source in ("transactions", "labels"):
        (project / "landing" / source).mkdir(parents=True)
        (data / f"{source}.csv").rename(project / "landing" / source / f"{source}.csv")
    exported = _backline(
        project,
        env,
        "pipeline",
        "export",
        "--airflow",
        str(tmp_path / "dags"),
        "--start",
        "2026-01-01",
    )
    assert exported.returncode == 0, exported.stderr

    loaded = subprocess.run(
        [str(venv / "bin" / "python"), "-W", "ignore", "-c", LOAD, str(tmp_path / "dags")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    bag = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert bag["errors"] == {} and bag["dags"] == ["backline_fraud"]
    assert bag["tasks"] == [
        "ingest", "validate", "materialize", "training_set", "train", "evaluate", "gate",
        "promote",
    ]  # fmt: skip
    assert bag["upstream"]["promote"] == ["gate", "materialize"]
    assert set(bag["retries"].values()) == {2}

    migrated = _airflow(venv, env, "db", "migrate")
    assert migrated.returncode == 0, migrated.stderr[-3000:]

    # features.py not applied yet: validate stops on a user error, at its first try
    day = "2026-01-22T02:00:00+00:00"
    first = _airflow(venv, env, "dags", "test", "backline_fraud", day)
    log = first.stdout + first.stderr
    assert "stopped on a user error (exit 2)" in log
    assert "--until train " not in log  # nothing after validate ran
    runs = json.loads(_backline(project, env, "runs", "--json").stdout)
    (run,) = runs if isinstance(runs, list) else runs["runs"]
    steps = {s["step"]: s for s in run["steps"]}
    assert steps["validate"]["state"] == "failed" and steps["validate"]["attempts"] == 1
    assert steps["ingest"]["state"] == "succeeded"

    # fixed: the next logical date runs every step, each once
    assert _backline(project, env, "features", "apply").returncode == 0
    day = "2026-01-23T02:00:00+00:00"
    second = _airflow(venv, env, "dags", "test", "backline_fraud", day)
    assert second.returncode == 0, (second.stdout + second.stderr)[-4000:]
    assert set(_task_states(second.stdout + second.stderr)) == set(bag["tasks"])
    record = json.loads(_backline(project, env, "runs", "--json").stdout)
    newest = (record if isinstance(record, list) else record["runs"])[0]
    assert newest["state"] == "succeeded"
    by_step = {s["step"]: s for s in newest["steps"]}
    assert all(by_step[name]["state"] == "succeeded" for name in ("train", "gate", "promote"))
    assert all(s["attempts"] <= 1 for s in newest["steps"])
    champion = _backline(project, env, "models", "show", "fraud@champion")
    assert champion.returncode == 0, champion.stderr

    # the same logical date again (an Airflow clear or retry): every task answers from the
    # run record, and no step runs a second time
    third = _airflow(venv, env, "dags", "test", "backline_fraud", day)
    assert third.returncode == 0, (third.stdout + third.stderr)[-4000:]
    again = json.loads(_backline(project, env, "runs", "--json").stdout)
    again_newest = (again if isinstance(again, list) else again["runs"])[0]
    assert again_newest["steps"] == newest["steps"]
