"""The two consoles every command prints to: results on stdout, errors and progress on stderr.

Piped or redirected output is read by programs and by people in wide windows, so it is not cut
at rich's 80-column default there; a terminal keeps its real width.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

_WIDE = None if sys.stdout.isatty() else 1_000

out = Console(highlight=False, soft_wrap=True, width=_WIDE)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@contextmanager
def progress_bar(enabled: bool, label: str) -> Iterator[Callable[[str, float], None]]:
    """A rich progress bar on stderr that yields update(stage, fraction_done); a no-op when
    not enabled (output is JSON, or stderr is not a terminal)."""
    if not enabled:
        yield lambda stage, done: None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=1.0)

        def update(stage: str, done: float) -> None:
            text = f"{label}: {stage}" if stage else label
            bar.update(task, completed=min(done, 1.0), description=text)

        yield update
