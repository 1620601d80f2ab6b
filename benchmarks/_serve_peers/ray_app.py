"""Ray Serve: one deployment whose requests are batched by `@serve.batch`.

    python ray_app.py --project DIR --port 8103 [--max-batch-size 10] [--batch-wait-ms 10]
                      [--max-ongoing 5]

The driver starts a local Ray (one CPU, no dashboard, usage stats off), Serve's HTTP proxy on
--port, and one replica of `Fraud`. Each request is parsed in the replica, then handed to
`score_batch`, which `@serve.batch` calls with what gathered (up to --max-batch-size requests,
waiting at most --batch-wait-ms for more): their online features are read and scored together,
the same work as backline's engine. Without flags it runs Serve's defaults (batch 10, 10 ms
wait, 5 ongoing requests per replica); the harness's tuned variant raises the ongoing limit to
the batch size (else a batch never holds more than 5), shortens the wait, and with
--direct-ingress runs Ray's documented high-throughput mode (RAY_SERVE_THROUGHPUT_OPTIMIZED=1):
the replica itself listens on --port (direct ingress), so requests skip the proxy actor (which
then listens on a port of its own, unused). Ray is kept on loopback (node address 127.0.0.1).

The driver stays up until SIGTERM or SIGINT, then shuts Serve and Ray down.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PREDICT_PATH, READY_PATH, BadRequest, log


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--max-batch-size", type=int, default=10)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--max-ongoing", type=int, default=5)
    p.add_argument("--access-log", action="store_true", help="keep Serve's per-request log")
    p.add_argument(
        "--direct-ingress",
        action="store_true",
        help="RAY_SERVE_THROUGHPUT_OPTIMIZED=1: the replica serves --port itself",
    )
    args = p.parse_args()
    proxy_port = args.port
    if args.direct_ingress:
        # read by Serve at import, and inherited by the controller and the replica
        os.environ["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] = str(args.port)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] = str(args.port + 1)
        os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "0"
        proxy_port = _free_port(args.host)

    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response

    here = os.path.dirname(os.path.abspath(__file__))
    project = os.path.abspath(args.project)

    @serve.deployment(
        max_ongoing_requests=args.max_ongoing,
        ray_actor_options={"num_cpus": 0},
        logging_config={"enable_access_log": args.access_log, "log_level": "WARNING"},
    )
    class Fraud:
        def __init__(self, project_dir: str, code_dir: str) -> None:
            sys.path.insert(0, code_dir)
            from common import FraudModel

            self.model = FraudModel(project_dir)

        async def __call__(self, request: Request) -> Response:
            path = request.url.path
            if request.method == "GET" and path == READY_PATH:
                return JSONResponse({"ready": True})
            if request.method != "POST" or path != PREDICT_PATH:
                return JSONResponse({"error": "not found"}, status_code=404)
            try:
                parsed = self.model.parse(await request.body())
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            scores = await self.score_batch(parsed)
            return Response(self.model.answer(scores), media_type="application/json")

        @serve.batch(
            max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_ms / 1000
        )
        async def score_batch(self, requests: list) -> list:
            return self.model.score_requests(requests)

    ray.init(
        num_cpus=1,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    serve.start(http_options={"host": args.host, "port": proxy_port})
    serve.run(Fraud.bind(project, here), name="fraud", route_prefix="/", blocking=False)
    log(f"ray serve up: requests to {args.host}:{args.port} (proxy on {proxy_port})")

    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    main()
