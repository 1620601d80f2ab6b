"""Which queued requests form the next batch: a pure decision, with the clock passed in.

    policy = BatchPolicy(max_batch=256, cost=CostModel())
    d = policy.decide(queue, now=t, busy=False)
    d.expire     # requests whose deadline passed: answered 504, never scored
    d.dispatch   # the next batch, in order (empty when the model is busy)
    d.wake_at    # when to decide again if nothing else happens (the earliest deadline)

The rule, the way vLLM's v1 scheduler is separated from its engine core:

* A request whose deadline has passed is expired, never dispatched.
* While the model is busy nothing is dispatched: requests gather in the queue, and the batch that
  forms when the model frees up is as large as the load made it. There is no fixed wait, so at
  low load a request is dispatched the moment it arrives at an idle model.
* When the model is idle, the batch takes requests earliest deadline first while the batch's
  rows stay within `max_batch` and its estimated finish time (now + cost of the batch) stays
  within every chosen request's deadline. A request that would put an earlier one at risk waits
  for the next batch (which starts as soon as this one ends). The first request is always taken:
  an estimate may be pessimistic, and only the deadline itself expires a request.

`CostModel` is the estimate: seconds to serve a batch of n rows, fitted online from the batches
the engine ran (a fixed part plus a per-row part, exponentially weighted). Nothing here sleeps,
reads a clock or touches HTTP, torch or data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Waiting:
    """One queued request, as the policy sees it."""

    id: int
    arrived: float
    """Monotonic seconds when it entered the queue."""
    deadline: float
    """Monotonic seconds after which its answer is useless (504)."""
    rows: int = 1
    """Instances it carries; a batch's size is the sum of its requests' rows."""


@dataclass(frozen=True, slots=True)
class Decision:
    expire: tuple[int, ...] = ()
    dispatch: tuple[int, ...] = ()
    wake_at: float | None = None
    """When to decide again if no request arrives and no batch ends first (None: not needed)."""


class CostModel:
    """Estimated seconds to serve a batch of n rows: fixed + per_row * n, learned online.

    A weighted least-squares line through the (rows, seconds) of the batches run, each new batch
    weighing `alpha` and older ones fading by (1 - alpha): so the estimate follows a change of
    load or machine within a few dozen batches, and one jittery batch moves it little. While
    every batch has had the same size the two parts cannot be told apart; then the per-row part
    keeps its prior and the fixed part takes the rest, so a run of single-row batches does not
    make large ones look free.
    """

    def __init__(
        self, fixed: float = 0.0005, per_row: float = 0.00001, alpha: float = 0.05
    ) -> None:
        if fixed < 0 or per_row < 0 or not 0 < alpha <= 1:
            raise ValueError("CostModel needs fixed >= 0, per_row >= 0 and 0 < alpha <= 1")
        self.fixed = fixed
        self.per_row = per_row
        self.alpha = alpha
        # exponentially weighted sums of 1, n, n^2, y and n*y
        self._w = self._n = self._nn = self._y = self._ny = 0.0

    def __call__(self, rows: int) -> float:
        return self.fixed + self.per_row * rows

    def observe(self, rows: int, seconds: float) -> None:
        """Fold in one measured batch (seconds from dispatch to answers ready)."""
        if rows <= 0 or not math.isfinite(seconds) or seconds < 0:
            return
        keep = 1.0 - self.alpha
        n = float(rows)
        self._w = keep * self._w + 1.0
        self._n = keep * self._n + n
        self._nn = keep * self._nn + n * n
        self._y = keep * self._y + seconds
        self._ny = keep * self._ny + n * seconds
        spread = self._w * self._nn - self._n * self._n  # weight^2 x variance of the sizes
        if spread <= 1e-9 * self._w * self._nn:
            self.fixed = max((self._y - self.per_row * self._n) / self._w, 0.0)
            return
        per_row = (self._w * self._ny - self._n * self._y) / spread
        fixed = (self._y - per_row * self._n) / self._w
        if per_row < 0:  # bigger batches looked cheaper: noise; the cost is all fixed
            per_row, fixed = 0.0, self._y / self._w
        elif fixed < 0:  # the line passes below the origin: the cost is all per row
            per_row, fixed = self._ny / self._nn, 0.0
        self.fixed, self.per_row = fixed, per_row


class BatchPolicy:
    """Decides, from the queue and the time, what the engine does next (see the module doc)."""

    def __init__(self, max_batch: int, cost: CostModel | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self.cost = cost if cost is not None else CostModel()

    def decide(self, queue: Sequence[Waiting], now: float, busy: bool) -> Decision:
        expire = tuple(w.id for w in queue if w.deadline <= now)
        live = [w for w in queue if w.deadline > now]
        if not live:
            return Decision(expire=expire)
        earliest = min(w.deadline for w in live)
        if busy:
            return Decision(expire=expire, wake_at=earliest)
        ordered = sorted(live, key=lambda w: (w.deadline, w.arrived, w.id))
        chosen: list[int] = []
        rows = 0
        tightest = math.inf
        for w in ordered:
            if rows + w.rows > self.max_batch:
                if not chosen:  # one request bigger than a batch runs alone (the engine splits)
                    chosen.append(w.id)
                break
            finish = now + self.cost(rows + w.rows)
            if chosen and finish > min(tightest, w.deadline):
                break  # it would put a chosen request (or itself) past its deadline: next batch
            chosen.append(w.id)
            rows += w.rows
            tightest = min(tightest, w.deadline)
        left = [w.deadline for w in live if w.id not in set(chosen)]
        return Decision(expire=expire, dispatch=tuple(chosen), wake_at=min(left) if left else None)
