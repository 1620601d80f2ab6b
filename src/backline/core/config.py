"""backline.toml as typed, frozen dataclasses.

Every knob is a field with a docstring under it. Loading rejects unknown keys (with a
suggestion), wrong types and bad combinations, naming the key, the value and the fix.

A field's allowed values are declared, not checked by hand: a ``Literal[...]`` type lists the
choices and ``Annotated[int, Bound(min=1)]`` gives a numeric range. The loader reads both and
refuses a value outside them with one message format. ``__post_init__`` keeps only the checks
that are not about one field alone (min above max, a primary key that is not a column) and the
format checks (a size, a regular expression, an encoding).
An array of tables (``[[monitor.alerts]]``) is a tuple of frozen dataclasses, each table built
and checked like a section; a field named after a Python keyword (``for_``) is written without
its underscore (``for = 2``); a union (``timedelta | int``) takes the first type that fits.
Top-level sections can be overridden from the environment as BACKLINE_<SECTION>_<KEY>,
for example ``BACKLINE_ONLINE_URI=redis://127.0.0.1:6379/0``.

    cfg = load_config(Path("my-project"))
    cfg.offline.uri          # 'file://.backline/offline'
    cfg.sources["transactions"].primary_key
"""

from __future__ import annotations

import dataclasses
import keyword
import math
import os
import re
import tomllib
import types
import typing
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from backline.core.durations import parse_duration, parse_utc
from backline.core.errors import BacklineError, ConfigError
from backline.core.suggest import did_you_mean
from backline.core.uris import StoreURI, parse_uri

CONFIG_FILE = "backline.toml"

Format = Literal["auto", "csv", "jsonl", "parquet"]
FORMATS: tuple[str, ...] = typing.get_args(Format)
ColumnType = Literal["string", "int64", "float64", "bool", "timestamp", "date"]
"""The column types, as core/types.py's COLUMN_TYPES lists them (a test keeps the two equal)."""
# Added to every stored row: which batch brought it, when, and its partition.
RESERVED_COLUMNS = ("batch_id", "ingested_at", "event_date", "source")


@dataclass(frozen=True)
class Bound:
    """The range a numeric field allows, declared as ``Annotated[int, Bound(min=1)]`` and
    checked by the loader. Ends are inclusive unless marked exclusive; `why` is said after the
    range in the error (and in docs/configuration.md)."""

    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False
    why: str = ""

    def admits(self, value: float) -> bool:
        if self.min is not None and (value <= self.min if self.min_exclusive else value < self.min):
            return False
        return self.max is None or (value < self.max if self.max_exclusive else value <= self.max)

    def describe(self) -> str:
        """'at least 1', 'above 0 and below 1', 'at least 1 and at most 1073741824 (1 GiB)'."""
        parts = []
        if self.min is not None:
            parts.append(f"{'above' if self.min_exclusive else 'at least'} {self.min}")
        if self.max is not None:
            parts.append(f"{'below' if self.max_exclusive else 'at most'} {self.max}")
        text = " and ".join(parts)
        return f"{text} ({self.why})" if self.why else text


@dataclass(frozen=True)
class ProjectSection:
    name: str = "backline-project"
    """Shown in reports and used as a prefix for metric names."""


@dataclass(frozen=True)
class OfflineSection:
    uri: str = "file://.backline/offline"
    """Where accepted rows, the quarantine and batch statistics live (Hive-partitioned Parquet).
    A path after file:// that does not start with / is relative to the project folder."""

    catalog: str = "sqlite:///.backline/catalog.db"
    """The catalog that makes batches visible atomically: which files belong to which committed
    batch, content hashes for idempotent re-ingest, batch statistics."""


@dataclass(frozen=True)
class OnlineSection:
    uri: str = "sqlite:///.backline/online.db"
    """Online feature store: sqlite:///PATH (embedded) or redis://HOST:PORT/DB."""


@dataclass(frozen=True)
class RegistrySection:
    uri: str = "sqlite:///.backline/registry.db"
    """Model registry and run history: sqlite:///PATH or postgresql://USER@HOST:PORT/DB."""


@dataclass(frozen=True)
class IngestSection:
    max_future: timedelta = timedelta(days=1)
    """Timestamps later than ingest time plus this are quarantined as timestamp_in_future."""

    duckdb_threads: Annotated[int, Bound(min=1)] = 1
    """Threads DuckDB may use while validating (1 keeps ingest to one core)."""

    max_value_bytes: Annotated[int, Bound(min=1, max=1 << 30, why="1 GiB")] = 16 * 1024 * 1024
    """Biggest single value (in bytes, as UTF-8) of a declared column, in any input format. A
    bigger one quarantines its row as too_long, naming the column; a column's own max_length
    (characters) applies below it. Default 16 MiB."""


@dataclass(frozen=True)
class FeaturesSection:
    engine: Literal["duckdb", "spark"] = "duckdb"
    """Engine for training sets and materialization: duckdb (embedded) or spark."""

    memory_limit: str = "3GB"
    """Most memory DuckDB may hold while building a training set; beyond it, it spills to disk."""

    threads: Annotated[int, Bound(min=0)] = 0
    """Threads for the feature engine; 0 means one per core."""

    spark_master: str = "local[2]"
    """Spark master URL when engine = "spark"."""

    def __post_init__(self) -> None:
        if not re.fullmatch(
            r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", self.memory_limit.strip()
        ):
            raise ConfigError(
                f"backline.toml: features.memory_limit = {self.memory_limit!r} must be a size such "
                "as '3GB' or '512MB'."
            )


@dataclass(frozen=True)
class TrainSection:
    service: str = "fraud_v1"
    """Feature service the model consumes."""

    entity_source: str = "transactions"
    """Source whose rows are the training examples (each row scored at its event time)."""

    label_source: str = "labels"
    """Source holding the labels, joined on the entity source's primary key."""

    label_column: str = "is_fraud"
    """Boolean label column of the label source."""

    label_time: str = "label_time"
    """When each label arrived: a label counts only if it arrived by the training cutoff."""

    cutoff: str = ""
    """Training cutoff (UTC ISO time); empty means the latest label arrival in the store."""

    holdout: timedelta = timedelta(days=5)
    """The last span of labelled examples before the cutoff, held out for evaluation."""

    max_steps: Annotated[int, Bound(min=1)] = 2000
    """Optimizer steps (batches) to train for."""

    batch_size: Annotated[int, Bound(min=1)] = 1024
    """Examples per step (per worker under --nproc)."""

    learning_rate: Annotated[float, Bound(min=0, min_exclusive=True)] = 0.003
    """Peak learning rate (AdamW, cosine decay after a short warm-up)."""

    hidden: tuple[int, ...] = (128, 64)
    """Hidden layer sizes of the MLP."""

    embedding_dim: Annotated[int, Bound(min=1)] = 8
    """Embedding size of each categorical feature."""

    seed: int = 0
    """Seed for data order, initialisation and dropout: same seed, same model."""

    checkpoint_every: Annotated[int, Bound(min=1)] = 200
    """Write a checkpoint every this many steps (and on SIGTERM)."""

    keep_checkpoints: Annotated[
        int, Bound(min=2, why="the newest may be the one being written when a run dies")
    ] = 3
    """Checkpoints kept; at least 2, since the newest may be the one being written."""

    target_fpr: Annotated[float, Bound(min=0, max=1, min_exclusive=True, max_exclusive=True)] = 0.01
    """False-positive rate at which recall is reported."""

    weight_decay: Annotated[float, Bound(min=0)] = 0.01
    """AdamW weight decay (decoupled L2 on the weights)."""

    warmup_steps: Annotated[int, Bound(min=0)] = 100
    """Steps of linear learning-rate warm-up before the cosine decay (capped at max_steps)."""

    dropout: Annotated[float, Bound(min=0, max=1, max_exclusive=True)] = 0.0
    """Dropout after each hidden layer; 0 turns it off. Seeded, so runs stay reproducible."""

    min_category_count: Annotated[int, Bound(min=1)] = 5
    """A categorical value becomes a vocabulary entry only if the training split holds it at
    least this often; rarer and unseen values share index 0 (unknown)."""

    max_restarts: Annotated[int, Bound(min=0)] = 3
    """Under --nproc N, how often torchrun restarts the worker group after a worker dies; each
    restart resumes from the newest good checkpoint."""


@dataclass(frozen=True)
class GateSection:
    min_auc_pr: float = 0.0
    """Absolute floor for the candidate's AUC-PR on the evaluation set."""

    min_recall_at_fpr: float = 0.0
    """Absolute floor for recall at train.target_fpr."""

    non_inferiority_margin: float = 0.01
    """The candidate may trail the champion's AUC-PR by at most this (lower confidence bound)."""

    bootstrap_samples: Annotated[int, Bound(min=100)] = 1000
    """Bootstrap resamples for the confidence intervals."""

    confidence: Annotated[float, Bound(min=0.5, max=1, min_exclusive=True, max_exclusive=True)] = (
        0.95
    )
    """Confidence level of the intervals."""

    max_latency_ms: float = 5.0
    """Budget for scoring one request with the serving artifact (p99, batch of 1)."""

    max_artifact_mb: float = 50.0
    """Budget for the size of the serving artifact."""


@dataclass(frozen=True)
class ServeSection:
    host: str = "127.0.0.1"
    """Address `backline serve` binds; 0.0.0.0 exposes it beyond this machine."""

    port: Annotated[int, Bound(min=0, max=65535)] = 8080
    """TCP port; 0 picks a free one (printed at start)."""

    workers: Annotated[int, Bound(min=1, max=64)] = 1
    """Server processes sharing the port."""

    model: str = ""
    """What to serve: NAME@ALIAS, NAME@VERSION or NAME; empty = the project's model at champion."""

    max_batch: Annotated[int, Bound(min=1, max=65536)] = 256
    """Largest batch the engine scores in one call (also the largest warm-up bucket)."""

    max_queue: Annotated[int, Bound(min=1)] = 2048
    """Requests a worker holds waiting for the engine; past it, 429 with Retry-After."""

    timeout_ms: Annotated[float, Bound(min=0, min_exclusive=True)] = 1000.0
    """Deadline of a request without X-Request-Timeout-Ms; a request past it gets 504 unscored."""

    max_body_bytes: Annotated[int, Bound(min=1024)] = 1048576
    """Largest request body accepted; a bigger one gets 413."""

    drain_timeout: timedelta = timedelta(seconds=30)
    """After SIGTERM, how long queued and in-flight requests may take before the process exits."""

    swap_poll: timedelta = timedelta(seconds=2)
    """How often each worker checks whether the served alias moved (hot swap)."""

    threads: Annotated[int, Bound(min=1, max=256)] = 1
    """Torch threads per worker. One worker per core with one thread each serves best: a second
    thread spins against the other workers and the HTTP loop (measured: batch 8 scored in 2 ms
    with 1 thread, 30 ms with 2 on a loaded 2-core machine)."""

    device: Literal["cpu", "cuda"] = "cpu"
    """Where the model runs. cuda pads every batch to a bucket (1, 2, 4, ... max_batch) and
    replays one captured CUDA graph per bucket (docs/gpu.md)."""

    variant: Literal["served", "fp32", "int8", "onnx"] = "served"
    """Which program of the package to run; served = what the package chose."""

    prediction_log: bool = True
    """Append every scored request to the offline store (table `predictions`)."""

    log_buffer: Annotated[int, Bound(min=1)] = 100000
    """Prediction-log rows held before a flush; past it, new rows are dropped and counted."""

    log_flush: timedelta = timedelta(seconds=1)
    """Longest time a prediction-log row waits in memory before it is written."""


@dataclass(frozen=True)
class PipelineSection:
    landing: str = "landing"
    """Folder where new data lands, relative to the project folder: `backline run` ingests the
    .csv, .jsonl and .parquet files under LANDING/<source>/, each file as its own batch. A file
    whose content was ingested before is not ingested again."""

    model: str = "fraud"
    """Registry model name the pipeline trains, gates and promotes."""

    def __post_init__(self) -> None:
        if not self.landing.strip():
            raise ConfigError(
                f'{CONFIG_FILE}: pipeline.landing is empty; name a folder, e.g. landing = "landing".'
            )
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.model):
            raise ConfigError(
                f"{CONFIG_FILE}: pipeline.model = {self.model!r} must be letters, digits, _, . "
                'and - (a registry model name), e.g. model = "fraud".'
            )

    def landing_dir(self, root: Path) -> Path:
        """The landing folder, resolved against the project folder `root`."""
        path = Path(self.landing).expanduser()
        return path if path.is_absolute() else root / path


_CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")


@dataclass(frozen=True)
class ScheduleSection:
    """When `backline schedule` runs the pipeline, how it retries, and which runs alerts start
    (docs/scheduling.md). Without `cron` the pipeline is not scheduled."""

    cron: str = ""
    """When scheduled runs happen: five cron fields read in `timezone`, e.g. "0 2 * * *" for
    02:00 every day, or @daily, @hourly and so on. Empty: the pipeline is not scheduled."""

    timezone: str = "UTC"
    """IANA zone the cron fields are read in, e.g. "Europe/London"; logical times are UTC."""

    catchup: bool = False
    """Run every time missed while no scheduler ran (true), or only the newest (false: the
    missed ones are reported, and `backline backfill` runs them if they matter)."""

    until: str = ""
    """The last step a scheduled run goes to (with the steps it needs); empty: every step."""

    max_attempts: Annotated[int, Bound(min=1, max=100)] = 3
    """Attempts per logical time, the first included; only a retryable failure (a store that
    was down, a disk error) is tried again, never a user error."""

    backoff_base: timedelta = timedelta(seconds=30)
    """Wait before the second attempt."""

    backoff_factor: Annotated[float, Bound(min=1)] = 2.0
    """Each further wait is this many times the one before."""

    backoff_max: timedelta = timedelta(minutes=10)
    """No wait between attempts is longer than this."""

    lease_ttl: timedelta = timedelta(minutes=3)
    """How long a scheduler's claim on a run lasts unless renewed (every third of it); another
    scheduler takes a run over once its holder missed renewing it this long."""

    alert_runs: bool = True
    """Start a run when the monitor asks for retraining (an alert rule with retrain = true)."""

    alert_cooldown: timedelta = timedelta(hours=6)
    """At least this long between two alert-triggered runs of the model."""

    poll: timedelta = timedelta(minutes=1)
    """How often a waiting `backline schedule` looks for new retraining requests."""

    def __post_init__(self) -> None:
        where = f"{CONFIG_FILE}: schedule"
        expr = " ".join(self.cron.split())
        if expr:
            if not (len(expr.split(" ")) == 5 or expr.lower() in _CRON_ALIASES):
                raise ConfigError(
                    f"{where}.cron = {self.cron!r} is not a cron expression. Write five fields "
                    '(minute hour day-of-month month day-of-week), e.g. cron = "0 2 * * *" for '
                    "02:00 every day, or @daily or @hourly."
                )
            from croniter import croniter
            from croniter.croniter import CroniterError

            try:
                croniter(expr, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
            except CroniterError as exc:
                raise ConfigError(
                    f"{where}.cron = {self.cron!r} does not parse or never fires ({exc}). Fix "
                    'the field it names, e.g. cron = "0 2 * * *" for 02:00 every day.'
                ) from None
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"{where}.timezone = {self.timezone!r} is not an IANA zone. Write a name such "
                'as timezone = "UTC", "Europe/London" or "America/New_York".'
            ) from None
        for key in ("backoff_base", "alert_cooldown"):  # 0 is allowed: no wait
            if getattr(self, key) < timedelta(0):
                raise ConfigError(f'{where}.{key} must not be negative, e.g. {key} = "30s".')
        for key in ("backoff_max", "lease_ttl", "poll"):
            if getattr(self, key) <= timedelta(0):
                raise ConfigError(f'{where}.{key} must be above 0, e.g. {key} = "3m".')
        if self.backoff_max < self.backoff_base:
            raise ConfigError(
                f"{where}.backoff_max = {self.backoff_max} is below backoff_base = "
                f"{self.backoff_base}; raise backoff_max or lower backoff_base."
            )

    @property
    def scheduled(self) -> bool:
        """Whether the project has a schedule (a cron expression)."""
        return bool(self.cron.strip())


AlertOp = Literal[">", ">=", "<", "<="]
NotifierKind = Literal["alertmanager", "webhook", "log"]


@dataclass(frozen=True)
class Spelling:
    """How to write a value whose type is a union (``Annotated[timedelta | int, Spelling(...)]``),
    said by the error that refuses a value none of the union's types accepts."""

    text: str


@dataclass(frozen=True)
class AlertRuleSpec:
    """One ``[[monitor.alerts]]`` table: a threshold on a metric the monitor publishes per window.

    The states and the exact meaning of `for` and `keep_firing_for` are in docs/alerts.md and
    backline/monitor/alerts.py."""

    name: str
    """The alert's name (Alertmanager's `alertname`); unique among the rules."""

    metric: str
    """The metric compared, as the monitor publishes it per window: drift.features_drifted,
    drift.score, performance.auc_pr_drop, label_coverage, latency_p99_ms, ... A metric published
    per label set (drift.score per feature) gets one alert per label set."""

    op: AlertOp
    """How the metric is compared with the threshold; the rule breaches when `metric op threshold`."""

    threshold: float
    """The value compared against."""

    for_: Annotated[int, Bound(min=0)] = 0
    """Written `for`. Windows the breach must go on after the first breaching window before the
    alert fires (pending meanwhile): 0 fires on the first breaching window, 2 on the third in a
    row, as Prometheus's `for: 2 × window`."""

    keep_firing_for: Annotated[int, Bound(min=0)] = 0
    """Windows a firing alert keeps firing after its metric stops breaching: 0 resolves on the
    first clear window, 2 on the third clear window in a row."""

    severity: str = "warning"
    """The `severity` label Alertmanager routes on: critical, warning, info, or your own."""

    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on the alert, e.g. { team = "fraud" }."""

    annotations: Mapping[str, str] = field(default_factory=dict)
    """Text for people, e.g. { summary = "$value features drifted" }; $value, $threshold,
    $metric and the series' labels ($feature) are filled in."""

    retrain: bool = False
    """Firing asks for a retraining run (at most once per monitor.retrain_cooldown)."""

    def __post_init__(self) -> None:
        where = f"{CONFIG_FILE}: [[monitor.alerts]] name = {self.name!r}"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ConfigError(
                f"{CONFIG_FILE}: [[monitor.alerts]] name = {self.name!r} must be letters, digits "
                'and _ (not starting with a digit), e.g. name = "FeatureDrift".'
            )
        if not re.fullmatch(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*", self.metric):
            raise ConfigError(
                f"{where}: metric = {self.metric!r} must be lower-case words joined by . or _, "
                'e.g. metric = "drift.features_drifted".'
            )
        if not math.isfinite(self.threshold):
            raise ConfigError(f"{where}: threshold = {self.threshold} must be a finite number.")
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.severity):
            raise ConfigError(
                f"{where}: severity = {self.severity!r} must be a lower-case word such as "
                '"critical", "warning" or "info".'
            )
        for kind, table in (("labels", self.labels), ("annotations", self.annotations)):
            for key in table:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or key.startswith("__"):
                    raise ConfigError(
                        f"{where}: {kind} key {key!r} must be letters, digits and _ (a "
                        "Prometheus label name). Rename it."
                    )
        reserved = {"alertname", "severity"} & set(self.labels)
        if reserved:
            raise ConfigError(
                f"{where}: labels sets {sorted(reserved)[0]!r}, which the rule's own name and "
                "severity keys set. Remove it from labels."
            )


@dataclass(frozen=True)
class NotifierSpec:
    """One ``[[monitor.notify]]`` table: where alerts that fire or resolve are sent."""

    kind: NotifierKind
    """alertmanager (POST url/api/v2/alerts), webhook (Alertmanager's webhook payload, version 4,
    POSTed to url) or log (JSON lines appended to path)."""

    url: str = ""
    """alertmanager: Alertmanager's base URL, e.g. http://127.0.0.1:9093. webhook: the URL
    POSTed to."""

    path: str = ""
    """log: the file alerts are appended to, relative to the project folder."""

    timeout: timedelta = timedelta(seconds=5)
    """How long one HTTP attempt may take."""

    retries: Annotated[int, Bound(min=0, max=10)] = 3
    """Attempts after the first failed one, 0.5 s, 1 s, 2 s ... apart; then the failure is counted
    and the monitor goes on."""

    def __post_init__(self) -> None:
        where = f'{CONFIG_FILE}: [[monitor.notify]] kind = "{self.kind}"'
        if self.kind == "log":
            if not self.path:
                raise ConfigError(
                    f'{where} needs path, the file alerts are appended to, e.g. path = ".backline/alerts.jsonl".'
                )
            if self.url:
                raise ConfigError(f"{where} writes to path; remove url = {self.url!r}.")
            return
        if self.path:
            raise ConfigError(f"{where} posts to url; remove path = {self.path!r}.")
        example = (
            "http://127.0.0.1:9093" if self.kind == "alertmanager" else "http://HOST:PORT/PATH"
        )
        if not self.url:
            raise ConfigError(f'{where} needs url, e.g. url = "{example}".')
        parts = urllib.parse.urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"{where}: url = {self.url!r} is not an http:// or https:// URL with a host. "
                f'Write it as url = "{example}".'
            )
        if self.kind == "alertmanager" and parts.path.rstrip("/").endswith("/api/v2/alerts"):
            raise ConfigError(
                f"{where}: url = {self.url!r} should be Alertmanager's base URL; backline adds "
                f'/api/v2/alerts. Write url = "{self.url.rstrip("/").removesuffix("/api/v2/alerts")}".'
            )
        if self.timeout <= timedelta(0):
            raise ConfigError(f'{where}: timeout must be above 0, e.g. timeout = "5s".')


@dataclass(frozen=True)
class MonitorSection:
    window: Annotated[
        timedelta | int, Spelling("a duration such as '1h' or a row count such as 10000")
    ] = timedelta(hours=1)
    """A monitoring window: a span of event time ("1h", "1d") or a number of predictions (10000)."""

    max_feature_labels: Annotated[int, Bound(min=1)] = 20
    """Prometheus gauges label at most this many features individually (the highest drift
    scores); the rest are folded into feature="_other", so a wide model cannot flood Prometheus."""

    retrain_cooldown: timedelta = timedelta(days=1)
    """After an alert with retrain = true asks for retraining, further requests wait this long."""

    external_url: str = ""
    """Link sent with each alert (Alertmanager's generatorURL and externalURL), e.g. where the
    monitoring report is published; empty sends none."""

    alerts: tuple[AlertRuleSpec, ...] = ()
    """The alert rules, one [[monitor.alerts]] table each."""

    notify: tuple[NotifierSpec, ...] = ()
    """Where firing and resolved alerts go, one [[monitor.notify]] table each."""

    @property
    def window_rows(self) -> int | None:
        """The window's size in predictions, or None for a window of time."""
        return None if isinstance(self.window, timedelta) else self.window

    @property
    def window_span(self) -> timedelta | None:
        """The window's length in event time, or None for a window of rows."""
        return self.window if isinstance(self.window, timedelta) else None

    def __post_init__(self) -> None:
        if isinstance(self.window, timedelta) and self.window <= timedelta(0):
            raise ConfigError(
                f'{CONFIG_FILE}: monitor.window = {self.window} must be above 0, e.g. window = "1h".'
            )
        if isinstance(self.window, int) and self.window < 1:
            raise ConfigError(
                f"{CONFIG_FILE}: monitor.window = {self.window} must be a positive row count such "
                'as 10000, or a duration such as "1h".'
            )
        if self.retrain_cooldown < timedelta(0):
            raise ConfigError(
                f"{CONFIG_FILE}: monitor.retrain_cooldown must not be negative; write e.g. "
                'retrain_cooldown = "1d".'
            )
        if self.external_url:
            parts = urllib.parse.urlsplit(self.external_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"{CONFIG_FILE}: monitor.external_url = {self.external_url!r} is not an "
                    'http:// or https:// URL. Write it as "https://HOST/PATH", or leave it empty.'
                )
        seen: set[str] = set()
        for rule in self.alerts:
            if rule.name in seen:
                raise ConfigError(
                    f"{CONFIG_FILE}: two [[monitor.alerts]] are named {rule.name!r}; each rule "
                    "keeps its own state under its name. Rename one (e.g. add Warning/Critical)."
                )
            seen.add(rule.name)


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    """Column name, as it appears in the input header or JSON keys."""

    type: ColumnType = "string"
    """One of string, int64, float64, bool, timestamp (always tz-aware UTC), date."""

    required: bool = False
    """A null or empty value quarantines the row as missing_value."""

    min: float | None = None
    """Smallest allowed value (numbers only); smaller values are out_of_range."""

    max: float | None = None
    """Largest allowed value (numbers only)."""

    allowed: tuple[str, ...] | None = None
    """The complete set of allowed values (strings); others are not_allowed."""

    pattern: str | None = None
    """A regular expression the whole value must match (strings)."""

    max_length: int | None = None
    """Longest allowed string, in characters."""

    not_before: datetime | None = None
    """Earliest allowed timestamp (timestamps only); earlier ones are timestamp_too_old."""

    categorical: bool = False
    """Batch statistics keep per-value counts for this column (drift baselines)."""

    description: str = ""
    """What the column means; shown by `backline sql` users and the docs."""

    def __post_init__(self) -> None:
        where = f"column '{self.name}'"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name) or self.name.startswith("__"):
            raise ConfigError(
                f"backline.toml: column name {self.name!r} must be letters, digits and _ (not "
                "starting with a digit or __). Rename it."
            )
        if self.name in RESERVED_COLUMNS:
            raise ConfigError(
                f"backline.toml: column name {self.name!r} is reserved for lineage "
                f"({', '.join(RESERVED_COLUMNS)}). Rename it."
            )
        numeric = self.type in ("int64", "float64")
        if (self.min is not None or self.max is not None) and not numeric:
            raise ConfigError(
                f"backline.toml: {where} sets min/max but has type {self.type!r}. "
                "min and max apply to int64 and float64 columns; remove them or change the type."
            )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError(
                f"backline.toml: {where} has min = {self.min} above max = {self.max}. Swap them."
            )
        if (self.allowed, self.pattern, self.max_length) != (None, None, None) and (
            self.type != "string"
        ):
            raise ConfigError(
                f"backline.toml: {where} sets allowed/pattern/max_length but has type "
                f"{self.type!r}. Those apply to string columns."
            )
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ConfigError(
                    f"backline.toml: {where} has pattern {self.pattern!r}, which is not a valid "
                    f"regular expression ({exc}). Fix the pattern."
                ) from None
        if self.not_before is not None and self.type != "timestamp":
            raise ConfigError(
                f"backline.toml: {where} sets not_before but has type {self.type!r}; "
                "it applies to timestamp columns."
            )


@dataclass(frozen=True)
class SourceSpec:
    name: str
    """The source's name: its table in `backline sql` and its folder in the offline store."""

    columns: tuple[ColumnSpec, ...]
    """The declared schema, in order. Inputs are checked against it on the way in."""

    primary_key: tuple[str, ...]
    """Columns that identify a row; duplicates within and across batches are quarantined."""

    event_time: str
    """The timestamp column that says when the event happened; partitions the store by date."""

    format: Format = "auto"
    """auto (by file extension), csv, jsonl or parquet."""

    delimiter: str = ","
    """CSV field delimiter."""

    encoding: str = "utf-8"
    """Text encoding of CSV and JSON Lines inputs; undecodable rows are quarantined."""

    extra_columns: Literal["drop", "reject"] = "drop"
    """What to do with input columns the schema does not declare: drop (and report) or reject."""

    description: str = ""
    """What the source holds."""

    def column(self, name: str) -> ColumnSpec:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(name)

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def __post_init__(self) -> None:
        names = self.column_names
        where = f"backline.toml: [sources.{self.name}]"
        if not names:
            raise ConfigError(
                f"{where} declares no columns. Add [sources.{self.name}.columns.NAME]."
            )
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            raise ConfigError(
                f"{where}: source name {self.name!r} must be lower-case letters, digits and _."
            )
        for key in self.primary_key:
            if key not in names:
                raise ConfigError(
                    f"{where} primary_key names {key!r}, which is not a declared column. "
                    f"Declared: {', '.join(names)}."
                )
        if not self.primary_key:
            raise ConfigError(f'{where} needs primary_key = ["column", ...].')
        if self.event_time not in names:
            raise ConfigError(
                f"{where} event_time = {self.event_time!r} is not a declared column. "
                f"Declared: {', '.join(names)}."
            )
        if self.column(self.event_time).type != "timestamp":
            raise ConfigError(
                f'{where} event_time column {self.event_time!r} must have type = "timestamp".'
            )
        if len(self.delimiter) != 1:
            raise ConfigError(f"{where} delimiter = {self.delimiter!r} must be one character.")
        try:
            "".encode(self.encoding)
        except LookupError:
            raise ConfigError(
                f"{where} encoding = {self.encoding!r} is not a known encoding; try utf-8 or latin-1."
            ) from None


@dataclass(frozen=True)
class Config:
    root: Path
    """The project folder (the one that holds backline.toml)."""

    project: ProjectSection = field(default_factory=ProjectSection)
    offline: OfflineSection = field(default_factory=OfflineSection)
    online: OnlineSection = field(default_factory=OnlineSection)
    registry: RegistrySection = field(default_factory=RegistrySection)
    ingest: IngestSection = field(default_factory=IngestSection)
    features: FeaturesSection = field(default_factory=FeaturesSection)
    train: TrainSection = field(default_factory=TrainSection)
    gate: GateSection = field(default_factory=GateSection)
    serve: ServeSection = field(default_factory=ServeSection)
    monitor: MonitorSection = field(default_factory=MonitorSection)
    pipeline: PipelineSection = field(default_factory=PipelineSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    sources: Mapping[str, SourceSpec] = field(default_factory=dict)

    def source(self, name: str) -> SourceSpec:
        from backline.core.errors import NotFoundError

        if name not in self.sources:
            hint = _suggest(name, list(self.sources))
            raise NotFoundError(
                f"unknown source {name!r}.{hint} Sources in {CONFIG_FILE}: "
                f"{', '.join(self.sources) or '(none)'}."
            )
        return self.sources[name]

    def store_uri(self, section: str) -> StoreURI:
        """The parsed URI of a store section, resolved against the project folder."""
        value = getattr(self, section).uri
        return parse_uri(value, base=self.root, key=f"{section}.uri")

    @property
    def catalog_uri(self) -> StoreURI:
        return parse_uri(self.offline.catalog, base=self.root, key="offline.catalog")


# Which schemes each store accepts; checked at load time so a typo fails early.
_SCHEMES = {
    "offline.uri": ("file",),
    "offline.catalog": ("sqlite",),
    "online.uri": ("sqlite", "redis"),
    "registry.uri": ("sqlite", "postgresql"),
}
_SECTIONS: dict[str, type] = {
    "project": ProjectSection,
    "offline": OfflineSection,
    "online": OnlineSection,
    "registry": RegistrySection,
    "ingest": IngestSection,
    "features": FeaturesSection,
    "train": TrainSection,
    "gate": GateSection,
    "serve": ServeSection,
    "monitor": MonitorSection,
    "pipeline": PipelineSection,
    "schedule": ScheduleSection,
}


def find_project(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` that holds backline.toml."""
    from backline.core.errors import WorkspaceError

    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise WorkspaceError(
        f"no {CONFIG_FILE} in {here} or any folder above it. Run `backline init DIR` to create a "
        "project, or pass --project DIR."
    )


def load_config(root: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read ROOT/backline.toml, apply BACKLINE_* overrides from `env`, and validate."""
    env = os.environ if env is None else env
    path = root / CONFIG_FILE
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist. Run `backline init {root}` first.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}). Fix the syntax at that line.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text. Save it as UTF-8.") from None

    unknown = sorted(set(raw) - set(_SECTIONS) - {"sources"})
    if unknown:
        key = unknown[0]
        hint = _suggest(key, [*_SECTIONS, "sources"])
        raise ConfigError(
            f"{CONFIG_FILE}: unknown section [{key}].{hint} "
            f"Valid sections: {', '.join([*_SECTIONS, 'sources'])}."
        )
    sections: dict[str, Any] = {}
    from_env: dict[str, str] = {}  # "section.key" -> the environment variable that set it
    for name, cls in _SECTIONS.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{CONFIG_FILE}: {name} must be a table, written [{name}].")
        table = dict(table)
        overrides = _env_overrides(name, cls, env)
        table.update(overrides)
        from_env.update(
            {f"{name}.{key}": f"BACKLINE_{name.upper()}_{key.upper()}" for key in overrides}
        )
        sections[name] = _build(cls, table, name, from_env)

    sources_raw = raw.get("sources", {})
    if not isinstance(sources_raw, dict):
        raise ConfigError(f"{CONFIG_FILE}: sources must be tables, written [sources.NAME].")
    sources = {name: _build_source(name, table) for name, table in sources_raw.items()}
    cfg = Config(root=root.resolve(), sources=sources, **sections)
    for key, schemes in _SCHEMES.items():
        section, attr = key.split(".")
        value = getattr(getattr(cfg, section), attr)
        origin = _origin(key, from_env)
        try:
            uri = parse_uri(value, base=cfg.root, key=key, schemes=schemes)
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}") from None
        if uri.scheme not in schemes:
            raise ConfigError(
                f"{origin}: {key} = {value!r} uses scheme {uri.scheme}://, which this store "
                f"does not support. Use {' or '.join(s + '://' for s in schemes)}."
            )
    return cfg


def _origin(key: str, from_env: Mapping[str, str]) -> str:
    """Where a key's value came from, as error messages name it."""
    return f"environment variable {from_env[key]}" if key in from_env else CONFIG_FILE


def _env_overrides(section: str, cls: type, env: Mapping[str, str]) -> dict[str, str]:
    prefix = f"BACKLINE_{section.upper()}_"
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for var, value in env.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix) :].lower()
        if key not in names:
            hint = _suggest(key, sorted(names))
            raise ConfigError(
                f"environment variable {var} names unknown key '{section}.{key}'.{hint} "
                f"Valid: {', '.join(prefix + n.upper() for n in sorted(names))}."
            )
        out[key] = value
    return out


def _build_source(name: str, table: Any) -> SourceSpec:
    where = f"sources.{name}"
    if not isinstance(table, dict):
        raise ConfigError(f"{CONFIG_FILE}: {where} must be a table, written [{where}].")
    table = dict(table)
    columns_raw = table.pop("columns", None)
    if not isinstance(columns_raw, dict) or not columns_raw:
        raise ConfigError(
            f"{CONFIG_FILE}: [{where}] has no columns. Declare each as [{where}.columns.NAME] "
            'with type = "string" (or int64, float64, bool, timestamp, date).'
        )
    columns = []
    for col_name, col_table in columns_raw.items():
        if not isinstance(col_table, dict):
            raise ConfigError(
                f"{CONFIG_FILE}: {where}.columns.{col_name} must be a table such as "
                f'{{ type = "string" }}, not {col_table!r}.'
            )
        columns.append(
            _build(ColumnSpec, {"name": col_name, **col_table}, f"{where}.columns.{col_name}")
        )
    return _build(SourceSpec, {"name": name, "columns": tuple(columns), **table}, where)


def _build(
    cls: type, table: Mapping[str, Any], where: str, from_env: Mapping[str, str] | None = None
) -> Any:
    """One section (or source, or column) from its table; every error is one ConfigError line
    that names the key, and the environment variable when one set it."""
    from_env = from_env or {}
    hints = typing.get_type_hints(cls, include_extras=True)  # keep Annotated's Bound
    fields = {toml_key(f.name): f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            hint = _suggest(key, list(fields))
            implicit = ("name", "columns") if cls in (SourceSpec, ColumnSpec) else ()
            valid = ", ".join(k for k in fields if k not in implicit)
            raise ConfigError(
                f"{CONFIG_FILE}: unknown key '{where}.{key}'.{hint} Valid keys: {valid}."
            )
        dotted = f"{where}.{key}"
        name = fields[key].name
        kwargs[name] = _coerce(value, hints[name], dotted, _origin(dotted, from_env))
    missing = [k for k, f in fields.items() if f.name not in kwargs and _required(f)]
    if missing:  # checked here: the dataclass would say "__init__() missing 1 required ..."
        example = _EXAMPLES.get(missing[0], f"{missing[0]} = ...")
        raise ConfigError(
            f"{CONFIG_FILE}: [{where}] is missing {', '.join(repr(m) for m in missing)}. "
            f"Add it, for example {example}."
        )
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a check in __post_init__: name the variable that set the value
        text = str(exc)
        for key, var in from_env.items():
            if key.startswith(f"{where}.") and re.search(rf"\b{re.escape(key)}\b", text):
                text = text.removeprefix(f"{CONFIG_FILE}: ")
                raise ConfigError(f"environment variable {var}: {text}") from None
        raise


_EXAMPLES = {  # how to write a required key, for the error that says it is missing
    "primary_key": 'primary_key = ["id"]',
    "event_time": 'event_time = "event_time"',
    "columns": '[sources.NAME.columns.COL] with type = "string"',
    "name": 'name = "FeatureDrift"',
    "metric": 'metric = "drift.features_drifted"',
    "op": 'op = ">="',
    "threshold": "threshold = 1",
    "kind": 'kind = "webhook"',
}


def toml_key(field_name: str) -> str:
    """The key a field is written as: a field named after a Python keyword carries a trailing
    underscore (``for_``) that backline.toml leaves off (``for = 2``)."""
    bare = field_name.removesuffix("_")
    return bare if bare != field_name and keyword.iskeyword(bare) else field_name


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def declared_constraints(cls: type) -> dict[str, str]:
    """What each constrained field of a section allows, as the loader's errors and
    docs/configuration.md say it: {"engine": "one of duckdb, spark", "threads": "at least 0"}."""
    out: dict[str, str] = {}
    for name, hint in typing.get_type_hints(cls, include_extras=True).items():
        rules = _constraints(hint)
        if rules:
            out[name] = "; ".join(rules)
    return out


def _constraints(hint: Any) -> list[str]:
    """The declared rules of one field type: its Literal choices and its Bounds."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *extras = typing.get_args(hint)
        return _constraints(base) + [m.describe() for m in extras if isinstance(m, Bound)]
    if origin is Literal:
        return [_one_of(typing.get_args(hint))]
    if origin in (typing.Union, types.UnionType):
        return [rule for arg in typing.get_args(hint) for rule in _constraints(arg)]
    return []


def _one_of(choices: tuple[Any, ...]) -> str:
    return f"one of {', '.join(str(c) for c in choices)}"


def _coerce(value: Any, hint: Any, key: str, where: str = CONFIG_FILE) -> Any:
    """Convert a TOML value (or an environment string) to the field's declared type, and check
    what the type declares: a Literal's choices, an Annotated Bound.

    `where` is what errors name as the value's origin: backline.toml, or an environment variable.
    """
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Annotated:
        base, *extras = args
        spelling = next((m.text for m in extras if isinstance(m, Spelling)), None)
        try:
            value = _coerce(value, base, key, where)
        except ConfigError:
            if spelling is None:
                raise
            raise _wrong_type(key, value, spelling, where) from None
        for bound in (m for m in extras if isinstance(m, Bound)):
            if not bound.admits(value):
                raise ConfigError(f"{where}: {key} = {value} must be {bound.describe()}.")
        return value
    if origin is Literal:
        value = _coerce(value, type(args[0]), key, where)
        if value not in args:
            hint_text = did_you_mean(value, [str(a) for a in args])
            raise ConfigError(f"{where}: {key} = {value!r} must be {_one_of(args)}.{hint_text}")
        return value
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        for arg in inner[:-1]:  # the first type that takes the value wins: timedelta | int
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        return _coerce(value, inner[-1], key, where)
    from_env = isinstance(value, str)

    def _type_error(key: str, value: Any, expected: str) -> ConfigError:
        return _wrong_type(key, value, expected, where)

    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise _type_error(key, value, "true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
        raise _type_error(key, value, "an integer")
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env:
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, value, "a number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, value, "a string in quotes")
    if hint is timedelta:
        try:
            return parse_duration(str(value), what=key)
        except BacklineError:
            raise _type_error(key, value, "a duration such as '1d' or '12h'") from None
    if hint is datetime:
        try:
            return parse_utc(value, what=key)
        except BacklineError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    if origin is tuple and args and args[0] in (AlertRuleSpec, NotifierSpec):
        # [[monitor.alerts]]: an array of tables, each built and checked like a section
        table_name = key.split("[")[0]
        if from_env:
            raise ConfigError(
                f"{where}: {key} is a list of tables; write it in {CONFIG_FILE} as "
                f"[[{table_name}]] tables, not in a variable."
            )
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise _type_error(key, value, f"tables, each written [[{table_name}]]")
        return tuple(_build(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Mapping or origin is dict:
        if from_env or not isinstance(value, dict):
            raise _type_error(key, value, 'a table such as { team = "fraud" }')
        return {str(k): _coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    if origin is tuple:
        if from_env:  # a list in one variable: comma-separated, e.g. BACKLINE_TRAIN_HIDDEN=128,64
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, tuple) and args and args[0] is ColumnSpec:
            return value
        if not isinstance(value, list):
            raise _type_error(key, value, 'a list such as ["a", "b"]')
        return tuple(_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value))
    raise ConfigError(f"{where}: {key} has an unsupported type {hint!r}.")  # pragma: no cover


def _wrong_type(key: str, value: Any, expected: str, where: str = CONFIG_FILE) -> ConfigError:
    fix = "Fix that value." if where == CONFIG_FILE else "Fix or unset that variable."
    return ConfigError(f"{where}: {key} = {value!r} must be {expected}. {fix}")


_suggest = did_you_mean  # the one "Did you mean" hint (core/suggest.py)
