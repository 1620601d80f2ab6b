"""The README's tour and the demo's suggestions, run exactly as printed.

A newcomer copies the README's tour line by line and the commands `backline demo` prints; each
must work as written, from a fresh folder, with `backline` the installed command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def tour_commands(readme: str) -> list[str]:
    """The commands of the README's tour block, continuation lines joined."""
    section = readme[readme.index("## A tour") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    tour = next(b for b in blocks if "backline init" in b)
    commands: list[str] = []
    pending = ""
    for line in tour.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        line = (pending + line.strip()).strip()
        pending = ""
        if line:
            commands.append(line)
    return commands


def run_script(commands: list[str], cwd: Path, timeout: float) -> list[tuple[str, str, str]]:
    """Run `commands` in one bash (so `cd` carries over), stopping at the first failure.
    Returns (command, stdout, stderr) per command that ran; fails naming the command that broke."""
    lines = ["set -eo pipefail"]
    for i, cmd in enumerate(commands):
        lines.append(f"echo '@@step {i}'; echo '@@step {i}' >&2")
        lines.append(cmd)
    lines.append("echo '@@end'; echo '@@end' >&2")
    proc = subprocess.run(
        ["bash", "-c", "\n".join(lines)],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    outs = re.split(r"^@@(?:step \d+|end)\n", proc.stdout, flags=re.M)[1:]
    errs = re.split(r"^@@(?:step \d+|end)\n", proc.stderr, flags=re.M)[1:]
    ran = [(commands[i], outs[i], errs[i]) for i in range(min(len(outs), len(commands)))]
    if proc.returncode != 0 or "@@end" not in proc.stdout:
        cmd, out, err = ran[-1] if ran else ("(before the first command)", "", proc.stderr)
        pytest.fail(
            f"`{cmd}` failed with exit code {proc.returncode}.\nstdout:\n{out[-3000:]}\n"
            f"stderr:\n{err[-3000:]}"
        )
    return ran


def test_tour_commands_are_found() -> None:
    commands = tour_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    assert commands[0].startswith("backline init") and len(commands) >= 15
    assert all(c.startswith("backline ") for c in commands), commands
    # every online read in the tour says when it reads: the example's data is from 2026-01
    assert all("--at" in c for c in commands if c.startswith("backline features get"))


@pytest.mark.slow
@pytest.mark.timeout(1200)  # it trains a model: minutes on a loaded 2-core machine
def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    commands = tour_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    ran = run_script(commands, tmp_path, timeout=1100)
    assert len(ran) == len(commands)
    project = tmp_path / "fraud"
    for cmd, _out, err in ran:
        assert "Traceback" not in err, (cmd, err)

    def outputs(prefix: str) -> list[str]:
        return [out for cmd, out, _err in ran if cmd.startswith(prefix)]

    def first(prefix: str) -> str:
        return outputs(prefix)[0]

    assert "Created project" in first("backline init fraud")
    assert re.search(r"Wrote [\d,]+ transactions", first("backline generate"))
    ingested = json.loads(first("backline ingest transactions"))
    assert ingested["status"] == "committed" and ingested["rows_accepted"] > 100_000
    assert ingested["rows_in"] == ingested["rows_accepted"] + ingested["rows_quarantined"]
    labels_first, labels_again = outputs("backline ingest labels")
    assert "Committed batch" in labels_first
    assert "Already ingested" in labels_again and "0 new rows" in labels_again
    sql = outputs("backline sql")
    assert "reason" in sql[0] and "null_rate" in sql[1]
    doctor = first("backline doctor")
    assert "fail" not in doctor and "train" in doctor
    assert "Applied" in first("backline features plan")

    entities = pq.read_table(project / "entities.parquet")
    assert entities.column_names == ["card_id", "merchant_id", "event_timestamp", "amount"]
    assert entities.num_rows > 1000
    assert max(entities["event_timestamp"].to_pylist()).isoformat() < "2026-01-25"
    train = pq.read_table(project / "train.parquet")
    assert train.num_rows == entities.num_rows and "count_24h" in train.column_names
    assert f"Wrote {train.num_rows:,} rows" in first("backline features history")
    assert "Materialized" in first("backline features materialize")

    got = first("backline features get")
    statuses = dict(re.findall(r"^\s*(\w+)\s+.*\s(ok|missing|expired)\s*$", got, re.M))
    assert statuses, got
    assert statuses["count_30d"] == "ok" and statuses["last_country"] == "ok", got
    assert "as of 2026-02-01T00:00:00+00:00" in got

    trained = first("backline train")
    assert "Registered fraud v1" in trained
    assert "gate PASSED" in first("backline models gate")
    shown = first("backline models show")
    assert "champion" in shown
    bench = first("backline bench serve")
    assert re.search(r"([\d,]+) sent, \1 answered, \1 ok", bench), bench
    monitored = first("backline monitor --once")
    assert re.search(r"fraud: \d+ window\(s\) checked", monitored), monitored
    assert (
        "Wrote" in first("backline monitor report")
        and (tmp_path / "fraud" / "report.html").exists()
    )
    assert re.search(r"errors\s*│\s*none", bench), bench


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_ends_promoted_and_its_suggestions_work(tmp_path: Path) -> None:
    demo = subprocess.run(
        [
            str(BIN / "backline"),
            "demo",
            "--dir",
            "d",
            "--cards",
            "600",
            "--days",
            "24",
            "--steps",
            "60",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert demo.returncode == 0, demo.stderr
    assert "is the champion" in demo.stdout, demo.stdout[-2000:]
    # the online read the demo printed, and the values it showed
    command = re.search(r"`(\S*backline features get [^`]+)`", demo.stdout)
    assert command, demo.stdout
    shown = dict(
        re.findall(
            r"^\s*(count_10m|count_24h|amount_mean_30d|last_country|merchant_count_24h)\s+(\S+)\s+ok",
            demo.stdout,
            re.M,
        )
    )
    assert len(shown) == 5, demo.stdout
    explore = demo.stdout[demo.stdout.index("Explore it: cd ") :]
    folder = explore.split("\n")[0].removeprefix("Explore it: cd ").removesuffix(", then")
    suggested = [line.strip() for line in explore.splitlines()[1:] if line.strip()]
    assert any("models show fraud@champion" in s for s in suggested), suggested
    cwd = Path(shlex.split(folder)[0])
    ran = run_script([command[1], *suggested], cwd, timeout=300)
    got = ran[0][1]
    for name, value in shown.items():
        assert re.search(rf"^\s*{name}\s+(\S+)\s+ok", got, re.M), (name, got)
        read = re.search(rf"^\s*{name}\s+(\S+)\s+ok", got, re.M)
        assert read is not None
        if name == "last_country":
            assert read[1] == value
        else:
            assert float(read[1]) == pytest.approx(float(value), abs=1e-3), (name, got)
    assert "champion" in ran[-1][1]


def test_the_next_step_init_prints_works_as_printed(tmp_path: Path) -> None:
    made = subprocess.run(
        [str(BIN / "backline"), "init", "fraud"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    nxt = re.search(r"^Next: (.+)$", made.stdout, re.M)
    assert nxt, made.stdout
    (_, out, _) = run_script([nxt[1]], tmp_path, timeout=300)[0]
    assert "Committed batch" in out and "into source transactions" in out
