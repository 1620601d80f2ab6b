"""A server that answers every request at once with the same small JSON: the other end of the
load generator when measuring the generator itself.

    python -m backline.bench.noop --port 8099        # serves until interrupted
    python -m backline.bench.noop --measure          # the generator's capacity, measured

Its answer costs a parse and a socket write, about what the generator spends per request, so
a closed loop against it shows how many requests one core of generator sends and answers.
`--measure` starts it in a child process (pinned to another core than the generator when the
machine has two), then runs a closed loop (32 clients) and an open loop (5,000/s) against it
and prints requests per second and per CPU-second of the generator's thread.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import httptools

__all__ = ["ANSWER", "noop_server", "serve_noop"]

_BODY = b'{"model_name":"noop","model_version":0,"scores":[0.5],"request_id":"noop"}'
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
    + _BODY
)


class _Answer(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_message_complete(self) -> None:
        assert self.transport is not None
        self.transport.write(ANSWER)


async def serve_noop(sock: socket.socket, stop: asyncio.Event | None = None) -> None:
    """Answer every request on the listening socket `sock` until `stop` is set (or forever)."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Answer, sock=sock)
    async with server:
        if stop is None:
            await server.serve_forever()
        else:
            await stop.wait()


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


@contextmanager
def noop_server() -> Iterator[str]:
    """A no-op server on a free loopback port, in a thread, for a `with` block; yields its base
    URL (http://127.0.0.1:PORT)."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    thread = threading.Thread(
        target=loop.run_until_complete, args=(serve_noop(sock, stop),), daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def measure(seconds: float = 5.0) -> list[str]:
    """The generator's capacity against a no-op server in a child process: lines to print."""
    import os
    import subprocess
    import sys

    from backline.bench.loadgen import predict_url, run_closed_loop, run_open_loop
    from backline.bench.server import free_port

    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    port = free_port()
    child = subprocess.Popen(
        [sys.executable, "-m", "backline.bench.noop", "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None
        child.stdout.readline()  # "no-op server at ..."
        if len(cores) >= 2:  # the server on one core, the generator on another
            os.sched_setaffinity(child.pid, {cores[-1]})
            os.sched_setaffinity(0, {cores[0]})
        body = (
            b'{"instances":[{"card_id":"card_0000001","merchant_id":"m_000042","amount":12.5,'
            b'"transaction_id":"tx_0123456789abcdef"}],"at":"2026-03-01T12:00:00Z"}'
        )
        url = predict_url(f"http://127.0.0.1:{port}", "fraud")
        lines = []
        closed = run_closed_loop(url, [body], concurrency=32, duration=seconds)
        lines.append(
            f"closed loop, 32 clients: {closed.throughput:,.0f} req/s answered, generator "
            f"{closed.cpu_s:.2f} CPU-s = {closed.completed / closed.cpu_s:,.0f} req per CPU-s"
        )
        opened = run_open_loop(url, [body], rate=5000, duration=seconds)
        lines.append(
            f"open loop at 5,000/s: {opened.send_rate:,.0f} req/s sent, p99 send lag "
            f"{opened.lag_ms['p99']:.2f} ms, {len(opened.warnings)} warning(s)"
        )
        lines += [f"  warning: {w}" for w in opened.warnings]
        return lines
    finally:
        child.terminate()
        child.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument("--measure", action="store_true", help="measure the load generator")
    args = parser.parse_args()
    if args.measure:
        print("\n".join(measure()))
        return
    sock = listening_socket(args.host, args.port)
    print(f"no-op server at http://{args.host}:{sock.getsockname()[1]}", flush=True)
    try:
        import uvloop

        uvloop.run(serve_noop(sock))
    except ImportError:  # pragma: no cover
        asyncio.run(serve_noop(sock))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
