"""Running the server: one process, or N workers sharing one port; readiness; SIGTERM drain.

    build_app(project, ServeSpec(...))            # the ASGI app for one process (tests use it)
    run(ServeSpec(root=..., port=8080, workers=2))  # blocks until SIGTERM/SIGINT has drained

On SIGTERM (or SIGINT, or POST /admin/drain) a worker turns not-ready at once, stops accepting
connections, lets every queued and in-flight request finish (up to serve.drain_timeout),
flushes the prediction log and exits 0. With N workers the parent holds the listening socket,
starts the workers (spawned, not forked: torch and threads do not survive a fork), forwards the
signal to each, restarts a worker that dies on its own, and exits when all have drained.
Metrics from all workers are summed through prometheus_client's multiprocess folder.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from backline.core.errors import InvalidArgument

if TYPE_CHECKING:
    from backline.project import Project
    from backline.serve.app import ServeApp


@dataclass(frozen=True)
class ServeSpec:
    """Everything `backline serve` was asked for; None means "from backline.toml [serve]"."""

    root: Path
    host: str | None = None
    port: int | None = None
    workers: int | None = None
    model: str | None = None
    admin_token: str | None = None
    prediction_log: bool | None = None


def resolve(spec: ServeSpec, project: Project) -> ServeSpec:
    """Fill what the command left out from the project's [serve] section."""
    s = project.config.serve
    model = spec.model or s.model or "fraud@champion"
    return replace(
        spec,
        host=spec.host if spec.host is not None else s.host,
        port=spec.port if spec.port is not None else s.port,
        workers=spec.workers if spec.workers is not None else s.workers,
        model=model,
        admin_token=spec.admin_token
        if spec.admin_token is not None
        else os.environ.get("BACKLINE_ADMIN_TOKEN") or None,
        prediction_log=spec.prediction_log if spec.prediction_log is not None else s.prediction_log,
    )


def build_app(project: Project, spec: ServeSpec, *, worker: str = "w0") -> ServeApp:
    """The ASGI app serving `spec.model` from `project` (one process's worth)."""
    from backline.serve.app import ServeApp, ServeOptions
    from backline.serve.engine import Engine
    from backline.serve.metrics import Metrics
    from backline.serve.model import ModelHolder
    from backline.serve.parse import Schema
    from backline.serve.policy import BatchPolicy

    cfg = project.config
    s = cfg.serve
    spec = resolve(spec, project)
    _set_threads(s.threads)
    assert spec.model is not None
    metrics = Metrics()
    holder = ModelHolder(
        project, spec.model, max_batch=s.max_batch, variant=s.variant, device=s.device
    )
    plan = project.read_plan(cfg.train.service)
    entity_source = cfg.sources.get(cfg.train.entity_source)
    pk = entity_source.primary_key if entity_source is not None else ()
    taken = {*plan.entity_columns, *plan.request_fields}
    key_types: dict[str, str] = {}
    for view in plan.views:
        for key, kind in zip(view.join_keys, view.key_types, strict=True):
            key_types.setdefault(key, kind)
    schema = Schema(
        key_types=key_types,
        keys=tuple(plan.entity_columns),
        fields=tuple(plan.request_fields),
        passthrough=tuple(c for c in pk if c not in taken),
    )
    predlog = None
    if spec.prediction_log:
        from backline.serve.predlog import PredictionLog

        predlog = PredictionLog(
            cfg,
            worker=f"{worker}-{os.getpid()}",
            capacity=s.log_buffer,
            flush_every=s.log_flush.total_seconds(),
            on_drop=metrics.dropped,
        )
    engine = Engine(
        holder, BatchPolicy(s.max_batch), max_queue=s.max_queue, metrics=metrics, predlog=predlog
    )
    options = ServeOptions(
        max_body_bytes=s.max_body_bytes,
        timeout_ms=s.timeout_ms,
        drain_timeout=s.drain_timeout.total_seconds(),
        swap_poll=s.swap_poll.total_seconds(),
        admin_token=spec.admin_token,
        worker=worker,
    )
    return ServeApp(holder, engine, metrics, options, schema)


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InvalidArgument(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port "
            "(0 picks a free one) or stop what holds it"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: ServeApp, drain_timeout: float) -> Any:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, but readiness turns false the moment a stop signal arrives, and a drained
        server exits 0 (uvicorn would raise the captured signal again on its way out, so a
        clean drain would look like death by SIGTERM)."""

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            app.begin_drain()
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True  # a second Ctrl-C: stop waiting for the drain
            else:
                self.should_exit = True

    loop = "uvloop" if _has("uvloop") else "asyncio"
    http = "httptools" if _has("httptools") else "h11"
    config = uvicorn.Config(
        app,
        loop=loop,
        http=http,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=max(int(drain_timeout), 1),
        timeout_keep_alive=30,
        backlog=2048,
    )
    server = Server(config)
    app.on_drain = lambda: server.handle_exit(signal.SIGTERM, None)
    return server


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _worker_main(root: str, spec: ServeSpec, sock: socket.socket, index: int, run_dir: str) -> None:
    """One worker process: open the project, build the app, serve on the shared socket."""
    import backline

    with backline.open(root) as project:
        app = build_app(project, spec, worker=f"w{index}")
        server = _uvicorn_server(app, app.options.drain_timeout)
        threading.Thread(
            target=_report_ready, args=(app, Path(run_dir) / f"ready-{index}"), daemon=True
        ).start()
        server.run(sockets=[sock])


def _report_ready(app: ServeApp, marker: Path) -> None:
    """Write `marker` once the app is ready (the parent counts them), or `marker.failed`."""
    while not app.ready:
        if app.load_error is not None:
            marker.with_suffix(".failed").write_text(app.load_error)
            return
        time.sleep(0.05)
    marker.write_text(str(os.getpid()))


def run(
    spec: ServeSpec,
    *,
    on_ready: Callable[[str, int, float], None] | None = None,
    on_failed: Callable[[str], None] | None = None,
) -> int:
    """Serve until a stop signal has drained every worker. `on_ready(url, workers, seconds)`
    is called once all workers are ready; `on_failed(message)` if a worker cannot load."""
    import backline

    started = time.perf_counter()
    with backline.open(spec.root) as project:
        spec = resolve(spec, project)
        drain = project.config.serve.drain_timeout.total_seconds()
        _check_model(project, spec)
    assert spec.host is not None and spec.port is not None and spec.workers is not None
    sock = bind(spec.host, spec.port)
    port = sock.getsockname()[1]
    host = f"[{spec.host}]" if ":" in spec.host else spec.host
    url = f"http://{host}:{port}"
    run_dir = tempfile.mkdtemp(prefix="backline-serve-")
    try:
        if spec.workers == 1:
            return _run_one(spec, sock, run_dir, url, started, on_ready, on_failed)
        metrics_dir = Path(run_dir) / "metrics"
        metrics_dir.mkdir()
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        return _run_many(spec, sock, run_dir, url, started, drain, on_ready, on_failed)
    finally:
        sock.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _check_model(project: Project, spec: ServeSpec) -> None:
    """Fail before binding when the model spec names nothing (a NotFoundError that says what
    the registry holds), instead of starting a server that never turns ready."""
    from backline.registry import CHAMPION
    from backline.registry.records import parse_model_spec

    assert spec.model is not None
    name, ref = parse_model_spec(spec.model)
    project.registry.get(name, ref if ref is not None else CHAMPION)


def _watch_ready(
    run_dir: str,
    workers: int,
    url: str,
    started: float,
    on_ready: Callable[[str, int, float], None] | None,
    on_failed: Callable[[str], None] | None,
    stop: threading.Event,
) -> None:
    folder = Path(run_dir)
    while not stop.is_set():
        failed = sorted(folder.glob("ready-*.failed"))
        if failed:
            if on_failed is not None:
                on_failed(failed[0].read_text())
            return
        if len(list(folder.glob("ready-[0-9]*"))) - len(failed) >= workers:
            if on_ready is not None:
                on_ready(url, workers, time.perf_counter() - started)
            return
        time.sleep(0.05)


def _run_one(
    spec: ServeSpec,
    sock: socket.socket,
    run_dir: str,
    url: str,
    started: float,
    on_ready: Callable[[str, int, float], None] | None,
    on_failed: Callable[[str], None] | None,
) -> int:
    import backline

    stop = threading.Event()
    with backline.open(spec.root) as project:
        app = build_app(project, spec, worker="w0")
        server = _uvicorn_server(app, app.options.drain_timeout)
        threading.Thread(
            target=_report_ready, args=(app, Path(run_dir) / "ready-0"), daemon=True
        ).start()

        def failed(message: str) -> None:
            if on_failed is not None:
                on_failed(message)
            server.should_exit = True

        threading.Thread(
            target=_watch_ready,
            args=(run_dir, 1, url, started, on_ready, failed, stop),
            daemon=True,
        ).start()
        try:
            server.run(sockets=[sock])
        finally:
            stop.set()
    return 0 if app.load_error is None else 2


def _run_many(
    spec: ServeSpec,
    sock: socket.socket,
    run_dir: str,
    url: str,
    started: float,
    drain: float,
    on_ready: Callable[[str, int, float], None] | None,
    on_failed: Callable[[str], None] | None,
) -> int:
    assert spec.workers is not None
    ctx = multiprocessing.get_context("spawn")
    stopping = threading.Event()
    root = str(spec.root)

    def start(i: int) -> multiprocessing.process.BaseProcess:
        proc = ctx.Process(
            target=_worker_main, args=(root, spec, sock, i, run_dir), name=f"backline-serve-w{i}"
        )
        proc.start()
        return proc

    procs = [start(i) for i in range(spec.workers)]

    def on_signal(sig: int, frame: FrameType | None) -> None:
        stopping.set()
        for p in procs:
            if p.is_alive() and p.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    threading.Thread(
        target=_watch_ready,
        args=(run_dir, spec.workers, url, started, on_ready, on_failed, stopping),
        daemon=True,
    ).start()
    code = 0
    try:
        while not stopping.is_set():
            for i, p in enumerate(procs):
                if not p.is_alive() and not stopping.is_set():
                    if list(Path(run_dir).glob(f"ready-{i}.failed")):
                        stopping.set()  # it cannot load the model: restarting will not help
                        code = 2
                        on_signal(signal.SIGTERM, None)
                        break
                    print(
                        f"backline serve: worker {i} exited with code {p.exitcode}; restarting it",
                        file=sys.stderr,
                        flush=True,
                    )
                    procs[i] = start(i)
            stopping.wait(0.2)
        budget = time.monotonic() + drain + 10.0
        for p in procs:
            p.join(max(budget - time.monotonic(), 0.1))
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
                code = 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code
