"""Every declared constraint of backline.toml is enforced by the loader.

The cases are generated from the declarations themselves (a `Literal[...]` field type, an
`Annotated[..., Bound(...)]`), so a new constrained field is covered without touching this file.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest

from backline.core.config import (
    Bound,
    ColumnSpec,
    ColumnType,
    Config,
    SourceSpec,
    declared_constraints,
    load_config,
)
from backline.core.errors import ConfigError
from backline.core.types import COLUMN_TYPES

# Every class the loader builds, with where its keys live: a top-level section, a source, or a
# column of a source. The sections are read off Config, so a new section is walked too.
_SECTIONS = {
    f.name: hint
    for f in dataclasses.fields(Config)
    if dataclasses.is_dataclass(hint := typing.get_type_hints(Config)[f.name])
}
_CLASSES: list[tuple[str, type]] = [
    *[(name, cls) for name, cls in _SECTIONS.items()],
    ("sources.s", SourceSpec),
    ("sources.s.columns.x", ColumnSpec),
]
_SOURCE = """
[sources.s]
primary_key = ["id"]
event_time = "at"
{source_line}
[sources.s.columns.id]
type = "string"
[sources.s.columns.at]
type = "timestamp"
[sources.s.columns.x]
{column_line}
"""


@dataclass(frozen=True)
class Case:
    where: str  # "train", "sources.s", "sources.s.columns.x"
    key: str
    value: Any
    allowed: list[str]  # what the error must list: the choices, or the bound's ends

    @property
    def dotted(self) -> str:
        return f"{self.where}.{self.key}"

    def __str__(self) -> str:
        return f"{self.dotted}={self.value!r}"


def _base(hint: Any) -> tuple[Any, list[Bound]]:
    """A field type without Optional and Annotated, and the Bounds it was annotated with."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        return base, [m for m in extras if isinstance(m, Bound)]
    return hint, []


def _number(base: Any, x: float) -> Any:
    return int(x) if base is int else float(x)


def _cases(bad: bool) -> list[Case]:
    """One case per declared end and per Literal: outside it (bad) or on an inclusive end (good)."""
    cases = []
    for where, cls in _CLASSES:
        for key, hint in typing.get_type_hints(cls, include_extras=True).items():
            base, bounds = _base(hint)
            if typing.get_origin(base) is Literal:
                choices = [str(c) for c in typing.get_args(base)]
                value = f"{choices[0]}x" if bad else choices[-1]
                cases.append(Case(where, key, value, choices))
            for b in bounds:
                if b.min is not None and (bad or not b.min_exclusive):
                    step = 0 if b.min_exclusive or not bad else 1
                    cases.append(Case(where, key, _number(base, b.min - step), [str(b.min)]))
                if b.max is not None and (bad or not b.max_exclusive):
                    step = 0 if b.max_exclusive or not bad else 1
                    cases.append(Case(where, key, _number(base, b.max + step), [str(b.max)]))
    return cases


BAD = _cases(bad=True)
EDGES = _cases(bad=False)


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _write(tmp_path: Path, case: Case) -> Path:
    line = f"{case.key} = {_toml(case.value)}"
    if case.where == "sources.s":
        text = _SOURCE.format(source_line=line, column_line='type = "string"')
    elif case.where == "sources.s.columns.x":
        text = _SOURCE.format(source_line="", column_line=line)
    else:
        text = f"[{case.where}]\n{line}\n"
    (tmp_path / "backline.toml").write_text(text)
    return tmp_path


def test_the_walk_finds_the_declared_fields() -> None:
    """Guards the generator against finding nothing (and so checking nothing)."""
    dotted = {c.dotted for c in BAD}
    assert len(dotted) >= 20, dotted
    for key in (
        "train.batch_size",
        "train.dropout",
        "ingest.max_value_bytes",
        "features.engine",
        "gate.confidence",
        "sources.s.format",
        "sources.s.extra_columns",
        "sources.s.columns.x.type",
    ):
        assert key in dotted


@pytest.mark.parametrize("case", BAD, ids=str)
def test_a_value_outside_the_declaration_is_refused_naming_key_value_and_allowed(
    tmp_path: Path, case: Case
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, case), env={})
    message = str(caught.value)
    shown = repr(case.value) if isinstance(case.value, str) else str(case.value)
    assert message.startswith(f"backline.toml: {case.dotted} = {shown} must be "), message
    for allowed in case.allowed:
        assert allowed in message, message
    if isinstance(case.value, str):  # a near miss of a choice gets the choice suggested
        assert f"Did you mean '{case.allowed[0]}'?" in message, message
    assert "\n" not in message


@pytest.mark.parametrize("case", [c for c in BAD if "." not in c.where], ids=str)
def test_a_bad_value_from_the_environment_names_the_variable(tmp_path: Path, case: Case) -> None:
    (tmp_path / "backline.toml").write_text("")
    var = f"BACKLINE_{case.where.upper()}_{case.key.upper()}"
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, env={var: str(case.value)})
    message = str(caught.value)
    assert message.startswith(f"environment variable {var}: {case.dotted} = "), message
    assert "backline.toml" not in message


@pytest.mark.parametrize("case", EDGES, ids=str)
def test_a_value_on_an_inclusive_end_or_a_listed_choice_loads(tmp_path: Path, case: Case) -> None:
    cfg = load_config(_write(tmp_path, case), env={})
    if case.where.startswith("sources"):
        obj: Any = cfg.sources["s"]
        obj = obj.column("x") if "columns" in case.where else obj
    else:
        obj = getattr(cfg, case.where)
    assert getattr(obj, case.key) == case.value


def test_column_types_are_the_ones_core_types_lists() -> None:
    assert typing.get_args(ColumnType) == COLUMN_TYPES


def test_docs_list_every_declared_constraint_as_declared() -> None:
    """docs/configuration.md's table of allowed values is the declarations, word for word."""
    docs = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = docs.split("## Allowed values and bounds", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([\w.]+)` \| (.+?) \|$", section, flags=re.M))
    expected = {}
    for where, cls in _CLASSES:
        where = where.replace("sources.s.columns.x", "sources.NAME.columns.COL")
        where = where.replace("sources.s", "sources.NAME")
        for key, text in declared_constraints(cls).items():
            expected[f"{where}.{key}"] = text
    assert rows == expected
