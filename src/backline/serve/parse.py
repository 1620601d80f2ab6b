"""Turning request bodies into `Request`s: the simple JSON API, the KServe v2 protocol (JSON and
Triton's binary tensor data) and the push path. Every refusal is a `RequestError` (400) whose
`field` names the culprit; nothing a client sends may raise anything else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from backline.core.errors import InvalidArgument
from backline.serve.engine import Request


class RequestError(InvalidArgument):
    """A request body or header the server cannot use; `field` names the culprit."""

    code = "invalid_request"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def to_json(self) -> dict[str, dict[str, str]]:
        body = super().to_json()
        if self.field is not None:
            body["error"]["field"] = self.field
        return body


@dataclass
class Schema:
    """What an instance carries, from the feature service and the entity source."""

    keys: tuple[str, ...]
    """Join keys (a string, or an integer within int64)."""
    fields: tuple[str, ...]
    """Request fields of the on-demand features (numbers, or null)."""
    passthrough: tuple[str, ...]
    """Ids logged with the prediction (the entity source's primary key), optional."""
    key_types: dict[str, str] = field(default_factory=dict)
    """Column type of each join key (string, int64, ...), where known: a string key given as
    a number, or the other way round, would read an entity that never exists."""
    allowed: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.allowed = frozenset((*self.keys, *self.fields, *self.passthrough))


# -- parsing ------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(body: bytes) -> Any:
    if not body:
        raise RequestError("the body is empty; send JSON", field="body")
    try:
        # NaN and Infinity are not JSON (Python's parser takes them unless told not to)
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the body is not valid JSON ({exc})", field="body") from None
    except RecursionError:
        raise RequestError("the body is nested too deeply to be a request", field="body") from None


def _parse_at(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise RequestError(
            f'{where} must be an ISO time with a zone, e.g. "2026-03-01T12:00:00Z"', field=where
        )
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if at.tzinfo is not None:
            at = at.astimezone(UTC)  # 9999-12-31T23:59-01:00 is past datetime.max in UTC
    except (ValueError, OverflowError):
        at = None
    if at is None or at.tzinfo is None:
        raise RequestError(
            f'{where} is {value!r}; give an ISO time with a zone, e.g. "2026-03-01T12:00:00Z"',
            field=where,
        )
    return at


def _split(
    instance: Any, i: int, schema: Schema
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    where = f"instances[{i}]"
    if not isinstance(instance, dict):
        raise RequestError(
            f"{where} is a {type(instance).__name__}; each instance is an object such as "
            f"{_example(schema)}",
            field=where,
        )
    for name in instance:
        if name not in schema.allowed:
            from backline.core.suggest import did_you_mean

            hint = did_you_mean(str(name), sorted(schema.allowed))
            raise RequestError(
                f"{where} has the field {name!r}, which the model does not use.{hint} Fields: "
                f"{', '.join(sorted(schema.allowed))}.",
                field=f"{where}.{name}",
            )
    keys: dict[str, Any] = {}
    for k in schema.keys:
        if k not in instance:
            raise RequestError(f"{where} has no {k!r} (a join key the model needs)", f"{where}.{k}")
        value = instance[k]
        if not _is_key(value):
            raise RequestError(
                f"{where}.{k} is {_show(value)}; a join key is a string or an integer "
                "(within int64)",
                field=f"{where}.{k}",
            )
        kind = schema.key_types.get(k)
        if kind == "string" and not isinstance(value, str):
            raise RequestError(
                f"{where}.{k} is {_show(value)}; {k} is a string column: send it in quotes",
                field=f"{where}.{k}",
            )
        if kind == "int64" and isinstance(value, str):
            raise RequestError(
                f"{where}.{k} is {_show(value)}; {k} is an integer column: send a number",
                field=f"{where}.{k}",
            )
        keys[k] = value
    fields: dict[str, Any] = {}
    for f in schema.fields:
        if f not in instance:
            raise RequestError(
                f"{where} has no {f!r} (a request field the model needs)", f"{where}.{f}"
            )
        value = instance[f]
        if value is not None and not _is_number(value):
            raise RequestError(
                f"{where}.{f} is {_show(value)}; it must be a number (or null)",
                field=f"{where}.{f}",
            )
        fields[f] = value
    passthrough: dict[str, Any] = {}
    for p in schema.passthrough:
        if p not in instance:
            continue
        value = instance[p]
        if not _is_key(value):
            raise RequestError(
                f"{where}.{p} is {_show(value)}; an id is a string or an integer (within int64)",
                field=f"{where}.{p}",
            )
        passthrough[p] = value
    return keys, fields, passthrough


_INT64 = (-(2**63), 2**63 - 1)


def _is_key(value: Any) -> bool:
    """A join key or id: a string, or an integer the stores can hold (bool is not one)."""
    if isinstance(value, str):
        return True
    return (
        isinstance(value, int) and not isinstance(value, bool) and _INT64[0] <= value <= _INT64[1]
    )


def _is_number(value: Any) -> bool:
    """A number a float64 holds (the JSON parser already refused NaN and Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer of hundreds of digits
        return False


def _show(value: Any) -> str:
    """A value for an error message, cut short (a client may send megabytes)."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _example(schema: Schema) -> str:
    parts = [f'"{k}": "..."' for k in schema.keys] + [f'"{f}": 12.5' for f in schema.fields]
    return "{" + ", ".join(parts) + "}"


def parse_v1(doc: Any, schema: Schema, request_id: str) -> Request:
    """One instance (an object), a list of them, or {"instances": [...], "at": ...}."""
    at = None
    if isinstance(doc, dict) and "instances" in doc:
        extra = set(doc) - {"instances", "at"}
        if extra:
            raise RequestError(
                f'unknown top-level field {sorted(extra)[0]!r}; the body is {{"instances": '
                '[...], "at": optional ISO time}',
                field=sorted(extra)[0],
            )
        instances = doc["instances"]
        at = _parse_at(doc.get("at"), "at")
        if not isinstance(instances, list):
            raise RequestError('"instances" must be a list of objects', field="instances")
    elif isinstance(doc, list):
        instances = doc
    else:
        instances = [doc]
    if not instances:
        raise RequestError("no instances to score; send at least one", field="instances")
    entities, fields, passthrough = [], [], []
    first: dict[str, tuple[int, bool]] = {}  # key or id -> (instance, given as a string)
    for i, instance in enumerate(instances):
        k, f, p = _split(instance, i, schema)
        for name, value in (*k.items(), *p.items()):
            seen = first.setdefault(name, (i, isinstance(value, str)))
            if seen[1] != isinstance(value, str):
                kind = "a string" if seen[1] else "an integer"
                raise RequestError(
                    f"instances[{i}].{name} is {_show(value)} but instances[{seen[0]}].{name} is "
                    f"{kind}; give every {name} the same way",
                    field=f"instances[{i}].{name}",
                )
        entities.append(k)
        fields.append(f)
        passthrough.append(p)
    return Request(request_id, entities, fields, passthrough, at)


def parse_push(doc: Any) -> tuple[str, pa.Table]:
    """{"source": NAME, "rows": [{column: value, ...}, ...]}: the source and the rows as a
    table. Values are scalars (a timestamp as ISO text); the source's own validation decides
    what is accepted and what is quarantined, and the answer says which."""
    if not isinstance(doc, dict):
        raise RequestError('the body must be {"source": NAME, "rows": [...]}', field="body")
    source = doc.get("source")
    rows = doc.get("rows")
    if not isinstance(source, str):
        raise RequestError('"source" must be the name of a source, e.g. "transactions"', "source")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise RequestError('"rows" must be a non-empty list of objects', field="rows")
    columns: dict[str, list[Any]] = {}
    for i, row in enumerate(rows):
        if not row:
            raise RequestError(f"rows[{i}] is empty; a row names its columns", f"rows[{i}]")
        for name, value in row.items():
            if isinstance(value, dict | list):
                raise RequestError(
                    f"rows[{i}].{name} is {_show(value)}; a column value is a string, a number, "
                    "true/false or null",
                    field=f"rows[{i}].{name}",
                )
            columns.setdefault(name, [None] * i).append(value)
        for values in columns.values():
            if len(values) <= i:
                values.append(None)
    arrays = {}
    for name, values in columns.items():
        try:
            arrays[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            kinds = sorted({type(v).__name__ for v in values if v is not None})
            raise RequestError(
                f"the rows' {name!r} values are of different kinds ({', '.join(kinds)}) or out "
                "of range; send each column as one kind (a time as ISO text)",
                field=f"rows[*].{name}",
            ) from None
    return source, pa.table(arrays)


#: Little-endian element types of the binary tensor data extension, by v2 datatype.
_V2_BINARY = {
    "FP64": "<f8",
    "FP32": "<f4",
    "FP16": "<f2",
    "INT64": "<i8",
    "INT32": "<i4",
    "INT16": "<i2",
    "INT8": "i1",
    "UINT64": "<u8",
    "UINT32": "<u4",
    "UINT16": "<u2",
    "UINT8": "u1",
}


def parse_v2_body(body: bytes, header_length: str | None) -> Any:
    """The JSON of a v2 request. With `Inference-Header-Content-Length` (Triton's binary tensor
    data extension, what tritonclient sends by default) the body is that many bytes of JSON,
    then each input's `binary_data_size` bytes in order; they become the input's "data"."""
    if header_length is None:
        return parse_json(body)
    if not header_length.strip().isdigit() or int(header_length) > len(body):
        raise RequestError(
            f"Inference-Header-Content-Length is {header_length!r}; give the length of the "
            f"JSON part of the body (at most {len(body)})",
            field="Inference-Header-Content-Length",
        )
    n = int(header_length)
    doc = parse_json(body[:n])
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    offset = n
    for j, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        params = tensor.get("parameters") if isinstance(tensor, dict) else None
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is None:
            continue
        where = f"inputs[{j}]"
        if (
            not isinstance(size, int)
            or isinstance(size, bool)
            or not 0 <= size <= len(body) - offset
        ):
            raise RequestError(
                f"{where} says binary_data_size {_show(size)}, but {len(body) - offset} bytes "
                "of the body are left",
                field=f"{where}.parameters.binary_data_size",
            )
        raw = body[offset : offset + size]
        offset += size
        tensor["data"] = _decode_binary(raw, tensor.get("datatype"), where)
    if offset != len(body):
        raise RequestError(
            f"the body has {len(body) - offset} bytes after its inputs' binary data",
            field="body",
        )
    return doc


def _decode_binary(raw: bytes, datatype: Any, where: str) -> list[Any]:
    if datatype == "BYTES":  # each element: its length (uint32, little-endian), then its bytes
        out: list[Any] = []
        i = 0
        while i < len(raw):
            if i + 4 > len(raw):
                break
            size = int.from_bytes(raw[i : i + 4], "little")
            if i + 4 + size > len(raw):
                break
            try:
                out.append(raw[i + 4 : i + 4 + size].decode("utf-8"))
            except UnicodeDecodeError:
                raise RequestError(f"{where} holds bytes that are not UTF-8 text", where) from None
            i += 4 + size
        else:
            return out
        raise RequestError(f"{where} has truncated BYTES data", field=f"{where}.data")
    dtype = _V2_BINARY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise RequestError(
            f"{where} has binary data of datatype {_show(datatype)}; send BYTES, FP* or INT*",
            field=f"{where}.datatype",
        )
    width = int(dtype[-1])
    if len(raw) % width:
        raise RequestError(
            f"{where} has {len(raw)} bytes of {datatype}, not a whole number of values",
            field=f"{where}.data",
        )
    values: list[Any] = np.frombuffer(raw, dtype=dtype).tolist()
    return values


#: v2 datatypes a tensor may have, by what it carries.
_V2_KEY_TYPES = {"BYTES", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"}
_V2_NUMBER_TYPES = {
    "FP64",
    "FP32",
    "FP16",
    "INT64",
    "INT32",
    "INT16",
    "INT8",
    "UINT64",
    "UINT32",
    "UINT16",
    "UINT8",
}


def parse_v2(doc: Any, schema: Schema, request_id: str) -> tuple[Request, str, set[str] | None]:
    """A v2 inference request: one tensor per field, shape [N] or [N, 1]. Returns the request,
    the id to echo, and the outputs asked for (None = all)."""
    if not isinstance(doc, dict):
        raise RequestError('the body must be an object with an "inputs" list', field="body")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError('"inputs" must be a non-empty list of tensors', field="inputs")
    v2_id = doc.get("id", request_id)
    if not isinstance(v2_id, str):
        raise RequestError('"id" must be a string', field="id")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError('"parameters" must be an object', field="parameters")
    at = _parse_at(params.get("at"), "parameters.at")
    columns: dict[str, list[Any]] = {}
    n: int | None = None
    for j, tensor in enumerate(inputs):
        where = f"inputs[{j}]"
        if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str):
            raise RequestError(f"{where} must be a tensor object with a name", field=where)
        name = tensor["name"]
        datatype = tensor.get("datatype")
        shape = tensor.get("shape")
        data = tensor.get("data")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise RequestError(
                f"{where} ({name}) has no valid shape, e.g. [3]", field=f"{where}.shape"
            )
        if not isinstance(data, list):
            raise RequestError(f"{where} ({name}) has no data list", field=f"{where}.data")
        if name in columns:
            raise RequestError(f"{where} ({name}) is given twice", field=f"{where}.name")
        flat = _flatten(data)
        rows = shape[0] if shape else 1
        # rank first: the product of a long shape list is a big-integer computation
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or math.prod(shape) != len(flat):
            raise RequestError(
                f"{where} ({name}) has shape {shape} and {len(flat)} values; a field is a "
                "tensor of shape [N] or [N, 1]",
                field=f"{where}.shape",
            )
        if name in schema.keys or name in schema.passthrough:
            ok = datatype in _V2_KEY_TYPES
        elif name in schema.fields:
            ok = datatype in _V2_NUMBER_TYPES
        else:
            ok = True  # reported below as an unknown field
        if not ok:
            raise RequestError(
                f"{where} ({name}) has datatype {datatype!r}; use BYTES or an integer type for "
                "join keys and ids, FP32/FP64 for request fields",
                field=f"{where}.datatype",
            )
        if name in schema.allowed and isinstance(datatype, str):
            bad = next((x for x in flat if not _fits(datatype, x)), _FITS)
            if bad is not _FITS:
                raise RequestError(
                    f"{where} ({name}) is {datatype} but holds {_show(bad)}",
                    field=f"{where}.data",
                )
        if n is None:
            n = rows
        elif rows != n:
            raise RequestError(
                f"{where} ({name}) has {rows} rows but earlier inputs have {n}; every input "
                "carries one value per instance",
                field=f"{where}.shape",
            )
        columns[name] = flat
    assert n is not None
    instances = [{name: values[i] for name, values in columns.items()} for i in range(n)]
    request = parse_v1({"instances": instances}, schema, request_id) if n else None
    if request is None:
        raise RequestError("the inputs hold no instances", field="inputs")
    request.at = at
    outputs = doc.get("outputs")
    wanted = None
    if outputs is not None:
        if not isinstance(outputs, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
        ):
            raise RequestError('"outputs" must be a list of {"name": ...}', field="outputs")
        wanted = {o["name"] for o in outputs}
        unknown = wanted - {"score"}
        if unknown:
            raise RequestError(
                f'output {sorted(unknown)[0]!r} does not exist; the model\'s output is "score"',
                field="outputs",
            )
    return request, v2_id, wanted


_FITS = object()


def _fits(datatype: str, value: Any) -> bool:
    """Whether one element of a tensor's data is of its datatype (BYTES: a string; an integer
    type: an integer; a float type: a number, or null for a missing request field)."""
    if datatype == "BYTES":
        return isinstance(value, str)
    if datatype.startswith(("INT", "UINT")):
        return not isinstance(value, str) and _is_key(value)
    if datatype.startswith("FP"):
        return value is None or _is_number(value)
    return True  # other datatypes are refused by name above, or belong to an unknown input


def _flatten(data: list[Any]) -> list[Any]:
    """Row-major values of a nested data list (a [N, 1] tensor may come as [[a], [b]]).
    Iterative: a hostile body nests as deep as the JSON parser allows."""
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            out.append(x)
        else:
            stack.pop()
    return out
