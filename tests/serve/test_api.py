"""The server's HTTP API against a real server on loopback: v1 predict, KServe v2 (by hand and
with tritonclient), the push, metrics, admin, and what a real user's bad input gets back (a 4xx
whose JSON names the field, never a 5xx). Schemathesis fuzzes the OpenAPI document the server
publishes.

One server for the module, in this process: uvicorn (as `backline serve` runs it) on a free port
in a thread, serving a private copy of the trained project (the push test writes to it).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import backline
from backline.serve.app import ADMIN_TOKEN_ENV
from backline.serve.openapi import build_spec
from backline.serve.parse import Schema, _flatten, parse_v1, parse_v2_body
from backline.serve.server import ServeSpec, _uvicorn_server, bind, build_app, resolve
from tests.serve.conftest import data_end, sample_instances

pytestmark = pytest.mark.http

TOKEN = "s3cret-admin-token"
SCHEMA = Schema(
    keys=("card_id", "merchant_id"), fields=("amount",), passthrough=("transaction_id",)
)


# -- the server -----------------------------------------------------------------------------------


class _Running:
    """uvicorn serving `app` on a free loopback port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sock = bind("127.0.0.1", 0)
        self.port: int = self.sock.getsockname()[1]
        self.server = _uvicorn_server(app, app.options.drain_timeout)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()

    def wait(self, path: str = "/v2/health/ready", timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if call(self.port, "GET", path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"the server never answered 200 on {path}")

    def stop(self) -> None:
        self.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(60)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop"


@dataclass
class Served:
    root: Path
    port: int
    app: Any
    at: str
    """A scoring time inside the materialized state (ten minutes after the data ends)."""
    end: datetime

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def served(trained_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import torch

    threads = torch.get_num_threads()  # build_app sets serve.threads; put it back after
    root = tmp_path_factory.mktemp("api") / "fraud"
    shutil.copytree(trained_root, root)
    end = data_end(root)
    project = backline.open(root)
    app = build_app(project, ServeSpec(root=root, prediction_log=False, admin_token=TOKEN))
    running = _Running(app)
    try:
        running.wait()
        yield Served(root, running.port, app, _iso(end + timedelta(minutes=10)), end)
    finally:
        running.stop()
        project.close()
        torch.set_num_threads(threads)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """(status, headers with lower-case names, the body parsed as JSON or else text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        return _read(conn)
    finally:
        conn.close()


def _read(conn: http.client.HTTPConnection) -> tuple[int, dict[str, str], Any]:
    r = conn.getresponse()
    raw = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    text = raw.decode()
    if hdrs.get("content-type", "").startswith("application/json"):
        return r.status, hdrs, json.loads(text)
    return r.status, hdrs, text


PREDICT = "/v1/models/fraud:predict"
INFER = "/v2/models/fraud/infer"


def features_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r[k] for k in ("card_id", "merchant_id", "amount")} for r in rows]


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head != name and not head.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def scrape(port: int) -> str:
    status, headers, text = call(port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return str(text)


# -- v1 predict -----------------------------------------------------------------------------------


def test_v1_one_instance_a_list_and_instances_with_at(served: Served) -> None:
    instances = features_only(sample_instances(served.root, 3))
    one = call(served.port, "POST", PREDICT, instances[0])
    many = call(served.port, "POST", PREDICT, instances)
    wrapped = call(served.port, "POST", PREDICT, {"instances": instances, "at": served.at})
    for (status, headers, body), n in ((one, 1), (many, 3), (wrapped, 3)):
        assert status == 200, body
        assert body["model_name"] == "fraud"
        assert body["model_version"] == 1  # the champion
        assert headers["x-model-version"] == "1"
        assert len(body["scores"]) == n
        assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in body["scores"])
        assert isinstance(body["request_id"], str) and body["request_id"]
    # the scoring time matters: inside the data the card's history moves the scores
    assert wrapped[2]["scores"] != many[2]["scores"]


def test_v1_request_id_is_echoed(served: Served) -> None:
    instance = features_only(sample_instances(served.root, 1))[0]
    _, _, body = call(served.port, "POST", PREDICT, instance, {"X-Request-Id": "abc-123"})
    assert body["request_id"] == "abc-123"


def test_v1_same_score_alone_and_inside_a_batch_of_ten(served: Served) -> None:
    instances = features_only(sample_instances(served.root, 10, seed=3))
    _, _, batch = call(served.port, "POST", PREDICT, {"instances": instances, "at": served.at})
    spread = {round(s, 6) for s in batch["scores"]}
    assert len(spread) > 3, "the scores barely differ: the comparison would prove nothing"
    for i, instance in enumerate(instances):
        status, _, alone = call(
            served.port, "POST", PREDICT, {"instances": [instance], "at": served.at}
        )
        assert status == 200
        assert alone["scores"][0] == pytest.approx(batch["scores"][i], abs=1e-6), i


# -- bad input from real users: 4xx that names the field, never 5xx ----------------------------------

GOOD = {"card_id": "card_0000001", "merchant_id": "m_000001", "amount": 12.5}


def _with(**change: Any) -> dict[str, Any]:
    out = dict(GOOD)
    for k, v in change.items():
        if v is _DROP:
            del out[k]
        else:
            out[k] = v
    return out


_DROP = object()

BAD_V1 = [
    # (id, body bytes or JSON, status, code, what the message or field must name)
    ("malformed-json", b'{"card_id": "card_0000001",', 400, "invalid_request", "not valid JSON"),
    ("empty-body", b"", 400, "invalid_request", "empty"),
    ("not-json-at-all", b"card_id=1&amount=2", 400, "invalid_request", "not valid JSON"),
    (
        "nan-is-not-json",
        b'{"card_id":"c","merchant_id":"m","amount":NaN}',
        400,
        "",
        "not valid JSON",
    ),
    (
        "infinity-is-not-json",
        b'[{"card_id":"c","merchant_id":"m","amount":-Infinity}]',
        400,
        "",
        "JSON",
    ),
    ("card-id-float", _with(card_id=1.5), 400, "invalid_request", "instances[0].card_id"),
    ("card-id-bool", _with(card_id=True), 400, "invalid_request", "instances[0].card_id"),
    ("card-id-int-for-a-string-key", _with(card_id=5), 400, "invalid_request", "string column"),
    ("card-id-huge-int", _with(card_id=10**30), 400, "invalid_request", "instances[0].card_id"),
    ("card-id-null", _with(card_id=None), 400, "invalid_request", "instances[0].card_id"),
    ("card-id-object", _with(card_id={"id": 1}), 400, "invalid_request", "instances[0].card_id"),
    ("amount-string", _with(amount="12"), 400, "invalid_request", "instances[0].amount"),
    ("amount-bool", _with(amount=True), 400, "invalid_request", "instances[0].amount"),
    ("amount-huge-int", _with(amount=10**400), 400, "invalid_request", "instances[0].amount"),
    ("amount-overflow", b'{"card_id":"c","merchant_id":"m","amount":1e999}', 400, "", "amount"),
    ("missing-join-key", _with(card_id=_DROP), 400, "invalid_request", "instances[0].card_id"),
    ("missing-field", _with(amount=_DROP), 400, "invalid_request", "instances[0].amount"),
    ("unknown-field", _with(amont=3), 400, "invalid_request", "Did you mean 'amount'"),
    ("passthrough-object", _with(transaction_id=[1]), 400, "", "instances[0].transaction_id"),
    ("empty-instances", {"instances": []}, 400, "invalid_request", "instances"),
    ("empty-list", [], 400, "invalid_request", "instances"),
    ("instances-not-list", {"instances": GOOD}, 400, "invalid_request", "instances"),
    ("instance-not-object", ["card_0000001"], 400, "invalid_request", "instances[0]"),
    ("unknown-top-level", {"instances": [GOOD], "when": "now"}, 400, "", "when"),
    ("at-without-zone", {"instances": [GOOD], "at": "2026-01-20T10:00:00"}, 400, "", "at"),
    ("at-not-a-time", {"instances": [GOOD], "at": "yesterday"}, 400, "invalid_request", "at"),
    ("at-a-number", {"instances": [GOOD], "at": 1767225600}, 400, "invalid_request", "at"),
    ("at-past-year-9999", {"instances": [GOOD], "at": "9999-12-31T23:59:59-23:59"}, 400, "", "at"),
    ("at-before-the-store", {"instances": [GOOD], "at": "2001-01-01T00:00:00Z"}, 400, "", "2001"),
    (
        "mixed-key-kinds",
        [GOOD, _with(merchant_id=7)],
        400,
        "invalid_request",
        "instances[1].merchant_id",
    ),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_request", "nested"),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "names"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_V1],
)
def test_v1_bad_input_is_a_4xx_naming_the_field(
    served: Served, body: Any, status: int, code: str, names: str
) -> None:
    got, headers, answer = call(served.port, "POST", PREDICT, body)
    assert got == status, answer
    assert headers["content-type"] == "application/json"
    error = answer["error"]
    assert isinstance(error["code"], str) and error["code"]
    if code:
        assert error["code"] == code
    assert names in error["message"] + " " + error.get("field", ""), error


def test_unknown_model_wrong_method_and_unknown_path(served: Served) -> None:
    status, _, body = call(served.port, "POST", "/v1/models/fruad:predict", GOOD)
    assert status == 404 and body["error"]["code"] == "not_found"
    assert "fraud" in body["error"]["message"]  # says what is served
    status, headers, body = call(served.port, "GET", PREDICT)
    assert status == 405 and body["error"]["code"] == "method_not_allowed"
    assert headers["allow"] == "POST"
    status, headers, _ = call(served.port, "POST", "/v2/health/live")
    assert status == 405 and headers["allow"] == "GET"
    for path in ("/", "/v1/models", "/v3/models/fraud/infer", "/v1/features:pull"):
        status, _, body = call(served.port, "GET", path)
        assert status == 404 and body["error"]["code"] == "not_found", path


def test_oversized_body_is_413_with_and_without_content_length(served: Served) -> None:
    limit = served.app.options.max_body_bytes
    # declared: refused from the header, before the body is read
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.putrequest("POST", PREDICT)
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(limit + 1))
    conn.endheaders()
    conn.send(b'{"instances": [')
    status, _, body = _read(conn)
    conn.close()
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert str(limit) in body["error"]["message"]
    # chunked, no length: refused once what arrived passes the limit
    instance = json.dumps(GOOD).encode()
    need = limit // len(instance) + 2

    def chunks() -> Iterator[bytes]:
        yield b"["
        for i in range(need):
            yield instance + (b"," if i < need - 1 else b"]")

    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("POST", PREDICT, body=chunks(), encode_chunked=True)
    status, _, body = _read(conn)
    conn.close()
    assert status == 413 and body["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("value", ["0", "-5", "abc", "nan", "inf", "1e400", ""])
def test_bad_timeout_header_is_400(served: Served, value: str) -> None:
    status, _, body = call(served.port, "POST", PREDICT, GOOD, {"X-Request-Timeout-Ms": value})
    assert status == 400, body
    assert body["error"]["field"] == "X-Request-Timeout-Ms"


def test_tiny_deadline_is_504_and_never_reaches_the_model(served: Served) -> None:
    before = scrape(served.port)
    status, headers, body = call(
        served.port, "POST", PREDICT, GOOD, {"X-Request-Timeout-Ms": "0.001"}
    )
    after = scrape(served.port)
    assert status == 504, body
    assert body["error"]["code"] == "deadline_exceeded"
    assert "x-model-version" not in headers
    rejected = "backline_requests_rejected_total"
    assert (
        metric(after, rejected, reason="deadline")
        == metric(before, rejected, reason="deadline") + 1
    )
    batches = "backline_batch_size_count"
    assert metric(after, batches) == metric(before, batches)  # nothing was scored
    # and a sane deadline on the same request scores it
    status, _, _ = call(served.port, "POST", PREDICT, GOOD, {"X-Request-Timeout-Ms": "5000"})
    assert status == 200


# -- KServe v2 (Open Inference Protocol) ----------------------------------------------------------


def _tensors(instances: list[dict[str, Any]], column: bool = False) -> list[dict[str, Any]]:
    n = len(instances)

    def data(name: str) -> list[Any]:
        values = [i[name] for i in instances]
        return [[v] for v in values] if column else values

    shape = [n, 1] if column else [n]
    return [
        {"name": "card_id", "datatype": "BYTES", "shape": shape, "data": data("card_id")},
        {"name": "merchant_id", "datatype": "BYTES", "shape": shape, "data": data("merchant_id")},
        {"name": "amount", "datatype": "FP64", "shape": shape, "data": data("amount")},
    ]


def test_v2_health_server_and_model_metadata(served: Served) -> None:
    assert call(served.port, "GET", "/v2/health/live")[:3:2] == (200, {"live": True})
    assert call(served.port, "GET", "/v2/health/ready")[:3:2] == (200, {"ready": True})
    status, _, server = call(served.port, "GET", "/v2")
    assert status == 200 and server["name"] == "backline" and "version" in server
    assert call(served.port, "GET", "/v2/")[0] == 200
    status, _, meta = call(served.port, "GET", "/v2/models/fraud")
    assert status == 200
    assert meta["name"] == "fraud" and meta["versions"] == ["1"]
    inputs = {i["name"]: i["datatype"] for i in meta["inputs"]}
    assert inputs == {
        "card_id": "BYTES",
        "merchant_id": "BYTES",
        "amount": "FP64",
        "transaction_id": "BYTES",
    }
    assert meta["outputs"] == [{"name": "score", "datatype": "FP32", "shape": [-1]}]
    assert call(served.port, "GET", "/v2/models/fraud/ready")[:3:2] == (
        200,
        {"name": "fraud", "ready": True},
    )
    assert call(served.port, "GET", "/v2/models/fraud/versions/1/ready")[0] == 200
    status, _, body = call(served.port, "GET", "/v2/models/nope/ready")
    assert status == 404 and body["code"] == "not_found"


def test_v2_infer_matches_v1_for_shapes_n_and_n_by_1(served: Served) -> None:
    instances = features_only(sample_instances(served.root, 5, seed=1))
    _, _, v1 = call(served.port, "POST", PREDICT, {"instances": instances, "at": served.at})
    for column in (False, True):
        doc = {
            "id": "req-7",
            "inputs": _tensors(instances, column),
            "parameters": {"at": served.at},
        }
        status, headers, body = call(served.port, "POST", INFER, doc)
        assert status == 200, body
        assert headers["x-model-version"] == "1"
        assert body["model_name"] == "fraud" and body["model_version"] == "1"
        assert body["id"] == "req-7"
        [out] = body["outputs"]
        assert out["name"] == "score" and out["datatype"] == "FP32" and out["shape"] == [5]
        assert out["data"] == pytest.approx(v1["scores"], abs=1e-6)
    # pinned to the served version, and asking for the score output by name
    doc = {
        "inputs": _tensors(instances),
        "parameters": {"at": served.at},
        "outputs": [{"name": "score"}],
    }
    status, _, body = call(served.port, "POST", "/v2/models/fraud/versions/1/infer", doc)
    assert status == 200 and body["outputs"][0]["data"] == pytest.approx(v1["scores"], abs=1e-6)


def _v2_error(served: Served, doc: Any, path: str = INFER) -> tuple[int, dict[str, Any]]:
    status, _, body = call(served.port, "POST", path, doc)
    # the protocol's error body: "error" is the message; backline adds its code (and field)
    assert isinstance(body["error"], str) and body["error"], body
    assert isinstance(body["code"], str), body
    return status, body


def test_v2_errors(served: Served) -> None:
    instances = features_only(sample_instances(served.root, 2, seed=2))
    good = _tensors(instances)
    status, body = _v2_error(served, {"inputs": good}, "/v2/models/fraud/versions/2/infer")
    assert status == 404 and "v1" in body["error"]  # v2 is registered but not served
    status, body = _v2_error(served, {"inputs": good}, "/v2/models/nope/infer")
    assert status == 404
    wrong_type = [good[0], good[1], {**good[2], "datatype": "BYTES"}]
    status, body = _v2_error(served, {"inputs": wrong_type})
    assert status == 400 and body["field"] == "inputs[2].datatype"
    mismatched = [good[0], good[1], {**good[2], "shape": [3], "data": [1.0, 2.0, 3.0]}]
    status, body = _v2_error(served, {"inputs": mismatched})
    assert status == 400 and body["field"] == "inputs[2].shape"
    not_rows = [{**t, "shape": [1, 2]} for t in good]
    status, body = _v2_error(served, {"inputs": not_rows})
    assert status == 400 and "[N, 1]" in body["error"]
    data_of_wrong_kind = [good[0], good[1], {**good[2], "data": ["1.5", "2"]}]
    status, body = _v2_error(served, {"inputs": data_of_wrong_kind})
    assert status == 400 and body["field"] == "inputs[2].data"
    key_as_number = [{**good[0], "data": [1, 2]}, good[1], good[2]]
    status, body = _v2_error(served, {"inputs": key_as_number})
    assert status == 400 and body["field"] == "inputs[0].data"
    status, body = _v2_error(served, {"inputs": [*good, good[0]]})
    assert status == 400 and "twice" in body["error"]
    status, body = _v2_error(served, {"inputs": good, "outputs": [{"name": "prob"}]})
    assert status == 400 and body["field"] == "outputs"
    status, body = _v2_error(served, {"inputs": good[:2]})
    assert status == 400 and "amount" in body["error"]
    status, body = _v2_error(served, {"inputs": good, "parameters": {"at": "2026-01-01"}})
    assert status == 400 and body["field"] == "parameters.at"
    status, body = _v2_error(served, {"inputs": []})
    assert status == 400 and body["field"] == "inputs"
    status, body = _v2_error(served, b"not json")
    assert status == 400 and body["field"] == "body"
    deep = {"inputs": [{"name": "card_id", "datatype": "BYTES", "shape": [1], "data": [[[["c"]]]]}]}
    status, body = _v2_error(served, deep)
    assert status == 400
    status, _, _ = call(served.port, "GET", INFER)
    assert status == 405


def test_tritonclient_unchanged(served: Served) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    instances = features_only(sample_instances(served.root, 6, seed=4))
    _, _, v1 = call(served.port, "POST", PREDICT, {"instances": instances, "at": served.at})
    client = httpclient.InferenceServerClient(f"127.0.0.1:{served.port}")
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("fraud")
        assert client.is_model_ready("fraud", "1")
        assert client.get_server_metadata()["name"] == "backline"
        meta = client.get_model_metadata("fraud")
        assert meta["name"] == "fraud" and [o["name"] for o in meta["outputs"]] == ["score"]

        def inputs(binary: bool) -> list[Any]:
            columns = [
                ("card_id", np.array([i["card_id"] for i in instances], dtype=object), "BYTES"),
                (
                    "merchant_id",
                    np.array([i["merchant_id"] for i in instances], dtype=object),
                    "BYTES",
                ),
                ("amount", np.array([i["amount"] for i in instances], dtype=np.float64), "FP64"),
            ]
            out = []
            for name, array, datatype in columns:
                tensor = httpclient.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array, binary_data=binary)
                out.append(tensor)
            return out

        # JSON tensors, and the client's default: the binary tensor data extension
        for binary in (False, True):
            result = client.infer("fraud", inputs(binary), parameters={"at": served.at})
            scores = result.as_numpy("score")
            assert scores.dtype == np.float32 and scores.shape == (6,)
            np.testing.assert_allclose(scores, v1["scores"], atol=1e-6)
        pinned = client.infer(
            "fraud",
            inputs(True),
            model_version="1",
            outputs=[httpclient.InferRequestedOutput("score", binary_data=False)],
            parameters={"at": served.at},
        )
        np.testing.assert_allclose(pinned.as_numpy("score"), v1["scores"], atol=1e-6)
        # an error reaches the client as a message it can print (the protocol's error body)
        with pytest.raises(InferenceServerException) as caught:
            client.infer("fraud", inputs(True), model_version="2")
        assert caught.value.status() == "404"
        assert "not served here" in str(caught.value)
    finally:
        client.close()


# -- the OpenAPI document, fuzzed ---------------------------------------------------------------


def test_openapi_is_valid_openapi_3(served: Served) -> None:
    status, _, spec = call(served.port, "GET", "/openapi.json")
    assert status == 200
    assert spec["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(spec).validate()  # raises on a document OpenAPI rejects
    assert "/v1/models/fraud:predict" in spec["paths"]
    assert "/v2/models/{name}/infer" in spec["paths"]


@pytest.fixture(scope="module")
def api_schema(served: Served) -> Any:
    return schemathesis.openapi.from_url(f"{served.url}/openapi.json")


#: Every operation of the document the server publishes (built as the server builds it; the
#: test below checks the served one has the same), fuzzed with valid data, and those with a
#: body with invalid data too (the others take nothing that could be invalid).
OPERATIONS = [
    (method.upper(), path)
    for path, methods in build_spec("fraud", SCHEMA)["paths"].items()
    for method in methods
]
FUZZED = [
    pytest.param(method, path, mode, id=f"{method} {path} {mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or method == "POST"
]


@pytest.mark.parametrize(("method", "path", "mode"), FUZZED)
def test_fuzz_openapi(
    api_schema: Any, served: Served, method: str, path: str, mode: GenerationMode
) -> None:
    """Whatever the fuzzer sends: never a 5xx (but the 504 a client asks for with a tiny
    X-Request-Timeout-Ms), every 4xx is JSON naming an error code, and answers match the
    document (status codes, content types, body schemas)."""
    served_paths = {(m.upper(), p) for p, ms in api_schema.raw_schema["paths"].items() for m in ms}
    assert set(OPERATIONS) == served_paths
    operation = api_schema[path][method]

    pinned = {"version": "1"} if "{version}" in path and mode is GenerationMode.POSITIVE else None
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=pinned)

    @given(case=strategy)
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any) -> None:
        response = case.call(timeout=60)
        status = response.status_code
        asked_for_deadline = any(k.lower() == "x-request-timeout-ms" for k in case.headers or {})
        if status == 504 and asked_for_deadline:
            assert json.loads(response.text)["error"]["code"] == "deadline_exceeded"
            return
        assert status < 500, f"{status} {response.text[:500]}\n{case.as_curl_command()}"
        if 400 <= status < 500:
            body = json.loads(response.text)
            code = body["code"] if path.startswith("/v2") else body["error"]["code"]
            assert isinstance(code, str) and code, body
        case.validate_response(
            response,
            checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
        )

    fuzz()


# -- metrics, binding, admin ------------------------------------------------------------------------


def test_metrics_are_prometheus_text_with_model_and_version(served: Served) -> None:
    assert call(served.port, "POST", PREDICT, GOOD)[0] == 200
    text = scrape(served.port)
    assert "# TYPE backline_request_duration_seconds histogram" in text
    assert "# TYPE backline_requests_total counter" in text
    sample = re.compile(r"^backline_requests_total\{[^}]*\} \d", re.M)
    assert sample.search(text)
    assert metric(text, "backline_requests_total", model="fraud", version="1", code="200") >= 1
    assert metric(text, "backline_request_duration_seconds_count", model="fraud", version="1") >= 1


def test_binds_loopback_by_default_and_token_from_environment(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    with backline.open(served.root) as project:
        spec = resolve(ServeSpec(root=served.root), project)
        assert spec.host == "127.0.0.1"
        assert spec.admin_token is None
        monkeypatch.setenv(ADMIN_TOKEN_ENV, "from-env")
        assert resolve(ServeSpec(root=served.root), project).admin_token == "from-env"
        # an explicit token wins over the environment
        assert resolve(ServeSpec(root=served.root, admin_token="x"), project).admin_token == "x"


def test_admin_needs_the_token(served: Served) -> None:
    path = "/admin/reload"
    assert call(served.port, "POST", path)[0] == 403
    for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", TOKEN, f"bearer {TOKEN}", "Bearer "):
        status, _, body = call(served.port, "POST", path, headers={"Authorization": wrong})
        assert status == 403 and body["error"]["code"] == "forbidden", wrong
    status, _, body = call(served.port, "POST", path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    assert body["model"] == "fraud" and body["version"] == 1 and body["swapped"] is False
    assert call(served.port, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 405


def test_admin_is_off_without_a_token(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    import torch

    threads = torch.get_num_threads()
    with backline.open(served.root) as project:
        app = build_app(project, ServeSpec(root=served.root, prediction_log=False))
        assert app.options.admin_token is None
        running = _Running(app)  # the model loads in the background; admin answers at once
        try:
            running.wait("/v2/health/live")
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer x"}):
                for path in ("/admin/reload", "/admin/drain"):
                    status, _, body = call(running.port, "POST", path, headers=headers)
                    assert status == 403, (path, headers, body)
                    assert ADMIN_TOKEN_ENV in body["error"]["message"]
        finally:
            running.stop()
            torch.set_num_threads(threads)


# -- the push ---------------------------------------------------------------------------------------

PUSHED_COLUMNS = [
    "transaction_id",
    "card_id",
    "merchant_id",
    "merchant_category",
    "amount",
    "currency",
    "country",
    "channel",
    "device_id",
]


def test_push_reaches_the_next_prediction(served: Served) -> None:
    [seed] = sample_instances(served.root, 1, seed=9)
    card = seed["card_id"]
    with backline.open(served.root) as project:
        row = project.sql(
            f"SELECT * FROM transactions WHERE card_id = '{card}' ORDER BY event_time DESC LIMIT 1"
        ).to_pylist()[0]
    t1 = served.end + timedelta(minutes=5)
    pushed = []
    for k in range(2):
        fresh = {c: row[c] for c in PUSHED_COLUMNS}
        fresh["transaction_id"] = "tx_" + uuid.uuid4().hex[:16]
        fresh["event_time"] = _iso(t1 + timedelta(seconds=10 * k))
        fresh["amount"] = 250.0 + k
        pushed.append(fresh)
    at = _iso(t1 + timedelta(seconds=30))
    instance = {"card_id": card, "merchant_id": row["merchant_id"], "amount": 99.0}

    def count_10m() -> int:
        with backline.open(served.root) as project:
            features = project.online_features(
                "fraud_v1",
                {"card_id": card, "merchant_id": row["merchant_id"]},
                request={"amount": 99.0},
                at=datetime.fromisoformat(at),
            )
            return int(features.column("count_10m")[0])

    before_count = count_10m()
    _, _, before = call(served.port, "POST", PREDICT, {"instances": [instance], "at": at})
    status, _, answer = call(
        served.port, "POST", "/v1/features:push", {"source": "transactions", "rows": pushed}
    )
    assert status == 200, answer
    assert answer["rows_in"] == 2 and answer["rows_accepted"] == 2, answer
    assert "card_velocity" in answer["views"]
    assert count_10m() == before_count + 2
    _, _, after = call(served.port, "POST", PREDICT, {"instances": [instance], "at": at})
    assert after["scores"][0] != pytest.approx(before["scores"][0], abs=1e-6)


BAD_PUSH = [
    ("not-json", b"{", 400, "body"),
    ("nan", b'{"source": "transactions", "rows": [{"amount": NaN}]}', 400, "body"),
    ("not-an-object", [], 400, "body"),
    ("no-source", {"rows": [{"a": 1}]}, 400, "source"),
    ("source-not-a-string", {"source": 1, "rows": [{"a": 1}]}, 400, "source"),
    ("no-rows", {"source": "transactions"}, 400, "rows"),
    ("empty-rows", {"source": "transactions", "rows": []}, 400, "rows"),
    ("row-not-object", {"source": "transactions", "rows": ["x"]}, 400, "rows"),
    ("empty-row", {"source": "transactions", "rows": [{}]}, 400, "rows[0]"),
    (
        "nested-value",
        {"source": "transactions", "rows": [{"amount": {"v": 1}}]},
        400,
        "rows[0].amount",
    ),
    (
        "mixed-kinds",
        {"source": "transactions", "rows": [{"amount": 1}, {"amount": "x"}]},
        400,
        "rows[*].amount",
    ),
    ("huge-int", {"source": "transactions", "rows": [{"amount": 2**70}]}, 400, "rows[*].amount"),
    ("unknown-source", {"source": "transactons", "rows": [{"a": 1}]}, 404, ""),
]


@pytest.mark.parametrize(
    ("body", "status", "field"), [pytest.param(*c[1:], id=c[0]) for c in BAD_PUSH]
)
def test_bad_push_bodies(served: Served, body: Any, status: int, field: str) -> None:
    got, _, answer = call(served.port, "POST", "/v1/features:push", body)
    assert got == status, answer
    assert answer["error"]["code"]
    if field:
        assert answer["error"]["field"] == field
    assert call(served.port, "GET", "/v1/features:push")[0] == 405


# -- parsing, without a server ------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 2, 5, 5000])
def test_flatten_is_row_major_and_survives_deep_nesting(depth: int) -> None:
    nested: Any = ["x"]
    for _ in range(depth - 1):
        nested = [nested]
    assert _flatten([nested, ["y"]]) == ["x", "y"]
    assert _flatten([[1], [2, [3, 4]], 5]) == [1, 2, 3, 4, 5]


def test_binary_tensor_data_is_decoded_and_checked() -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "card_id",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": 15},
                },
                {
                    "name": "amount",
                    "datatype": "FP64",
                    "shape": [2],
                    "parameters": {"binary_data_size": 16},
                },
            ]
        }
    ).encode()
    strings = b"".join(len(s).to_bytes(4, "little") + s for s in (b"abc", b"de\xc3\xa9"))
    assert len(strings) == 15
    numbers = np.array([1.5, -2.0], dtype="<f8").tobytes()
    doc = parse_v2_body(header + strings + numbers, str(len(header)))
    assert doc["inputs"][0]["data"] == ["abc", "deé"]
    assert doc["inputs"][1]["data"] == [1.5, -2.0]
    # the length header, the sizes and the bytes are all checked
    with pytest.raises(Exception, match="Inference-Header-Content-Length"):
        parse_v2_body(header, "x")
    with pytest.raises(Exception, match="binary_data_size"):
        parse_v2_body(header + strings, str(len(header)))
    with pytest.raises(Exception, match="after its inputs"):
        parse_v2_body(header + strings + numbers + b"!", str(len(header)))
    broken = (200).to_bytes(4, "little") + b"abcdefghij"
    with pytest.raises(Exception, match="truncated"):
        parse_v2_body(header + broken + numbers, str(len(header)))
    with pytest.raises(Exception, match="not UTF-8"):
        bad = (2).to_bytes(4, "little") + b"\xff\xfe" + (4).to_bytes(4, "little") + b"abcd"
        parse_v2_body(header + bad + numbers, str(len(header)))


def test_parse_v1_keeps_the_instances_apart() -> None:
    request = parse_v1(
        {"instances": [GOOD, {**GOOD, "transaction_id": "tx_1", "amount": None}]}, SCHEMA, "r1"
    )
    assert request.rows == 2 and request.request_id == "r1"
    assert request.entities == [
        {"card_id": "card_0000001", "merchant_id": "m_000001"},
        {"card_id": "card_0000001", "merchant_id": "m_000001"},
    ]
    assert request.fields == [{"amount": 12.5}, {"amount": None}]
    assert request.passthrough == [{}, {"transaction_id": "tx_1"}]


# -- bugs outside this file's reach -------------------------------------------------------------------


def test_one_clients_integer_key_does_not_fail_anothers_request(served: Served) -> None:
    from backline.serve.engine import Request

    at = datetime.fromisoformat(served.at)
    [row] = features_only(sample_instances(served.root, 1, seed=5))
    a = Request(
        "a",
        [{"card_id": row["card_id"], "merchant_id": row["merchant_id"]}],
        [{"amount": 5.0}],
        [{}],
        at,
    )
    b = Request(
        "b", [{"card_id": 5, "merchant_id": row["merchant_id"]}], [{"amount": 5.0}], [{}], at
    )
    import torch

    threads = torch.get_num_threads()
    with backline.open(served.root) as project:
        app = build_app(project, ServeSpec(root=served.root, prediction_log=True))

        async def both() -> tuple[Any, ...]:
            await app.engine.start()
            await app.engine.run_in_thread(app.holder.load)
            deadline = app.engine.clock() + 30
            # gathered: both are queued before the engine decides, so they form one batch
            out = await asyncio.gather(
                app.engine.submit(a, deadline),
                app.engine.submit(b, deadline),
                return_exceptions=True,
            )
            await app.shutdown()
            return out

        try:
            results = asyncio.run(both())
        finally:
            torch.set_num_threads(threads)
    assert [type(r).__name__ for r in results] == ["Scored", "Scored"], results
    assert results[0].batch_rows == 2  # they did share a batch
