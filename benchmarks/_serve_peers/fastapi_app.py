"""The naive server: FastAPI, one feature read and one model call per request, no batching.

    python fastapi_app.py --project DIR --port 8102 [--mode def|async]

What a FastAPI user writes first: a pydantic model of the body, an endpoint that reads the
online features of its instances and scores them. `--mode def` (the default) declares the
endpoint with plain `def`, as FastAPI's docs advise for blocking calls, so it runs in the
threadpool; `--mode async` scores inside the event loop (no thread hop, but it blocks the loop:
the fastest an unbatched single-process server gets). uvicorn with uvloop and httptools, one
process, access log off.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import PREDICT_PATH, READY_PATH, BadRequest, FraudModel


class PredictRequest(BaseModel):
    instances: list[dict[str, Any]]
    at: datetime | None = None


class PredictResponse(BaseModel):
    model_name: str
    model_version: int
    scores: list[float]


def build(project: str, mode: str) -> FastAPI:
    app = FastAPI()
    model = FraudModel(project)

    def score(body: PredictRequest) -> dict[str, Any]:
        try:
            parsed = model.parse_doc(body.instances, body.at)
        except BadRequest as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        return model.answer_doc(model.score_requests([parsed])[0])

    if mode == "def":

        @app.post(PREDICT_PATH, response_model=PredictResponse)
        def predict(body: PredictRequest) -> dict[str, Any]:
            return score(body)

    else:

        @app.post(PREDICT_PATH, response_model=PredictResponse)
        async def predict_async(body: PredictRequest) -> dict[str, Any]:
            return score(body)

    @app.get(READY_PATH)
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--project", required=True)
    p.add_argument("--mode", choices=["def", "async"], default="def")
    args = p.parse_args()
    uvicorn.run(
        build(args.project, args.mode),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
