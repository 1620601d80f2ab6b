"""Every registry API path, on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from backline.core.config import Config, load_config
from backline.core.errors import (
    GateFailed,
    InputError,
    IntegrityError,
    InvalidArgument,
    NotFoundError,
    StoreError,
    UsageError,
)
from backline.core.workspace import init_project
from backline.monitor.profile import profile_from_arrow
from backline.registry import (
    CHAMPION,
    Lineage,
    Registry,
    open_registry,
)
from backline.registry import schema as s
from tests.registry.conftest import APPEND_ONLY, assert_append_only, gate, lineage, make_files


def test_register_and_read_back(registry: Registry, files: dict[str, Path]) -> None:
    table = pa.table({"amount": [1.0, 2.0, None, 4.0], "channel": ["web", "pos", "web", None]})
    profile = profile_from_arrow(
        table.append_column("score", pa.array([0.1, 0.2, 0.3, 0.9])), score_column="score"
    )
    lin = lineage(reference_profile=profile, metrics={"auc_pr": 0.8, "undefined": math.nan})
    mv = registry.register("fraud", files, lin, actor="trainer", description="first")

    assert (mv.model, mv.version, mv.actor, mv.description) == ("fraud", 1, "trainer", "first")
    assert mv.created_at.tzinfo is not None
    assert [a.name for a in mv.artifacts] == ["model.pt", "spec.json"]
    assert mv.content_digest == s.content_digest((a.name, a.sha256) for a in mv.artifacts)
    for ref in (1, "1", "latest"):
        got_mv = registry.get("fraud", ref)  # NaN metric: compare all but lineage here
        assert (got_mv.version, got_mv.created_at, got_mv.artifacts) == (
            1,
            mv.created_at,
            mv.artifacts,
        )

    got = registry.get("fraud", 1).lineage
    assert got.reference_profile == profile
    assert got.feature_versions == lin.feature_versions
    assert (got.data_start, got.data_end) == (lin.data_start, lin.data_end)
    assert got.data_start is not None and got.data_start.tzinfo is not None
    assert got.library_versions == lin.library_versions
    assert got.metrics["auc_pr"] == 0.8 and math.isnan(got.metrics["undefined"])
    assert (got.checkpoint_id, got.config_hash, got.code_commit) == ("step-2000", "c" * 64, None)

    path = registry.artifact_path("fraud", 1, "model.pt")
    assert path.read_bytes() == files["model.pt"].read_bytes()
    sha = mv.artifact("model.pt").sha256
    assert path == registry.store.root / sha[:2] / sha


def test_versions_are_numbered_per_model(registry: Registry, files: dict[str, Path]) -> None:
    for _ in range(3):
        registry.register("fraud", files, lineage(), actor="a")
    registry.register("churn", files, lineage(), actor="a")
    assert [v.version for v in registry.list_versions("fraud")] == [1, 2, 3]
    assert [v.version for v in registry.list_versions("churn")] == [1]
    summaries = registry.list_models()
    assert [(m.name, m.versions, m.latest_version) for m in summaries] == [
        ("churn", 1, 1),
        ("fraud", 3, 3),
    ]


def test_written_versions_are_immutable(registry: Registry, files: dict[str, Path]) -> None:
    registry.register("fraud", files, lineage(), actor="a")
    registry.record_gate("fraud", 1, gate(passed=False))
    registry.record_gate("fraud", 1, gate())
    registry.promote("fraud", 1, actor="a", reason="")
    engine = registry._engine
    assert_append_only(engine)
    assert set(APPEND_ONLY) == set(s.IMMUTABLE)
    with engine.connect() as conn:
        passed = conn.execute(select(s.gate_records.c.passed).order_by(s.gate_records.c.id))
        assert list(passed.scalars()) == [False, True]
    # a second write of the same version number is refused by the database itself
    with pytest.raises(DBAPIError), engine.begin() as conn:
        row = conn.execute(select(s.versions)).mappings().one()
        conn.execute(s.versions.insert().values({**row, "id": None, "description": "again"}))
    assert registry.get("fraud", 1).description == ""
    assert len(registry.audit("fraud")) == 1


def test_same_file_is_stored_once(
    registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    v1 = registry.register("fraud", files, lineage(), actor="a")
    changed = make_files(tmp_path / "v2", {"spec.json": b'{"threshold": 0.7}'})
    v2 = registry.register(
        "fraud", {"model.pt": files["model.pt"], **changed}, lineage(), actor="a"
    )
    v3 = registry.register("other", {"weights.pt": files["model.pt"]}, lineage(), actor="a")
    sha = v1.artifact("model.pt").sha256
    assert v2.artifact("model.pt").sha256 == sha == v3.artifact("weights.pt").sha256
    stored = sorted(p.name for _, p in registry.store.stored())
    assert len(stored) == 3  # model.pt once, two spec.json contents
    assert sha in stored
    with registry._engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(s.blobs)) == 3
    assert v1.content_digest != v2.content_digest


def test_identical_files_give_identical_digests(registry: Registry, files: dict[str, Path]) -> None:
    a = registry.register("fraud", files, lineage(), actor="a")
    b = registry.register("fraud", files, lineage(metrics={"auc_pr": 0.9}), actor="a")
    assert a.content_digest == b.content_digest
    assert registry.diff("fraud", 1, 2).same_content


def test_corrupted_artifact_is_detected(registry: Registry, files: dict[str, Path]) -> None:
    registry.register("fraud", files, lineage(), actor="a")
    path = registry.artifact_path("fraud", 1, "model.pt")
    good = files["model.pt"].read_bytes()
    path.chmod(0o644)
    path.write_bytes(b"PK\x03\x04 weights v2")  # same size, different bytes
    with pytest.raises(IntegrityError, match=r"artifact 'model\.pt' of fraud v1 is corrupted"):
        registry.artifact_path("fraud", 1, "model.pt")
    # registering the same content again repairs the stored file
    registry.register("fraud", files, lineage(), actor="a")
    assert registry.artifact_path("fraud", 1, "model.pt").read_bytes() == good
    path.unlink()
    with pytest.raises(IntegrityError, match="missing from the artifact store"):
        registry.artifact_path("fraud", "latest", "model.pt")
    registry.register("fraud", files, lineage(), actor="a")
    assert registry.artifact_path("fraud", 2, "model.pt").read_bytes() == good


def test_aliases_and_their_audit_log(registry: Registry, files: dict[str, Path]) -> None:
    for _ in range(2):
        registry.register("fraud", files, lineage(), actor="a")
    first = registry.set_alias("fraud", "challenger", 1, actor="ann", reason="try it")
    second = registry.set_alias("fraud", "challenger", "2", actor="bob", reason="newer")
    assert (first.old_version, first.new_version, first.action) == (None, 1, "set")
    assert (second.old_version, second.new_version) == (1, 2)
    assert registry.get("fraud", "challenger").version == 2
    assert [(a.alias, a.version, a.actor) for a in registry.aliases("fraud")] == [
        ("challenger", 2, "bob")
    ]
    log = registry.audit("fraud")
    assert log == [first, second]
    assert log[0].seq < log[1].seq and log[0].at <= log[1].at
    assert registry.audit("fraud", alias="champion") == []

    with pytest.raises(InvalidArgument, match="already points at v2"):
        registry.set_alias("fraud", "challenger", 2, actor="a")
    with pytest.raises(InvalidArgument, match="moves only through promote"):
        registry.set_alias("fraud", CHAMPION, 2, actor="a")
    for bad in ("Bad", "2", "latest", "a b"):
        with pytest.raises(InvalidArgument):
            registry.set_alias("fraud", bad, 1, actor="a")
    with pytest.raises(InvalidArgument, match="actor is empty"):
        registry.set_alias("fraud", "shadow", 1, actor=" ")
    with pytest.raises(NotFoundError, match=r"no version or alias 'nope'.*challenger"):
        registry.get("fraud", "nope")
    assert len(registry.audit("fraud")) == 2, "refused moves leave no trace"


def test_promote_needs_a_passing_gate(registry: Registry, files: dict[str, Path]) -> None:
    for _ in range(3):
        registry.register("fraud", files, lineage(), actor="a")
    with pytest.raises(GateFailed, match="v1 has no gate record"):
        registry.promote("fraud", 1, actor="a", reason="please")
    registry.record_gate("fraud", 1, gate(passed=False))
    with pytest.raises(GateFailed, match=r"failed its gate \(non_inferiority\)"):
        registry.promote("fraud", 1, actor="a")
    with pytest.raises(InvalidArgument, match="needs a reason"):
        registry.promote("fraud", 1, actor="a", force=True)
    with pytest.raises(InvalidArgument, match="needs a reason"):
        registry.promote("fraud", 1, actor="a", reason="   ", force=True)
    assert registry.audit("fraud") == []

    registry.record_gate("fraud", 1, gate(passed=True))  # re-evaluated: the latest counts
    event = registry.promote("fraud", 1, actor="ci", reason="weekly")
    assert (event.action, event.old_version, event.new_version) == ("promote", None, 1)
    assert registry.get("fraud", CHAMPION).version == 1
    with pytest.raises(InvalidArgument, match="already the champion"):
        registry.promote("fraud", 1, actor="a")

    # a gate run against no champion is stale once v1 is champion
    registry.record_gate("fraud", 2, gate(passed=True, champion=None))
    with pytest.raises(
        GateFailed, match="compared v2 with no champion, but the champion is now v1"
    ):
        registry.promote("fraud", 2, actor="a")
    registry.record_gate("fraud", 2, gate(passed=True, champion=1))
    assert registry.promote("fraud", 2, actor="ci").action == "promote"

    forced = registry.promote("fraud", 3, actor="oncall", reason="hotfix", force=True)
    assert (forced.action, forced.old_version, forced.new_version) == ("force-promote", 2, 3)
    assert [e.action for e in registry.audit("fraud")] == ["promote", "promote", "force-promote"]
    assert registry.audit("fraud")[-1].reason == "hotfix"


def test_rollback_walks_back_the_champion_history(
    registry: Registry, files: dict[str, Path]
) -> None:
    for _ in range(3):
        registry.register("fraud", files, lineage(), actor="a")
    with pytest.raises(InvalidArgument, match="no earlier champion"):
        registry.rollback("fraud", actor="a", reason="x")
    for v in (1, 2, 3):
        registry.record_gate("fraud", v, gate(champion=v - 1 if v > 1 else None))
        registry.promote("fraud", v, actor="ci")
    with pytest.raises(InvalidArgument, match="reason is empty"):
        registry.rollback("fraud", actor="a", reason="")
    back = registry.rollback("fraud", actor="oncall", reason="precision dropped")
    assert (back.action, back.old_version, back.new_version) == ("rollback", 3, 2)
    assert registry.get("fraud", CHAMPION).version == 2
    again = registry.rollback("fraud", actor="oncall", reason="still bad")
    assert (again.old_version, again.new_version) == (2, 1)
    with pytest.raises(InvalidArgument, match=r"no earlier champion.*champion: v1"):
        registry.rollback("fraud", actor="a", reason="x")
    # a promotion after rollbacks starts a new history on top of v1
    registry.promote("fraud", 3, actor="a", reason="fixed upstream", force=True)
    assert registry.rollback("fraud", actor="a", reason="no").new_version == 1
    actions = [(e.action, e.old_version, e.new_version) for e in registry.audit("fraud")]
    assert actions == [
        ("promote", None, 1),
        ("promote", 1, 2),
        ("promote", 2, 3),
        ("rollback", 3, 2),
        ("rollback", 2, 1),
        ("force-promote", 1, 3),
        ("rollback", 3, 1),
    ]


def test_gate_records(registry: Registry, files: dict[str, Path]) -> None:
    registry.register("fraud", files, lineage(), actor="a")
    registry.register("fraud", files, lineage(), actor="a")
    assert registry.gate_of("fraud", 2) is None
    registry.record_gate("fraud", 2, gate(passed=False, champion=1))
    record = gate(passed=True, champion=1)
    registry.record_gate("fraud", "latest", record)
    assert registry.gate_of("fraud", 2) == record
    assert registry.gate_of("fraud", 1) is None
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.record_gate("fraud", 1, gate(champion=9))


def test_diff(registry: Registry, files: dict[str, Path], tmp_path: Path) -> None:
    registry.register("fraud", files, lineage(), actor="a")
    new_files = make_files(tmp_path / "v2", {"model.pt": b"PK\x03\x04 v2", "extra.json": b"[]"})
    registry.register(
        "fraud",
        new_files,
        lineage(
            metrics={"auc_pr": 0.85, "brier": 0.1},
            feature_versions={"card_stats": "cccc3333", "device": "dddd4444"},
            library_versions={"python": "3.11.7", "torch": "2.14.0"},
            code_commit="f" * 40,
        ),
        actor="a",
    )
    d = registry.diff("fraud", 1, "latest")
    assert (d.a, d.b) == (1, 2)
    metrics = {m.name: m for m in d.metrics}
    assert metrics["auc_pr"].delta == pytest.approx(0.05)
    assert metrics["brier"].a is None and metrics["brier"].delta is None
    assert metrics["recall_at_fpr"].b is None
    assert {(c.field, c.a, c.b) for c in d.features} == {
        ("card_stats", "aaaa1111", "cccc3333"),
        ("device", None, "dddd4444"),
        ("merchant", "bbbb2222", None),
    }
    assert {(c.field, c.a, c.b) for c in d.lineage} == {
        ("code_commit", None, "f" * 40),
        ("library_versions.torch", "2.13.0", "2.14.0"),
    }
    assert {(a.name, a.status) for a in d.artifacts} == {
        ("extra.json", "added"),
        ("model.pt", "changed"),
        ("spec.json", "removed"),
    }


def test_clear_errors(registry: Registry, files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(
        NotFoundError, match=r"no model 'fraud' in the registry \(models: none yet\)"
    ):
        registry.get("fraud")
    registry.register("fraud", files, lineage(), actor="a")
    with pytest.raises(NotFoundError, match=r"no model 'fruad'.*models: fraud"):
        registry.list_versions("fruad")
    with pytest.raises(NotFoundError, match="no version 7; its versions are 1 to 1"):
        registry.get("fraud", 7)
    with pytest.raises(NotFoundError, match=r"has no artifact 'nope\.pt'"):
        registry.artifact_path("fraud", 1, "nope.pt")
    with pytest.raises(InvalidArgument, match="model name 'a:b'"):
        registry.register("a:b", files, lineage(), actor="a")
    with pytest.raises(UsageError, match="at least one artifact"):
        registry.register("fraud", {}, lineage(), actor="a")
    with pytest.raises(UsageError, match=r"artifact name '\.\./x'"):
        registry.register("fraud", {"../x": files["model.pt"]}, lineage(), actor="a")
    with pytest.raises(InputError, match="is not a file"):
        registry.register("fraud", {"model.pt": tmp_path}, lineage(), actor="a")
    pickled = make_files(tmp_path / "p", {"model.bin": b"\x80\x04\x95 pickled"})
    with pytest.raises(UsageError, match="is a Python pickle"):
        registry.register("fraud", pickled, lineage(), actor="a")
    with pytest.raises(UsageError, match="is a Python pickle"):
        registry.register("fraud", {"model.pkl": files["spec.json"]}, lineage(), actor="a")
    assert [v.version for v in registry.list_versions("fraud")] == [1]
    assert not list((registry.store.root / ".tmp").iterdir()), "refused inputs leave no copies"


def test_lineage_is_validated() -> None:
    from backline.core.errors import SchemaError

    with pytest.raises(SchemaError, match="must be a tz-aware datetime"):
        Lineage("ts", data_start=datetime(2026, 1, 1))
    with pytest.raises(SchemaError, match="is after data_end"):
        Lineage(
            "ts",
            data_start=datetime(2026, 2, 1, tzinfo=UTC),
            data_end=datetime(2026, 1, 1, tzinfo=UTC),
        )
    with pytest.raises(SchemaError, match="is not a number"):
        Lineage("ts", metrics={"auc": "high"})  # type: ignore[dict-item]
    with pytest.raises(SchemaError, match="passed = True but checks non_inferiority failed"):
        gate(passed=False).__class__(
            passed=True,
            checks=gate(passed=False).checks,
            evaluated_at=datetime.now(UTC),
            eval_set_digest="e",
            champion_version=None,
        )


def test_concurrent_registrations_get_distinct_numbers(
    reg_cfg: Config, files: dict[str, Path]
) -> None:
    errors: list[BaseException] = []
    numbers: list[int] = []

    def worker() -> None:
        try:
            with open_registry(reg_cfg) as reg:
                for _ in range(3):
                    numbers.append(reg.register("fraud", files, lineage(), actor="t").version)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sorted(numbers) == list(range(1, 13))


def test_unreachable_postgres_is_a_store_error_before_anything_is_written(project: Path) -> None:
    cfg = load_config(
        project, env={"BACKLINE_REGISTRY_URI": "postgresql://postgres:secret@127.0.0.1:1/test"}
    )
    with pytest.raises(StoreError) as info:
        open_registry(cfg)
    message = str(info.value)
    assert "registry.uri = 'postgresql://postgres:***@127.0.0.1:1/test'" in message
    assert "PostgreSQL is not answering" in message and "Start it" in message
    assert "secret" not in message
    assert not (project / ".backline" / "artifacts").exists()


def test_a_file_that_is_not_a_database(project: Path) -> None:
    (project / ".backline" / "registry.db").write_bytes(b"not sqlite at all " * 100)
    with pytest.raises(StoreError, match=r"registry\.uri = 'sqlite:///\.backline/registry\.db'"):
        open_registry(load_config(project, env={}))


@pytest.fixture
def new_york_local_time() -> Iterator[None]:
    """The process's local time zone is America/New_York (UTC-5 in January) for one test;
    the test machines run in UTC, where local time and UTC cannot be told apart."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "America/New_York")
        time.tzset()
        assert time.localtime(0).tm_hour == 19  # 1970-01-01T00:00Z is 19:00 the day before
        try:
            yield
        finally:
            mp.undo()
            time.tzset()


def test_datetimes_round_trip_as_utc_whatever_the_local_time_zone(
    new_york_local_time: None, registry: Registry, files: dict[str, Path]
) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    end = datetime(2026, 1, 31, 23, 30, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    before = datetime.now(UTC)
    registry.register("fraud", files, lineage(data_start=start, data_end=end), actor="t")
    after = datetime.now(UTC)
    record = gate(passed=True)
    registry.record_gate("fraud", 1, record)

    mv = registry.get("fraud", 1)
    got = [mv.lineage.data_start, mv.lineage.data_end, mv.created_at]
    assert all(t is not None and t.utcoffset() == timedelta(0) for t in got)
    assert (mv.lineage.data_start, mv.lineage.data_end) == (start, end)
    assert mv.lineage.data_end == datetime(2026, 1, 31, 18, 0, tzinfo=UTC)
    assert before <= mv.created_at <= after
    stored = registry.gate_of("fraud", 1)
    assert stored == record and stored.evaluated_at.utcoffset() == timedelta(0)


def test_processes_opening_a_new_sqlite_registry_at_once_all_get_it(tmp_path: Path) -> None:
    """Switching a new file to WAL needs it to itself, and SQLite answers 'database is locked'
    at once, without its busy timeout, while another connection has it open: every opener must
    wait for the lock instead of failing. Statistical: the race lost about 1 trial in 10."""
    for trial in range(40):
        cfg = load_config(init_project(tmp_path / f"p{trial}"), env={})
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def opener(
            cfg: Config = cfg,
            errors: list[BaseException] = errors,
            start: threading.Barrier = start,
        ) -> None:
            try:
                start.wait()
                with open_registry(cfg) as reg:
                    reg.list_models()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=opener) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, f"trial {trial}: {errors[0]}"
