"""Servers for the load generator's tests, all on loopback in a thread of the test process:
the no-op server (answers at once), and a small ASGI app under uvicorn that answers the predict
path the way `backline serve` does, told by each instance's transaction_id how to answer:

    "tx_ok"          200 with a score
    "tx_status_429"  that status (429 with Retry-After), with an {"error": ...} body
    "tx_sleep_60"    200 after sleeping 60 ms (without blocking other requests)
    "tx_deadline_250"  200 if the request carries X-Request-Timeout-Ms: 250, else 400

and model "broken" answers 500 to everything.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import backline
from backline.bench.noop import noop_server
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated

# A second service keyed by the card alone, with the amount as its only request field; the
# project's train.service names it, so code that reads names from the project gets these.
CARD_SPEND = """
card_spend = FeatureService("card_spend", [card_amounts, amount_to_mean_30d])
"""


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small fraud project with its transactions ingested and features applied (8 days, 200
    cards), whose train.service is card_spend. Not trained: nothing here needs a model."""
    root = init_project(tmp_path_factory.mktemp("bench") / "fraud")
    with (root / "features.py").open("a") as f:
        f.write(CARD_SPEND)
    toml = root / "backline.toml"
    toml.write_text(toml.read_text().replace('service = "fraud_v1"', 'service = "card_spend"'))
    data = generate(GeneratorConfig(days=8, cards=200, seed=4))
    paths = write_generated(data, root / "data", fmt="parquet")
    with backline.open(root) as project:
        project.ingest("transactions", paths["transactions"])
        project.apply()
    return root


def body(tx: str = "tx_ok") -> bytes:
    instance = {"card_id": "card_0000001", "merchant_id": "m_000001", "amount": 1.0}
    return json.dumps({"instances": [{**instance, "transaction_id": tx}]}).encode()


async def predict_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The test server: /v1/models/fraud:predict and /v2/health/ready."""
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/v2/health/ready":
        await _answer(send, 200, {"ready": True})
        return
    raw = b""
    more = True
    while more:
        message = await receive()
        raw += message.get("body", b"")
        more = message.get("more_body", False)
    if path == "/v1/models/broken:predict":
        await _answer(send, 500, _error("internal", "model 'broken' is broken"))
        return
    if path != "/v1/models/fraud:predict":
        await _answer(send, 404, _error("not_found", f"model at {path} is not served here"))
        return
    tx = json.loads(raw)["instances"][0]["transaction_id"]
    _, kind, arg = [*tx.split("_"), "", ""][:3]
    if kind == "status":
        status = int(arg)
        headers = [(b"retry-after", b"1")] if status == 429 else []
        await _answer(send, status, _error("test", f"told to answer {status}"), headers)
        return
    if kind == "sleep":
        await asyncio.sleep(int(arg) / 1000)
    if kind == "deadline" and dict(scope["headers"]).get(b"x-request-timeout-ms") != arg.encode():
        await _answer(send, 400, _error("test", "no X-Request-Timeout-Ms or another value"))
        return
    result = {"model_name": "fraud", "model_version": 1, "scores": [0.5], "request_id": "r"}
    await _answer(send, 200, result)


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def _answer(
    send: Any, status: int, payload: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": data})


class UvicornThread:
    """uvicorn (httptools) serving an ASGI app on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(
            app, http="httptools", lifespan="off", log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()


@pytest.fixture(scope="module")
def asgi_base() -> Iterator[str]:
    """Base URL of the ASGI test server (shared by a module's tests)."""
    with UvicornThread(predict_app) as server:
        yield server.base


@pytest.fixture(scope="module")
def noop_base() -> Iterator[str]:
    with noop_server() as base:
        yield base
