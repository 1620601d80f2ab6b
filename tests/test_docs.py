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


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every `backline ...` line in a code block of the README, docs/ and
    the examples' READMEs; continuation lines joined, `[optional]` parts of a synopsis dropped."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += sorted((ROOT / "examples").glob("*/README.md"))
    found = []
    for path in files:
        for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("backline "):
                    found.append((path.name, re.sub(r"\[[^\]]*\]", "", line)))
    return found


def test_every_documented_command_parses() -> None:
    """A renamed flag or subcommand breaks a command the docs print: catch it here."""
    import shlex

    from backline.cli import build_parser

    commands = documented_commands()
    assert len(commands) > 30
    parser = build_parser()
    for where, command in commands:
        for part in command.split("&&"):
            argv = shlex.split(part, comments=True)
            if not argv or argv[0] != "backline":
                continue  # cd fraud
            try:
                parser.parse_args(argv[1:])
            except SystemExit as exc:
                raise AssertionError(f"{where}: `{part.strip()}` does not parse") from exc


def test_documented_online_reads_say_when() -> None:
    """The example's data is from January 2026: a read without --at shows only expired values."""
    reads = [(w, c) for w, c in documented_commands() if c.startswith("backline features get")]
    assert reads
    for where, command in reads:
        assert "--at " in command, f"{where}: `{command}` reads as of now"


_PACKAGES = "core|data|features|train|package|registry|monitor|pipeline|cli"


def test_every_source_path_the_docs_name_exists() -> None:
    """docs/architecture.md names the modules as they are: a move that forgets the docs fails."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = []
    for path in texts:
        text = path.read_text()
        names = re.findall(r"src/backline/[\w/]+(?:\.py)?", text)
        names += [  # `registry/store.py`, relative to src/backline
            f"src/backline/{n}" for n in re.findall(rf"`((?:{_PACKAGES})/[\w/]+\.py)", text)
        ]
        for name in names:
            if not (ROOT / name).exists() and not (ROOT / (name + ".py")).exists():
                missing.append(f"{path.name}: {name}")
    assert not missing, missing
