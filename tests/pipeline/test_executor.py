"""The executor on real projects: run keys, staleness, resume, error classes, records.

Most tests stop at `validate` or `materialize` (a second or two each); the one that trains,
gates and promotes is marked slow.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from backline.core.config import Config, load_config
from backline.core.errors import GateFailed, SchemaError, StoreError
from backline.data.offline_store import OfflineStore
from backline.pipeline.executor import (
    default_logical_time,
    is_retryable,
    run_pipeline,
    should_retry,
)
from backline.pipeline.history import RunHistory
from backline.pipeline.plan import Graph, Step
from backline.pipeline.steps import GRAPH, StepImpl
from backline.registry import CHAMPION, open_registry
from backline.registry.db import Database
from tests.pipeline.conftest import FAST_TRAINING, FakeClock, Landing, apply_features, land
from tests.registry.conftest import pg_schema, pg_uri

__all__ = ["pg_schema"]  # the fixture: a PostgreSQL schema of the test's own

T1 = datetime(2026, 2, 1, 6, 0, tzinfo=UTC)
T2 = T1 + timedelta(hours=1)
T3 = T2 + timedelta(hours=1)


def _cfg(root: Path, **env: str) -> Config:
    return load_config(root, env=env)


def _states(result: object) -> dict[str, str]:
    return {s.step: s.state for s in result.run.steps}  # type: ignore[attr-defined]


def _batches(cfg: Config) -> list[str]:
    return [b.batch_id for b in OfflineStore.open(cfg).batches()]


def test_a_first_run_ingests_the_landing_folder_and_records_every_step(landed: Path) -> None:
    cfg = _cfg(landed)
    clock = FakeClock()
    result = run_pipeline(cfg, logical_time=T1, until="materialize", clock=clock)
    assert result.error is None and not result.already_done and not result.resumed
    run = result.run
    assert (run.pipeline, run.logical_time, run.state, run.triggers) == (
        "fraud",
        T1,
        "succeeded",
        1,
    )
    assert _states(result) == {
        "ingest": "succeeded",
        "validate": "succeeded",
        "materialize": "succeeded",
    }
    ingest = run.step("ingest")
    assert ingest is not None and ingest.attempts == 1 and ingest.reason == "never ran"
    # one batch per landed file, and the digests are the catalog's content hashes
    store = OfflineStore.open(cfg)
    assert sorted(ingest.outputs["batches"]) == ["labels", "transactions"]
    assert ingest.outputs["new_batches"] == 2
    hashes = {b.content_hash for b in store.batches()}
    assert set(ingest.input_digests.values()) == hashes
    assert set(ingest.input_digests) == {"labels/labels.parquet", "transactions/tx-early.parquet"}
    # the injected clock stamps the records, in order
    assert ingest.started_at is not None and ingest.ended_at is not None
    assert clock.now - timedelta(seconds=clock.reads) < ingest.started_at < ingest.ended_at
    mat = run.step("materialize")
    assert mat is not None and set(mat.outputs["views"]) >= {"card_velocity", "merchant_volume"}
    # --until stops there: nothing after materialize was planned or recorded
    assert run.step("training_set") is None and run.step("promote") is None


def test_the_same_key_again_does_nothing(landed: Path) -> None:
    cfg = _cfg(landed)
    first = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    again = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    assert again.already_done and again.plan is None
    assert again.run == first.run  # not one field of the record moved
    assert len(_batches(cfg)) == 2


def test_force_runs_every_step_of_a_succeeded_key_again(landed: Path) -> None:
    """`backfill --mode all`: the key succeeded, and force runs its steps once more (without it
    the same trigger is answered from the record)."""
    cfg = _cfg(landed)
    first = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    forced = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock(), force=True)
    assert not forced.already_done and forced.plan is not None
    assert [(d.step, d.reason) for d in forced.plan.steps] == [
        ("ingest", "forced"),
        ("validate", "forced"),
    ]
    steps = {s.step: s for s in forced.run.steps}
    assert {n: s.state for n, s in steps.items()} == {
        "ingest": "succeeded",
        "validate": "succeeded",
    }
    assert all(s.attempts == 2 for s in steps.values())
    assert forced.run.triggers == first.run.triggers + 1
    assert len(_batches(cfg)) == 2  # ingesting the same files again adds no batch


def test_an_unchanged_rerun_is_a_no_op_and_new_data_makes_ingest_and_downstream_stale(
    landed: Path, landing_files: Landing
) -> None:
    cfg = _cfg(landed)
    run_pipeline(cfg, logical_time=T1, until="materialize", clock=FakeClock())
    same = run_pipeline(cfg, logical_time=T2, until="materialize", clock=FakeClock())
    assert same.plan is not None and same.plan.empty
    assert set(_states(same).values()) == {"skipped"}
    assert len(_batches(cfg)) == 2

    land(landed, "transactions", landing_files.late)
    new = run_pipeline(cfg, logical_time=T3, until="materialize", clock=FakeClock())
    assert new.plan is not None
    assert [(d.step, d.reason) for d in new.plan.steps] == [
        ("ingest", "inputs changed"),
        ("validate", "upstream runs"),
        ("materialize", "upstream runs"),
    ]
    assert new.plan.steps[0].changed == ("transactions/tx-late.parquet",)
    assert _states(new) == dict.fromkeys(("ingest", "validate", "materialize"), "succeeded")
    ingest = new.run.step("ingest")
    assert ingest is not None and ingest.outputs["new_batches"] == 1  # the old files: not again
    assert len(_batches(cfg)) == 3
    # the new batch holds the new file's rows and nothing re-read from the old one
    newest = OfflineStore.open(cfg).batches()[-1]
    late_rows = pq.ParquetFile(landing_files.late).metadata.num_rows
    assert (newest.rows_in, newest.rows_quarantined) == (late_rows, 0)
    assert newest.input.endswith("tx-late.parquet")
    mat = new.run.step("materialize")
    assert mat is not None and all(v["batches"] <= 1 for v in mat.outputs["views"].values())


def test_a_step_whose_inputs_the_upstream_run_left_alone_is_skipped(landed: Path) -> None:
    cfg = _cfg(landed)
    run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    (landed / "landing" / "labels" / "labels.parquet").unlink()  # ingest's inputs changed ...
    result = run_pipeline(cfg, logical_time=T2, until="validate", clock=FakeClock())
    assert result.plan is not None and result.plan.names == ("ingest", "validate")
    validate = result.run.step("validate")
    assert validate is not None and validate.state == "skipped"  # ... the store did not
    assert "left its inputs unchanged" in validate.reason


def test_a_user_error_fails_at_once_and_the_fix_resumes_from_the_failed_step(
    tmp_path: Path, landing_files: Landing
) -> None:
    from backline.core.workspace import init_project

    root = init_project(tmp_path / "proj")  # features.py is not applied yet
    land(root, "transactions", landing_files.early)
    land(root, "labels", landing_files.labels)
    cfg = _cfg(root)
    failed = run_pipeline(cfg, logical_time=T1, until="materialize", clock=FakeClock())
    assert isinstance(failed.error, SchemaError) and "backline features apply" in str(failed.error)
    assert failed.run.state == "failed" and not failed.run.retryable
    assert _states(failed) == {
        "ingest": "succeeded",
        "validate": "failed",
        "materialize": "pending",
    }
    step = failed.failed_step
    assert step is not None and step.step == "validate" and step.attempts == 1
    assert step.retryable is False and step.error_code == "schema_error"
    assert not should_retry(failed.run)
    ingested = failed.run.step("ingest")

    apply_features(cfg)  # the fix
    resumed = run_pipeline(cfg, logical_time=T1, until="materialize", clock=FakeClock())
    assert resumed.resumed and resumed.error is None and resumed.run.state == "succeeded"
    assert resumed.run.triggers == 2
    assert resumed.plan is not None and resumed.plan.names == ("validate", "materialize")
    assert resumed.run.step("ingest") == ingested  # not run again, record untouched
    validate = resumed.run.step("validate")
    assert validate is not None and validate.attempts == 2 and validate.state == "succeeded"
    assert validate.error is None and validate.retryable is None
    assert len(_batches(cfg)) == 2


def test_a_store_that_is_down_is_retryable_and_resumes_when_back(landed: Path) -> None:
    down = _cfg(landed, BACKLINE_ONLINE_URI="redis://127.0.0.1:1/0")
    failed = run_pipeline(down, logical_time=T1, until="materialize", clock=FakeClock())
    assert isinstance(failed.error, StoreError)
    step = failed.failed_step
    assert step is not None and step.step == "materialize" and step.retryable is True
    assert step.error_code == "store_unavailable"
    assert failed.run.retryable and should_retry(failed.run)
    assert not should_retry(failed.run, max_attempts=1)  # a scheduler gives up after N

    back = run_pipeline(_cfg(landed), logical_time=T1, until="materialize", clock=FakeClock())
    assert back.resumed and back.run.state == "succeeded"
    assert back.plan is not None and back.plan.names == ("materialize",)


def test_errors_are_classified_and_a_bug_keeps_its_traceback(landed: Path) -> None:
    graph = Graph((Step("one"), Step("two", ("one",))))
    calls: list[str] = []

    def fails_with(exc: BaseException) -> StepImpl:
        def run(ctx: object) -> dict[str, object]:
            calls.append(type(exc).__name__)
            raise exc

        return StepImpl(lambda ctx: {"x": "1"}, run)

    ok = StepImpl(lambda ctx: {"x": "1"}, lambda ctx: {"done": True})
    cfg = _cfg(landed)
    disk = run_pipeline(
        cfg,
        logical_time=T1,
        graph=graph,
        steps={"one": ok, "two": fails_with(OSError(28, "No space left on device"))},
    )
    step = disk.failed_step
    assert step is not None and step.retryable is True and step.error_code == "OSError"
    assert "No space left" in (step.error or "")

    with pytest.raises(KeyError):
        run_pipeline(
            cfg, logical_time=T2, graph=graph, steps={"one": ok, "two": fails_with(KeyError("x"))}
        )
    history = RunHistory(Database(cfg.store_uri("registry")))
    bug = history.find("fraud", T2)
    history.dispose()
    assert bug is not None and bug.state == "failed"
    recorded = bug.step("two")
    assert (
        recorded is not None and recorded.retryable is False and recorded.error_code == "KeyError"
    )
    assert is_retryable(StoreError("down")) and not is_retryable(GateFailed("no"))
    assert calls == ["OSError", "KeyError"]


def test_the_default_logical_time_is_now_to_the_minute(landed: Path) -> None:
    clock = FakeClock(datetime(2026, 2, 1, 6, 30, 15, 123, tzinfo=UTC))
    result = run_pipeline(_cfg(landed), until="ingest", clock=clock)
    assert result.run.logical_time == datetime(2026, 2, 1, 6, 30, tzinfo=UTC)
    assert default_logical_time(datetime(2026, 2, 1, 7, 59, 59, tzinfo=UTC)) == datetime(
        2026, 2, 1, 7, 59, tzinfo=UTC
    )


def test_a_broader_trigger_of_a_key_run_with_until_continues_it(landed: Path) -> None:
    cfg = _cfg(landed)
    run_pipeline(cfg, logical_time=T1, until="ingest", clock=FakeClock())
    wider = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    assert not wider.already_done and wider.resumed
    assert _states(wider) == {"ingest": "succeeded", "validate": "succeeded"}
    narrower = run_pipeline(cfg, logical_time=T1, until="ingest", clock=FakeClock())
    assert narrower.already_done


@pytest.mark.postgres
def test_records_on_postgresql(landed: Path, pg_schema: str) -> None:
    cfg = _cfg(landed, BACKLINE_REGISTRY_URI=pg_uri(pg_schema))
    first = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    assert first.run.state == "succeeded"
    again = run_pipeline(cfg, logical_time=T1, until="validate", clock=FakeClock())
    assert again.already_done and again.run == first.run
    history = RunHistory(Database(cfg.store_uri("registry")))
    try:
        runs = history.recent("fraud")
    finally:
        history.dispose()
    assert [r.logical_time for r in runs] == [T1]
    ingest = runs[0].step("ingest")
    assert ingest is not None and ingest.outputs["new_batches"] == 2
    assert ingest.started_at is not None and ingest.started_at.tzinfo is not None


@pytest.mark.slow
def test_the_whole_pipeline_trains_gates_and_promotes_then_rests(
    landed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in FAST_TRAINING.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(landed)
    result = run_pipeline(cfg, logical_time=T1, clock=FakeClock())
    assert result.error is None, result.error
    assert [s.step for s in result.run.steps] == list(GRAPH.names)
    assert set(_states(result).values()) == {"succeeded"}
    train = result.run.step("train")
    assert train is not None and train.outputs["version"] == 1
    ts = result.run.step("training_set")
    assert ts is not None and train.input_digests["training_set"] == ts.outputs["digest"]
    promote = result.run.step("promote")
    assert promote is not None and promote.outputs == {
        "model": "fraud",
        "champion": 1,
        "previous": None,
        "promoted": True,
    }
    with open_registry(cfg) as registry:
        assert [(a.alias, a.version) for a in registry.aliases("fraud")] == [(CHAMPION, 1)]
        assert registry.audit("fraud")[-1].actor == "pipeline"

    rest = run_pipeline(cfg, logical_time=T2, clock=FakeClock())
    assert rest.plan is not None and rest.plan.empty  # promoting did not make anything stale
    assert set(_states(rest).values()) == {"skipped"}

    # a stricter gate: the same candidate is judged again, and the rejection needs a fix
    monkeypatch.setenv("BACKLINE_GATE_MIN_AUC_PR", "1.5")
    strict = run_pipeline(load_config(landed), logical_time=T3, clock=FakeClock())
    assert strict.plan is not None and strict.plan.names == ("evaluate", "gate", "promote")
    assert isinstance(strict.error, GateFailed) and "auc_pr_floor" in str(strict.error)
    failed = strict.failed_step
    assert failed is not None and failed.step == "gate" and failed.retryable is False
    assert _states(strict)["promote"] == "pending"
    with open_registry(cfg) as registry:
        gate = registry.gate_of("fraud", 1)
    assert gate is not None and not gate.passed  # recorded, as `models gate` records it


def test_the_project_handle_runs_and_lists(landed: Path) -> None:
    import backline

    with backline.open(landed) as project:
        result = project.run(logical_time=T1, until="ingest", clock=FakeClock())
        assert result.run.state == "succeeded"
        assert [(r.logical_time, r.state) for r in project.runs(limit=5)] == [(T1, "succeeded")]
