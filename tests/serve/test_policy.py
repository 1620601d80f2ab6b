"""The batching policy on its own: a clock passed in, no HTTP, no threads, no sleeping.

What it must do: dispatch at once at low load (no fixed wait), form batches earliest deadline
first within max_batch and within the chosen requests' deadlines, never dispatch an expired
request, and learn what a batch costs. The properties at the end drive it with hypothesis,
and a simulation runs it against a fake engine on a fake clock.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.serve.policy import BatchPolicy, CostModel, Decision, Waiting

MS = 0.001


def flat(cost: float = 1 * MS, per_row: float = 0.0) -> CostModel:
    """A cost model that does not move unless told to (alpha only matters in observe)."""
    return CostModel(fixed=cost, per_row=per_row)


def ids(decision: Decision) -> tuple[set[int], set[int]]:
    return set(decision.expire), set(decision.dispatch)


# -- low load -----------------------------------------------------------------------------------


def test_one_request_at_an_idle_model_is_dispatched_at_once() -> None:
    policy = BatchPolicy(max_batch=64, cost=flat())
    now = 100.0
    d = policy.decide([Waiting(7, arrived=now, deadline=now + 1.0)], now=now, busy=False)
    assert d.dispatch == (7,)
    assert d.expire == ()
    assert d.wake_at is None  # nothing left to wait for: no timer, no fixed batching window


def test_a_request_arriving_at_an_idle_model_does_not_wait_for_company() -> None:
    """Even with a generous deadline and a batch far from full, nothing is held back."""
    policy = BatchPolicy(max_batch=256, cost=flat(10 * MS))
    d = policy.decide([Waiting(1, arrived=5.0, deadline=50.0, rows=3)], now=5.0, busy=False)
    assert d.dispatch == (1,)


# -- busy model and deadlines -------------------------------------------------------------------


def test_busy_model_dispatches_nothing_and_wakes_at_the_earliest_deadline() -> None:
    policy = BatchPolicy(max_batch=64, cost=flat())
    queue = [
        Waiting(1, arrived=0.0, deadline=3.0),
        Waiting(2, arrived=0.1, deadline=1.5),
        Waiting(3, arrived=0.2, deadline=2.0),
    ]
    d = policy.decide(queue, now=1.0, busy=True)
    assert d.dispatch == ()
    assert d.expire == ()
    assert d.wake_at == 1.5


def test_expired_requests_are_expired_never_dispatched() -> None:
    policy = BatchPolicy(max_batch=64, cost=flat())
    queue = [
        Waiting(1, arrived=0.0, deadline=0.5),  # passed
        Waiting(2, arrived=0.0, deadline=1.0),  # exactly now: passed too
        Waiting(3, arrived=0.0, deadline=2.0),
    ]
    idle = policy.decide(queue, now=1.0, busy=False)
    assert set(idle.expire) == {1, 2}
    assert idle.dispatch == (3,)
    busy = policy.decide(queue, now=1.0, busy=True)
    assert set(busy.expire) == {1, 2}
    assert busy.dispatch == ()
    assert busy.wake_at == 2.0  # the earliest deadline still alive, not an expired one


def test_only_expired_requests_leave_nothing_to_wake_for() -> None:
    policy = BatchPolicy(max_batch=8, cost=flat())
    d = policy.decide([Waiting(1, 0.0, 0.5), Waiting(2, 0.0, 0.7)], now=1.0, busy=False)
    assert set(d.expire) == {1, 2}
    assert d.dispatch == ()
    assert d.wake_at is None


def test_empty_queue_is_a_no_op() -> None:
    assert BatchPolicy(4).decide([], now=0.0, busy=False) == Decision()
    assert BatchPolicy(4).decide([], now=0.0, busy=True) == Decision()


# -- forming a batch ----------------------------------------------------------------------------


def test_batch_takes_at_most_max_batch_rows_earliest_deadline_first() -> None:
    policy = BatchPolicy(max_batch=4, cost=flat())
    # arrival order is the reverse of deadline order
    queue = [Waiting(i, arrived=float(i), deadline=100.0 - i) for i in range(10)]
    d = policy.decide(queue, now=10.0, busy=False)
    assert d.dispatch == (9, 8, 7, 6)
    assert d.wake_at == 100.0 - 5  # the earliest deadline left behind


def test_rows_not_requests_count_against_max_batch() -> None:
    policy = BatchPolicy(max_batch=10, cost=flat())
    queue = [
        Waiting(1, 0.0, deadline=5.0, rows=4),
        Waiting(2, 0.0, deadline=6.0, rows=4),
        Waiting(3, 0.0, deadline=7.0, rows=4),  # would make 12
    ]
    d = policy.decide(queue, now=0.0, busy=False)
    assert d.dispatch == (1, 2)


def test_equal_deadlines_go_in_arrival_order() -> None:
    policy = BatchPolicy(max_batch=2, cost=flat())
    queue = [Waiting(5, 3.0, 9.0), Waiting(6, 1.0, 9.0), Waiting(7, 2.0, 9.0)]
    assert policy.decide(queue, now=3.0, busy=False).dispatch == (6, 7)


def test_a_request_that_would_make_the_batch_miss_a_chosen_deadline_waits() -> None:
    """Cost 1 ms + 1 ms per row: the first request has 2.5 ms left. With it alone the batch
    ends at +2 ms; adding a second row pushes the finish to +3 ms, past the first deadline,
    so the second waits for the next batch even though its own deadline is far away."""
    policy = BatchPolicy(max_batch=64, cost=flat(1 * MS, per_row=1 * MS))
    now = 10.0
    urgent = Waiting(1, arrived=now, deadline=now + 2.5 * MS)
    relaxed = Waiting(2, arrived=now, deadline=now + 1.0)
    d = policy.decide([relaxed, urgent], now=now, busy=False)
    assert d.dispatch == (1,)
    assert d.wake_at == relaxed.deadline
    # with more slack on the urgent one both fit
    roomy = Waiting(1, arrived=now, deadline=now + 3.5 * MS)
    assert policy.decide([relaxed, roomy], now=now, busy=False).dispatch == (1, 2)


def test_the_first_request_is_taken_even_if_the_estimate_says_it_is_late() -> None:
    policy = BatchPolicy(max_batch=64, cost=flat(cost=1.0))  # a very pessimistic estimate
    d = policy.decide([Waiting(1, 0.0, deadline=0.01), Waiting(2, 0.0, 5.0)], 0.0, busy=False)
    assert d.dispatch == (1,)  # only the deadline itself expires a request
    assert d.expire == ()


def test_a_request_bigger_than_max_batch_runs_alone() -> None:
    policy = BatchPolicy(max_batch=8, cost=flat())
    big = Waiting(1, 0.0, deadline=1.0, rows=20)
    small = Waiting(2, 0.0, deadline=2.0, rows=1)
    d = policy.decide([small, big], now=0.0, busy=False)
    assert d.dispatch == (1,)
    assert d.wake_at == 2.0
    # behind an earlier small one it waits for its own batch
    early = Waiting(3, 0.0, deadline=0.5, rows=1)
    d = policy.decide([small, big, early], now=0.0, busy=False)
    assert d.dispatch == (3,)
    assert 1 not in d.dispatch


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchPolicy(0)
    with pytest.raises(ValueError):
        CostModel(fixed=-1.0)
    with pytest.raises(ValueError):
        CostModel(alpha=0.0)


# -- the cost model -----------------------------------------------------------------------------


def test_cost_model_learns_fixed_and_per_row_parts() -> None:
    fixed, per_row = 0.004, 0.00025  # far from the defaults (0.5 ms, 10 µs)
    cost = CostModel()
    rng = random.Random(3)
    sizes = [1, 2, 3, 4, 8, 32, 64, 256]
    for _ in range(400):
        n = rng.choice(sizes)
        cost.observe(n, fixed + per_row * n)
    for n in (1, 4, 16, 64, 256, 1024):
        truth = fixed + per_row * n
        assert cost(n) == pytest.approx(truth, rel=0.05), n
    assert cost.fixed == pytest.approx(fixed, rel=0.05)
    assert cost.per_row == pytest.approx(per_row, rel=0.05)


def test_cost_model_single_row_batches_do_not_make_big_batches_free() -> None:
    cost = CostModel(fixed=0.001, per_row=0.0001)
    for _ in range(200):
        cost.observe(1, 0.001 + 0.0001)
    assert cost(256) == pytest.approx(0.001 + 0.0001 * 256, rel=0.01)


def test_cost_model_ignores_nonsense() -> None:
    cost = CostModel(fixed=0.002, per_row=0.0001)
    for rows, seconds in [(0, 1.0), (-3, 1.0), (5, float("nan")), (5, float("inf")), (5, -1.0)]:
        cost.observe(rows, seconds)
    assert (cost.fixed, cost.per_row) == (0.002, 0.0001)


def _estimate_errors(sizes: list[int], noise: float, seed: int = 1) -> list[float]:
    """Relative errors of cost(n) at the largest observed size and twice it, sampled after
    each of the last 2000 of 3000 batches whose sizes are drawn from `sizes` and whose
    measured cost is the truth (2 ms + 50 µs a row) times a uniform jitter of +-noise."""
    fixed, per_row = 0.002, 0.00005
    cost = CostModel()
    rng = random.Random(seed)
    errors = []
    for k in range(3000):
        n = rng.choice(sizes)
        cost.observe(n, (fixed + per_row * n) * rng.uniform(1 - noise, 1 + noise))
        if k >= 1000:
            errors.append(
                max(abs(cost(m) / (fixed + per_row * m) - 1) for m in (max(sizes), 2 * max(sizes)))
            )
    return sorted(errors)


def test_cost_model_learns_with_jitter_when_single_row_batches_are_common() -> None:
    errors = _estimate_errors([1, 64, 128], noise=0.1)
    assert errors[int(len(errors) * 0.95)] < 0.15


@pytest.mark.parametrize(
    ("sizes", "noise"),
    [([16, 32, 64], 0.0), ([8, 16, 32, 64], 0.1), ([1, 2, 4, 16, 64, 128], 0.1)],
    ids=["large-batches-exact", "large-batches-jitter", "mixed-jitter"],
)
def test_cost_model_learns_from_the_batches_a_loaded_server_runs(
    sizes: list[int], noise: float
) -> None:
    errors = _estimate_errors(sizes, noise)
    assert errors[len(errors) // 2] < 0.05  # median
    assert errors[int(len(errors) * 0.95)] < 0.15  # p95


# -- properties ---------------------------------------------------------------------------------

NOW = 1000.0


@st.composite
def queues(draw: st.DrawFn) -> list[Waiting]:
    n = draw(st.integers(0, 40))
    out = []
    for i in range(n):
        arrived = NOW - draw(st.floats(0, 2, allow_nan=False))
        deadline = NOW + draw(st.floats(-1, 1, allow_nan=False))
        rows = draw(st.integers(1, 40))
        out.append(Waiting(i, arrived, deadline, rows))
    return draw(st.permutations(out))


costs = st.builds(
    CostModel,
    fixed=st.floats(0, 0.05, allow_nan=False),
    per_row=st.floats(0, 0.01, allow_nan=False),
)


@settings(max_examples=300, deadline=None)
@given(queue=queues(), max_batch=st.integers(1, 64), cost=costs, busy=st.booleans())
def test_every_request_is_accounted_for_exactly_once(
    queue: list[Waiting], max_batch: int, cost: CostModel, busy: bool
) -> None:
    d = BatchPolicy(max_batch, cost).decide(queue, now=NOW, busy=busy)
    by_id = {w.id: w for w in queue}
    assert len(d.expire) == len(set(d.expire))
    assert len(d.dispatch) == len(set(d.dispatch))
    expired, dispatched = ids(d)
    assert expired <= by_id.keys() and dispatched <= by_id.keys()
    assert not expired & dispatched
    left = by_id.keys() - expired - dispatched
    # expired is exactly the requests whose deadline passed
    assert expired == {w.id for w in queue if w.deadline <= NOW}
    # nothing dispatched is expired, nor dispatched while busy
    assert all(by_id[i].deadline > NOW for i in dispatched)
    if busy:
        assert not dispatched
    # a batch stays within max_batch unless it is one oversize request
    rows = sum(by_id[i].rows for i in dispatched)
    assert rows <= max_batch or (len(dispatched) == 1 and rows > max_batch)
    # an idle model with live requests always gets work (no fixed wait)
    if not busy and left | dispatched:
        assert dispatched
    # whatever is left has a timer: the engine would otherwise sleep past a deadline
    if left:
        assert d.wake_at is not None
        assert d.wake_at <= min(by_id[i].deadline for i in left)
    if d.wake_at is not None:
        assert d.wake_at > NOW  # never asks to be woken in the past (a busy loop)


@settings(max_examples=300, deadline=None)
@given(queue=queues(), max_batch=st.integers(1, 64), cost=costs)
def test_batches_are_earliest_deadline_first_and_respect_chosen_deadlines(
    queue: list[Waiting], max_batch: int, cost: CostModel
) -> None:
    d = BatchPolicy(max_batch, cost).decide(queue, now=NOW, busy=False)
    by_id = {w.id: w for w in queue}
    chosen = [by_id[i] for i in d.dispatch]
    left = [w for w in queue if w.deadline > NOW and w.id not in d.dispatch]
    if not chosen:
        return
    # in deadline order, and nothing left behind is more urgent than something taken
    assert [w.deadline for w in chosen] == sorted(w.deadline for w in chosen)
    assert all(w.deadline >= chosen[-1].deadline for w in left)
    # beyond the first, every request fits the estimate of the whole batch
    if len(chosen) > 1:
        finish = NOW + cost(sum(w.rows for w in chosen))
        assert finish <= min(w.deadline for w in chosen)


# -- simulation: a fake engine on a fake clock ----------------------------------------------------


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    kind: str = field(compare=False)
    waiting: Waiting | None = field(default=None, compare=False)


@dataclass
class _Sim:
    """Runs the policy as the engine does: decide on every arrival, batch end and wake-up."""

    policy: BatchPolicy
    true_fixed: float
    true_per_row: float
    now: float = 0.0
    busy: bool = False
    queue: dict[int, Waiting] = field(default_factory=dict)
    dispatched_at: dict[int, float] = field(default_factory=dict)
    expired_at: dict[int, float] = field(default_factory=dict)
    batches: list[tuple[float, list[int]]] = field(default_factory=list)

    def run(self, arrivals: list[Waiting]) -> None:
        events: list[_Event] = []
        seq = 0
        for w in arrivals:
            heapq.heappush(events, _Event(w.arrived, seq, "arrive", w))
            seq += 1
        steps = 0
        timer = -1  # the engine keeps one timer: each decision replaces the last one's
        while events:
            steps += 1
            assert steps < 100_000, "the simulation does not make progress"
            ev = heapq.heappop(events)
            assert ev.at >= self.now
            if ev.kind == "wake" and ev.seq != timer:
                continue
            self.now = ev.at
            if ev.kind == "arrive":
                assert ev.waiting is not None
                self.queue[ev.waiting.id] = ev.waiting
            elif ev.kind == "done":
                self.busy = False
            d = self.policy.decide(list(self.queue.values()), self.now, self.busy)
            for i in d.expire:
                self.expired_at[i] = self.now
                del self.queue[i]
            if d.dispatch:
                assert not self.busy
                rows = 0
                for i in d.dispatch:
                    self.dispatched_at[i] = self.now
                    rows += self.queue.pop(i).rows
                took = self.true_fixed + self.true_per_row * rows
                self.policy.cost.observe(rows, took)
                self.busy = True
                self.batches.append((self.now, list(d.dispatch)))
                heapq.heappush(events, _Event(self.now + took, seq, "done"))
                seq += 1
            timer = -1
            if d.wake_at is not None:
                assert d.wake_at > self.now
                heapq.heappush(events, _Event(d.wake_at, seq, "wake"))
                timer = seq
                seq += 1


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
    rate=st.floats(50, 20_000),  # arrivals per second: from idle to overloaded
    timeout=st.floats(0.001, 0.05),
    max_batch=st.integers(1, 64),
    true_fixed=st.floats(0.0001, 0.005),
    true_per_row=st.floats(0.0, 0.0005),
)
def test_simulation_every_request_is_dispatched_before_its_deadline_or_expired(
    n: int,
    seed: int,
    rate: float,
    timeout: float,
    max_batch: int,
    true_fixed: float,
    true_per_row: float,
) -> None:
    rng = random.Random(seed)
    t = 0.0
    arrivals = []
    for i in range(n):
        t += rng.expovariate(rate)
        rows = rng.choice([1, 1, 1, 2, 5, max_batch + 3])
        arrivals.append(Waiting(i, t, t + timeout * rng.uniform(0.5, 2.0), rows))
    sim = _Sim(BatchPolicy(max_batch, CostModel()), true_fixed, true_per_row)
    sim.run(arrivals)
    by_id = {w.id: w for w in arrivals}
    assert not sim.queue, "requests left in the queue with no event to wake the engine"
    assert sim.dispatched_at.keys() | sim.expired_at.keys() == by_id.keys()
    assert not sim.dispatched_at.keys() & sim.expired_at.keys()
    for i, at in sim.dispatched_at.items():
        assert at < by_id[i].deadline, f"request {i} dispatched after its deadline"
    for i, at in sim.expired_at.items():
        assert at >= by_id[i].deadline, f"request {i} expired early"
    for _, batch in sim.batches:
        rows = sum(by_id[i].rows for i in batch)
        assert rows <= max_batch or len(batch) == 1


def test_simulation_low_load_has_no_waiting() -> None:
    """Requests far apart at an idle model: each dispatched the moment it arrives."""
    arrivals = [Waiting(i, i * 0.1, i * 0.1 + 0.05) for i in range(50)]
    sim = _Sim(BatchPolicy(64, CostModel()), true_fixed=0.001, true_per_row=0.00001)
    sim.run(arrivals)
    assert not sim.expired_at
    for w in arrivals:
        assert sim.dispatched_at[w.id] == w.arrived
    assert all(len(b) == 1 for _, b in sim.batches)


def test_simulation_under_load_batches_grow_and_deadlines_hold() -> None:
    """10k requests/s at a model that takes 2 ms + 20 µs a row: one-at-a-time cannot keep up
    (2 ms each is 500/s), so batches must form, and with 20 ms deadlines nothing expires."""
    rng = random.Random(0)
    t = 0.0
    arrivals = []
    for i in range(3000):
        t += rng.expovariate(10_000)
        arrivals.append(Waiting(i, t, t + 0.02))
    sim = _Sim(BatchPolicy(64, CostModel()), true_fixed=0.002, true_per_row=0.00002)
    sim.run(arrivals)
    assert not sim.expired_at
    sizes = [len(b) for _, b in sim.batches]
    assert max(sizes) > 10
    assert len(sim.batches) < len(arrivals) / 5
