"""docs/python-api.md cannot rot: its marked python blocks run here, in order, in one namespace
(the first makes the project the next one uses); every other python block must compile and
call only methods a Project has."""

from __future__ import annotations

import ast
import re
import tempfile
from pathlib import Path

import pytest

from backline import Project

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
MARK = "<!-- run by tests/test_python_api.py -->"


def python_blocks() -> list[tuple[bool, str]]:
    """(marked to run, code) for every python block of the page."""
    found = re.findall(r"^([^\n]*)\n```python\n(.*?)^```", DOC.read_text(), re.S | re.M)
    return [(before.strip() == MARK, code) for before, code in found]


def test_the_page_has_the_complete_example() -> None:
    blocks = python_blocks()
    runs = [code for marked, code in blocks if marked]
    assert len(runs) >= 2 and len(blocks) > len(runs)
    for step in (
        "init_project(",
        "generate(",
        ".ingest(",
        ".apply()",
        ".historical_features(",
        ".materialize(",
        ".online_features(",
    ):
        assert step in runs[0], step


def test_blocks_not_run_call_only_what_a_project_has() -> None:
    for _, code in python_blocks():
        tree = ast.parse(code)
        called = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "project"
        }
        assert called, code
        missing = {name for name in called if not hasattr(Project, name)}
        assert not missing, f"the page calls Project.{missing} (block: {code[:60]!r})"


def test_the_marked_blocks_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the page's mkdtemp lands here
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "python_api_doc"}
    for i, (marked, block) in enumerate(python_blocks()):
        if marked:
            exec(compile(block, f"{DOC.name} python block {i + 1}", "exec"), namespace)
    folder = namespace["folder"]
    assert isinstance(folder, Path) and folder.is_relative_to(tmp_path)
    assert (folder / ".backline" / "online.db").exists()
