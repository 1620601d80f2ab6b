"""Which pipeline steps are stale: a pure decision over digests, with no I/O.

    graph = Graph((Step("ingest"), Step("validate", needs=("ingest",)), ...))
    decided = plan(graph, current={"ingest": {"landing/a.csv": "9f2c..."}, ...},
                   last={"ingest": {"landing/a.csv": "9f2c..."}, ...}, until="train")
    [d.step for d in decided.steps], decided.steps[0].reason      # what runs, and why

A step is stale when it never succeeded, when its input digests differ from those recorded at
its last successful run, when it is forced, or when a step it needs is stale (it will run, so
its outputs may change). `until` keeps only STEP and the steps it needs, directly or not.

The executor (`backline.pipeline.executor`) computes the digests, asks this module, and runs
what comes back; this module imports nothing but the standard library, so its rules are tested
with hypothesis and no data, torch or database (tests/pipeline/test_plan.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from backline.core.errors import InvalidArgument
from backline.core.suggest import did_you_mean

Digests = Mapping[str, str]
"""Input name -> content digest, as one step sees its inputs."""

Reason = Literal["never ran", "inputs changed", "upstream runs", "forced"]


@dataclass(frozen=True)
class Step:
    """One node of the pipeline graph."""

    name: str
    needs: tuple[str, ...] = ()
    """Steps whose outputs this one reads; they come earlier in the graph."""
    summary: str = ""
    """One line for `backline run --help` and docs/pipeline.md."""


@dataclass(frozen=True)
class Graph:
    """Steps in an order where every step comes after the steps it needs."""

    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise InvalidArgument(f"pipeline step {step.name!r} is declared twice.")
            for need in step.needs:
                if need not in seen:
                    raise InvalidArgument(
                        f"pipeline step {step.name!r} needs {need!r}, which is not declared "
                        "before it. Declare steps after the steps they need."
                    )
            seen.add(step.name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def step(self, name: str) -> Step:
        """The step called `name`; an unknown name suggests the closest one."""
        for s in self.steps:
            if s.name == name:
                return s
        raise InvalidArgument(
            f"there is no pipeline step {name!r}.{did_you_mean(name, self.names)} "
            f"Steps: {', '.join(self.names)}."
        )

    def needed_by(self, name: str) -> frozenset[str]:
        """`name` and every step it needs, directly or through others."""
        self.step(name)
        wanted = {name}
        for s in reversed(self.steps):
            if s.name in wanted:
                wanted.update(s.needs)
        return frozenset(wanted)

    def downstream(self, name: str) -> frozenset[str]:
        """Every step that needs `name`, directly or through others (not `name` itself)."""
        self.step(name)
        found: set[str] = set()
        for s in self.steps:
            if name in s.needs or found.intersection(s.needs):
                found.add(s.name)
        return frozenset(found)


@dataclass(frozen=True)
class Decision:
    """One step the plan runs, and why."""

    step: str
    reason: Reason
    changed: tuple[str, ...] = ()
    """Inputs whose digests differ from the last successful run (added, removed or changed),
    for reason "inputs changed"; the stale steps it needs, for "upstream runs"."""

    def explain(self) -> str:
        """'inputs changed: landing/transactions/day2.csv' and the like."""
        if not self.changed:
            return self.reason
        shown = ", ".join(self.changed[:3])
        more = f" and {len(self.changed) - 3} more" if len(self.changed) > 3 else ""
        return f"{self.reason}: {shown}{more}"


@dataclass(frozen=True)
class Plan:
    """The steps to run, in graph order, and the ones left as they are."""

    steps: tuple[Decision, ...]
    fresh: tuple[str, ...] = field(default=())
    """Steps in scope whose inputs match their last successful run: skipped."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.step for d in self.steps)

    @property
    def empty(self) -> bool:
        return not self.steps


def changed_inputs(current: Digests, last: Digests | None) -> tuple[str, ...]:
    """Input names whose digest differs between `current` and `last` (added, removed or
    changed), sorted; every current input when the step never succeeded."""
    if last is None:
        return tuple(sorted(current))
    names = set(current) | set(last)
    return tuple(sorted(n for n in names if current.get(n) != last.get(n)))


def plan(
    graph: Graph,
    current: Mapping[str, Digests],
    last: Mapping[str, Digests | None],
    *,
    until: str | None = None,
    force: Iterable[str] = (),
) -> Plan:
    """Decide which steps of `graph` run.

    `current[step]`: the step's input digests now; `last[step]`: those recorded at its last
    successful run, or None (or absent) when it never succeeded. A step missing from `current`
    has no inputs of its own. `force`: steps that run whatever their digests say (and, with
    them, everything downstream in scope).
    """
    scope = graph.needed_by(until) if until is not None else frozenset(graph.names)
    forced = set(force)
    for name in forced:
        graph.step(name)  # an unknown name is an error, with a suggestion
    stale: set[str] = set()
    steps: list[Decision] = []
    fresh: list[str] = []
    for step in graph.steps:
        if step.name not in scope:
            continue
        previous = last.get(step.name)
        mine = current.get(step.name, {})
        upstream = tuple(n for n in step.needs if n in stale)
        if step.name in forced:
            decision = Decision(step.name, "forced")
        elif previous is None:
            decision = Decision(step.name, "never ran")
        elif changed := changed_inputs(mine, previous):
            decision = Decision(step.name, "inputs changed", changed)
        elif upstream:
            decision = Decision(step.name, "upstream runs", upstream)
        else:
            fresh.append(step.name)
            continue
        stale.add(step.name)
        steps.append(decision)
    return Plan(tuple(steps), tuple(fresh))
