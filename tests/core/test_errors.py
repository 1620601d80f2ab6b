"""Errors that travel: every BacklineError has a stable code, an HTTP status and a JSON body."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import backline
from backline.core.errors import BacklineError, NotFoundError

DOC = Path(__file__).resolve().parents[2] / "docs" / "errors.md"
# modules that need an optional engine to import
_OPTIONAL = ("backline.features.engines.spark",)


def all_error_classes() -> list[type[BacklineError]]:
    for info in pkgutil.walk_packages(backline.__path__, "backline."):
        if info.name not in _OPTIONAL:
            importlib.import_module(info.name)
    found: list[type[BacklineError]] = []
    todo: list[type[BacklineError]] = [BacklineError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def documented() -> dict[str, tuple[str, int]]:
    """code -> (class name, HTTP status) from the table in docs/errors.md."""
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\d{3}) \|", DOC.read_text(), re.M)
    return {code: (cls, int(status)) for code, cls, status in rows}


def test_every_error_class_has_its_own_documented_code_and_status() -> None:
    classes = all_error_classes()
    assert len(classes) >= 13
    table = documented()
    codes = [cls.__dict__.get("code") for cls in classes]
    missing = [cls.__name__ for cls, code in zip(classes, codes, strict=True) if code is None]
    assert not missing, f"error classes without a code of their own: {missing}"
    assert len(set(codes)) == len(codes), "two classes share a code"
    for cls in classes:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", cls.code), cls
        assert 400 <= cls.http_status < 600, cls
        assert table.get(cls.code) == (cls.__name__, cls.http_status), (
            f"{cls.__name__} ({cls.code}, {cls.http_status}) is not documented as such in "
            "docs/errors.md"
        )
    assert set(table) == {cls.code for cls in classes}, "docs/errors.md lists a code no class has"


def test_the_json_body_names_code_and_message() -> None:
    exc = NotFoundError("model 'fraud' has no version 9. Versions: 1, 2.")
    assert exc.to_json() == {
        "error": {"code": "not_found", "message": "model 'fraud' has no version 9. Versions: 1, 2."}
    }
    assert exc.http_status == 404


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_a_client_error_is_never_a_5xx_unless_the_server_is_at_fault(
    cls: type[BacklineError],
) -> None:
    # the server could not do it: down, damaged, loading or draining, or out of time
    server_side = {"StoreError", "TrainingFailed", "IntegrityError", "NotReady", "Expired"}
    assert (cls.http_status >= 500) == (cls.__name__ in server_side), cls
