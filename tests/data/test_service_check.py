"""The service check in tests/conftest.py probes the servers the test URLs name."""

from __future__ import annotations

import pytest

from tests import conftest


class _Item:
    def __init__(self, *markers: str) -> None:
        self.markers = set(markers)

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


@pytest.mark.parametrize(
    ("marker", "attr", "url", "address"),
    [
        ("redis", "REDIS_URL", "redis://10.11.12.13:7001/3", ("10.11.12.13", 7001)),
        ("redis", "REDIS_URL", "redis://cache.internal/0", ("cache.internal", 6379)),
        (
            "postgres",
            "POSTGRES_URL",
            "postgresql://u:pw@db.internal:6543/test",
            ("db.internal", 6543),
        ),
        ("postgres", "POSTGRES_URL", "postgresql://postgres@[::1]/test", ("::1", 5432)),
    ],
)
def test_the_check_probes_the_host_and_port_of_the_test_url(
    monkeypatch: pytest.MonkeyPatch, marker: str, attr: str, url: str, address: tuple
) -> None:
    probed: list[tuple[str, int]] = []

    def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
        probed.append((host, port))
        return False

    monkeypatch.setattr(conftest, attr, url)
    monkeypatch.setattr(conftest, "port_open", port_open)
    monkeypatch.setattr(conftest, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match=f"{marker} is not answering at"):
        conftest.pytest_runtest_setup(_Item(marker))  # type: ignore[arg-type]
    assert probed == [address]


def test_an_answering_service_is_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "port_open", lambda host, port, timeout=0.5: True)
    conftest.pytest_runtest_setup(_Item("redis", "postgres"))  # type: ignore[arg-type]
    monkeypatch.setattr(conftest, "port_open", lambda host, port, timeout=0.5: False)
    monkeypatch.setattr(conftest, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        conftest.pytest_runtest_setup(_Item("postgres"))  # type: ignore[arg-type]
