"""`backline bench serve`: the load generator (backline.bench).

    backline bench serve --rate 200 --duration 30            # starts `backline serve` itself
    backline bench serve --url http://127.0.0.1:8080 --concurrency 16 --json report.json
    backline bench serve --rate 500 --burstiness 0.25 --slo-ms 10 --instances 4

Requests come from the project's own data (backline.bench.requests). Open loop (`--rate`)
counts each latency from the request's scheduled send time, closed loop (`--concurrency`, the
default with 8 clients) from its actual send. docs/benchmarking.md says what each figure means.
"""

from __future__ import annotations

import argparse
import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from backline.cli.common import _open, _positive, _progress, cli_name
from backline.core.console import err, out
from backline.core.errors import InvalidArgument, NotFoundError, UsageError

DEFAULT_CONCURRENCY = 8
MAX_BODIES = 10_000


def add_commands(sub: Any) -> argparse.ArgumentParser:
    """Add the `bench` command group to the top-level subparsers; returns its parser."""
    bench = sub.add_parser("bench", help="measure a model server under load (load generator)")
    group = bench.add_subparsers(dest="bench_command", metavar="COMMAND")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)

    p = group.add_parser(
        "serve",
        help="load `backline serve` with requests built from the project's data",
        description=(
            "Send predict requests built from the project's data to a model server and report "
            "latency percentiles, errors by status, throughput and goodput within an SLO. "
            "Without --url it starts `backline serve` for the project on a free port and stops "
            "it afterwards."
        ),
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="a running server, e.g. http://127.0.0.1:8080 (default: start one for the project)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help="model to load: NAME, or NAME@ALIAS for the server bench starts "
        "(default: serve.model, else fraud@champion)",
    )
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "--rate",
        type=_positive(float, "--rate"),
        metavar="R",
        help="open loop: R requests per second, arriving whatever the server does",
    )
    load.add_argument(
        "--concurrency",
        type=_positive(int, "--concurrency"),
        metavar="C",
        help=f"closed loop: C clients, each waiting for its answer ({DEFAULT_CONCURRENCY} "
        "without --rate)",
    )
    p.add_argument(
        "--duration",
        type=_positive(float, "--duration"),
        default=10.0,
        metavar="S",
        help="seconds of load (10)",
    )
    p.add_argument(
        "--burstiness",
        type=_positive(float, "--burstiness"),
        metavar="B",
        help="with --rate: gamma shape of the gaps between arrivals; 1 = Poisson (default), "
        "below 1 burstier",
    )
    p.add_argument(
        "--slo-ms",
        type=_positive(float, "--slo-ms"),
        default=20.0,
        metavar="MS",
        help="latency objective; goodput counts successes within it (20)",
    )
    p.add_argument(
        "--instances",
        type=_positive(int, "--instances"),
        default=1,
        metavar="K",
        help="instances per request (1)",
    )
    p.add_argument(
        "--skew",
        type=_non_negative("--skew"),
        default=1.0,
        metavar="S",
        help="Zipf exponent over entities ranked by how often they occur; 0 = uniform (1)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of arrivals and draws (0)"
    )
    p.add_argument(
        "--at",
        metavar="TIME",
        help="score as of this UTC ISO time, or 'now' for none (default: the data's latest "
        "event time when it is over a day old, else none)",
    )
    p.add_argument(
        "--timeout-ms",
        type=_positive(float, "--timeout-ms"),
        metavar="MS",
        help="deadline sent as X-Request-Timeout-Ms (server default: serve.timeout_ms); the "
        "generator itself waits that plus 1 s, else 10 s",
    )
    p.add_argument(
        "--max-connections",
        type=_positive(int, "--max-connections"),
        default=1024,
        metavar="N",
        help="open loop: most connections to open (1024)",
    )
    p.add_argument(
        "--workers",
        type=_positive(int, "--workers"),
        metavar="N",
        help="server processes, for the server bench starts (serve.workers)",
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help="also write the report as JSON to FILE ('-' prints only the JSON, on stdout)",
    )
    p.set_defaults(func=cmd_bench_serve)
    return bench


def _non_negative(what: str) -> Any:
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not value >= 0 or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{what} must be 0 or more, got {text!r}")
        return value

    return convert


def _check_args(args: argparse.Namespace) -> None:
    """What argparse cannot see: combinations of flags."""
    if args.burstiness is not None and args.rate is None:
        raise UsageError(
            f"--burstiness {args.burstiness:g} shapes the arrivals of an open loop; add --rate R "
            "(or drop --burstiness for a closed loop)."
        )
    if args.url is not None:
        from backline.bench.loadgen import Target

        try:
            Target.parse(args.url)
        except InvalidArgument as exc:
            raise UsageError(f"--url: {exc}") from None
        if args.workers is not None:
            raise UsageError(
                f"--workers {args.workers} is for the server bench starts itself; the one at "
                f"{args.url} runs as it was started. Drop --workers or --url."
            )
    if args.at is not None and args.at != "now":
        from backline.bench.requests import parse_at

        try:
            parse_at(args.at)
        except InvalidArgument as exc:
            raise UsageError(f"--at: {exc} Or write --at now to send no time.") from None


def _model(args: argparse.Namespace, project: Any) -> tuple[str, str]:
    """(what the server serves, the name in the predict path). Checks the registry when bench
    starts the server, so a typo fails before a server is started."""
    from backline.registry import CHAMPION
    from backline.registry.records import parse_model_spec
    from backline.serve.server import ServeSpec, resolve

    spec = resolve(ServeSpec(root=project.root, model=args.model), project).model
    assert spec is not None
    try:
        name, ref = parse_model_spec(spec)
    except InvalidArgument as exc:
        raise UsageError(f"--model: {exc}") from None
    if args.url is not None:
        if args.model is not None and ref is not None:
            raise UsageError(
                f"--model {args.model}: with --url the server decides which version it serves; "
                f"give just the name (--model {name})."
            )
        return spec, name
    try:
        project.registry.get(name, ref if ref is not None else CHAMPION)
    except NotFoundError as exc:
        raise UsageError(
            f"--model {spec}: {exc} To benchmark one, train it ({cli_name()} train) or pass "
            "a registered model with --model."
        ) from None
    return spec, name


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from backline.bench.loadgen import predict_url
    from backline.bench.requests import build_requests

    _check_args(args)
    expected = args.rate * args.duration if args.rate else MAX_BODIES
    count = max(64, min(MAX_BODIES, math.ceil(expected)))
    at: str | None = "auto" if args.at is None else (None if args.at == "now" else args.at)
    with _open(args) as project:
        spec, name = _model(args, project)
        made = build_requests(
            project,
            count=count,
            instances=args.instances,
            skew=args.skew,
            at=at,
            seed=args.seed,
        )
        root = project.root
    show = args.json != "-"
    if show:
        when = f"as of {made.at}" if made.at else "as of the time each is received"
        out.print(
            f"{len(made.bodies):,} distinct requests of {args.instances} instance(s) from "
            f"{made.entities:,} entities (skew {args.skew:g}) and {made.holdout_rows:,} held-out "
            f"rows of {made.service}'s data, scored {when}.",
            highlight=False,
        )
    with _progress(err.is_terminal and show, "bench serve") as update:
        if args.url is None:
            from backline.bench.server import started_server

            update("starting backline serve", 0.0)
            server: Any = started_server(
                root, model=spec if args.model else None, workers=args.workers
            )
        else:
            server = nullcontext(args.url.rstrip("/"))
        with server as base:
            url = predict_url(base, name)
            _preflight(url, base, name, made.bodies[0], args)
            report = _run(url, made.bodies, args, update)
    if args.json == "-":
        print(json.dumps(report.to_json(), indent=2))
    else:
        from backline.bench.loadgen import print_report

        print_report(report, out)
        if args.json:
            Path(args.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")
            out.print(f"Wrote the report to {args.json}.", highlight=False)
    return 0 if report.ok else 1


def _client_timeout(args: argparse.Namespace) -> float:
    return 10.0 if args.timeout_ms is None else args.timeout_ms / 1000.0 + 1.0


def _preflight(url: str, base: str, name: str, body: bytes, args: argparse.Namespace) -> None:
    """One request before the load: a wrong URL, model or request shape fails here, with the
    server's own words, instead of as thousands of identical errors."""
    from backline.bench.server import probe

    answer = probe(url, body, timeout=_client_timeout(args))
    if answer.status == 0:
        where = f"--url {base}" if args.url else f"the server bench started at {base}"
        raise UsageError(
            f"{where}: nothing answers there ({answer.body}). Start one with "
            f"`{cli_name()} serve`, or leave out --url to let bench start one."
        )
    if answer.status == 404:
        raise UsageError(
            f"--model {name}: the server at {base} answered 404: {answer.message} "
            "Pass the served model with --model."
        )
    if answer.status in (400, 405, 413, 415, 422):
        raise UsageError(
            f"the server at {base} rejected a request built from the project (HTTP "
            f"{answer.status}: {answer.message}). The request was {body[:300].decode()!r}; check "
            "that the server serves this project's model, or change --instances."
        )


def _run(url: str, bodies: list[bytes], args: argparse.Namespace, update: Any) -> Any:
    from backline.bench.loadgen import run_closed_loop, run_open_loop

    common: dict[str, Any] = {
        "duration": args.duration,
        "slo_ms": args.slo_ms,
        "timeout_ms": args.timeout_ms,
        "client_timeout_s": _client_timeout(args),
        "progress": update,
    }
    if args.rate is not None:
        return run_open_loop(
            url,
            bodies,
            rate=args.rate,
            burstiness=1.0 if args.burstiness is None else args.burstiness,
            seed=args.seed,
            max_connections=args.max_connections,
            **common,
        )
    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    return run_closed_loop(url, bodies, concurrency=concurrency, **common)
