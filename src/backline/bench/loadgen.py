"""The load generator behind `backline bench serve`: HTTP/1.1 load that tells the truth about
latency.

    from backline.bench.loadgen import predict_url, run_open_loop, print_report

    url = predict_url("http://127.0.0.1:8080", "fraud")
    report = run_open_loop(url, bodies, rate=500, duration=30, burstiness=0.5, slo_ms=20)
    print_report(report)                 # a small table, and any warning
    report.to_json()                     # the same figures as a dict

Two ways to load a server:

- Open loop (`run_open_loop`): requests arrive at rate R whatever the server does, the way users
  do. The gaps between arrivals are gamma-distributed with mean 1/R and shape B (the
  burstiness): B=1 is a Poisson process, B<1 burstier (coefficient of variation 1/sqrt(B)). Each
  request has a scheduled send time, and its latency is counted from that time to the last byte
  of the answer. When the generator (or a connection it had to wait for) sends late, the delay is
  in the latency, where a user would feel it, instead of hidden: a server that stalls for 200 ms
  shows a 200 ms latency, not one slow request followed by many fast ones. The send lag (actual
  send minus scheduled) is reported too; when it is high the report warns that the generator,
  not the server, may be the bottleneck.
- Closed loop (`run_closed_loop`): C clients, each sending its next request when the previous
  one is answered. It finds the most a server can do, but a slow server slows the arrivals down
  with it, so its latencies (counted from the actual send) flatter a server under overload.

One asyncio event loop (uvloop when installed) drives keep-alive connections; answers are parsed
by httptools. Request bodies are encoded once, up front, into whole HTTP requests, so a request
costs a socket write and a parse: one core sends well over 5,000 requests a second.

`open_loop` and `closed_loop` are the coroutines behind the two runners, for callers that run
their own event loop.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import math
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import quote, urlsplit

import httptools
import numpy as np

from backline.core.errors import InvalidArgument

__all__ = [
    "Report",
    "Target",
    "arrival_times",
    "closed_loop",
    "open_loop",
    "predict_url",
    "print_report",
    "report_table",
    "run_closed_loop",
    "run_open_loop",
]

#: Outcomes that are not an HTTP status: no connection, no answer in time, connection lost.
CONNECT, TIMEOUT, CLOSED = -1, -2, -3
TRANSPORT_ERRORS = {CONNECT: "connect", TIMEOUT: "timeout", CLOSED: "closed"}

#: The generator is behind when its p99 send lag passes this, or it sent fewer than
#: MIN_SEND_FRACTION of the scheduled requests within the window.
MAX_P99_LAG_MS = 5.0
MIN_SEND_FRACTION = 0.95

#: How long before a send time the open loop stops sleeping and polls instead: event-loop
#: timers have millisecond resolution (uvloop rounds to the nearest, asyncio's run late).
SPIN_S = 0.0015

Progress = Callable[[str, float], None]
"""progress(stage, fraction_done), called a few times a second while a run goes."""

# -- what to send --------------------------------------------------------------------------------


def predict_url(base: str, model: str) -> str:
    """The predict endpoint of `model` on the server at `base` (http://HOST:PORT)."""
    return f"{base.rstrip('/')}/v1/models/{quote(model, safe='')}:predict"


@dataclass(frozen=True)
class Target:
    """Where requests go: an http:// or https:// URL taken apart."""

    url: str
    host: str
    port: int
    path: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(
                f"URL {url!r} is not an http:// or https:// address with a host; "
                "write e.g. http://127.0.0.1:8080."
            )
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidArgument(f"URL {url!r} has a bad port; write e.g. :8080.") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(url, parts.hostname, port, path, parts.scheme == "https")

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def request(self, body: bytes, headers: Mapping[str, str] | None = None) -> bytes:
        """A whole keep-alive POST of a JSON body, ready to write to a socket."""
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.authority}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def arrival_times(
    rate: float, duration: float, burstiness: float = 1.0, seed: int = 0
) -> np.ndarray:
    """Scheduled send times of an open-loop run, in seconds from its start, all below `duration`.

    The gaps between arrivals are drawn from a gamma distribution with shape `burstiness` and
    mean 1/rate, from numpy's seeded generator: the same arguments give the same schedule.
    Burstiness 1 is a Poisson process (exponential gaps, coefficient of variation 1); below 1
    arrivals come in bursts (CV = 1/sqrt(burstiness): 0.25 gives 2), above 1 more evenly.
    """
    _check_positive("rate", rate)
    _check_positive("duration", duration)
    _check_positive("burstiness", burstiness)
    rng = np.random.default_rng(seed)
    scale = 1.0 / (rate * burstiness)
    expected = rate * duration
    chunk = int(expected + 8 * math.sqrt(expected / burstiness) + 64)
    parts: list[np.ndarray] = []
    last = 0.0
    while last < duration:
        times = last + np.cumsum(rng.gamma(burstiness, scale, size=chunk))
        parts.append(times)
        last = float(times[-1])
    times = np.concatenate(parts)
    return times[times < duration]


def _check_positive(name: str, value: float | None) -> None:
    if value is None or not value > 0 or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a positive number, got {value!r}.")


# -- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """What a run measured. Times in milliseconds, rates per second; None where not measured."""

    mode: str
    """'open' (arrivals at a rate) or 'closed' (C clients, each waiting for its answer)."""
    url: str
    duration_s: float
    """The measurement window: the span arrivals were scheduled in (open loop) or clients sent
    in (closed loop). Answers to requests sent in it are counted even when they come later."""
    target_rate: float | None
    burstiness: float | None
    concurrency: int | None
    scheduled: int
    """Requests the schedule held (open loop); requests the clients started (closed loop)."""
    sent: int
    """Requests written to a connection (the others could not connect)."""
    completed: int
    """Requests answered with a whole HTTP response, whatever its status."""
    ok: int
    """Requests answered with a 2xx status: the only ones the latency figures describe."""
    send_rate: float
    """Requests sent by the end of the window (give or take MAX_P99_LAG_MS) per second; open
    loop: compare with target_rate."""
    throughput: float
    """Completed requests per second of the window: the achieved rate."""
    latency_ms: dict[str, float | None]
    """p50, p90, p95, p99, max and mean of the successful requests, each from its scheduled send
    time (open loop) or its actual send time (closed loop) to the last byte of the answer."""
    errors: dict[str, int]
    """Failed requests by HTTP status ('429', '500', ...) or transport error: 'connect' (no
    connection), 'timeout' (no answer within the client timeout), 'closed' (the server closed
    the connection before answering)."""
    error_samples: dict[str, str]
    """The first error body (or exception) seen for each key of `errors`, shortened."""
    slo_ms: float
    within_slo: int
    """Successful requests whose latency was at most slo_ms."""
    goodput: float
    """within_slo per second of the window: the load the server carried within its SLO."""
    lag_ms: dict[str, float | None]
    """Open loop: p50, p99 and max of actual minus scheduled send time."""
    waited_for_connection: int
    """Open loop: requests that found no idle connection and waited for one (their wait is
    in their lag and their latency)."""
    connections: int
    """Connections opened during the run."""
    cpu_s: float
    """CPU time the generator's thread used (busy-waiting for precise send times included)."""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    """Why the figures may be misleading, e.g. the generator fell behind its schedule."""

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (NaN never appears: a figure not measured is None)."""
        data = asdict(self)
        data["warnings"] = list(self.warnings)
        return data


def report_table(report: Report) -> Any:
    """The report as a small rich table (a `rich.table.Table`)."""
    from rich.table import Table

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.2f}"

    table = Table(title=f"{report.mode} loop against {report.url}", show_header=False)
    table.add_column("figure", style="bold")
    table.add_column("value", justify="right")
    if report.mode == "open":
        how = f"rate {report.target_rate:g}/s, burstiness {report.burstiness:g}"
    else:
        how = f"{report.concurrency} clients"
    table.add_row("load", f"{how}, {report.duration_s:g} s")
    table.add_row(
        "requests",
        f"{report.sent:,} sent, {report.completed:,} answered, {report.ok:,} ok",
    )
    table.add_row("rate", f"{report.send_rate:,.1f}/s sent, {report.throughput:,.1f}/s answered")
    lat = report.latency_ms
    table.add_row(
        "latency ms",
        f"p50 {ms(lat['p50'])}  p90 {ms(lat['p90'])}  p95 {ms(lat['p95'])}  "
        f"p99 {ms(lat['p99'])}  max {ms(lat['max'])}",
    )
    share = report.within_slo / report.ok if report.ok else 0.0
    table.add_row(
        f"goodput (<= {report.slo_ms:g} ms)",
        f"{report.goodput:,.1f}/s ({share:.1%} of ok requests)",
    )
    errors = ", ".join(f"{k}: {v:,}" for k, v in report.errors.items()) or "none"
    table.add_row("errors", errors)
    if report.mode == "open":
        lag = report.lag_ms
        table.add_row(
            "send lag ms",
            f"p50 {ms(lag['p50'])}  p99 {ms(lag['p99'])}  max {ms(lag['max'])}; "
            f"{report.waited_for_connection:,} waited for a connection",
        )
    table.add_row("generator", f"{report.connections:,} connections, {report.cpu_s:.2f} s CPU")
    return table


def print_report(report: Report, console: Any = None) -> None:
    """Print the table on `console` (default: stdout), then each warning and error sample."""
    from rich.markup import escape

    if console is None:
        from backline.core.console import out as console
    console.print(report_table(report))
    for key, sample in report.error_samples.items():
        console.print(f"  first {escape(key)}: {escape(sample)}", highlight=False)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)


# -- connections ---------------------------------------------------------------------------------


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time; reports to its run."""

    __slots__ = ("body", "parser", "req", "run", "sent", "status", "transport")

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.req = -1  # index of the request in flight, -1 when idle
        self.sent = 0.0
        self.status = 0
        self.body: bytearray | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.run.opened += 1
        self.run.ready(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.run.note(CLOSED, f"unparsable response: {exc}")
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.run.lost(self)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.status = 0
        self.body = None

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not 200 <= self.status < 300 and str(self.status) not in self.run.samples:
            self.body = bytearray()

    def on_body(self, chunk: bytes) -> None:
        if self.body is not None and len(self.body) < 1000:
            self.body += chunk

    def on_message_complete(self) -> None:
        if self.body is not None:
            self.run.note(self.status, self.body.decode("utf-8", "replace"))
        self.run.answered(self, time.perf_counter())

    def send(self, index: int, data: bytes, now: float) -> None:
        assert self.transport is not None
        self.req = index
        self.sent = now
        self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class _Run:
    """What both loops share: the target, the requests, the records, the connections."""

    def __init__(
        self,
        url: str,
        bodies: Sequence[bytes],
        *,
        timeout_ms: float | None,
        client_timeout_s: float,
        headers: Mapping[str, str] | None,
        progress: Progress | None,
    ) -> None:
        if not bodies:
            raise InvalidArgument("no request bodies to send; give at least one.")
        if timeout_ms is not None:
            _check_positive("timeout_ms", timeout_ms)
        _check_positive("client_timeout_s", client_timeout_s)
        self.target = Target.parse(url)
        extra = dict(headers or {})
        if timeout_ms is not None:
            extra["X-Request-Timeout-Ms"] = f"{timeout_ms:g}"
        self.requests = [self.target.request(bytes(b), extra) for b in bodies]
        self.client_timeout = client_timeout_s
        self.progress = progress
        self.loop = asyncio.get_running_loop()
        self.tls = ssl.create_default_context() if self.target.tls else None
        # per request: when it was sent, when it was answered, how (status or transport error)
        self.sent_at = array.array("d")
        self.done_at = array.array("d")
        self.status = array.array("i")
        self.samples: dict[str, str] = {}
        self.busy: set[_Conn] = set()
        self.conns = 0  # open or being opened
        self.opened = 0
        self.waited = 0  # open loop: requests that found no idle connection
        self.t0 = 0.0

    # records
    def note(self, status: int, text: str) -> None:
        """Keep the first message seen for an error (the message of an {"error": ...} body)."""
        key = TRANSPORT_ERRORS.get(status, str(status))
        if key not in self.samples:
            with contextlib.suppress(ValueError, KeyError, TypeError):  # not such a body
                text = str(json.loads(text)["error"]["message"])
            self.samples[key] = " ".join(text.split())[:300]

    def finish(self, index: int, status: int, now: float) -> None:
        self.done_at[index] = now
        self.status[index] = status

    # connections
    def connect(self) -> asyncio.Task[None]:
        self.conns += 1
        return self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        t = self.target
        try:
            await self.loop.create_connection(
                lambda: _Conn(self),
                t.host,
                t.port,
                ssl=self.tls,
                server_hostname=t.host if self.tls else None,
            )
        except OSError as exc:  # refused, unreachable, TLS failures (SSLError is one)
            self.conns -= 1
            self.note(CONNECT, f"{t.authority}: {exc}")
            self.connect_failed()

    def ready(self, conn: _Conn) -> None:
        raise NotImplementedError

    def answered(self, conn: _Conn, now: float) -> None:
        raise NotImplementedError

    def lost(self, conn: _Conn) -> None:
        raise NotImplementedError

    def connect_failed(self) -> None:
        raise NotImplementedError

    def _release(self, conn: _Conn, now: float) -> bool:
        """Book the answer on `conn`; True when the connection can carry another request."""
        index, conn.req = conn.req, -1
        self.busy.discard(conn)
        if index >= 0:
            self.finish(index, conn.status, now)
        if conn.parser.should_keep_alive():
            return True
        conn.abort()
        return False

    def _lost(self, conn: _Conn) -> None:
        self.conns -= 1
        if conn.req >= 0:
            index, conn.req = conn.req, -1
            self.busy.discard(conn)
            self.note(CLOSED, "the server closed the connection before answering")
            self.finish(index, CLOSED, time.perf_counter())

    def sweep(self, now: float, *, everything: bool = False) -> None:
        """Give up on requests in flight longer than the client timeout (or on all of them)."""
        late = [c for c in self.busy if everything or now - c.sent > self.client_timeout]
        for conn in late:
            index, conn.req = conn.req, -1
            self.busy.discard(conn)
            self.note(TIMEOUT, f"no answer within {self.client_timeout:g} s")
            self.finish(index, TIMEOUT, now)
            conn.abort()

    async def tick(self, stage: str, until: float, every: float = 0.05) -> None:
        """Sweep timeouts and report progress until cancelled."""
        span = max(until - self.t0, 1e-9)
        while True:
            now = time.perf_counter()
            self.sweep(now)
            if self.progress is not None:
                self.progress(stage, min(1.0, (now - self.t0) / span))
            await asyncio.sleep(every)

    async def drain(self, outstanding: Callable[[], bool], deadline: float) -> None:
        while outstanding() and time.perf_counter() < deadline:
            await asyncio.sleep(0.002)


class _OpenRun(_Run):
    def __init__(
        self,
        url: str,
        bodies: Sequence[bytes],
        offsets: np.ndarray,
        *,
        max_connections: int,
        **kw: Any,
    ) -> None:
        super().__init__(url, bodies, **kw)
        n = len(offsets)
        self.offsets = array.array("d", offsets.tolist())
        self.sent_at = array.array("d", [math.nan]) * n
        self.done_at = array.array("d", [math.nan]) * n
        self.status = array.array("i", [0]) * n
        self.cap = max_connections
        self.idle: list[_Conn] = []
        self.waiting: deque[int] = deque()

    def dispatch(self, index: int) -> None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self._send(conn, index, time.perf_counter())
                return
        self.waited += 1
        self.waiting.append(index)
        if self.conns < self.cap:
            self.connect()

    def _send(self, conn: _Conn, index: int, now: float) -> None:
        self.sent_at[index] = now
        self.busy.add(conn)
        conn.send(index, self.requests[index % len(self.requests)], now)

    def ready(self, conn: _Conn) -> None:
        if self.waiting:
            self._send(conn, self.waiting.popleft(), time.perf_counter())
        else:
            self.idle.append(conn)

    def answered(self, conn: _Conn, now: float) -> None:
        if self._release(conn, now):
            self.ready(conn)

    def lost(self, conn: _Conn) -> None:
        self._lost(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting and self.conns < self.cap:
            self.connect()

    def connect_failed(self) -> None:
        if self.waiting:  # the request that asked for this connection gets the error
            self.finish(self.waiting.popleft(), CONNECT, time.perf_counter())

    async def run(self, duration: float, warm: int) -> None:
        await asyncio.gather(*(self.connect() for _ in range(min(warm, self.cap))))
        offsets, dispatch, perf, sleep = (
            self.offsets,
            self.dispatch,
            time.perf_counter,
            asyncio.sleep,
        )
        n = len(offsets)
        self.t0 = t0 = perf() + 0.001
        ticker = self.loop.create_task(self.tick("sending", t0 + duration))
        try:
            i = 0
            while i < n:
                now = perf()
                while i < n and t0 + offsets[i] <= now:
                    dispatch(i)
                    i += 1
                if i < n:  # always yield, so answers are read even when running behind
                    wait = t0 + offsets[i] - perf()
                    # The loop's timers fire up to a millisecond off: sleep until just before
                    # the send time, then yield without sleeping until it comes.
                    await sleep(wait - SPIN_S if wait > SPIN_S else 0.0)
            end = max(perf(), t0 + duration)
            await self.drain(lambda: bool(self.busy or self.waiting), end + self.client_timeout)
        finally:
            ticker.cancel()
        now = perf()
        self.sweep(now, everything=True)
        while self.waiting:  # never got a connection before the end
            self.note(TIMEOUT, f"no connection within {self.client_timeout:g} s")
            self.finish(self.waiting.popleft(), TIMEOUT, now)
        for conn in self.idle:
            conn.abort()


class _ClosedRun(_Run):
    def __init__(self, url: str, bodies: Sequence[bytes], **kw: Any) -> None:
        super().__init__(url, bodies, **kw)
        self.end = math.inf

    def ready(self, conn: _Conn) -> None:
        now = time.perf_counter()
        if now >= self.end:
            conn.abort()
            return
        index = len(self.status)
        self.sent_at.append(now)
        self.done_at.append(math.nan)
        self.status.append(0)
        self.busy.add(conn)
        conn.send(index, self.requests[index % len(self.requests)], now)

    def answered(self, conn: _Conn, now: float) -> None:
        if self._release(conn, now):
            self.ready(conn)

    def lost(self, conn: _Conn) -> None:
        self._lost(conn)
        if time.perf_counter() < self.end:
            self.connect()

    def connect_failed(self) -> None:
        now = time.perf_counter()
        self.sent_at.append(math.nan)
        self.done_at.append(now)
        self.status.append(CONNECT)
        if now < self.end:  # try again, without hammering a server that is down
            self.loop.call_later(0.05, self._retry)

    def _retry(self) -> None:
        if time.perf_counter() < self.end:
            self.connect()

    async def run(self, concurrency: int, duration: float) -> None:
        self.t0 = time.perf_counter()
        self.end = self.t0 + duration
        ticker = self.loop.create_task(self.tick("sending", self.end))
        try:
            for _ in range(concurrency):
                self.connect()
            await asyncio.sleep(duration)
            await self.drain(lambda: bool(self.busy), self.end + self.client_timeout)
        finally:
            ticker.cancel()
        self.sweep(time.perf_counter(), everything=True)


# -- the two loops -------------------------------------------------------------------------------


async def open_loop(
    url: str,
    bodies: Sequence[bytes],
    *,
    rate: float,
    duration: float,
    burstiness: float = 1.0,
    seed: int = 0,
    slo_ms: float = 20.0,
    timeout_ms: float | None = None,
    client_timeout_s: float = 10.0,
    max_connections: int = 1024,
    headers: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Report:
    """Send POSTs of `bodies` (in turn) to `url` at the times `arrival_times(rate, duration,
    burstiness, seed)` gives, whatever the server does; see the module docstring.

    Connections are opened as needed, up to `max_connections`; a request that finds none idle
    waits for one, and the wait counts as send lag. `timeout_ms` is sent as X-Request-Timeout-Ms
    (the server's deadline); the generator itself gives up on an answer after `client_timeout_s`
    (an error 'timeout'). Answers to requests sent in the window are awaited after it ends."""
    _check_positive("slo_ms", slo_ms)
    _check_count("max_connections", max_connections)
    offsets = arrival_times(rate, duration, burstiness, seed)
    run = _OpenRun(
        url,
        bodies,
        offsets,
        max_connections=max_connections,
        timeout_ms=timeout_ms,
        client_timeout_s=client_timeout_s,
        headers=headers,
        progress=progress,
    )
    # enough connections for 50 ms of arrivals up front, so the first bursts do not wait for
    # connects; more are opened on demand
    warm = max(8, math.ceil(rate * 0.05))
    cpu = time.thread_time()
    await run.run(duration, warm)
    cpu = time.thread_time() - cpu
    return _summarize(
        run,
        mode="open",
        duration=duration,
        base=np.frombuffer(run.offsets, dtype=np.float64) + run.t0,
        slo_ms=slo_ms,
        cpu=cpu,
        target_rate=float(rate),
        burstiness=float(burstiness),
    )


async def closed_loop(
    url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    duration: float,
    slo_ms: float = 20.0,
    timeout_ms: float | None = None,
    client_timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
    progress: Progress | None = None,
) -> Report:
    """`concurrency` clients, each on its own keep-alive connection, each sending the next of
    `bodies` as soon as its previous request is answered, for `duration` seconds. Latency is
    counted from the actual send. A client that cannot connect records a 'connect' error and
    tries again 50 ms later."""
    _check_count("concurrency", concurrency)
    _check_positive("duration", duration)
    _check_positive("slo_ms", slo_ms)
    run = _ClosedRun(
        url,
        bodies,
        timeout_ms=timeout_ms,
        client_timeout_s=client_timeout_s,
        headers=headers,
        progress=progress,
    )
    cpu = time.thread_time()
    await run.run(concurrency, duration)
    cpu = time.thread_time() - cpu
    return _summarize(
        run,
        mode="closed",
        duration=duration,
        base=np.frombuffer(run.sent_at, dtype=np.float64),
        slo_ms=slo_ms,
        cpu=cpu,
        concurrency=concurrency,
    )


def run_open_loop(url: str, bodies: Sequence[bytes], **kw: Any) -> Report:
    """`open_loop` on a new event loop (uvloop when installed); same arguments."""
    return _run_async(open_loop(url, bodies, **kw))


def run_closed_loop(url: str, bodies: Sequence[bytes], **kw: Any) -> Report:
    """`closed_loop` on a new event loop (uvloop when installed); same arguments."""
    return _run_async(closed_loop(url, bodies, **kw))


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def _check_count(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{name} must be a whole number of at least 1, got {value!r}.")


# -- figures -------------------------------------------------------------------------------------


def _stats(values: np.ndarray, points: Sequence[int]) -> dict[str, float | None]:
    if values.size == 0:
        return {**{f"p{p}": None for p in points}, "max": None}
    # nearest rank: a reported p99 is a latency some request really had, never interpolated
    found = np.percentile(values, points, method="inverted_cdf")
    stats: dict[str, float | None] = {f"p{p}": float(v) for p, v in zip(points, found, strict=True)}
    stats["max"] = float(values.max())
    return stats


def behind_schedule(
    lags_ms: np.ndarray, sent_in_window: int, scheduled: int, duration: float, waited: int
) -> list[str]:
    """Warnings for an open loop that did not keep its schedule: p99 send lag over
    MAX_P99_LAG_MS, or fewer than MIN_SEND_FRACTION of the scheduled requests sent in time."""
    warnings = []
    if lags_ms.size:
        p99, worst = np.percentile(lags_ms, 99, method="inverted_cdf"), lags_ms.max()
        if p99 > MAX_P99_LAG_MS:
            warnings.append(
                f"the generator fell behind its schedule: p99 send lag {p99:.1f} ms (over "
                f"{MAX_P99_LAG_MS:g} ms; max {worst:.1f} ms; {waited:,} requests waited for a "
                "connection). The latencies include that lag; give the generator a core of its "
                "own, a lower --rate, or more connections (--max-connections)."
            )
    if scheduled and sent_in_window < MIN_SEND_FRACTION * scheduled:
        warnings.append(
            f"the generator sent {sent_in_window:,} of {scheduled:,} scheduled requests within "
            f"the {duration:g} s window ({sent_in_window / scheduled:.0%}, under "
            f"{MIN_SEND_FRACTION:.0%}): the offered load was lower than asked for."
        )
    return warnings


def _summarize(
    run: _Run,
    *,
    mode: str,
    duration: float,
    base: np.ndarray,
    slo_ms: float,
    cpu: float,
    target_rate: float | None = None,
    burstiness: float | None = None,
    concurrency: int | None = None,
) -> Report:
    sent_at = np.frombuffer(run.sent_at, dtype=np.float64)
    done_at = np.frombuffer(run.done_at, dtype=np.float64)
    status = np.frombuffer(run.status, dtype=np.int32)
    sent = ~np.isnan(sent_at)
    ok = (status >= 200) & (status < 300)
    latency = (done_at[ok] - base[ok]) * 1000.0
    lat = _stats(latency, (50, 90, 95, 99))
    lat["mean"] = float(latency.mean()) if latency.size else None
    errors: dict[str, int] = {}
    for code, count in zip(*np.unique(status[~ok], return_counts=True), strict=True):
        errors[TRANSPORT_ERRORS.get(int(code), str(int(code)))] = int(count)
    within = int((latency <= slo_ms).sum())
    # in time: by the end of the window, give or take the lag the generator is allowed
    sent_in_window = int((sent_at[sent] <= run.t0 + duration + MAX_P99_LAG_MS / 1000).sum())
    warnings: list[str] = []
    lag: dict[str, float | None] = {"p50": None, "p99": None, "max": None}
    if mode == "open":
        lags = (sent_at[sent] - base[sent]) * 1000.0
        lag = _stats(lags, (50, 99))
        scheduled = len(base)
        warnings += behind_schedule(lags, sent_in_window, scheduled, duration, run.waited)
    else:
        scheduled = len(status)
    if not ok.any() and len(status):
        warnings.append("no request succeeded: the latency figures are empty (see errors).")
    return Report(
        mode=mode,
        url=run.target.url,
        duration_s=float(duration),
        target_rate=target_rate,
        burstiness=burstiness,
        concurrency=concurrency,
        scheduled=int(scheduled),
        sent=int(sent.sum()),
        completed=int((status > 0).sum()),
        ok=int(ok.sum()),
        send_rate=sent_in_window / duration,
        throughput=int((status > 0).sum()) / duration,
        latency_ms=lat,
        errors=dict(sorted(errors.items())),
        error_samples={k: run.samples[k] for k in sorted(errors) if k in run.samples},
        slo_ms=float(slo_ms),
        within_slo=within,
        goodput=within / duration,
        lag_ms=lag,
        waited_for_connection=run.waited,
        connections=run.opened,
        cpu_s=cpu,
        warnings=tuple(warnings),
    )
