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
@pytest.mark.timeout(900)
def test_the_demo_tells_the_whole_story_and_checks_it(tmp_path: Path) -> None:
    """`backline demo --quick` (400 cards, 10 requests a day through HTTP, 100 training steps;
    `make demo` runs the full size, which takes about twice as long): every self-check holds,
    the narration names each step's evidence, and the commands it suggests work as printed."""
    demo = subprocess.run(
        [str(BIN / "backline"), "demo", "--dir", "d", "--quick"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=800,
        stdin=subprocess.DEVNULL,
    )
    text = demo.stdout
    assert demo.returncode == 0, text[-3000:] + demo.stderr[-2000:]
    assert "every check held" in text and "FAIL" not in text, text[-3000:]
    checks = text[text.index("What the demo checked") :]
    for claim in (
        "ingest quarantined the bad rows",
        "resumed parameters are bitwise identical to an uninterrupted run",
        "v1 passed the gate",
        "no drift alarm before the drift",
        "the drift alarm fired after day 45",
        "the alarm's retrain request triggered retraining",
        "v2 passed the gate",
        "the hot swap failed no request",
        "the server swapped to v2 without a restart",
        "v2 beat v1 on the days after the swap (realised AUC-PR, v1 scored offline)",
        "the dashboard was written",
    ):
        assert re.search(rf"^\s+ok\s+{re.escape(claim)}$", checks, re.M), (claim, checks)
    # the narration shows the evidence of each claim
    assert re.search(r"quarantined \d+ \(.*timestamp_in_future", text), text[:3000]
    assert "SIGKILLed right after its checkpoint at step 50 of 100 (exit -9)" in text
    resumed = re.search(r"parameters sha256 (\w+); an uninterrupted run: (\w+)", text)
    assert resumed and resumed[1] == resumed[2], text
    assert re.search(r"day (4[5-9])  \S+ \(drift\)  v1 .*FeatureDrift firing", text), text
    assert not re.search(r"day 4[0-4] .*FeatureDrift firing", text), text
    swap = re.search(r"promoted v2 under load: ([\d,]+) requests answered .*, (\d+) failed", text)
    assert swap and int(swap[1].replace(",", "")) > 0 and swap[2] == "0", text
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", text)
    assert "the server now answers with v2" in text
    report = re.search(r"^12\. dashboard\s+(\S+)$", text, re.M)
    assert report and Path(report[1]).read_text().lstrip().lower().startswith("<!doctype html")
    explore = text[text.index("Explore it: cd ") :]
    folder = explore.split("\n")[0].removeprefix("Explore it: cd ").removesuffix(", then")
    suggested = [
        line.strip()
        for line in explore.splitlines()[1:]
        # the dashboard's opener needs a desktop; its file was checked above
        if line.strip() and not line.strip().startswith(("open ", "xdg-open "))
    ]
    openers = [x for x in explore.splitlines()[1:] if x.strip().startswith("xdg-open ")]
    assert openers or sys.platform == "darwin"
    ran = run_script(suggested, Path(shlex.split(folder)[0]), timeout=300)
    shown = next(o for c, o, _ in ran if "models show fraud@champion" in c)
    assert shown.startswith("fraud v2  (champion)"), shown


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
