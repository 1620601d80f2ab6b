"""Imports point down the layers, never up or sideways (docs/architecture.md, "Layers").

Every import of a backline module in src/backline, at module level or inside a function, is
checked against the documented order, so a shortcut that would tangle the stages fails here.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "backline"

#: Bottom first. A package may import from lower layers only (and from itself).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"core"}),
    frozenset({"data", "package", "monitor"}),
    frozenset({"features"}),
    frozenset({"train", "registry"}),
    frozenset({"pipeline"}),
    frozenset({"project"}),
    frozenset({"serve"}),
    frozenset({"bench"}),
    frozenset({"demo"}),
    frozenset({"cli"}),
)


def layer_of(package: str) -> int:
    for i, members in enumerate(LAYERS):
        if package in members:
            return i
    raise AssertionError(f"backline.{package} is in no layer: add it to LAYERS and the docs")


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level backline package) for every absolute backline import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found += [(node.lineno, n.split(".")[1]) for n in names if n.startswith("backline.")]
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC).parts
        if len(parts) == 1 and parts[0] in ("__init__.py", "__main__.py"):
            continue  # the package root re-exports the handle: it sits above everything
        own = parts[0].removesuffix(".py")
        mine = layer_of(own)
        for line, target in imports(path):
            if target != own and layer_of(target) >= mine:
                bad.append(f"{path.relative_to(SRC)}:{line} imports backline.{target}")
    return bad


def test_every_package_is_in_a_layer() -> None:
    packages = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.name != "__pycache__"}
    packages -= {"__init__", "__main__", "py.typed"}
    for package in sorted(packages):
        layer_of(package)


def test_imports_point_down_the_layers() -> None:
    assert violations() == []


def test_the_check_sees_an_upward_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checker itself can fail: a planted `core -> registry` import is reported."""
    fake = tmp_path / "backline"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "x.py").write_text("def f():\n    from backline.registry import store\n")
    (fake / "registry").mkdir()
    (fake / "registry" / "store.py").write_text("import backline.core.x\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", fake)
    assert violations() == ["core/x.py:2 imports backline.registry"]
