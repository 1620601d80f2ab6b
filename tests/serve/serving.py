"""Helpers for the server tests: a real server on loopback (in a thread, or as `backline serve`
in a subprocess) and a small HTTP client."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import backline
from backline.serve.server import ServeSpec, _uvicorn_server, bind, build_app


class ServerThread:
    """`backline serve` for one worker, in a thread of this process (no signals: `stop()`
    drains the way SIGTERM does)."""

    def __init__(self, root: Path, **spec: Any) -> None:
        import torch

        self.threads = torch.get_num_threads()  # build_app sets serve.threads; put it back after
        self.project = backline.open(root)
        self.sock = bind("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.app = build_app(self.project, ServeSpec(root=root, **spec))
        self.server = _uvicorn_server(self.app, self.app.options.drain_timeout)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> ServerThread:
        self.thread.start()
        wait_ready(self.port)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()
        self.sock.close()
        self.project.close()
        import torch

        torch.set_num_threads(self.threads)


@dataclass
class ServerProcess:
    """`backline serve` as a subprocess on a free port."""

    root: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[str] | None = None
    port: int = 0
    lines: list[str] = field(default_factory=list)
    cpus: set[int] | None = None
    """Run the server on these cores only (a test that compares rates gives it its own)."""

    def __enter__(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "backline.cli", "serve", "--project", str(self.root)]
        cmd += ["--port", "0", *self.args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "400", **self.env},
            preexec_fn=None if self.cpus is None else self._pin,
        )
        deadline = time.monotonic() + 120
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError("backline serve exited:\n" + "".join(self.lines))
            self.lines.append(line)
            found = re.search(r"Serving on http://127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                threading.Thread(target=self._drain_output, daemon=True).start()
                return self
        raise AssertionError("backline serve did not become ready:\n" + "".join(self.lines))

    def _pin(self) -> None:
        assert self.cpus is not None
        os.sched_setaffinity(0, self.cpus)

    def _drain_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_ready(port: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, _, _ = call(port, "GET", "/v2/health/ready")
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the server on port {port} never turned ready")


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, parsed JSON or text)."""
    own = conn is None
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        c.request(method, path, body=data, headers=headers or {})
        r = c.getresponse()
        raw = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        text = raw.decode()
        parsed = (
            json.loads(text)
            if hdrs.get("content-type", "").startswith("application/json")
            else text
        )
        return r.status, hdrs, parsed
    finally:
        if own:
            c.close()


def predict_path(model: str = "fraud") -> str:
    return f"/v1/models/{model}:predict"


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
