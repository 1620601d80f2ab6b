"""`backline serve`: the model server (backline.serve)."""

from __future__ import annotations

import argparse
from typing import Any

from backline.cli.common import _positive, _project
from backline.core.console import err, out


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be 0-65535 (0 = any free), got {text!r}")
    return value


def add_commands(sub: Any) -> None:
    """Add `serve` to the top-level subparsers."""
    p = sub.add_parser(
        "serve",
        help="serve the champion model over HTTP (dynamic batching, KServe v2, metrics)",
        description=(
            "Serve a registered model: online features in the request path, dynamic batching, "
            "a prediction log. SIGTERM or Ctrl-C drains (no request is dropped), and the server "
            "switches to a new version when its alias moves."
        ),
    )
    p.add_argument("--host", help="address to bind (serve.host, 127.0.0.1)")
    p.add_argument("--port", type=_port, help="TCP port, 0 = any free (serve.port, 8080)")
    p.add_argument(
        "--workers",
        type=_positive(int, "--workers"),
        help="server processes on one port (serve.workers, 1)",
    )
    p.add_argument(
        "--model",
        metavar="NAME@ALIAS",
        help="what to serve: NAME@ALIAS, NAME@VERSION or NAME (serve.model, fraud@champion)",
    )
    p.add_argument(
        "--no-prediction-log",
        dest="prediction_log",
        action="store_false",
        default=None,
        help="do not log predictions to the offline store (serve.prediction_log)",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from backline.serve.server import ServeSpec, run

    spec = ServeSpec(
        root=_project(args),
        host=args.host,
        port=args.port,
        workers=args.workers,
        model=args.model,
        prediction_log=args.prediction_log,
    )

    def ready(url: str, workers: int, seconds: float) -> None:
        plural = "worker" if workers == 1 else "workers"
        out.print(
            f"Serving on {url} ({workers} {plural}, ready in {seconds:.1f} s). "
            f"POST {url}/v1/models/<name>:predict, GET {url}/metrics, {url}/openapi.json. "
            "Ctrl-C drains and stops.",
            highlight=False,
            soft_wrap=True,
        )

    def failed(message: str) -> None:
        err.print(f"[red]error:[/] cannot serve: {message}", highlight=False, soft_wrap=True)

    return run(spec, on_ready=ready, on_failed=failed)
