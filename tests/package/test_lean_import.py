"""`import backline.package` stays the bottom layer a model server stands on: in a fresh
interpreter it loads none of the database, query-engine, feature-store or training code."""

from __future__ import annotations

import json
import subprocess
import sys

#: Modules (and their submodules) that importing backline.package must not load.
FORBIDDEN = (
    "sqlalchemy",
    "duckdb",
    "pyspark",
    "backline.registry",
    "backline.features",
    "backline.data",
    "backline.train",
    "backline.pipeline",
    "backline.monitor",
)

PROBE = f"""
import json, sys
import backline.package
from backline.package import load_package, Scorer, Preprocessor, read_package
forbidden = {FORBIDDEN!r}
print(json.dumps(sorted(
    name for name in sys.modules
    if any(name == f or name.startswith(f + ".") for f in forbidden)
)))
"""


def loaded_forbidden(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    result: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_importing_the_package_layer_loads_nothing_above_it() -> None:
    assert loaded_forbidden(PROBE) == []


def test_the_probe_sees_a_violation() -> None:
    """The probe itself works: a module that drags in the registry is reported."""
    planted = "import backline.registry\n" + PROBE
    found = loaded_forbidden(planted)
    assert "backline.registry" in found and "sqlalchemy" in found
