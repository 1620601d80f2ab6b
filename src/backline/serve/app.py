"""The ASGI app: parse a request, hand it to the engine, answer. Nothing else happens here.

Endpoints (docs/serving.md has the request and answer bodies):

    POST /v1/models/{name}:predict         one instance, a list, or {"instances": [...], "at": ...}
    POST /v2/models/{name}/infer           KServe Open Inference Protocol v2 (typed tensors)
    GET  /v2/health/live, /v2/health/ready, /v2, /v2/models/{name}, /v2/models/{name}/ready
    POST /v1/features:push                 {"source": ..., "rows": [...]}: the feature store's push
    GET  /openapi.json, /metrics
    POST /admin/reload, /admin/drain       need `Authorization: Bearer <token>`

Status codes: 200 scored; 400 a malformed body (the error names the field); 404 an unknown
model or path; 405 a wrong method; 413 a body over serve.max_body_bytes; 429 the queue is full
(with Retry-After); 503 not ready (loading, or draining) and only that; 504 the request's
deadline (X-Request-Timeout-Ms, default serve.timeout_ms) passed before it was scored. Every
error body is {"error": {"code", "message"[, "field"]}} (on /v2 routes the protocol's
{"error": MESSAGE, "code", ["field"]}), and every answer that scored names the model version in
its body and in the X-Model-Version header.

The app is a plain ASGI callable rather than a framework's router: the hot path is one dict
lookup and one JSON parse, measured against Starlette in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from backline import __version__
from backline.core.errors import BacklineError, NotFoundError, StoreError
from backline.serve.engine import Engine, NotReady, QueueFull, Request, Scored
from backline.serve.metrics import CONTENT_TYPE, Metrics
from backline.serve.model import ModelHolder
from backline.serve.parse import (
    RequestError,
    Schema,
    parse_json,
    parse_push,
    parse_v1,
    parse_v2,
    parse_v2_body,
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Environment variable holding the admin token; without it the admin endpoints answer 403.
ADMIN_TOKEN_ENV = "BACKLINE_ADMIN_TOKEN"
TIMEOUT_HEADER = b"x-request-timeout-ms"
#: Request ids: a random prefix per process and a counter (uuid4 per request read
#: os.urandom, a system call that cost 9% of the event loop's time under load).
_ID_PREFIX = uuid.uuid4().hex[:12]
_IDS = itertools.count(1)


class BodyTooLarge(BacklineError):
    code = "body_too_large"
    http_status = 413


class MethodNotAllowed(BacklineError):
    code = "method_not_allowed"
    http_status = 405

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class Forbidden(BacklineError):
    code = "forbidden"
    http_status = 403


@dataclass
class ServeOptions:
    max_body_bytes: int = 1048576
    timeout_ms: float = 1000.0
    drain_timeout: float = 30.0
    swap_poll: float = 2.0
    admin_token: str | None = None
    worker: str = "w0"


class ServeApp:
    """The ASGI callable. `holder` says what is served; the engine runs it."""

    def __init__(
        self,
        holder: ModelHolder,
        engine: Engine,
        metrics: Metrics,
        options: ServeOptions,
        schema: Schema,
        *,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        self.holder = holder
        self.engine = engine
        self.metrics = metrics
        self.options = options
        self.schema = schema
        self.on_drain = on_drain
        self.ready = False
        self.draining = False
        self.load_error: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._openapi: bytes | None = None

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        await self.engine.start()
        self._spawn(self._load())

    async def _load(self) -> None:
        try:
            served = await asyncio.to_thread(self.holder.load)
        except BacklineError as exc:
            self.load_error = str(exc)
            print(f"backline serve: cannot load {self.holder.name}: {exc}", flush=True)
            return
        self.metrics.served_version.labels(served.name).set(served.version)
        self.ready = True
        self.metrics.ready.set(1)
        if self.holder.follows_alias and self.options.swap_poll > 0:
            self._spawn(self._watch())

    async def _watch(self) -> None:
        """Hot swap: poll the alias; a new version is loaded and warmed off the event loop and
        the engine's thread, then becomes current between two batches."""
        while not self.draining:
            await asyncio.sleep(self.options.swap_poll)
            try:
                swapped = await asyncio.to_thread(self.holder.poll)
            except Exception as exc:  # the registry is unreachable: keep serving, retry later
                self.holder.last_error = str(exc)
                continue
            if swapped is not None:
                self.metrics.swaps.inc()
                self.metrics.served_version.labels(swapped.name).set(swapped.version)

    def begin_drain(self) -> None:
        """Not ready from now on; the engine keeps running what is queued."""
        self.draining = True
        if self.ready:
            self.ready = False
            self.metrics.ready.set(0)

    async def shutdown(self) -> None:
        self.begin_drain()
        await self.engine.drain(self.options.drain_timeout)
        for task in self._tasks:
            task.cancel()
        if self.engine.predlog is not None:
            try:
                await asyncio.to_thread(self.engine.predlog.close)
            except StoreError as exc:  # a full disk at exit: say so, and still exit
                print(f"backline serve: prediction log: {exc}", flush=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- HTTP ----------------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        try:
            if path.startswith("/v1/models/") and path.endswith(":predict"):
                self._method(method, "POST")
                name = path[len("/v1/models/") : -len(":predict")]
                await self._predict(scope, receive, send, name, start, v2=False)
            elif _is_v2(path):
                await self._v2(scope, receive, send, path, method, start)
            elif path == "/v1/features:push":
                self._method(method, "POST")
                await self._push(scope, receive, send)
            elif path == "/metrics":
                self._method(method, "GET")
                await _send(send, 200, self.metrics.exposition(), CONTENT_TYPE.encode())
            elif path == "/openapi.json":
                self._method(method, "GET")
                if self._openapi is None:
                    self._openapi = json.dumps(openapi_spec(self)).encode()
                await _send(send, 200, self._openapi)
            elif path in ("/admin/reload", "/admin/drain"):
                self._method(method, "POST")
                await self._admin(scope, send, path)
            else:
                raise NotFoundError(
                    f"no endpoint at {path}. Try POST /v1/models/{self.holder.name}:predict, "
                    "POST /v2/models/{name}/infer or GET /openapi.json."
                )
        except MethodNotAllowed as exc:
            await _error(send, exc, headers=[(b"allow", exc.allow.encode())], v2=_is_v2(path))
        except BacklineError as exc:
            await _error(send, exc, v2=_is_v2(path))
        except Exception as exc:  # a bug: answer 500 with a body, never a dropped connection
            bug = BacklineError(f"internal error: {type(exc).__name__}: {exc}")
            await _error(send, bug, 500, v2=_is_v2(path))

    def _method(self, method: str, wanted: str) -> None:
        if method != wanted:
            raise MethodNotAllowed(f"{method} is not allowed here; use {wanted}.", allow=wanted)

    async def _v2(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str, start: float
    ) -> None:
        parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
        if parts == ["health", "live"]:
            self._method(method, "GET")
            await _json(send, 200, {"live": True})
        elif parts == ["health", "ready"]:
            self._method(method, "GET")
            await _json(send, 200 if self.ready else 503, {"ready": self.ready})
        elif not parts:
            self._method(method, "GET")
            await _json(send, 200, {"name": "backline", "version": __version__, "extensions": []})
        elif parts[0] == "models" and len(parts) >= 2:
            name = parts[1]
            rest = parts[2:]
            if len(rest) >= 2 and rest[0] == "versions":  # /versions/{v}/...
                self._require_version(name, rest[1])
                rest = rest[2:]
            if rest == ["infer"]:
                self._method(method, "POST")
                await self._predict(scope, receive, send, name, start, v2=True)
                return
            self._method(method, "GET")
            self._require_model(name)
            if not rest:
                await _json(send, 200, self._v2_metadata())
            elif rest == ["ready"]:
                await _json(send, 200 if self.ready else 503, {"name": name, "ready": self.ready})
            else:
                raise NotFoundError(f"no endpoint at {path}.")
        else:
            raise NotFoundError(f"no endpoint at {path}.")

    def _require_model(self, name: str) -> None:
        if name != self.holder.name:
            raise NotFoundError(
                f"model {name!r} is not served here; this server serves {self.holder.name!r}."
            )

    def _require_version(self, name: str, version: str) -> None:
        self._require_model(name)
        current = self.holder.current
        if current is None or version != str(current.version):
            now = "none yet" if current is None else f"v{current.version}"
            raise NotFoundError(
                f"{name} version {version!r} is not served here (serving {now}); drop "
                "/versions/... to use the served version."
            )

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.options.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > limit:
                raise BodyTooLarge(
                    f"the body is {int(value)} bytes; at most {limit} (serve.max_body_bytes). "
                    "Send fewer instances per request."
                )
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError("the client disconnected before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(
                    f"the body is over {limit} bytes (serve.max_body_bytes). Send fewer "
                    "instances per request."
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _deadline(self, scope: Scope, arrived: float) -> float:
        timeout_ms = self.options.timeout_ms
        for key, value in scope["headers"]:
            if key == TIMEOUT_HEADER:
                try:
                    timeout_ms = float(value)
                except ValueError:
                    timeout_ms = math.nan
                if not math.isfinite(timeout_ms) or timeout_ms <= 0:
                    raise RequestError(
                        f"X-Request-Timeout-Ms is {value.decode(errors='replace')!r}; give a "
                        "positive number of milliseconds, e.g. 50.",
                        field="X-Request-Timeout-Ms",
                    )
        return arrived + timeout_ms / 1000.0

    async def _predict(
        self, scope: Scope, receive: Receive, send: Send, name: str, start: float, *, v2: bool
    ) -> None:
        self._require_model(name)
        arrived = self.engine.clock()
        if self.engine.queued >= self.engine.max_queue:  # refuse before parsing: overload is cheap
            self.metrics.answered(name, None, 429, 0.0)
            self.engine.refuse()
        body = await self._body(scope, receive)
        # while draining, a request that still reaches us (on an open connection) is served:
        # only a server without a model says 503
        if self.holder.current is None or not (self.ready or self.draining):
            raise NotReady(self._not_ready())
        deadline = self._deadline(scope, arrived)
        length = _header(scope, b"inference-header-content-length") if v2 else None
        doc = parse_v2_body(body, length) if v2 else parse_json(body)
        request_id = _header(scope, b"x-request-id") or f"{_ID_PREFIX}-{next(_IDS):x}"
        if v2:
            request, v2_id, wanted = parse_v2(doc, self.schema, request_id)
        else:
            request = parse_v1(doc, self.schema, request_id)
        try:
            scored = await self.engine.submit(request, deadline)
        except BacklineError as exc:
            self.metrics.answered(name, None, exc.http_status, 0.0)
            raise
        answer = _v2_answer(scored, name, v2_id, wanted) if v2 else _v1_answer(scored, request)
        elapsed = time.perf_counter() - start
        self.metrics.answered(name, scored.version, 200, elapsed)
        await _send(
            send,
            200,
            json.dumps(answer).encode(),
            extra=[(b"x-model-version", str(scored.version).encode())],
        )

    def _not_ready(self) -> str:
        if self.draining:
            return "the server is draining (it got SIGTERM); send this request to another replica"
        if self.load_error:
            return f"the model could not be loaded: {self.load_error}"
        return "the model is loading and warming up; retry when GET /v2/health/ready answers 200"

    async def _push(self, scope: Scope, receive: Receive, send: Send) -> None:
        source, rows = parse_push(parse_json(await self._body(scope, receive)))
        project = self.holder.project
        result = await self.engine.run_in_thread(lambda: project.push(source, rows))
        await _json(
            send,
            200,
            {
                "source": result.source,
                "batch_id": result.batch_id,
                "status": result.status,
                "rows_in": result.rows_in,
                "rows_accepted": result.rows_accepted,
                "rows_quarantined": result.rows_quarantined,
                "quarantine_reasons": result.quarantine_reasons,
                "views": [v.view for v in result.views],
                "skipped_views": list(result.skipped_views),
            },
        )

    async def _admin(self, scope: Scope, send: Send, path: str) -> None:
        token = self.options.admin_token
        if not token:
            raise Forbidden(
                f"admin endpoints are off: start the server with {ADMIN_TOKEN_ENV} set, and "
                "send it as 'Authorization: Bearer <token>'"
            )
        given = _header(scope, b"authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Forbidden("missing or wrong admin token (Authorization: Bearer <token>)")
        if path == "/admin/reload":
            swapped = await asyncio.to_thread(self.holder.poll)
            if swapped is not None:
                self.metrics.swaps.inc()
                self.metrics.served_version.labels(swapped.name).set(swapped.version)
            current = self.holder.current
            await _json(
                send,
                200,
                {
                    "model": self.holder.name,
                    "version": None if current is None else current.version,
                    "swapped": swapped is not None,
                    "error": self.holder.last_error,
                },
            )
        else:
            await _json(send, 202, {"draining": True})
            if self.on_drain is not None:
                self.on_drain()
            else:
                self.begin_drain()

    def _v2_metadata(self) -> dict[str, Any]:
        current = self.holder.current
        s = self.schema
        inputs: list[dict[str, Any]] = [
            {"name": k, "datatype": "BYTES", "shape": [-1]} for k in s.keys
        ]
        inputs += [{"name": f, "datatype": "FP64", "shape": [-1]} for f in s.fields]
        inputs += [
            {"name": p, "datatype": "BYTES", "shape": [-1], "optional": True} for p in s.passthrough
        ]
        return {
            "name": self.holder.name,
            "versions": [] if current is None else [str(current.version)],
            "platform": "pytorch_torchscript",
            "inputs": inputs,
            "outputs": [{"name": "score", "datatype": "FP32", "shape": [-1]}],
        }


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


# -- answering ----------------------------------------------------------------------------------


def _v1_answer(scored: Scored, request: Request) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "model_name": scored.model,
        "model_version": scored.version,
        "scores": scored.scores,
        "request_id": request.request_id,
    }
    if scored.degraded:
        answer["degraded"] = True
        answer["warning"] = "the online store was unreachable: scored with stored features missing"
    return answer


def _v2_answer(scored: Scored, name: str, v2_id: str, wanted: set[str] | None) -> dict[str, Any]:
    outputs = []
    if wanted is None or "score" in wanted:
        outputs.append(
            {
                "name": "score",
                "datatype": "FP32",
                "shape": [len(scored.scores)],
                "data": scored.scores,
            }
        )
    answer: dict[str, Any] = {
        "model_name": name,
        "model_version": str(scored.version),
        "id": v2_id,
        "outputs": outputs,
    }
    if scored.degraded:
        answer["parameters"] = {"degraded": True}
    return answer


_JSON = b"application/json"


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, doc: Mapping[str, Any]) -> None:
    await _send(send, status, json.dumps(doc).encode())


def _is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def _error_body(exc: BacklineError, v2: bool) -> dict[str, Any]:
    """{"error": {"code", "message"[, "field"]}}; on the v2 routes the Open Inference Protocol's
    {"error": MESSAGE} with "code" (and "field") beside it, which KServe and Triton clients
    read (tritonclient cannot even print an error whose "error" is an object)."""
    body: dict[str, Any] = exc.to_json()
    if not v2:
        return body
    inner = body["error"]
    flat = {"error": inner["message"], "code": inner["code"]}
    if "field" in inner:
        flat["field"] = inner["field"]
    return flat


async def _error(
    send: Send,
    exc: BacklineError,
    status: int | None = None,
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    v2: bool = False,
) -> None:
    code = status or exc.http_status
    extra = list(headers or [])
    if isinstance(exc, QueueFull):
        extra.append((b"retry-after", str(int(exc.retry_after)).encode()))
    if code == 503:
        extra.append((b"retry-after", b"1"))
    # RuntimeError: the response had already started (a bug elsewhere): nothing to add
    with contextlib.suppress(RuntimeError):
        await _send(send, code, json.dumps(_error_body(exc, v2)).encode(), extra=extra)


def openapi_spec(app: ServeApp) -> dict[str, Any]:
    """The OpenAPI 3 document of this server (what schemathesis fuzzes in the tests)."""
    from backline.serve.openapi import build_spec

    return build_spec(app.holder.name, app.schema)


def default_worker_id() -> str:
    return f"w-{os.getpid()}"
