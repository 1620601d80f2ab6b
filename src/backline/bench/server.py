"""A `backline serve` of its own for the load generator: started, awaited, stopped.

    with started_server(root, model="fraud@champion") as base:    # http://127.0.0.1:PORT
        report = run_open_loop(predict_url(base, "fraud"), bodies, rate=200, duration=10)

The server runs as a child process (`python -m backline.cli --project ROOT serve --port P`),
so it has its own interpreter and cores, as in production. Readiness is GET /v2/health/ready
answering 200, waited for up to `ready_timeout` seconds; if the child dies first, or never gets
ready, the error carries the end of its output. On leaving the block the child gets SIGTERM (it
drains, then exits) and is waited for; one that does not exit in time is killed.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from backline.bench.loadgen import Target
from backline.core.errors import BacklineError

__all__ = ["Answer", "free_port", "probe", "started_server", "wait_ready"]

READY_PATH = "/v2/health/ready"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Answer:
    """One request's outcome: an HTTP status and body, or the transport error (status 0)."""

    status: int
    body: str
    seconds: float

    @property
    def message(self) -> str:
        """The error message of a {"error": {"message": ...}} body, else the body, shortened."""
        try:
            text = json.loads(self.body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            text = self.body
        return " ".join(str(text).split())[:500]


def probe(url: str, body: bytes | None = None, timeout: float = 10.0) -> Answer:
    """POST `body` to `url` (GET when body is None) on a fresh connection and wait for the answer;
    a connection that fails gives status 0 and the error as the body."""
    target = Target.parse(url)
    conn_cls = http.client.HTTPSConnection if target.tls else http.client.HTTPConnection
    conn = conn_cls(target.host, target.port, timeout=timeout)
    started = time.perf_counter()
    try:
        if body is None:
            conn.request("GET", target.path)
        else:
            conn.request(
                "POST", target.path, body=body, headers={"Content-Type": "application/json"}
            )
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        return Answer(resp.status, text, time.perf_counter() - started)
    except (OSError, http.client.HTTPException) as exc:
        return Answer(0, str(exc) or type(exc).__name__, time.perf_counter() - started)
    finally:
        conn.close()


def _tail(log: IO[bytes], lines: int = 15) -> str:
    log.flush()
    log.seek(0)
    text = log.read().decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(no output)"


def wait_ready(
    base: str, process: subprocess.Popen[bytes], log: IO[bytes], timeout: float
) -> float:
    """Seconds until GET base/v2/health/ready answered 200. Raises BacklineError, with the
    end of the server's output, when the process exits first or `timeout` passes."""
    started = time.perf_counter()
    url = base + READY_PATH
    while True:
        code = process.poll()
        if code is not None:
            raise BacklineError(
                f"`backline serve` exited with code {code} before it was ready; its output "
                f"ended with:\n{_tail(log)}"
            )
        if probe(url, timeout=1.0).status == 200:
            return time.perf_counter() - started
        if time.perf_counter() - started > timeout:
            raise BacklineError(
                f"`backline serve` was not ready at {url} after {timeout:g} s; its output "
                f"ended with:\n{_tail(log)}\nStart it yourself and pass --url to wait longer."
            )
        time.sleep(0.1)


def stop(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    """SIGTERM (the server drains and exits), then wait; kill it after `timeout` seconds."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@contextmanager
def started_server(
    root: str | Path,
    *,
    model: str | None = None,
    workers: int | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    extra: Sequence[str] = (),
    ready_timeout: float = 120.0,
) -> Iterator[str]:
    """`backline serve` for the project at `root` on `port` (default: a free one), ready, for
    a `with` block; yields its base URL. `model` and `workers` are passed on when given."""
    port = port or free_port(host)
    command = [sys.executable, "-m", "backline.cli", "--project", str(root), "serve"]
    command += ["--host", host, "--port", str(port), *extra]
    if model is not None:
        command += ["--model", model]
    if workers is not None:
        command += ["--workers", str(workers)]
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    with tempfile.TemporaryFile(prefix="backline-bench-serve-") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            wait_ready(base, process, log, ready_timeout)
            yield base
        finally:
            stop(process)
