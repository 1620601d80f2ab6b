"""Helpers every command group shares: how to name this program, the project handle a command
works on, a progress bar, and argument converters."""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backline.core.console import progress_bar
from backline.core.errors import UsageError

if TYPE_CHECKING:
    from backline.project import Project


def cli_name() -> str:
    """How to call this very `backline` in a command we print: plain `backline` when that is
    what the shell finds on PATH, else the full path of the running one (say, `make demo` runs
    .venv/bin/backline without an activated venv, and the printed command must still work)."""
    running = Path(sys.argv[0])
    if running.name != "backline":
        return "backline"  # python -m backline.cli, or a test calling main()
    found = shutil.which("backline")
    if found and Path(found).resolve() == running.resolve():
        return "backline"
    return shlex.quote(str(running.resolve()))


def _project(args: argparse.Namespace) -> Path:
    from backline.core.config import find_project

    if args.project is not None:
        return find_project(Path(args.project))
    return find_project()


def _open(args: argparse.Namespace) -> Project:
    """The handle on the project `--project` names (or the nearest one holding backline.toml),
    for a `with` block, so the command's connections are closed when it ends."""
    from backline.core.config import load_config
    from backline.project import Project

    return Project(load_config(_project(args)))


_progress = progress_bar
"""The progress bar every command shows (backline.core.console.progress_bar)."""


def _positive(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{what} must be positive, got {text!r}")
        return value

    return convert


def _pairs(items: Sequence[str], flag: str, example: str) -> dict[str, str]:
    """KEY=VALUE arguments as a dict; a malformed or repeated key is a usage error."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"{flag}{item!r} is not KEY=VALUE; write e.g. {flag}{example}.")
        if key in pairs:
            raise UsageError(
                f"{flag}{key} is given twice ({pairs[key]!r} and {value!r}); give each key once."
            )
        pairs[key] = value
    return pairs
