"""The two consoles every command prints to: results on stdout, errors and progress on stderr.

Piped or redirected output is read by programs and by people in wide windows, so it is not cut
at rich's 80-column default there; a terminal keeps its real width.
"""

from __future__ import annotations

import sys

from rich.console import Console

_WIDE = None if sys.stdout.isatty() else 1_000

out = Console(highlight=False, soft_wrap=True, width=_WIDE)
err = Console(stderr=True, highlight=False, soft_wrap=True)
