"""Schema versions: create on empty, upgrade an old registry in place, refuse a newer one.

The schema-1 database here is written by hand, as backline 0.1 would have left it: no content
digest column, no gate records table, no immutability triggers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.engine import make_url

from backline.core.config import Config
from backline.core.errors import StoreError
from backline.registry import Registry, open_registry
from backline.registry import schema as s
from tests.registry.conftest import assert_append_only, gate, lineage

V1_DDL = """
CREATE TABLE registry_schema_version (
    version INTEGER PRIMARY KEY, applied_at TIMESTAMP WITH TIME ZONE NOT NULL,
    backline_version VARCHAR(32) NOT NULL);
CREATE TABLE registry_models (
    id {id}, name VARCHAR(128) NOT NULL UNIQUE, created_at TIMESTAMP WITH TIME ZONE NOT NULL);
CREATE TABLE registry_versions (
    id {id}, model_id INTEGER NOT NULL REFERENCES registry_models (id),
    version INTEGER NOT NULL, created_at TIMESTAMP WITH TIME ZONE NOT NULL,
    actor VARCHAR(200) NOT NULL, description TEXT NOT NULL,
    training_set_digest VARCHAR(128) NOT NULL, feature_versions {json} NOT NULL,
    data_start TIMESTAMP WITH TIME ZONE, data_end TIMESTAMP WITH TIME ZONE,
    code_commit VARCHAR(64), config_hash VARCHAR(128) NOT NULL,
    library_versions {json} NOT NULL, metrics {json} NOT NULL, checkpoint_id VARCHAR(255),
    reference_profile {json},
    CONSTRAINT registry_versions_model_version UNIQUE (model_id, version));
CREATE TABLE registry_blobs (
    sha256 VARCHAR(64) PRIMARY KEY, size BIGINT NOT NULL,
    created_at TIMESTAMP WITH TIME ZONE NOT NULL);
CREATE TABLE registry_artifacts (
    version_id INTEGER NOT NULL REFERENCES registry_versions (id), name VARCHAR(255) NOT NULL,
    sha256 VARCHAR(64) NOT NULL REFERENCES registry_blobs (sha256), size BIGINT NOT NULL,
    PRIMARY KEY (version_id, name));
CREATE TABLE registry_aliases (
    model_id INTEGER NOT NULL REFERENCES registry_models (id), alias VARCHAR(64) NOT NULL,
    version_id INTEGER NOT NULL REFERENCES registry_versions (id),
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL, actor VARCHAR(200) NOT NULL,
    PRIMARY KEY (model_id, alias));
CREATE TABLE registry_alias_events (
    seq {id}, model_id INTEGER NOT NULL REFERENCES registry_models (id),
    alias VARCHAR(64) NOT NULL, action VARCHAR(16) NOT NULL, old_version INTEGER,
    new_version INTEGER, actor VARCHAR(200) NOT NULL, reason TEXT NOT NULL,
    at TIMESTAMP WITH TIME ZONE NOT NULL);
CREATE INDEX registry_alias_events_model ON registry_alias_events (model_id, seq);
INSERT INTO registry_schema_version VALUES (1, '2026-01-01 00:00:00', '0.1.0');
"""

WEIGHTS = b"PK\x03\x04 old weights"
SPEC = b'{"old": true}'


def v1_data() -> str:
    """Two versions of 'fraud' (sharing one file), a champion alias and its audit line."""
    w, p = hashlib.sha256(WEIGHTS).hexdigest(), hashlib.sha256(SPEC).hexdigest()
    version_cols = (
        "model_id, version, created_at, actor, description, training_set_digest, "
        "feature_versions, config_hash, library_versions, metrics"
    )
    rows = [
        "INSERT INTO registry_models (name, created_at) VALUES ('fraud', '2026-01-02 00:00:00')",
        *(
            f"INSERT INTO registry_versions ({version_cols}) SELECT id, {n}, "
            f"'2026-01-0{n + 1} 00:00:00', 'old-trainer', 'v{n}', 'ts-{n}', "
            f"""'{{"card_stats": "v{n}"}}', 'cfg', '{{"python": "3.11.7"}}', """
            f"""'{{"auc_pr": 0.{70 + n}}}' FROM registry_models WHERE name = 'fraud'"""
            for n in (1, 2)
        ),
        f"INSERT INTO registry_blobs VALUES ('{w}', {len(WEIGHTS)}, '2026-01-02 00:00:00')",
        f"INSERT INTO registry_blobs VALUES ('{p}', {len(SPEC)}, '2026-01-02 00:00:00')",
        *(
            f"INSERT INTO registry_artifacts SELECT id, '{name}', '{sha}', {size} "
            f"FROM registry_versions WHERE version = {n}"
            for n, name, sha, size in [
                (1, "model.pt", w, len(WEIGHTS)),
                (2, "model.pt", w, len(WEIGHTS)),
                (2, "spec.json", p, len(SPEC)),
            ]
        ),
        "INSERT INTO registry_aliases SELECT model_id, 'champion', id, '2026-01-04 00:00:00', "
        "'old-ci' FROM registry_versions WHERE version = 1",
        "INSERT INTO registry_alias_events (model_id, alias, action, old_version, new_version, "
        "actor, reason, at) SELECT id, 'champion', 'force-promote', NULL, 1, 'old-ci', "
        "'first model', '2026-01-04 00:00:00' FROM registry_models",
    ]
    return ";\n".join(rows) + ";"


def raw_engine(cfg: Config) -> Engine:
    uri = cfg.store_uri("registry")
    if uri.scheme == "sqlite":
        assert uri.path is not None
        uri.path.parent.mkdir(parents=True, exist_ok=True)
        return create_engine(f"sqlite:///{uri.path}")
    return create_engine(make_url("postgresql+psycopg://" + uri.raw.split("://", 1)[1]))


def run_script(engine: Engine, script: str) -> None:
    sqlite = engine.dialect.name == "sqlite"
    script = script.replace("{id}", "INTEGER PRIMARY KEY" if sqlite else "SERIAL PRIMARY KEY")
    script = script.replace("{json}", "JSON" if sqlite else "JSONB")
    with engine.begin() as conn:
        for statement in script.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)


def make_v1(cfg: Config) -> Engine:
    engine = raw_engine(cfg)
    run_script(engine, V1_DDL + v1_data())
    root = cfg.root / ".backline" / "artifacts"
    for data in (WEIGHTS, SPEC):
        sha = hashlib.sha256(data).hexdigest()
        (root / sha[:2]).mkdir(parents=True, exist_ok=True)
        (root / sha[:2] / sha).write_bytes(data)
    return engine


def test_empty_database_gets_the_current_schema(registry: Registry) -> None:
    assert registry.schema_version() == s.SCHEMA_VERSION
    tables = set(inspect(registry._engine).get_table_names())
    assert {t.name for t in s.metadata.sorted_tables} <= tables


def test_schema_1_is_upgraded_in_place_and_keeps_its_data(reg_cfg: Config) -> None:
    engine = make_v1(reg_cfg)
    with engine.connect() as conn:
        assert "registry_gate_records" not in inspect(conn).get_table_names()

    with open_registry(reg_cfg) as registry:
        assert registry.schema_version() == 2
        old = registry.list_versions("fraud")
        assert [(v.version, v.actor, v.lineage.metrics["auc_pr"]) for v in old] == [
            (1, "old-trainer", 0.71),
            (2, "old-trainer", 0.72),
        ]
        # the new column is back-filled from the artifact rows
        for v in old:
            assert v.content_digest == s.content_digest((a.name, a.sha256) for a in v.artifacts)
        assert old[0].content_digest != old[1].content_digest
        assert registry.get("fraud", "champion").version == 1
        assert [(e.action, e.actor) for e in registry.audit("fraud")] == [
            ("force-promote", "old-ci")
        ]
        assert registry.artifact_path("fraud", 2, "spec.json").read_bytes() == SPEC
        # what schema 2 adds works on the upgraded database
        registry.record_gate("fraud", 2, gate(champion=1))
        registry.promote("fraud", 2, actor="ci", reason="first gated promotion")
        assert registry.rollback("fraud", actor="ci", reason="check").new_version == 1
        # the upgrade installs the triggers on every append-only table, old rows included
        assert_append_only(registry._engine)
        new = registry.register(
            "fraud", {"model.pt": _file(reg_cfg, WEIGHTS)}, lineage(), actor="a"
        )
        assert new.version == 3 and new.content_digest == old[0].content_digest

    with engine.connect() as conn:
        stamps = conn.execute(
            select(s.schema_version.c.version).order_by(s.schema_version.c.version)
        ).scalars()
        assert list(stamps) == [1, 2]
    engine.dispose()


def test_a_failed_migration_changes_nothing(
    reg_cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_v1(reg_cfg)

    def half_then_fail(conn: object) -> None:
        s._v1_to_v2(conn)  # type: ignore[arg-type]
        raise RuntimeError("power cut (injected)")

    monkeypatch.setitem(s.MIGRATIONS, 1, half_then_fail)
    with pytest.raises(RuntimeError, match="injected"):
        open_registry(reg_cfg)
    monkeypatch.undo()
    with engine.connect() as conn:
        assert "registry_gate_records" not in inspect(conn).get_table_names()
        columns = {c["name"] for c in inspect(conn).get_columns("registry_versions")}
        assert "content_digest" not in columns
        assert conn.scalar(select(func.max(s.schema_version.c.version))) == 1
    with open_registry(reg_cfg) as registry:  # and the real migration still succeeds after
        assert registry.schema_version() == 2
    engine.dispose()


def test_a_newer_schema_is_refused_untouched(reg_cfg: Config) -> None:
    with open_registry(reg_cfg) as registry:
        registry.register("fraud", {"model.pt": _file(reg_cfg, WEIGHTS)}, lineage(), actor="a")
        with registry._engine.begin() as conn:
            conn.execute(
                s.schema_version.insert().values(
                    version=3, applied_at=registry.get("fraud").created_at, backline_version="9.0"
                )
            )
    with pytest.raises(StoreError) as info:
        open_registry(reg_cfg)
    message = str(info.value)
    assert "schema is version 3, written by a newer backline" in message
    assert "this one knows up to 2" in message and "upgrade" in message
    assert message.startswith("registry.uri = ")
    engine = raw_engine(reg_cfg)
    with engine.connect() as conn:
        assert conn.scalar(select(func.max(s.schema_version.c.version))) == 3
        assert conn.scalar(select(func.count()).select_from(s.versions)) == 1
    engine.dispose()


def test_foreign_registry_tables_are_not_adopted(reg_cfg: Config) -> None:
    engine = raw_engine(reg_cfg)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE registry_models (id INTEGER PRIMARY KEY)")
    with pytest.raises(StoreError, match="no registry_schema_version"):
        open_registry(reg_cfg)
    engine.dispose()


def _file(cfg: Config, data: bytes) -> Path:
    path = cfg.root / "upload.bin"
    path.write_bytes(data)
    return path
