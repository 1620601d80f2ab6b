"""The server's OpenAPI 3 document, built from what the served model's instances carry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backline import __version__

if TYPE_CHECKING:
    from backline.serve.app import Schema

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


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(c): {
            "description": _REASONS[c],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
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


def build_spec(model: str, schema: Schema) -> dict[str, Any]:
    key = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    number = {"type": ["number", "null"]}
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
    at = {"type": "string", "format": "date-time", "description": "Score as of this time."}
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
    infer = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "inputs": {"type": "array", "minItems": 1, "items": tensor},
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

    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    timeout = {
        "name": "X-Request-Timeout-Ms",
        "in": "header",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0},
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
                        **_errors(400, 404, 413, 429, 503, 504),
                    },
                }
            },
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
                    "responses": {"200": ok(None, "Model metadata."), **_errors(404)},
                }
            },
            "/v2/models/{name}/ready": {
                "get": {
                    "parameters": [name_param],
                    "responses": {
                        "200": ok(None, "Ready."),
                        "503": ok(None, "Not ready."),
                        **_errors(404),
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
                                        "source": {"type": "string"},
                                        "rows": {
                                            "type": "array",
                                            "minItems": 1,
                                            "items": {"type": "object"},
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {"200": ok(None, "What was ingested."), **_errors(400, 404)},
                }
            },
            "/metrics": {"get": {"responses": {"200": ok(None, "Prometheus metrics.")}}},
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Instance": instance,
                "Predict": predict,
                "Scored": scored,
                "InferRequest": infer,
                "InferResponse": infer_answer,
            }
        },
    }
