"""Which HTTP stack the server stands on, by measurement: no-op endpoints, one server core.

    .venv/bin/python benchmarks/http_stack.py              # 3 runs, 5 s a point
    .venv/bin/python benchmarks/http_stack.py --quick      # 1 run, 2 s a point

Each stack answers POST /v1/models/fraud:predict by reading the body and returning a constant
(what every server pays before any work): a plain ASGI callable or a Starlette route, on uvicorn
(httptools + uvloop) or granian. The stacks live in their own venv under benchmarks/.peers/
(never backline dependencies). Each runs pinned to core 0; the load generator
(backline.bench.loadgen, closed loop) pinned to core 1. Figures: successful requests per second
at 8 and 64 clients, median of the runs with the spread. docs/architecture.md records the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _peers import ensure_venv  # noqa: E402

REQUIREMENTS = [
    "starlette==1.10.0",
    "uvicorn==0.54.0",
    "uvloop==0.23.0",
    "httptools==0.9.0",
    "granian==2.8.9",
]
BODY = json.dumps(
    {
        "instances": [
            {
                "card_id": "card_0000285",
                "merchant_id": "m_000013",
                "amount": 69.1,
                "transaction_id": "tx_c602ae32907360e8",
            }
        ]
    }
).encode()

APP = """
ANSWER = b'{"model_name":"fraud","model_version":1,"scores":[0.0]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def raw(scope, receive, send):
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})


from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def predict(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


starlette = Starlette(routes=[Route("/v1/models/fraud:predict", predict, methods=["POST"])])
"""

STACKS = {
    "uvicorn + plain ASGI": [
        "-m",
        "uvicorn",
        "stack_app:raw",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ],
    "uvicorn + Starlette": [
        "-m",
        "uvicorn",
        "stack_app:starlette",
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
    ],
    "granian + plain ASGI": [
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--log-level",
        "warning",
        "stack_app:raw",
    ],
    "granian + Starlette": [
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--workers",
        "1",
        "--runtime-threads",
        "1",
        "--log-level",
        "warning",
        "stack_app:starlette",
    ],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def measure(python: Path, args: list[str], folder: Path, seconds: float) -> dict[str, float]:
    from backline.bench.loadgen import run_closed_loop

    port = free_port()
    flags = ["--port", str(port)]  # both servers spell it the same
    proc = subprocess.Popen(
        ["taskset", "-c", "0", str(python), *args, *flags],
        cwd=folder,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/v1/models/fraud:predict"
        run_closed_loop(url, [BODY], concurrency=8, duration=1.0)  # warm
        out = {}
        for clients in (8, 64):
            report = run_closed_loop(url, [BODY], concurrency=clients, duration=seconds)
            out[f"c{clients}"] = report.ok / report.duration_s
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds = 1, 2.0
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {1})
    python = ensure_venv("http-stack", REQUIREMENTS)
    folder = HERE / ".peers" / "http-stack"
    (folder / "stack_app.py").write_text(APP)
    figures: dict[str, dict[str, list[float]]] = {s: {"c8": [], "c64": []} for s in STACKS}
    for run in range(args.runs):
        for name, stack in STACKS.items():
            got = measure(python, stack, folder, args.seconds)
            for key, value in got.items():
                figures[name][key].append(value)
            print(
                f"run {run + 1}: {name:22s} c=8 {got['c8']:8,.0f}/s  c=64 {got['c64']:8,.0f}/s",
                flush=True,
            )
    print()
    print(f"{'stack':24s} {'8 clients (req/s)':>28s} {'64 clients (req/s)':>28s}")
    summary = {}
    for name, got in figures.items():
        cells = []
        for key in ("c8", "c64"):
            values = got[key]
            cells.append(
                f"{statistics.median(values):8,.0f} ({min(values):,.0f}-{max(values):,.0f})"
            )
        summary[name] = {
            k: {"median": statistics.median(v), "min": min(v), "max": max(v)}
            for k, v in got.items()
        }
        print(f"{name:24s} {cells[0]:>28s} {cells[1]:>28s}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
