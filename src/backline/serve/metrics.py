"""The server's Prometheus metrics, per model version, with Prometheus naming.

With `--workers N` every worker process writes its samples to files in one folder
(prometheus_client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`), and `/metrics` on any
worker answers the sum over all of them, so one scrape of the port sees the whole server.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: Seconds: from 100 µs (a warm batch of one) to 10 s (a drain).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Every metric the server exports, registered in its own registry (so several servers in
    one process, as in the tests, do not collide)."""

    def __init__(self) -> None:
        # labelled children, looked up once: `labels()` costs more than the observation
        self._answered: dict[tuple[str, int | None, int], tuple[Any, Any]] = {}
        self._batch: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        mv = ("model", "version")
        self.requests = Counter(
            "backline_requests", "Requests answered, by HTTP status.", [*mv, "code"], registry=r
        )
        self.request_duration = Histogram(
            "backline_request_duration_seconds",
            "From a request's arrival to its answer (end to end in the server).",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_duration = Histogram(
            "backline_queue_duration_seconds",
            "Time a request waited for its batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.feature_duration = Histogram(
            "backline_feature_fetch_duration_seconds",
            "Online feature read for one batch (one round trip, plus on-demand features).",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_duration = Histogram(
            "backline_compute_duration_seconds",
            "Scoring one batch with the model.",
            mv,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "backline_batch_size", "Instances per batch.", mv, buckets=BATCH_BUCKETS, registry=r
        )
        self.rejections = Counter(
            "backline_requests_rejected",
            "Requests refused before scoring: queue_full (429) or deadline (504).",
            ["reason"],
            registry=r,
        )
        self.store_errors = Counter(
            "backline_online_store_errors",
            "Batches whose online feature read failed (scored degraded, with features missing).",
            registry=r,
        )
        self.log_dropped = Counter(
            "backline_prediction_log_dropped",
            "Prediction-log rows dropped because the log's buffer was full.",
            registry=r,
        )
        self.swaps = Counter(
            "backline_model_swaps", "Times a worker switched to another model version.", registry=r
        )
        gauge: dict[str, Any] = {"registry": r}
        if multiprocess_dir():
            gauge["multiprocess_mode"] = "livesum"
        self.depth = Gauge(
            "backline_queue_depth", "Instances waiting for a batch (summed over workers).", **gauge
        )
        self.ready = Gauge(
            "backline_ready", "Workers that are ready (model loaded and warmed).", **gauge
        )
        served: dict[str, Any] = {"registry": r}
        if multiprocess_dir():
            served["multiprocess_mode"] = "max"
        self.served_version = Gauge(
            "backline_model_version_served",
            "The version each model is served at.",
            ["model"],
            **served,
        )

    # -- observations (thread-safe: prometheus_client locks) -------------------------------------

    def answered(self, model: str, version: int | None, code: int, seconds: float) -> None:
        key = (model, version, code)
        children = self._answered.get(key)
        if children is None:
            v = "" if version is None else str(version)
            children = self._answered[key] = (
                self.requests.labels(model, v, str(code)),
                self.request_duration.labels(model, v) if code == 200 else None,
            )
        children[0].inc()
        if children[1] is not None:
            children[1].observe(seconds)

    def batch(self, model: str, version: int, rows: int, fetch_s: float, compute_s: float) -> None:
        key = (model, version)
        children = self._batch.get(key)
        if children is None:
            v = str(version)
            children = self._batch[key] = (
                self.batch_size.labels(model, v),
                self.feature_duration.labels(model, v),
                self.compute_duration.labels(model, v),
            )
        children[0].observe(rows)
        children[1].observe(fetch_s)
        children[2].observe(compute_s)

    def queued(self, seconds: float) -> None:
        self.queue_duration.observe(seconds)

    def queue_depth(self, rows: int) -> None:
        self.depth.set(rows)

    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def store_error(self) -> None:
        self.store_errors.inc()

    def dropped(self, rows: int) -> None:
        self.log_dropped.inc(rows)

    def exposition(self) -> bytes:
        """The text a scrape gets: this process's metrics, or every worker's in multiprocess
        mode."""
        folder = multiprocess_dir()
        if folder:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=folder)
            return generate_latest(registry)
        return generate_latest(self.registry)
