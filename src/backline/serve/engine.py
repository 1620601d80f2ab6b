"""The engine loop: takes the batches the policy forms and runs them, features then score then
answer, on one compute thread beside the event loop.

    engine = Engine(holder, BatchPolicy(256), max_queue=2048)
    await engine.start()
    scored = await engine.submit(request, deadline)   # Scored, or raises QueueFull / Expired
    await engine.drain(timeout)                       # finish everything queued, then stop

The HTTP layer only parses and answers; the policy (backline.serve.policy) only decides. The
engine owns the queue, the clock and the thread. One batch runs at a time (one model, one
core): while it runs, requests gather, and the next batch is what gathered.

For each batch: the instances are grouped by their `at` (almost always one group: "now"), each
group's features are read from the online store in one round trip, the on-demand features are
computed, and the served version scores the rows. A group whose read fails for a reason of its
input (say, a time before the materialized state) is retried request by request, so one bad
request gets its 4xx and the others their scores. When the online store is down, the rows are
scored with every stored feature missing (counts 0, the rest null, as for an entity the store
never saw) and the answer says `degraded`: a fraud decision can fall back to rules on a flagged
score, while an error would leave it with nothing. The store-error counter shows it, and the
next batch tries the store again, so recovery needs no action.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, cast

import numpy as np
import pyarrow as pa

from backline.core.errors import BacklineError, StoreError
from backline.serve.logrows import LogRows, Segment
from backline.serve.policy import BatchPolicy, Waiting

if TYPE_CHECKING:
    from backline.features.online import OnlineFeatures, OnlineStore
    from backline.serve.metrics import Metrics
    from backline.serve.model import ModelHolder, ServedModel
    from backline.serve.predlog import PredictionLog


class QueueFull(BacklineError):
    """The queue holds as many requests as it may; the client should retry later (429)."""

    code = "queue_full"
    http_status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Expired(BacklineError):
    """The request's deadline passed before it could be scored; it never reached the model."""

    code = "deadline_exceeded"
    http_status = 504


class NotReady(BacklineError):
    """No model is loaded yet, or the server is draining."""

    code = "not_ready"
    http_status = 503


@dataclass(slots=True)
class Request:
    """One parsed request: `rows` instances, split into what the feature read needs."""

    request_id: str
    entities: list[dict[str, Any]]
    """Join keys, one mapping per instance."""
    fields: list[dict[str, Any]]
    """Request fields of the on-demand features, one mapping per instance."""
    passthrough: list[dict[str, Any]]
    """Ids logged with the prediction but not used to score (the entity source's primary key)."""
    at: datetime | None = None
    """Score as of this time (default: when the batch runs)."""

    @property
    def rows(self) -> int:
        return len(self.entities)


@dataclass(slots=True)
class Scored:
    scores: list[float]
    model: str
    version: int
    degraded: bool
    queue_s: float
    batch_rows: int


@dataclass(slots=True)
class _Item:
    request: Request
    future: asyncio.Future[Scored]
    waiting: Waiting
    dispatched: float = 0.0


@dataclass
class _Outcome:
    """What the compute thread hands back for one request: scores or an error."""

    scored: Scored | None = None
    error: BaseException | None = None


@dataclass
class _Stats:
    batches: int = 0
    rows: int = 0
    expired: int = 0
    rejected: int = 0
    store_errors: int = 0
    log_dropped: int = 0
    last_batch_at: float = field(default=0.0)


class _EmptyStore:
    """Stands in for an online store that is down: every entity reads as never seen."""

    def read(self, groups: Sequence[tuple[str, str, Sequence[str]]]) -> list[dict[str, bytes]]:
        return [{} for _ in groups]

    def read_aligned(
        self, groups: Sequence[tuple[str, str, Sequence[str]]]
    ) -> list[list[bytes | None]]:
        return [[None] * len(keys) for _, _, keys in groups]


class Engine:
    def __init__(
        self,
        holder: ModelHolder,
        policy: BatchPolicy,
        *,
        max_queue: int,
        metrics: Metrics | None = None,
        predlog: PredictionLog | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.holder = holder
        self.policy = policy
        self.max_queue = max_queue
        self.metrics = metrics
        self.predlog = predlog
        self.clock = clock
        self.stats = _Stats()
        self._queue: dict[int, _Item] = {}
        self._queued_rows = 0
        self._ids = itertools.count()
        self._busy = False
        self._inflight = 0
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._idle: asyncio.Event | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="backline-engine")
        self._thread_store: Any = None
        self._log_rows = LogRows()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.create_task(self._run(), name="backline-engine")

    async def run_in_thread(self, work: Callable[[], Any]) -> Any:
        """Run `work` on the compute thread (model loading and warm-up use the same thread as
        scoring, so the online store's connection stays on the thread that made it)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, work)

    @property
    def queued(self) -> int:
        return self._queued_rows

    @property
    def idle(self) -> bool:
        return not self._queue and not self._busy

    async def drain(self, timeout: float) -> bool:
        """Let everything queued and running finish (new submits are refused), then stop the
        loop. True if it all finished within `timeout` seconds."""
        self._stopping = True
        assert self._wake is not None and self._idle is not None
        self._wake.set()
        finished = True
        deadline = self.clock() + timeout
        while self._queue or self._busy:
            left = deadline - self.clock()
            if left <= 0:
                finished = False
                break
            self._idle.clear()
            self._wake.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=min(left, 0.05))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._log_rows.rows:  # on the compute thread, like every other use of the rows
            with contextlib.suppress(Exception):
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._flush_log, True
                )
        for item in list(self._queue.values()):  # only left when the drain timed out
            if not item.future.done():
                item.future.set_exception(NotReady("the server stopped before this request ran"))
        self._queue.clear()
        self._executor.shutdown(wait=False)
        return finished

    # -- submitting ----------------------------------------------------------------------------

    async def submit(self, request: Request, deadline: float) -> Scored:
        """Queue `request`; its answer, or QueueFull at once, or Expired at its deadline."""
        if self._stopping:
            raise NotReady("the server is draining; send this request to another replica")
        rows = request.rows
        if self._queued_rows + rows > self.max_queue:
            self.refuse(rows)
        assert self._loop is not None and self._wake is not None
        now = self.clock()
        item = _Item(
            request, self._loop.create_future(), Waiting(next(self._ids), now, deadline, rows)
        )
        self._queue[item.waiting.id] = item
        self._queued_rows += rows
        if self.metrics is not None:
            self.metrics.queue_depth(self._queued_rows)
        if not self._busy:
            self._wake.set()
        return await item.future

    def refuse(self, rows: int = 1) -> NoReturn:
        """Raise QueueFull (429) for a request of `rows` instances, and count it."""
        self.stats.rejected += 1
        if self.metrics is not None:
            self.metrics.rejected("queue_full")
        raise QueueFull(
            f"the queue holds {self._queued_rows} instances and this request brings {rows} "
            f"(serve.max_queue = {self.max_queue}); retry after the Retry-After seconds",
            retry_after=self._retry_after(),
        )

    def _retry_after(self) -> float:
        """Seconds until the queue has likely drained by half: its rows at the measured rate."""
        per_row = max(self.policy.cost.per_row, 1e-6)
        return max(1.0, math.ceil(self._queued_rows * per_row / 2))

    # -- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            waiting = [item.waiting for item in self._queue.values()]
            now = self.clock()
            decision = self.policy.decide(waiting, now, self._busy)
            for wid in decision.expire:
                self._expire(self._queue.pop(wid))
            if decision.dispatch:
                items = [self._queue.pop(wid) for wid in decision.dispatch]
                for item in items:
                    item.dispatched = now
                    self._queued_rows -= item.request.rows
                self._busy = True
                asyncio.get_running_loop().create_task(self._run_batch(items))
            if self.metrics is not None:
                self.metrics.queue_depth(self._queued_rows)
            if not self._queue and not self._busy and self._idle is not None:
                self._idle.set()
            self._wake.clear()
            timeout = None
            if decision.wake_at is not None:
                timeout = max(decision.wake_at - self.clock(), 0.0) + 1e-4
            try:
                if timeout is None:
                    await self._wake.wait()
                else:
                    await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    def _expire(self, item: _Item) -> None:
        self._queued_rows -= item.request.rows
        self.stats.expired += 1
        if self.metrics is not None:
            self.metrics.rejected("deadline")
        if not item.future.done():
            waited = (self.clock() - item.waiting.arrived) * 1000
            item.future.set_exception(
                Expired(
                    f"the request waited {waited:.0f} ms and its deadline passed before it "
                    "could be scored; raise X-Request-Timeout-Ms or reduce the load"
                )
            )

    async def _run_batch(self, items: list[_Item]) -> None:
        assert self._wake is not None
        t0 = self.clock()
        rows = sum(i.request.rows for i in items)
        try:
            outcomes = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._compute, items
            )
        except BaseException as exc:  # the thread itself failed: every request gets it
            outcomes = [_Outcome(error=exc) for _ in items]
        finally:
            self._busy = False
            self._wake.set()
        self.policy.cost.observe(rows, self.clock() - t0)
        self.stats.batches += 1
        self.stats.rows += rows
        for item, outcome in zip(items, outcomes, strict=True):
            if item.future.done():
                continue
            if outcome.error is not None:
                item.future.set_exception(outcome.error)
            else:
                assert outcome.scored is not None
                item.future.set_result(outcome.scored)

    # -- on the compute thread -----------------------------------------------------------------

    def _compute(self, items: list[_Item]) -> list[_Outcome]:
        served = self.holder.current
        if served is None:
            return [_Outcome(error=NotReady("no model is loaded yet")) for _ in items]
        start = self.clock()
        rows = sum(i.request.rows for i in items)
        outcomes: list[_Outcome] = [_Outcome() for _ in items]
        groups: dict[datetime | None, list[int]] = {}
        for k, item in enumerate(items):
            groups.setdefault(item.request.at, []).append(k)
        fetch_s = compute_s = 0.0
        for at, members in groups.items():
            when = at if at is not None else datetime.now(UTC)
            try:
                t1 = self.clock()
                features, degraded = self._features(served, [items[k] for k in members], when)
                t2 = self.clock()
                scores = served.score(features)
                t3 = self.clock()
            except Exception as exc:
                # an input error, or a failure no one foresaw: find whose request it is, so one
                # request's problem is never its batch mates'
                client = isinstance(exc, BacklineError) and exc.http_status < 500
                if len(members) > 1 and (client or not isinstance(exc, BacklineError)):
                    self._one_by_one(served, items, members, when, outcomes, rows)
                    continue
                for k in members:
                    outcomes[k].error = exc
                continue
            fetch_s += t2 - t1
            compute_s += t3 - t2
            self._answer(served, items, members, scores, degraded, rows, outcomes)
            self._keep_log(served, items, members, features, scores, degraded, rows, when)
        if self.metrics is not None:
            self.metrics.batch(served.name, served.version, rows, fetch_s, compute_s)
            for item in items:
                self.metrics.queued(item.dispatched - item.waiting.arrived)
        self._flush_log()
        self.stats.last_batch_at = start
        return outcomes

    def _one_by_one(
        self,
        served: ServedModel,
        items: list[_Item],
        members: list[int],
        when: datetime,
        outcomes: list[_Outcome],
        rows: int,
    ) -> None:
        for k in members:
            try:
                features, degraded = self._features(served, [items[k]], when)
                scores = served.score(features)
            except Exception as exc:
                outcomes[k].error = exc
                continue
            self._answer(served, items, [k], scores, degraded, rows, outcomes)
            self._keep_log(served, items, [k], features, scores, degraded, rows, when)

    def _features(
        self, served: ServedModel, items: list[_Item], when: datetime
    ) -> tuple[OnlineFeatures, bool]:
        from backline.features.online import get_online_features

        project = self.holder.project
        entities: list[Mapping[str, Any]] = [e for i in items for e in i.request.entities]
        fields: list[Mapping[str, Any]] = [f for i in items for f in i.request.fields]
        plan = project.read_plan(served.service)
        request_rows = fields if plan.request_fields else None
        try:
            return (
                get_online_features(
                    project.config,
                    project.definitions,
                    served.service,
                    entities,
                    request_rows=request_rows,
                    at=when,
                    store=project.online_store(),
                    plan=plan,
                ),
                False,
            )
        except StoreError:
            self.stats.store_errors += 1
            if self.metrics is not None:
                self.metrics.store_error()
            project.reset_online_store()
            empty = cast("OnlineStore", _EmptyStore())
            features = get_online_features(
                project.config,
                project.definitions,
                served.service,
                entities,
                request_rows=request_rows,
                at=when,
                store=empty,
                plan=plan,
            )
            return features, True

    def _answer(
        self,
        served: ServedModel,
        items: list[_Item],
        members: list[int],
        scores: np.ndarray,
        degraded: bool,
        batch_rows: int,
        outcomes: list[_Outcome],
    ) -> None:
        offset = 0
        values = scores.astype(float).tolist()
        for k in members:
            n = items[k].request.rows
            item = items[k]
            outcomes[k].scored = Scored(
                scores=values[offset : offset + n],
                model=served.name,
                version=served.version,
                degraded=degraded,
                queue_s=item.dispatched - item.waiting.arrived,
                batch_rows=batch_rows,
            )
            offset += n

    def _keep_log(
        self,
        served: ServedModel,
        items: list[_Item],
        members: list[int],
        features: OnlineFeatures,
        scores: np.ndarray,
        degraded: bool,
        batch_rows: int,
        when: datetime,
    ) -> None:
        """Gather the prediction-log rows of a group as plain columns (converted to Arrow
        later, many groups at once: `backline.serve.logrows`)."""
        if self.predlog is None:
            return
        now = self.clock()
        reqs = [items[k] for k in members]
        ids: list[str] = []
        latency: list[float] = []
        queue: list[float] = []
        for item in reqs:
            req, n = item.request, item.request.rows
            ids.extend([req.request_id] if n == 1 else [f"{req.request_id}/{j}" for j in range(n)])
            latency.extend([(now - item.waiting.arrived) * 1000] * n)
            queue.extend([(item.dispatched - item.waiting.arrived) * 1000] * n)
        extra: dict[str, list[Any]] = {}
        for part in ("passthrough", "fields"):
            rows = [row for item in reqs for row in getattr(item.request, part)]
            names = dict.fromkeys(name for row in rows for name in row)
            for name in names:
                if name not in extra:
                    extra[name] = [row.get(name) for row in rows]
        n_rows = len(ids)
        entities = list(zip(*features.entities, strict=True)) if n_rows else []
        values = list(zip(*features.values, strict=True)) if n_rows else []
        prefixed = [f"feature__{name}" for name in features.columns]
        self._log_rows.add(
            Segment(
                rows=n_rows,
                scored_at=when,
                model=served.name,
                version=served.version,
                batch_size=batch_rows,
                degraded=degraded,
                request_ids=ids,
                scores=scores.astype(float).tolist(),
                latency_ms=latency,
                queue_ms=queue,
                entity_columns=features.entity_columns if entities else (),
                entities=entities,
                features=dict(zip(prefixed, values, strict=True)) if values else {},
                feature_types=dict(zip(prefixed, features.types, strict=True)),
                extra=extra,
            )
        )

    def _flush_log(self, force: bool = False) -> None:
        """Convert the gathered log rows and hand them to the log: when enough have gathered,
        when they are old enough, or when nothing is queued (a quiet server logs at once)."""
        if self.predlog is None or not self._log_rows.rows:
            return
        if not (force or not self._queue or self._log_rows.due()):
            return
        tables, dropped = self._log_rows.take()
        if dropped:
            self.stats.log_dropped += dropped
            if self.metrics is not None:
                self.metrics.dropped(dropped)
        self._log(tables)

    def _log(self, parts: list[pa.Table]) -> None:
        if self.predlog is None:
            return
        for part in parts:
            if part.num_rows:
                try:
                    self.predlog.append(part)
                except Exception:  # refused rows are lost to the log, never to the client
                    self.stats.log_dropped += part.num_rows
                    if self.metrics is not None:
                        self.metrics.dropped(part.num_rows)
