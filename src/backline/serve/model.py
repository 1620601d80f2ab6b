"""The version being served: loaded from the registry, checked against its feature service,
warmed on every batch-size bucket, and swapped for another when its alias moves.

    holder = ModelHolder(project, "fraud@champion", max_batch=256)
    served = holder.load()          # blocking: fetch, verify sha256, load, warm
    served.score(features)          # float32 [N] from an OnlineFeatures of its service
    holder.poll()                   # the alias moved? load and warm the new version, then switch

A swap never interrupts scoring: the new version is loaded and warmed on the side, then one
reference assignment makes it current. A batch that started on the old version finishes on it
and its answers name the old version.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from backline.core.errors import InvalidArgument, NotFoundError

if TYPE_CHECKING:
    from backline.features.online import OnlineFeatures
    from backline.package import Scorer
    from backline.project import Project


def buckets_up_to(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to max_batch, and max_batch itself: the batch sizes warmed at start (and
    the sizes a GPU pads to)."""
    sizes = []
    n = 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    sizes.append(max_batch)
    return tuple(sizes)


@dataclass
class ServedModel:
    """One loaded version, ready to score."""

    name: str
    version: int
    scorer: Scorer
    service: str
    loaded_at: float = field(default_factory=time.time)
    warm_seconds: float = 0.0

    _layout: tuple[tuple[str, ...], list[int], list[int]] | None = None

    def score(self, features: OnlineFeatures) -> np.ndarray:
        """Probabilities float32 [N] for the rows of an online read.

        The program's inputs are built straight from the read's values: the same numbers
        `table_inputs` takes out of an Arrow table (float64, null -> NaN, booleans 0/1, and
        the strings of the categorical features), without the round trip through Arrow, which
        cost more than the model at small batches."""
        numeric_at, categorical_at = self._positions(features.columns)
        values = features.values
        if not values:
            return np.zeros(0, dtype=np.float32)
        numeric = np.array([[row[j] for j in numeric_at] for row in values], dtype=np.float64)
        numeric = numeric.reshape(len(values), len(numeric_at))
        categorical = [[_text(row[j]) for row in values] for j in categorical_at]
        return self.scorer.score_inputs(torch.from_numpy(numeric), categorical)

    def _positions(self, columns: tuple[str, ...]) -> tuple[list[int], list[int]]:
        layout = self._layout
        if layout is None or layout[0] != columns:
            where = {c: j for j, c in enumerate(columns)}
            pre = self.scorer.preprocess
            layout = (
                columns,
                [where[s.name] for s in pre.numeric],
                [where[v.name] for v in pre.categorical],
            )
            self._layout = layout
        return layout[1], layout[2]


def _text(value: object) -> str | None:
    return value if value is None or isinstance(value, str) else str(value)


class ModelHolder:
    """Which version is served, and the machinery to load, warm and swap it."""

    def __init__(
        self,
        project: Project,
        spec: str,
        *,
        max_batch: int,
        variant: str = "served",
        device: str = "cpu",
    ) -> None:
        from backline.registry import CHAMPION
        from backline.registry.records import parse_model_spec

        name, ref = parse_model_spec(spec)
        self.project = project
        self.name = name
        self.ref: str | int = ref if ref is not None else CHAMPION
        self.variant = variant
        self.device = device
        self.max_batch = max_batch
        self.buckets = buckets_up_to(max_batch)
        self.current: ServedModel | None = None
        self.swaps = 0
        self.last_error: str | None = None
        self._lock = threading.Lock()

    @property
    def follows_alias(self) -> bool:
        """True when the spec names an alias (which can move), not a fixed version number."""
        return isinstance(self.ref, str) and not self.ref.isdigit()

    def resolve(self) -> int:
        """The version number the spec points at now."""
        return self.project.registry.get(self.name, self.ref).version

    def load(self, version: int | None = None) -> ServedModel:
        """Load (and warm) `version`, default what the spec points at, and make it current."""
        with self._lock:
            number = self.resolve() if version is None else version
            served = self._load(number)
            self.current = served
            return served

    def poll(self) -> ServedModel | None:
        """If the alias now points at another version, load and warm it and switch to it;
        returns the new model, or None when nothing changed. A failure to load leaves the
        current version serving and is kept in `last_error`."""
        if not self.follows_alias:
            return None
        with self._lock:
            try:
                number = self.resolve()
            except NotFoundError as exc:  # the alias was removed: keep serving what we have
                self.last_error = str(exc)
                return None
            if self.current is not None and number == self.current.version:
                return None
            try:
                served = self._load(number)
            except Exception as exc:  # a damaged package must not take the server down
                self.last_error = f"could not load {self.name} v{number}: {exc}"
                return None
            self.current = served
            self.swaps += 1
            self.last_error = None
            return served

    def _load(self, number: int) -> ServedModel:
        project = self.project
        gpu = self.device != "cpu"
        scorer = project.model(
            f"{self.name}@{number}",
            self.variant,
            device=self.device,
            buckets=self.buckets if gpu else None,
        )
        service = project.config.train.service
        plan = project.read_plan(service)
        missing = [f for f in scorer.feature_names if f not in plan.outputs]
        if missing:
            raise InvalidArgument(
                f"{self.name} v{number} takes features {', '.join(missing)}, which feature "
                f"service {service!r} does not serve. Serve a version trained on {service!r}, "
                "or set train.service to the service it was trained on."
            )
        served = ServedModel(self.name, number, scorer, service)
        t0 = time.perf_counter()
        if gpu:
            scorer.warm()  # every bucket once: graphs captured before the first request
        warm(served, self.buckets)
        served.warm_seconds = time.perf_counter() - t0
        return served


def warm(served: ServedModel, buckets: tuple[int, ...]) -> None:
    """Score one batch of every bucket size, so the first real requests meet no cold paths
    (allocator growth, lazy initialisation, a GPU's graph capture)."""
    pre = served.scorer.preprocess
    for n in buckets:
        columns: dict[str, pa.Array] = {}
        for s in pre.numeric:
            columns[s.name] = pa.array(np.full(n, s.mean, dtype=np.float64))
        for v in pre.categorical:
            columns[v.name] = pa.array([v.values[0] if v.values else None] * n, type=pa.string())
        served.scorer.score(pa.table(columns))
