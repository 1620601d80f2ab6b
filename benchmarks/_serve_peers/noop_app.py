"""The HTTP floor: a Starlette endpoint that reads the body and answers a constant, on uvicorn.

    python noop_app.py --port 8101

Same server stack as the other uvicorn peers (uvloop, httptools, access log off, one process);
no JSON parsing, no features, no model. Whatever a real server achieves is below this.
"""

from __future__ import annotations

import argparse

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ANSWER = b'{"model_name":"fraud","model_version":1,"scores":[0.0]}'


async def predict(request: Request) -> Response:
    await request.body()
    return Response(ANSWER, media_type="application/json")


async def ready(request: Request) -> Response:
    return Response(b"{}", media_type="application/json")


app = Starlette(
    routes=[
        Route("/v1/models/fraud:predict", predict, methods=["POST"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
    ]
)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--project", help="unused: the floor reads no features")
    args = p.parse_args()
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
