"""Helpers for peer benchmarks: each peer lives in its own virtual environment.

    python = ensure_venv("feast", ["feast[redis]==0.67.0"])   # benchmarks/.peers/feast/venv
    out = run_worker(python, worker_file, ["--job", "..."])     # JSON back, peak RSS measured

Peers are never backline dependencies: they are installed by the benchmark, with pip, into
the git-ignored folder benchmarks/.peers/NAME/, and reused while their requirements match.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PEERS = Path(__file__).resolve().parent / ".peers"


def _base_python() -> str:
    """The interpreter behind the running venv (a venv made from a venv is fragile)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure_venv(
    name: str,
    requirements: list[str],
    *,
    log=print,
    first: list[list[str]] | None = None,
    key: str = "",
) -> Path:
    """Create benchmarks/.peers/NAME/venv with `requirements`; reuse it when they match.

    Returns the venv's python. A stamp file records what was installed, so a changed
    requirement list rebuilds the venv instead of mixing versions.

    `first`: groups of requirements installed, in order, before `requirements` (say
    `[["torch==2.13.0"]]`, so that a later `torch>=2.4` is already satisfied by the CPU
    wheel instead of downloading a CUDA build). `key`: anything else the venv depends on
    (say a digest of a local project's pyproject.toml installed with -e); a changed key
    rebuilds it too.
    """
    home = PEERS / name
    venv = home / "venv"
    python = venv / "bin" / "python"
    stamp = home / "installed.json"
    wanted: dict[str, Any] = {
        "requirements": sorted(requirements),
        "python": sys.version.split()[0],
    }
    if first:
        wanted["first"] = [list(group) for group in first]
    if key:
        wanted["key"] = key
    if python.exists() and stamp.exists():
        try:
            if json.loads(stamp.read_text()) == wanted:
                return python
        except ValueError:
            pass
    home.mkdir(parents=True, exist_ok=True)
    if venv.exists():
        import shutil

        shutil.rmtree(venv)
    groups = [*(first or []), requirements]
    shown = " then ".join(" ".join(g) for g in groups)
    log(f"installing {shown} into {venv} (first run only; a few minutes)")
    t0 = time.perf_counter()
    subprocess.run([_base_python(), "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--upgrade", "pip"], check=True)
    for group in groups:
        result = subprocess.run([*pip, "install", *group], capture_output=True, text=True)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr)[-4000:]
            raise RuntimeError(f"pip install {' '.join(group)} failed:\n{tail}")
    stamp.write_text(json.dumps(wanted))
    log(f"installed in {time.perf_counter() - t0:.0f} s")
    return python


def package_version(python: Path, package: str) -> str:
    out = subprocess.run(
        [
            str(python),
            "-c",
            f"import importlib.metadata as m; print(m.version({package!r}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


@dataclass(frozen=True)
class WorkerResult:
    """What a worker process printed as its last JSON line, and its peak RSS."""

    data: dict[str, Any]
    peak_rss_mb: float
    wall_s: float


def run_worker(
    python: Path | str,
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
) -> WorkerResult:
    """Run `python ARGS` in a fresh process; its last stdout line starting with { is JSON.

    `peak_rss_mb` is wait4()'s ru_maxrss for the child. On Linux it is at least the parent's
    RSS when the child was forked (the kernel keeps the high-water mark across exec), so a
    worker that must be measured exactly should also report its own VmHWM.
    """
    import tempfile
    import threading

    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [str(python), *args], stdout=out, stderr=err, env=full_env, cwd=cwd, text=True
        )
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer:
            timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            if timer:
                timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        why = "timed out" if proc.returncode == -9 and timeout else f"exit {proc.returncode}"
        raise RuntimeError(
            f"worker {' '.join(map(str, args[:3]))} failed ({why}):\n{stderr[-6000:]}"
        )
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"worker printed no JSON result:\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return WorkerResult(data=json.loads(lines[-1]), peak_rss_mb=usage.ru_maxrss / 1024, wall_s=wall)


def digest(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]
