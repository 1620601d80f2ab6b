"""Shared fixtures: a fresh project per test, and real services behind markers.

Tests marked `redis` or `postgres` talk to the real servers. Locally they skip, with the
reason shown, when a server is not answering; with CI=true a missing server fails the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backline.core.config import Config, load_config
from backline.core.uris import port_open
from backline.core.workspace import init_project

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("BACKLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get(
    "BACKLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
_SERVICES = {"redis": ("127.0.0.1", 6379), "postgres": ("127.0.0.1", 5432)}


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker, (host, port) in _SERVICES.items():
        if item.get_closest_marker(marker) and not port_open(host, port):
            message = f"{marker} is not answering at {host}:{port}"
            if IN_CI:
                pytest.fail(f"{message} (CI=true: a missing service is a failure, not a skip)")
            pytest.skip(message)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A new project made from the fraud example."""
    return init_project(tmp_path / "proj")


@pytest.fixture
def cfg(project: Path) -> Config:
    return load_config(project, env={})
