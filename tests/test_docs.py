"""The README keeps its promises: two set-up commands first, and a command behind every figure."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_first_screen_gives_exactly_the_two_commands() -> None:
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:25])
    blocks = re.findall(r"```[a-z]*\n(.*?)```", first_screen, re.S)
    assert blocks, "the first screen has a code block"
    commands = [line.split("#")[0].strip() for line in blocks[0].splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def test_every_performance_figure_names_its_command() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Performance", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in section.splitlines() if r.startswith("|") and not set(r) <= set("|- ")]
    assert len(rows) > 1
    for row in rows[1:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        command = cells[-1]
        assert command.startswith("`") and "benchmarks/" in command, row
        script = re.search(r"benchmarks/\S+\.py", command)
        assert script and (ROOT / script.group(0)).is_file(), row


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
