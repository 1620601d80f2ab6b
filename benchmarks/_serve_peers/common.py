"""The work every model-serving peer does per request, through backline's Python API.

    model = FraudModel("benchmarks/.peers/project")      # opens the project, loads the champion
    request = model.parse(body_bytes)                     # the JSON body -> entities, fields, at
    scores = model.score_requests([request, ...])         # one list of floats per request
    body = model.answer(scores[0])                        # the JSON answer, as bytes

It is the same work `backline serve` does for a batch: the instances are grouped by their `at`,
each group's online features are read in one call (`project.online_features` with the join-key
rows and the request-field rows), the feature table is built (`OnlineFeatures.to_arrow()`) and
scored by the served package (`project.model("fraud@champion").score(table)`). A peer that does
not batch calls `score_requests` with one request; a batching peer with all it gathered.

Peers import this file from their own venv (torch, backline from this repo, the framework), so
it uses nothing but the standard library and backline.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PREDICT_PATH = "/v1/models/fraud:predict"
READY_PATH = "/v2/health/ready"


class BadRequest(ValueError):
    """The body cannot be scored (the peer answers 400 with this message)."""


@dataclass(slots=True)
class Parsed:
    entities: list[dict[str, Any]]
    fields: list[dict[str, Any]]
    at: datetime | None


def parse_at(value: object) -> datetime | None:
    """`at` as the API takes it: ISO 8601, a trailing Z meaning UTC; naive means UTC."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest("'at' must be an ISO 8601 string")
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"'at': {exc}") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


class FraudModel:
    """The project's online features and its champion, held for the life of the process."""

    def __init__(self, project_dir: str, spec: str = "fraud@champion", *, warm: bool = True):
        import backline
        from backline.features.online import ReadPlan

        self.project = backline.open(project_dir)
        self.service = self.project.config.train.service
        name, _, alias = spec.partition("@")
        self.model_name = name
        self.model_version = self.project.registry.get(name, alias or "champion").version
        self.scorer = self.project.model(spec)
        plan = ReadPlan(self.project.config, self.project.definitions, self.service)
        self.keys: tuple[str, ...] = tuple(plan.entity_columns)
        self.fields: tuple[str, ...] = tuple(plan.request_fields)
        self.batches = 0
        self.rows = 0
        if warm:
            self.warm_up()

    # -- per request ----------------------------------------------------------------------------

    def parse(self, body: bytes | str) -> Parsed:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise BadRequest(f"the body is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise BadRequest("the body must be a JSON object with 'instances'")
        return self.parse_doc(doc.get("instances"), doc.get("at"))

    def parse_doc(self, instances: object, at: object) -> Parsed:
        """From the body's `instances` and `at` (a peer whose framework parsed the JSON)."""
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list of objects")
        when = at if isinstance(at, datetime) else parse_at(at)
        if isinstance(when, datetime) and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        entities: list[dict[str, Any]] = []
        fields: list[dict[str, Any]] = []
        try:
            for instance in instances:
                entities.append({k: instance[k] for k in self.keys})
                fields.append({f: instance[f] for f in self.fields})
        except (KeyError, TypeError) as exc:
            raise BadRequest(f"an instance lacks {exc} or is not an object") from None
        return Parsed(entities, fields, when)

    def score_requests(self, requests: Sequence[Parsed]) -> list[list[float]]:
        """Scores for each request, reading and scoring each `at` group in one call."""
        groups: dict[datetime | None, list[int]] = {}
        for k, request in enumerate(requests):
            groups.setdefault(request.at, []).append(k)
        out: list[list[float]] = [[] for _ in requests]
        for at, members in groups.items():
            when = at if at is not None else datetime.now(UTC)
            entities = [e for k in members for e in requests[k].entities]
            fields = [f for k in members for f in requests[k].fields]
            online = self.project.online_features(
                self.service, entities, request=fields if self.fields else None, at=when
            )
            values = self.scorer.score(online.to_arrow()).astype(float).tolist()
            offset = 0
            for k in members:
                n = len(requests[k].entities)
                out[k] = values[offset : offset + n]
                offset += n
            self.batches += 1
            self.rows += len(entities)
        return out

    def answer_doc(self, scores: list[float]) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "scores": scores,
        }

    def answer(self, scores: list[float]) -> bytes:
        return json.dumps(self.answer_doc(scores), separators=(",", ":")).encode()

    # -- start-up -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Read and score batches of a few sizes once, so the first timed request does not pay
        for lazy imports, the store's connection or the model's first call."""
        row = {k: f"warmup_{k}" for k in self.keys}
        extra = {f: 1.0 for f in self.fields}
        when = datetime.now(UTC)
        for size in (1, 2, 8, 32, 128):
            parsed = Parsed([dict(row)] * size, [dict(extra)] * size, when)
            try:
                self.score_requests([parsed])
            except Exception:  # a store that refuses "now" still warmed the model's imports
                break
        self.batches = self.rows = 0


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name, "")
    return float(value) if value else default


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value else default


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)
