"""`backline demo`: the whole loop on sixty days of card traffic, told and checked.

Generate, ingest (with a quarantine), build features, train (killed once and resumed, bitwise
equal to a run never interrupted), gate and promote v1, serve it, replay the days through the
server and the monitor, catch the drift, retrain on the alarm, hot-swap v2 under load, and show
v2 recovering once the labels are in. The exit code is 0 only if every check held.
See `backline.demo.story`.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape

from backline.cli.common import _positive, cli_name
from backline.core.console import err, out
from backline.core.errors import InvalidArgument


def add_commands(sub: Any) -> None:
    """Add `demo` to the top-level subparsers."""
    p = sub.add_parser(
        "demo",
        help="run the whole loop on sixty days of fraud data: drift, alarm, retrain, hot swap",
    )
    p.add_argument("--dir", help="project folder to (re)create (default: a fresh temporary folder)")
    p.add_argument("--seed", type=int, default=7, help="random seed (7)")
    p.add_argument("--cards", type=_positive(int, "--cards"), default=600, help="cards (600)")
    p.add_argument(
        "--steps", type=_positive(int, "--steps"), default=200, help="training steps (200)"
    )
    p.add_argument(
        "--served-per-day",
        type=_positive(int, "--served-per-day"),
        default=30,
        help="transactions of each replayed day sent through HTTP; the rest are scored "
        "offline with the same package (30)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smaller story for tests: 400 cards, 10 served a day, 100 training steps",
    )
    p.add_argument(
        "--keep",
        dest="fresh",
        action="store_false",
        help="never delete an existing --dir folder: stop instead (the story needs a fresh one)",
    )
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from backline.demo.story import DemoOptions, run_demo

    cards, served, steps = args.cards, args.served_per_day, args.steps
    if args.quick:
        cards, served, steps = min(cards, 400), min(served, 10), min(steps, 100)
    if steps < 4:
        raise InvalidArgument(f"--steps {steps}: the demo kills training halfway; use at least 4.")
    temporary = args.dir is None
    target = (
        Path(tempfile.mkdtemp(prefix="backline-demo-")) / "fraud" if temporary else Path(args.dir)
    )
    if target.exists() and any(target.iterdir()):
        if not args.fresh:
            raise InvalidArgument(
                f"--dir {args.dir} exists and --keep keeps it, but the demo tells its story in a "
                "fresh folder. Drop --keep to replace it, or pass another --dir."
            )
        shutil.rmtree(target)
    opts = DemoOptions(
        root=target,
        seed=args.seed,
        cards=cards,
        served_per_day=served,
        steps=steps,
        kill_at=steps // 2 if (steps // 2) % 2 == 0 else steps // 2 - 1,
        progress=err.is_terminal,
    )
    outcome = run_demo(opts)
    out.print("\nWhat the demo checked")
    for claim, ok, detail in outcome.checks:
        mark = "[green]ok[/]  " if ok else "[red]FAIL[/]"
        out.print(f"  {mark} {escape(claim)}" + ("" if ok else f": {escape(detail)}"))
    verdict = "[green]every check held[/]" if outcome.passed else "[red]a check failed[/]"
    out.print(f"\n{verdict}")
    bl = cli_name()
    root = opts.root.resolve()
    out.print(f"Explore it: cd {shlex.quote(str(root))}, then")
    out.print(f"  {bl} models list")
    out.print(f"  {bl} models show fraud@champion")
    out.print(f'  {bl} sql "SELECT reason, count(*) AS n FROM quarantine GROUP BY 1"')
    if outcome.report is not None:
        # macOS opens files with `open`; elsewhere /usr/bin/open may be another program
        opener = "open" if sys.platform == "darwin" else "xdg-open"
        out.print(f"  {opener} {shlex.quote(str(outcome.report.resolve()))}")
    return 0 if outcome.passed else 1
