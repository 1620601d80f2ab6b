"""A registry per test, on SQLite and on the real PostgreSQL (in a schema of its own).

Each PostgreSQL test gets a fresh schema named backline_registry_<random>, reached through the
URI's search_path option, and drops it afterwards; nothing else in the database is touched.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from backline.core.config import Config, load_config
from backline.registry import GateCheck, GateRecord, Lineage, Registry, open_registry
from tests.conftest import POSTGRES_URL

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def pg_schema() -> Iterator[str]:
    name = f"backline_registry_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {name}")
    try:
        yield name
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def pg_uri(schema: str) -> str:
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def reg_cfg(backend: str, project: Path, request: pytest.FixtureRequest) -> Config:
    """The project's config, with registry.uri on the backend under test."""
    if backend == "sqlite":
        return load_config(project, env={})
    schema = request.getfixturevalue("pg_schema")
    return load_config(project, env={"BACKLINE_REGISTRY_URI": pg_uri(schema)})


@pytest.fixture
def registry(reg_cfg: Config) -> Iterator[Registry]:
    with open_registry(reg_cfg) as reg:
        yield reg


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return make_files(tmp_path / "v1", {"model.pt": b"PK\x03\x04 weights v1", "spec.json": b"{}"})


def make_files(folder: Path, contents: dict[str, bytes]) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, data in contents.items():
        path = folder / name.replace("/", "_")
        path.write_bytes(data)
        out[name] = path
    return out


def lineage(**overrides: object) -> Lineage:
    fields: dict[str, object] = {
        "training_set_digest": "ts-0001",
        "feature_versions": {"card_stats": "aaaa1111", "merchant": "bbbb2222"},
        "data_start": datetime(2026, 1, 1, tzinfo=UTC),
        "data_end": datetime(2026, 1, 31, tzinfo=UTC),
        "code_commit": None,
        "config_hash": "c" * 64,
        "library_versions": {"python": "3.11.7", "torch": "2.13.0"},
        "metrics": {"auc_pr": 0.80, "recall_at_fpr": 0.55},
        "checkpoint_id": "step-2000",
    }
    fields.update(overrides)
    return Lineage(**fields)  # type: ignore[arg-type]


def gate(passed: bool = True, champion: int | None = None) -> GateRecord:
    return GateRecord(
        passed=passed,
        checks=(
            GateCheck("auc_pr_floor", 0.8, 0.5, True, "above the floor"),
            GateCheck("non_inferiority", 0.79 if passed else 0.70, 0.78, passed),
        ),
        evaluated_at=datetime(2026, 2, 1, 12, tzinfo=UTC),
        eval_set_digest="eval-0001",
        champion_version=champion,
    )


#: The tables docs/registry.md ("Immutability") calls append-only, with an UPDATE that would
#: rewrite history in each: a description, a file's size, a failed gate turned into a pass, an
#: audit line's reason. Listed here by hand, from the docs, not from schema.IMMUTABLE, so that a
#: table dropped from the code's list is caught.
APPEND_ONLY = {
    "registry_versions": "description = 'rewritten'",
    "registry_artifacts": "size = size + 1",
    "registry_gate_records": "passed = NOT passed",
    "registry_alias_events": "reason = 'rewritten'",
}


def assert_append_only(engine: Engine) -> None:
    """UPDATE and DELETE on every append-only table fail with "immutable" and change nothing.

    A row trigger only fires on a row, so each table must hold at least one row first.
    """
    for table, assignment in APPEND_ONLY.items():
        with engine.connect() as conn:
            before = sorted(map(tuple, conn.execute(text(f"SELECT * FROM {table}"))), key=repr)
        assert before, f"{table} is empty: the test must write a row before it can check it"
        for statement in (f"UPDATE {table} SET {assignment}", f"DELETE FROM {table}"):
            with pytest.raises(DBAPIError, match="immutable"), engine.begin() as conn:
                conn.execute(text(statement))
                pytest.fail(f"{statement!r} was not refused")  # pragma: no cover
        with engine.connect() as conn:
            after = sorted(map(tuple, conn.execute(text(f"SELECT * FROM {table}"))), key=repr)
        assert after == before, f"{table} changed"
