"""The planner's rules, on made-up graphs and digests: no data, torch or database.

The properties (hypothesis) are the invariants the executor relies on: a plan is closed under
downstream propagation, a plan that ran leaves nothing to do, and `until` never reaches past
its step.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.core.errors import InvalidArgument
from backline.pipeline import plan as plan_module
from backline.pipeline.plan import Graph, Plan, Step, changed_inputs, plan

LINE = Graph(
    (
        Step("ingest"),
        Step("validate", ("ingest",)),
        Step("materialize", ("validate",)),
        Step("training_set", ("validate",)),
        Step("train", ("training_set",)),
        Step("promote", ("train", "materialize")),
    )
)


def _same(digests: dict[str, dict[str, str]]) -> dict[str, dict[str, str] | None]:
    return {k: dict(v) for k, v in digests.items()}


def test_nothing_ran_yet_means_everything_runs() -> None:
    decided = plan(LINE, {"ingest": {"a.csv": "1"}}, {})
    assert decided.names == LINE.names
    assert [d.reason for d in decided.steps] == ["never ran"] * len(LINE.steps)


def test_unchanged_inputs_run_nothing() -> None:
    current = {name: {"x": name} for name in LINE.names}
    decided = plan(LINE, current, _same(current))
    assert decided.empty and decided.fresh == LINE.names


def test_a_changed_input_runs_its_step_and_everything_downstream() -> None:
    current = {name: {"x": name} for name in LINE.names}
    last = _same(current)
    current["training_set"] = {"x": "other", "y": "new"}
    decided = plan(LINE, current, last)
    assert decided.names == ("training_set", "train", "promote")
    first = decided.steps[0]
    assert first.reason == "inputs changed" and first.changed == ("x", "y")
    assert decided.steps[1].reason == "upstream runs" and decided.steps[1].changed == (
        "training_set",
    )
    assert decided.fresh == ("ingest", "validate", "materialize")


def test_a_removed_input_counts_as_changed() -> None:
    assert changed_inputs({"a": "1"}, {"a": "1", "b": "2"}) == ("b",)
    assert changed_inputs({"a": "1"}, None) == ("a",)
    assert changed_inputs({}, {}) == ()


def test_until_keeps_the_step_and_what_it_needs() -> None:
    decided = plan(LINE, {}, {}, until="train")
    assert decided.names == ("ingest", "validate", "training_set", "train")
    assert "materialize" not in decided.names  # train does not need it


def test_force_runs_a_fresh_step_and_its_downstream() -> None:
    current = {name: {"x": name} for name in LINE.names}
    decided = plan(LINE, current, _same(current), force=["materialize"])
    assert decided.names == ("materialize", "promote")
    assert decided.steps[0].reason == "forced"


def test_unknown_step_names_suggest_the_closest() -> None:
    with pytest.raises(InvalidArgument, match=r"no pipeline step 'trian'\. Did you mean 'train'\?"):
        plan(LINE, {}, {}, until="trian")
    with pytest.raises(InvalidArgument, match="Did you mean 'promote'"):
        plan(LINE, {}, {}, force=["promot"])


def test_a_graph_must_be_in_dependency_order() -> None:
    with pytest.raises(InvalidArgument, match="needs 'b', which is not declared before it"):
        Graph((Step("a", ("b",)), Step("b")))
    with pytest.raises(InvalidArgument, match="declared twice"):
        Graph((Step("a"), Step("a")))


def test_explain_names_what_changed() -> None:
    current = {name: {"x": name} for name in LINE.names}
    last = _same(current)
    current["ingest"] = {f"f{i}": "n" for i in range(5)}
    assert plan(LINE, current, last).steps[0].explain() == ("inputs changed: f0, f1, f2 and 3 more")


def test_the_planner_imports_no_data_or_torch_library() -> None:
    """plan.py and the backline modules it imports use the standard library only (the package
    root itself loads pyarrow for the project handle, so this reads the sources instead)."""
    src = Path(plan_module.__file__).parents[1]
    todo, seen, outside = ["pipeline/plan.py"], set(), set()
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        for node in ast.walk(ast.parse((src / rel).read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("backline."):
                    todo.append(name.removeprefix("backline.").replace(".", "/") + ".py")
                elif name.split(".")[0] not in sys.stdlib_module_names and name != "__future__":
                    outside.add(name)
    assert seen >= {"pipeline/plan.py", "core/errors.py", "core/suggest.py"}
    assert not outside, outside


# -- properties ------------------------------------------------------------------------------


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """A random DAG of 1-8 steps, declared in dependency order."""
    n = draw(st.integers(1, 8))
    steps = []
    for i in range(n):
        needs = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        steps.append(Step(f"s{i}", tuple(f"s{j}" for j in sorted(needs))))
    return Graph(tuple(steps))


@st.composite
def situations(
    draw: st.DrawFn,
) -> tuple[Graph, dict[str, dict[str, str]], dict[str, dict[str, str] | None], str | None]:
    graph = draw(graphs())
    digests = st.dictionaries(st.sampled_from(["a", "b", "c"]), st.sampled_from(["1", "2"]))
    current = {name: draw(digests) for name in graph.names}
    last: dict[str, dict[str, str] | None] = {
        name: draw(st.one_of(st.none(), digests)) for name in graph.names
    }
    until = draw(st.one_of(st.none(), st.sampled_from(graph.names)))
    return graph, current, last, until


def _run(decided: Plan, current: dict[str, dict[str, str]], last: dict) -> dict:
    """The records after every planned step succeeded with its current inputs."""
    after = dict(last)
    for name in decided.names:
        after[name] = dict(current.get(name, {}))
    return after


@settings(max_examples=300, deadline=None)
@given(situations())
def test_a_plan_is_closed_under_downstream_propagation(situation: tuple) -> None:
    graph, current, last, until = situation
    decided = plan(graph, current, last, until=until)
    scope = graph.needed_by(until) if until else set(graph.names)
    for name in decided.names:
        assert graph.downstream(name) & scope <= set(decided.names)
    assert set(decided.names) | set(decided.fresh) == scope
    assert not set(decided.names) & set(decided.fresh)
    order = [n for n in graph.names if n in decided.names]
    assert list(decided.names) == order


@settings(max_examples=300, deadline=None)
@given(situations())
def test_replanning_after_the_plan_ran_leaves_nothing_to_do(situation: tuple) -> None:
    graph, current, last, until = situation
    decided = plan(graph, current, last, until=until)
    again = plan(graph, current, _run(decided, current, last), until=until)
    assert again.empty, again


@settings(max_examples=300, deadline=None)
@given(situations())
def test_until_never_includes_a_step_after_it(situation: tuple) -> None:
    graph, current, last, until = situation
    if until is None:
        return
    decided = plan(graph, current, last, until=until)
    assert not graph.downstream(until) & set(decided.names)
    position = graph.names.index(until)
    assert all(graph.names.index(n) <= position for n in decided.names)


@settings(max_examples=300, deadline=None)
@given(situations())
def test_a_step_runs_exactly_when_it_or_something_it_needs_changed(situation: tuple) -> None:
    graph, current, last, until = situation
    decided = plan(graph, current, last, until=until)
    scope = graph.needed_by(until) if until else set(graph.names)

    def changed(name: str) -> bool:  # an oracle of its own: the digests differ as mappings
        return last.get(name) is None or dict(current.get(name, {})) != dict(last[name] or {})

    for name in scope:
        upstream = graph.needed_by(name) - {name}
        assert (name in decided.names) == (changed(name) or any(changed(u) for u in upstream))
