"""Replaying recorded transactions through a model server, and the log rows a server would write.

    replay_day(port, day_rows, latencies_ms=latencies)   # push each run of events, score each row
    wait_logged(root, rows)                                # the server logs in the background
    rows = score_offline(root, more_rows, version=1)       # the same rows, scored without HTTP
    write_log(root, rows)                                  # appended as the server appends

Used by `backline demo` and by the monitoring tests (tests/monitor/replay.py).

Each request carries `at` = its transaction's time, so the server reads features as of that
moment and logs `scored_at` = event time: the monitor's windows are days of the data. Before
scoring, the events are pushed through the server's push path (`POST /v1/features:push`) in runs
in which no card or merchant appears twice: the online store answers an entity's latest-value
view only at or after its newest stored event.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from backline.core.errors import BacklineError
from backline.data.offline_store import PREDICTION_COLUMNS, PREDICTIONS_DIR

if TYPE_CHECKING:
    from backline.project import Project


def runs(keys: Sequence[Sequence[str]]) -> list[tuple[int, int]]:
    """Split rows in time order into runs [a, b) in which no entity appears twice; `keys`
    holds each row's entity keys (its card and its merchant). Pushing a run and then scoring
    its rows reads every entity at or after its newest stored event, which the online store
    needs (it trims an entity's events to its longest window before its newest one)."""
    out: list[tuple[int, int]] = []
    seen: set[str] = set()
    start = 0
    for i, row in enumerate(keys):
        if not seen.isdisjoint(row):
            out.append((start, i))
            seen, start = set(), i
        seen.update(row)
    if start < len(keys):
        out.append((start, len(keys)))
    return out


def replay_day(
    port: int,
    rows: pa.Table,
    model: str = "fraud",
    *,
    latencies_ms: list[float] | None = None,
    versions: list[int] | None = None,
) -> list[float]:
    """Push `rows` (transactions in time order) through the server on 127.0.0.1:`port` and
    score each one at its own time; the scores in row order. Raises BacklineError on any
    answer but 200. `latencies_ms` and `versions`, when given, get each prediction's round
    trip and the model version that answered it."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    records = rows.to_pylist()
    scores: list[float] = []
    try:
        keys = [(f"card:{r['card_id']}", f"merchant:{r['merchant_id']}") for r in records]
        for a, b in runs(keys):
            run = records[a:b]
            pushed = _post(
                conn,
                "/v1/features:push",
                {"source": "transactions", "rows": [_jsonable(r) for r in run]},
            )
            if pushed["rows_accepted"] != len(run):
                raise BacklineError(f"the server accepted {pushed} of {len(run)} pushed rows")
            for r in run:
                instance = {
                    "card_id": r["card_id"],
                    "merchant_id": r["merchant_id"],
                    "amount": r["amount"],
                    "transaction_id": r["transaction_id"],
                }
                started = time.perf_counter()
                answer = _post(
                    conn,
                    f"/v1/models/{model}:predict",
                    {"instances": [instance], "at": iso(r["event_time"])},
                )
                if latencies_ms is not None:
                    latencies_ms.append((time.perf_counter() - started) * 1000.0)
                if versions is not None:
                    versions.append(int(answer["model_version"]))
                scores.extend(answer["scores"])
    finally:
        conn.close()
    return scores


def _post(conn: http.client.HTTPConnection, path: str, body: Any) -> Any:
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    text = answer.read().decode()
    if answer.status != 200:
        raise BacklineError(f"POST {path}: {answer.status} {text}")
    return json.loads(text)


def iso(moment: datetime) -> str:
    """`moment` as the server reads times: ISO 8601 in UTC with a Z."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def logged(root: Path) -> int:
    """Rows in the project's prediction log (from the files' footers: opening the `predictions`
    view would bind every file of the log and of the pushed batches)."""
    folder = root / ".backline" / "offline" / PREDICTIONS_DIR
    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("date=*/*.parquet"))


def wait_logged(root: Path, rows: int, timeout: float = 30.0) -> None:
    """Wait until the prediction log holds `rows` rows (the server writes in the background);
    BacklineError if it holds another number by `timeout`."""
    deadline = time.monotonic() + timeout
    while (n := logged(root)) < rows:
        if time.monotonic() > deadline:
            raise BacklineError(f"{n} of {rows} predictions logged after {timeout:g} s")
        time.sleep(0.05)
    if n != rows:
        raise BacklineError(f"{n} predictions logged, {rows} sent")


def score_offline(
    root: Path,
    transactions: pa.Table,
    model: str = "fraud",
    version: int = 1,
    *,
    project: Project | None = None,
) -> pa.Table:
    """Prediction-log rows for `transactions` (already ingested into the project), as the
    server would log them when scoring each at its own time: the same features (a point-in-time
    join equals an online read at that time) and the same package (training equals serving;
    tests/serve/test_serving.py holds the server to both). `scored_at` is the event time.
    `project`: an open handle on `root` to use instead of opening one."""
    import backline

    entities = transactions.select(["transaction_id", "card_id", "merchant_id", "amount"])
    entities = entities.append_column("event_timestamp", transactions.column("event_time"))
    if project is None:
        with backline.open(root) as opened:
            features = opened.historical_features(entities, "fraud_v1")
            scores = opened.model(f"{model}:{version}").score(features)
    else:
        features = project.historical_features(entities, "fraud_v1")
        scores = project.model(f"{model}:{version}").score(features)
    n = features.num_rows
    columns: dict[str, Any] = {
        "request_id": [f"offline-{i}" for i in range(n)],
        "scored_at": features.column("event_timestamp"),
        "model": [model] * n,
        "model_version": [version] * n,
        "score": scores.astype("float64"),
        "latency_ms": [1.0] * n,
        "queue_ms": [0.0] * n,
        "batch_size": [1] * n,
        "degraded": [False] * n,
    }
    table = pa.table(
        {
            k: pa.array(v, PREDICTION_COLUMNS[k]) if isinstance(v, list) else v
            for k, v in columns.items()
        }
    )
    table = table.set_column(
        1, "scored_at", table.column("scored_at").cast(PREDICTION_COLUMNS["scored_at"])
    )
    table = table.set_column(4, "score", table.column("score").cast(pa.float64()))
    for name in ("card_id", "merchant_id", "transaction_id", "amount"):
        table = table.append_column(name, features.column(name))
    skip = {"transaction_id", "card_id", "merchant_id", "amount", "event_timestamp"}
    for name in features.column_names:
        if name not in skip:
            table = table.append_column(f"feature__{name}", features.column(name))
    return table


def write_log(root: Path, rows: pa.Table, worker: str = "offline") -> None:
    """Append `rows` to the project's prediction log the way the server does (PredictionLog)."""
    from backline.core.config import load_config
    from backline.serve.predlog import PredictionLog

    if rows.num_rows == 0:
        return
    cfg = load_config(root)
    with PredictionLog(cfg, worker=worker, capacity=rows.num_rows, flush_every=60.0) as log:
        appended = log.append(rows)
        if appended != rows.num_rows:
            raise BacklineError(f"the prediction log took {appended} of {rows.num_rows} rows")
