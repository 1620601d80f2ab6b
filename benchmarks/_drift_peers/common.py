"""Shared by the drift benchmark's workers, in whichever venv they run (standard library only).

job = read_job()                  # the JSON job file named by --job
...                               # load the data, then measure the call
emit({"seconds": s, **memory()})  # the last stdout line: JSON for run_worker
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _status_mb(key: str) -> float:
    """A /proc/self/status figure in MB: VmHWM is this process image's peak resident set.

    Not getrusage's ru_maxrss: Linux carries the parent's RSS at fork into the child's, so a
    worker started by the big orchestrator would report the orchestrator's size."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_mb() -> float:
    return _status_mb("VmHWM")


def rss_mb() -> float:
    return _status_mb("VmRSS")


def read_job() -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--job", required=True)
    args = parser.parse_args()
    job: dict[str, Any] = json.loads(Path(args.job).read_text())
    return job


def emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mb", peak_mb())
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
