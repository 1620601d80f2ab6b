"""benchmarks/gpu_serve.py keeps working without a GPU: its CPU mode runs the whole script
(building a package, timing, the table and the JSON), and without CUDA it says it skipped."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_serve.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_cpu_quick_mode_runs_the_whole_script(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = run("--device", "cpu", "--quick", "--threads", "1", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["scorer_mode"] == "eager"
    assert result["runs"] == 3 and result["calls_per_run"] == 10 and result["threads"] == 1
    assert [b["batch"] for b in result["batches"]] == [1, 8, 64, 256]
    for entry in result["batches"]:
        assert entry["graph"] is None  # no graphs on the CPU
        for method in ("eager", "scorer"):
            for stat in ("p50_us", "p99_us", "rows_per_s"):
                figure = entry[method][stat]
                assert 0 < figure["min"] <= figure["median"] <= figure["max"], (method, stat)
    assert result["reference_h200_us"]["graph batch 1"] == 25.0
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("batch"))
    assert "graph p50" in header and "scorer rows/s" in header
    rows = [line.split()[0] for line in lines[lines.index(header) + 1 :]][:4]
    assert rows == ["1", "8", "64", "256"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_without_cuda_it_says_skipped_and_exits_0() -> None:
    done = run()
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("skipped: no CUDA device")


def test_bad_arguments_exit_2() -> None:
    done = run("--device", "cpu", "--runs", "2")
    assert done.returncode == 2 and "--runs must be at least 3" in done.stderr
