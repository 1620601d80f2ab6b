"""Shared fixtures: a fresh project per test, and real services behind markers.

Tests marked `redis` or `postgres` talk to the real servers, and `spark` tests need pyspark
and Java 17+. Tests marked `promtool`, `alertmanager` or `chromium` run a program that a Debian
package installs (`BINARIES`; `.ci/run` installs them when missing). The servers are the ones BACKLINE_TEST_REDIS_URL and BACKLINE_TEST_POSTGRES_URL
name (default: redis and postgres on 127.0.0.1); the check probes their host and port. Locally
they skip, with the reason shown, when a service is missing; with
CI=true a missing service fails the test.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from backline.core.config import Config, load_config
from backline.core.uris import port_open
from backline.core.workspace import init_project

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("BACKLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "BACKLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_DEFAULT_PORTS = {"redis": 6379, "postgres": 5432}
#: marker -> (Debian package, the names its program may have on PATH)
BINARIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "promtool": ("prometheus", ("promtool",)),
    "alertmanager": ("prometheus-alertmanager", ("prometheus-alertmanager", "alertmanager")),
    "chromium": ("chromium", ("chromium", "chromium-browser", "chromium-headless-shell")),
}


def find_binary(marker: str) -> str | None:
    """The full path of the program a marker needs, or None when none of its names is on PATH."""
    for name in BINARIES[marker][1]:
        if path := shutil.which(name):
            return path
    return None


def service_address(marker: str) -> tuple[str, int]:
    """Where the service behind a marker listens: the host and port of its
    BACKLINE_TEST_*_URL (read when asked, so a test can point it elsewhere)."""
    url = {"redis": REDIS_URL, "postgres": POSTGRES_URL}[marker]
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or _DEFAULT_PORTS[marker]


@functools.cache
def spark_missing() -> str | None:
    """Why Spark cannot run here, or None when it can."""
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install -e '.[dev]')"
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if home and not Path(str(java)).exists():
        return f"JAVA_HOME={home} has no bin/java (Spark needs Java 17 or later)"
    if not java:
        return "no java on PATH (Spark needs Java 17 or later)"
    try:
        shown = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=60, check=True
        ).stderr
    except (OSError, subprocess.SubprocessError) as err:
        return f"`{java} -version` failed: {err}"
    match = re.search(r'version "(\d+)(?:\.(\d+))?', shown)
    major = int(match[1]) if match else 0
    if major == 1 and match and match[2]:
        major = int(match[2])  # 1.8 is Java 8
    if major < 17:
        return f"Spark needs Java 17 or later; {java} is {shown.splitlines()[0] if shown else '?'}"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    problems = []
    for marker in _DEFAULT_PORTS:
        if item.get_closest_marker(marker):
            host, port = service_address(marker)
            if not port_open(host, port):
                problems.append(f"{marker} is not answering at {host}:{port}")
    if item.get_closest_marker("spark") and (missing := spark_missing()):
        problems.append(f"spark: {missing}")
    for marker, (package, names) in BINARIES.items():
        if item.get_closest_marker(marker) and find_binary(marker) is None:
            problems.append(
                f"{marker}: no {' or '.join(names)} on PATH (apt-get install {package})"
            )
    if problems:
        if IN_CI:
            pytest.fail(f"{problems[0]} (CI=true: a missing service is a failure, not a skip)")
        pytest.skip(problems[0])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A new project made from the fraud example."""
    return init_project(tmp_path / "proj")


@pytest.fixture
def cfg(project: Path) -> Config:
    return load_config(project, env={})
