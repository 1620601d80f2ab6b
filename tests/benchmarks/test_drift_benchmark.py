"""benchmarks/drift.py without its peers: the quick stationary replay and injected drifts run for
real (generated rows, profiled and checked), print their figures and the table of targets.

Evidently and NannyML live in venvs the benchmark makes on first use (minutes of installing,
over the network), so they are not run here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "drift.py"


def _load() -> Any:
    spec = importlib.util.spec_from_file_location("drift_benchmark", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["drift_benchmark"] = module
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_quick_run_prints_its_figures_and_the_table(tmp_path: Path) -> None:
    out = tmp_path / "drift.json"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--only",
            "stationary,injected",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = done.stdout
    for line in (
        "== stationary replay",
        "1k rows/window: false-alarm windows (any feature)",
        "10k rows/window: false-alarm windows (any feature)",
        "== injected drifts",
        "mean shift 0.5 sd",
        "category swap 5%",
        "covariance rotation",
        "concept drift, generator",
        "concept drift, synthetic",
        "== targets ==",
        "false alarms <= 1 per 1,000 windows",
        "0.5 sd shift in 1 of 50 features, 10k rows",
    ):
        assert line in text, line
    assert " PASS, " in text and " FAIL, " in text
    figures = json.loads(out.read_text())
    assert set(figures["stationary"]) == {"1k", "10k"}
    assert figures["stationary"]["10k"]["windows"] == 30
    assert "mean shift 0.5 sd @ 10k" in figures["injected"]
    assert {v["ok"] for v in figures["verdicts"]} <= {True, False, None}
    assert figures["failed"] == []


def test_generator_marginals_and_injected_changes() -> None:
    rng = np.random.default_rng(0)
    base = bench.generate(200_000, rng)
    assert base.num_columns == 50 and base.num_rows == 200_000
    rotated = bench.generate(200_000, np.random.default_rng(1), bench.Drift(rotate=True))
    shifted = bench.generate(200_000, np.random.default_rng(2), bench.Drift(shifts=(("f07", 0.5),)))
    swapped = bench.generate(200_000, np.random.default_rng(3), bench.Drift(swaps=(("c0", 0.05),)))

    def values(table: Any, name: str) -> np.ndarray:
        x = table.column(name).to_numpy(zero_copy_only=False).astype(float)
        return x[np.isfinite(x)]

    # the rotation flips the pair's correlation and keeps both marginals
    def pair(table: Any) -> tuple[np.ndarray, np.ndarray]:
        x, y = (table.column(n).to_numpy(zero_copy_only=False) for n in ("f00", "f01"))
        both = np.isfinite(x) & np.isfinite(y)  # f01 has 1% nulls
        return x[both], y[both]

    a, b = pair(base)
    ra, rb = pair(rotated)
    assert np.corrcoef(a, b)[0, 1] > 0.65 and np.corrcoef(ra, rb)[0, 1] < -0.65
    for x, y in ((a, ra), (b, rb)):
        assert abs(x.mean() - y.mean()) < 0.02 * x.std() and abs(x.std() / y.std() - 1) < 0.02
    # a 0.5 sd shift of f07 (sd 7.5), nulls kept at about 1%
    column = bench.COLUMNS[bench.NAMES.index("f07")]
    moved = values(shifted, "f07").mean() - values(base, "f07").mean()
    assert abs(moved - 0.5 * column.b) < 0.05 * column.b
    assert abs(shifted.column("f07").null_count / 200_000 - column.null_rate) < 0.002
    # 5% of all rows move from c0's most common value to the second
    top = "c0_v000"
    share = np.mean(np.asarray(swapped.column("c0").cast("string").to_pylist()) == top)
    assert abs(share - 0.55) < 0.005
