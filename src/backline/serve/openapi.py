"""The server's OpenAPI 3 document, built from what the served model's instances carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backline import __version__

if TYPE_CHECKING:
    from backline.serve.parse import Schema

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}


#: The v2 routes answer errors the Open Inference Protocol's way: "error" is the message.
_V2_ERROR = {
    "type": "object",
    "required": ["error", "code"],
    "properties": {
        "error": {"type": "string"},
        "code": {"type": "string"},
        "field": {"type": "string"},
    },
}


def _errors(*codes: int, ref: str = "Error") -> dict[str, Any]:
    return {
        str(c): {
            "description": _REASONS[c],
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        }
        for c in codes
    }


_REASONS = {
    400: "The body or a header is malformed; the error names the field.",
    403: "Admin endpoint without the right token.",
    404: "Unknown model or path.",
    405: "Wrong method.",
    413: "Body larger than serve.max_body_bytes.",
    429: "Queue full; retry after Retry-After seconds.",
    503: "Not ready: the model is loading, or the server is draining.",
    504: "The request's deadline passed before it was scored.",
}


#: The datatypes an input may have (which one fits which field: app.parse_v2).
_V2_DATATYPES = (
    "BYTES", "FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32",
    "UINT16", "UINT8",
)  # fmt: skip


def build_spec(model: str, schema: Schema) -> dict[str, Any]:
    # OpenAPI 3.0 schemas: one `type` each (`nullable` for null), a boolean exclusiveMinimum
    key = {"oneOf": [{"type": "string"}, {"type": "integer", "format": "int64"}]}
    number = {"type": "number", "nullable": True}
    instance = {
        "type": "object",
        "additionalProperties": False,
        "required": [*schema.keys, *schema.fields],
        "properties": {
            **{k: key for k in schema.keys},
            **{f: number for f in schema.fields},
            **{p: key for p in schema.passthrough},
        },
    }
    at = {
        "type": "string",
        "format": "date-time",
        "nullable": True,
        "description": "Score as of this time (with a zone); default: when the batch runs.",
    }
    scalar = {
        "anyOf": [{"type": "string", "nullable": True}, {"type": "number"}, {"type": "boolean"}]
    }
    predict = {
        "oneOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["instances"],
                "properties": {
                    "instances": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"$ref": "#/components/schemas/Instance"},
                    },
                    "at": at,
                },
            },
            {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Instance"}},
            {"$ref": "#/components/schemas/Instance"},
        ]
    }
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string"},
            "data": {"type": "array"},
        },
    }
    # an input is one field of the instances: shape [N] or [N, 1], keys and ids as BYTES or an
    # integer type, request fields as a number type
    input_tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "properties": {
            "name": {"type": "string", "enum": [*schema.keys, *schema.fields, *schema.passthrough]},
            "shape": {
                "type": "array",
                "minItems": 1,
                "maxItems": 2,
                "items": {"type": "integer", "minimum": 0},
            },
            "datatype": {"type": "string", "enum": list(_V2_DATATYPES)},
            "data": {"type": "array"},
            "parameters": {"type": "object"},
        },
    }
    infer = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "items": input_tensor},
            "outputs": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
            "parameters": {"type": "object", "properties": {"at": at}},
        },
    }
    scored = {
        "type": "object",
        "required": ["model_name", "model_version", "scores", "request_id"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "integer"},
            "scores": {"type": "array", "items": {"type": "number"}},
            "request_id": {"type": "string"},
            "degraded": {"type": "boolean"},
            "warning": {"type": "string"},
        },
    }
    infer_answer = {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": tensor},
        },
    }

    def body(ref: str) -> dict[str, Any]:
        return {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
        }

    def ok(ref: str | None, text: str) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": text}
        if ref:
            answer["content"] = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}
            }
        return answer

    name_param = {  # one model per server: any other name is a 404
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "enum": [model]},
    }
    version_param = {  # the served version (it changes on a hot swap; others are a 404)
        "name": "version",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
    timeout = {
        "name": "X-Request-Timeout-Ms",
        "in": "header",
        "required": False,
        "schema": {"type": "number", "minimum": 0, "exclusiveMinimum": True},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": f"backline model server ({model})", "version": __version__},
        "paths": {
            f"/v1/models/{model}:predict": {
                "post": {
                    "summary": "Score one instance, a list, or {instances, at}.",
                    "parameters": [timeout],
                    "requestBody": body("Predict"),
                    "responses": {
                        "200": ok("Scored", "Scores, with the model version that made them."),
                        **_errors(400, 404, 413, 429, 503, 504),
                    },
                }
            },
            "/v2/models/{name}/infer": {
                "post": {
                    "summary": "KServe Open Inference Protocol v2 inference.",
                    "parameters": [name_param, timeout],
                    "requestBody": body("InferRequest"),
                    "responses": {
                        "200": ok("InferResponse", "The score tensor."),
                        **_errors(400, 404, 413, 429, 503, 504, ref="V2Error"),
                    },
                }
            },
            "/v2/models/{name}/versions/{version}/infer": {
                "post": {
                    "summary": "v2 inference, pinned to a version (404 unless it is served).",
                    "parameters": [name_param, version_param, timeout],
                    "requestBody": body("InferRequest"),
                    "responses": {
                        "200": ok("InferResponse", "The score tensor."),
                        **_errors(400, 404, 413, 429, 503, 504, ref="V2Error"),
                    },
                }
            },
            "/v2": {"get": {"responses": {"200": ok(None, "Server metadata.")}}},
            "/v2/health/live": {"get": {"responses": {"200": ok(None, "The process is up.")}}},
            "/v2/health/ready": {
                "get": {
                    "responses": {
                        "200": ok(None, "Model loaded and warmed."),
                        "503": ok(None, "Loading or draining."),
                    }
                }
            },
            "/v2/models/{name}": {
                "get": {
                    "parameters": [name_param],
                    "responses": {
                        "200": ok(None, "Model metadata."),
                        **_errors(404, ref="V2Error"),
                    },
                }
            },
            "/v2/models/{name}/ready": {
                "get": {
                    "parameters": [name_param],
                    "responses": {
                        "200": ok(None, "Ready."),
                        "503": ok(None, "Not ready."),
                        **_errors(404, ref="V2Error"),
                    },
                }
            },
            "/v1/features:push": {
                "post": {
                    "summary": "Push fresh rows into a source and the online store.",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["source", "rows"],
                                    "properties": {
                                        "source": {"type": "string", "minLength": 1},
                                        "rows": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {
                                                "type": "object",
                                                "minProperties": 1,
                                                "additionalProperties": scalar,
                                            },
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": ok(None, "What was ingested (and quarantined)."),
                        **_errors(400, 404, 413),
                    },
                }
            },
            "/metrics": {"get": {"responses": {"200": ok(None, "Prometheus metrics.")}}},
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "V2Error": _V2_ERROR,
                "Instance": instance,
                "Predict": predict,
                "Scored": scored,
                "InferRequest": infer,
                "InferResponse": infer_answer,
            }
        },
    }
