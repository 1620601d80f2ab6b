"""`backline serve` on one core, loaded from the other: throughput and latency, 3 runs.

    .venv/bin/python benchmarks/serve.py                 # 3 runs, 5 s a point
    .venv/bin/python benchmarks/serve.py --runs 1 --seconds 2

The fraud project (`backline demo`: data, materialized features, a champion) is the one
benchmarks/serve_vs_peers.py makes under benchmarks/.peers/project/. The server runs under
`taskset -c 0` with its defaults (online features from SQLite, the prediction log on); this
script and its load generator (backline.bench.loadgen) on core 1. Per run: a closed loop of 64
clients (the most it does) and an open loop of Poisson arrivals at 300 requests/s (latency at
moderate load, counted from each request's scheduled send time). Figures: the median of the
runs with their spread.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from serve_vs_peers import ensure_project, free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--no-prediction-log", action="store_true")
    args = parser.parse_args()
    from backline import open as open_project
    from backline.bench.loadgen import predict_url, run_closed_loop, run_open_loop
    from backline.bench.requests import build_requests

    project = ensure_project(HERE / ".peers" / "project", print)
    with open_project(project) as handle:
        requests = build_requests(handle, count=4096)
    pin = (os.cpu_count() or 1) >= 2
    if pin:
        os.sched_setaffinity(0, {1})
    port = free_port()
    cmd = [sys.executable, "-m", "backline.cli", "serve", "--project", str(project)]
    cmd += ["--port", str(port)]
    if args.no_prediction_log:
        cmd.append("--no-prediction-log")
    server = subprocess.Popen(
        (["taskset", "-c", "0"] if pin else []) + cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if "Serving on" not in line:
            raise SystemExit(f"backline serve did not start: {line}")
        url = predict_url(f"http://127.0.0.1:{port}", "fraud")
        run_closed_loop(url, requests.bodies, concurrency=8, duration=1.0)  # warm
        closed: list[tuple[float, float]] = []
        opened: list[tuple[float, float]] = []
        for run in range(args.runs):
            c = run_closed_loop(url, requests.bodies, concurrency=64, duration=args.seconds)
            o = run_open_loop(url, requests.bodies, rate=args.rate, duration=args.seconds, seed=run)
            closed.append((c.ok / c.duration_s, c.latency_ms["p99"]))
            opened.append((o.latency_ms["p50"], o.latency_ms["p99"]))
            errors = {**c.errors, **o.errors}
            print(
                f"run {run + 1}: 64 clients {closed[-1][0]:,.0f} req/s (p99 {closed[-1][1]:.1f} ms); "
                f"{args.rate:.0f}/s open loop p50 {opened[-1][0]:.2f} ms p99 {opened[-1][1]:.2f} ms"
                f"; errors {errors or 'none'}",
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()

    def show(values: list[float], digits: int) -> str:
        med = statistics.median(values)
        return f"{med:,.{digits}f} ({min(values):,.{digits}f}-{max(values):,.{digits}f})"

    print()
    print(
        f"closed loop, 64 clients: {show([c[0] for c in closed], 0)} req/s, p99 "
        f"{show([c[1] for c in closed], 1)} ms"
    )
    print(
        f"open loop, {args.rate:.0f}/s: p50 {show([o[0] for o in opened], 2)} ms, p99 "
        f"{show([o[1] for o in opened], 2)} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
