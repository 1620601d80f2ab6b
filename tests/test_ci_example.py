"""examples/ci/model-gate.yml: the GitHub Actions workflow that blocks a pull request on the gate.

The structure test reads the workflow as GitHub would (YAML) and checks what makes it a gate:
it runs on pull requests, installs the CPU torch before backline, runs the pipeline up to the
gate and never past it, and nothing lets a failure pass. The run test executes the workflow's
own shell steps, as written, in a fresh copy of the fraud example (the install step aside: the
test's venv is the install), then raises the gate's floor and checks that the same step fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "model-gate.yml"
UPDATED_AT = "${{ github.event.pull_request.updated_at }}"
RUN = re.compile(r"backline run\b")  # `backline run`, not `backline runs`


def _workflow() -> dict[Any, Any]:
    data = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _steps() -> list[dict[str, Any]]:
    steps = _workflow()["jobs"]["gate"]["steps"]
    assert isinstance(steps, list)
    return steps


def test_the_workflow_gates_pull_requests_and_lets_no_failure_pass() -> None:
    data = _workflow()
    triggers = data.get("on", data.get(True))  # YAML 1.1 reads a bare `on` as true
    assert set(triggers) == {"pull_request"}
    assert "features.py" in triggers["pull_request"]["paths"]
    assert data["permissions"] == {"contents": "read"}
    job = data["jobs"]["gate"]
    assert job["timeout-minutes"] <= 60
    steps = _steps()
    assert not any(s.get("continue-on-error") for s in steps)
    runs = [s.get("run", "") for s in steps]

    install = next(r for r in runs if "pip install" in r)
    assert install.index("torch==2.13.0") < install.index('"$BACKLINE_PACKAGE"')
    assert "download.pytorch.org/whl/cpu" in install

    (gate,) = [s for s in steps if RUN.search(s.get("run", ""))]
    assert "--until gate" in gate["run"] and UPDATED_AT in gate["run"]
    assert "if" not in gate  # it always runs; its exit code is the check
    assert not any("promote" in r for r in runs)  # a pull request never moves the champion
    after = steps[steps.index(gate) + 1 :]
    assert after and all(s.get("if") == "always()" for s in after)
    uses = [s["uses"] for s in steps if "uses" in s]
    assert all("@v" in u for u in uses)  # pinned to a major version


def _shell_steps() -> list[str]:
    """The steps a runner executes after installing: their commands, as written."""
    return [
        s["run"]
        for s in _steps()
        if "run" in s and "pip install" not in s["run"] and s.get("if") != "always()"
    ]


def _run(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_the_workflow_steps_run_as_written_and_a_failing_gate_fails_the_check(
    tmp_path: Path,
) -> None:
    bin_dir = Path(sys.executable).parent
    init = subprocess.run(
        [str(bin_dir / "backline"), "init", str(tmp_path / "repo")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert init.returncode == 0, init.stderr
    repo = tmp_path / "repo"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_") and k != "CI"}
    workflow_env = {k: str(v) for k, v in _workflow()["jobs"]["gate"]["env"].items()}
    env |= {k: v for k, v in workflow_env.items() if k != "BACKLINE_PACKAGE"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"

    steps = _shell_steps()
    gate = next(s for s in steps if RUN.search(s))
    for script in steps:
        script = script.replace(UPDATED_AT, "2026-01-25T09:30:00Z")
        done = _run(script, repo, env)
        assert done.returncode == 0, (script, done.stdout[-3000:], done.stderr[-3000:])
    record = _run("backline runs --json", repo, env)
    assert record.returncode == 0 and '"succeeded"' in record.stdout

    # the same pull request, with a gate no candidate passes: the check fails
    strict = env | {"BACKLINE_GATE_MIN_AUC_PR": "0.9999"}
    failed = _run(gate.replace(UPDATED_AT, "2026-01-25T10:30:00Z"), repo, strict)
    assert failed.returncode != 0, failed.stdout[-3000:]
    assert "gate" in (failed.stdout + failed.stderr)
