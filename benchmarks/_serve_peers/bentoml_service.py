"""BentoML: an HTTP service in front of a scoring service with adaptive batching.

    FRAUD_PROJECT=DIR bentoml serve bentoml_service:FraudAPI --host 127.0.0.1 --port 8104

BentoML batches only the calls of a `batchable=True` API, and such an API takes one list and
answers one list; a body `{"instances": [...], "at": ...}` answered by `{"model_name": ...,
"scores": [...]}` therefore needs the layout BentoML's docs give for batching behind another
service: `FraudAPI` parses the body (its pydantic model) and calls `FraudScorer.score` through
`bentoml.depends`; the scorer's dispatcher gathers the rows of concurrent calls (up to
max_batch_size rows, holding them no longer than its max_latency_ms budget allows) and reads
their online features and scores them together, the same work as backline's engine. Each
service is one worker process; `bentoml serve` adds its supervisor.

Environment (read at import, by every process):
    FRAUD_PROJECT               the backline project (required)
    FRAUD_BENTO_MAX_BATCH       max_batch_size (BentoML's default: 100)
    FRAUD_BENTO_MAX_LATENCY_MS  max_latency_ms (BentoML's default: 60000)
    FRAUD_BENTO_LEAN=1          metrics and access log off in both services (tuned variant)
"""

from __future__ import annotations

import os
import sys
from typing import Any

import bentoml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import BadRequest, env_int

PROJECT = os.environ.get("FRAUD_PROJECT", "")
MAX_BATCH = env_int("FRAUD_BENTO_MAX_BATCH", 100)
MAX_LATENCY_MS = env_int("FRAUD_BENTO_MAX_LATENCY_MS", 60000)
LEAN = os.environ.get("FRAUD_BENTO_LEAN", "") == "1"

CONFIG: dict[str, Any] = {"workers": 1}
if LEAN:
    CONFIG["metrics"] = {"enabled": False}
    CONFIG["logging"] = {"access": {"enabled": False}}

# The caller's client to this service is replaced every runner_connection.max_requests calls
# (default 100), and the old one closed while other calls are still in flight on it: under
# concurrent load a few percent of the calls fail with 500 (aiohttp "Server disconnected",
# "Cannot write to closing transport"; bentoml/BentoML#4971). Both variants keep one client.
SCORER_CONFIG = {**CONFIG, "runner_connection": {"max_requests": 10**9, "max_age": 10.0**9}}


@bentoml.service(**SCORER_CONFIG)
class FraudScorer:
    def __init__(self) -> None:
        from common import FraudModel

        if not PROJECT:
            raise RuntimeError("set FRAUD_PROJECT to the backline project's folder")
        self.model = FraudModel(PROJECT)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def score(self, rows: list[dict[str, Any]]) -> list[float | None]:
        """One score per row {"instance": {...}, "at": ISO or null}; None for a row that
        cannot be read (the front answers 400)."""
        parsed: list[Any] = []
        ok: list[int] = []
        for i, row in enumerate(rows):
            try:
                parsed.append(self.model.parse_doc([row["instance"]], row.get("at")))
                ok.append(i)
            except (BadRequest, KeyError, TypeError):
                pass
        out: list[float | None] = [None] * len(rows)
        for i, scores in zip(ok, self.model.score_requests(parsed), strict=True):
            out[i] = scores[0]
        return out


@bentoml.service(**CONFIG)
class FraudAPI:
    scorer = bentoml.depends(FraudScorer)

    def __init__(self) -> None:
        import backline

        with backline.open(PROJECT) as project:
            self.model_name = "fraud"
            self.model_version = project.registry.get("fraud", "champion").version

    @bentoml.api(route="/v1/models/fraud:predict")
    async def predict(self, instances: list[dict[str, Any]], at: str | None = None) -> dict:
        if not instances:
            raise bentoml.exceptions.InvalidArgument("'instances' must not be empty")
        rows = [{"instance": instance, "at": at} for instance in instances]
        scores = await self.scorer.to_async.score(rows)
        if any(s is None for s in scores):
            raise bentoml.exceptions.InvalidArgument("an instance lacks a join key or field")
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "scores": scores,
        }
