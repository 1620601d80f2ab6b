"""`backline.open`: the project handle. Each method against the library function it calls, the
connections it owns released on close, and two handles on two projects kept apart."""

from __future__ import annotations

import os
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

import backline
from backline.core.config import load_config
from backline.core.errors import BacklineError, InvalidArgument, NotFoundError, WorkspaceError
from backline.core.workspace import init_project
from backline.data.generator import GeneratorConfig, generate, write_generated
from backline.features.history import get_historical_features
from backline.features.online import get_online_features
from backline.features.repository import load_definitions
from tests.conftest import REDIS_URL
from tests.features.online_support import T0, cleaned, ingest_rows, make_project, minutes, table, tx

CARD, OTHER = "card_0000001", "card_0000002"
MERCHANT = "m_000001"


def _small(root: Path, amount: float = 10.0, n: int = 1) -> Path:
    """A project with the online tests' features applied and `n` events of CARD."""
    cfg, _ = make_project(root)
    ingest_rows(cfg, [tx(CARD, T0 - minutes(5 + i), amount) for i in range(n)])
    return cfg.root


@pytest.fixture
def small(tmp_path: Path) -> Path:
    return _small(tmp_path / "p")


def _open_fds(path: Path) -> int:
    """How many file descriptors of this process point at `path` (Linux /proc)."""
    target = str(path.resolve())
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == target:
                count += 1
        except OSError:
            continue
    return count


# -- open ---------------------------------------------------------------------------------------


def test_open_finds_the_project_like_the_cli(
    small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (small / "data" / "deep").mkdir(parents=True, exist_ok=True)
    with backline.open(small / "data" / "deep") as project:
        assert project.root == small and project.config.root == small
    monkeypatch.chdir(small / "data")
    with backline.open() as project:
        assert project.root == small
        assert isinstance(project, backline.Project) and "open" in repr(project)
    assert "closed" in repr(project)
    with pytest.raises(WorkspaceError, match=r"no backline\.toml"):
        backline.open(tmp_path / "elsewhere")
    assert set(backline.__all__) >= {"open", "Project"}


# -- each method --------------------------------------------------------------------------------


def test_sql_answers_arrow_and_sees_batches_committed_after_it_connected(small: Path) -> None:
    with backline.open(small) as project:
        first = project.sql("SELECT count(*) AS n FROM transactions")
        assert isinstance(first, pa.Table) and first.to_pylist() == [{"n": 1}]
        project.ingest("transactions", _parquet(small, [tx(OTHER, T0, 3.0)]))
        assert project.sql("SELECT count(*) AS n FROM transactions").to_pylist() == [{"n": 2}]
        assert project.sql("SELECT source FROM batches").num_rows == 2
        with pytest.raises(InvalidArgument, match=r"query failed: .*Tables: transactions"):
            project.sql("SELECT * FROM transactionz")


def test_sql_rows_gives_python_values_as_duckdb_does_at_most_limit(small: Path) -> None:
    with backline.open(small) as project:
        columns, rows = project.sql_rows(
            "SELECT sum(x) AS s, INTERVAL 1 HOUR AS i FROM range(3) r(x)", limit=5
        )
        # a HUGEINT sum is an int (the Arrow table has a Decimal), an INTERVAL a timedelta
        assert columns == ["s", "i"] and rows == [(3, timedelta(hours=1))]
        assert project.sql_rows("SELECT * FROM range(10) r(x)", limit=3) == (
            ["x"],
            [(0,), (1,), (2,)],
        )
        assert project.sql_rows("-- only a comment") == ([], [])
        with pytest.raises(InvalidArgument, match=r"query failed: .*Tables: transactions"):
            project.sql_rows("SELECT * FROM transactionz")
        with pytest.raises(InvalidArgument, match=r"query failed: .*") as failed:
            project.sql_rows("SELECT 'x'::INTEGER AS n FROM transactions")
        assert "Tables:" not in str(failed.value)  # it failed while running, not on a name


def test_ingest_reports_progress(small: Path) -> None:
    seen: list[tuple[str, float]] = []
    with backline.open(small) as project:
        path = _parquet(small, [tx(OTHER, T0, 3.0)])
        result = project.ingest("transactions", path, progress=lambda s, d: seen.append((s, d)))
    assert result.rows_accepted == 1 and seen and all(0 <= d <= 1 for _, d in seen)


def _parquet(root: Path, rows: list[dict[str, Any]]) -> Path:
    path = root / "data" / f"extra-{len(list((root / 'data').glob('extra-*')))}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table(rows), path)
    return path


def test_ingest_reports_like_the_function(small: Path) -> None:
    with backline.open(small) as project:
        result = project.ingest("transactions", str(_parquet(small, [tx(OTHER, T0, 3.0)])))
        assert result.status == "committed" and result.rows_accepted == 1
        with pytest.raises(NotFoundError, match="transactionz"):
            project.ingest("transactionz", small / "data")


def test_historical_features_take_a_table_a_pandas_frame_or_a_file(
    small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entities = pa.table(
        {
            "card_id": [CARD, OTHER, CARD],
            "merchant_id": [MERCHANT] * 3,
            "amount": [20.0, 5.0, 10.0],
            "event_timestamp": pa.array(
                [T0, T0, T0 - minutes(30)], type=pa.timestamp("us", tz="UTC")
            ),
        }
    )
    cfg = load_config(small)
    want = get_historical_features(cfg, load_definitions(cfg), "test_v1", entities)
    assert want.column("n_1h").to_pylist() == [1, 0, 0]
    pq.write_table(entities, small / "entities.parquet")
    pacsv.write_csv(entities, small / "entities.csv")
    with backline.open(small) as project:
        assert project.historical_features(entities, "test_v1").equals(want)
        from_parquet = project.historical_features(small / "entities.parquet", "test_v1")
        assert from_parquet.to_pylist() == want.to_pylist()
        from_csv = project.historical_features(str(small / "entities.csv"), "test_v1")
        assert from_csv.column("n_1h").to_pylist() == [1, 0, 0]

        # a pandas DataFrame goes through Table.from_pandas (pandas itself is optional)
        class DataFrame:
            pass

        seen: list[object] = []

        def from_pandas(frame: object) -> pa.Table:
            seen.append(frame)
            return entities

        monkeypatch.setitem(sys.modules, "pandas", types.SimpleNamespace(DataFrame=DataFrame))
        monkeypatch.setattr(backline.project, "_from_pandas", from_pandas)
        frame = DataFrame()
        assert project.historical_features(frame, "test_v1").equals(want)
        assert seen == [frame]
        monkeypatch.undo()

        with pytest.raises(InvalidArgument, match=r"\.parquet or \.csv"):
            project.historical_features(small / "entities.json", "test_v1")
        with pytest.raises(InvalidArgument, match="does not exist"):
            project.historical_features(small / "missing.parquet", "test_v1")
        with pytest.raises(InvalidArgument, match="pyarrow Table, a pandas DataFrame"):
            project.historical_features([{"card_id": CARD}], "test_v1")


def test_historical_features_from_a_real_pandas_frame(small: Path) -> None:
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {
            "card_id": [CARD],
            "merchant_id": [MERCHANT],
            "amount": [20.0],
            "event_timestamp": pd.to_datetime([T0]),
        }
    )
    with backline.open(small) as project:
        assert project.historical_features(frame, "test_v1").column("n_1h").to_pylist() == [1]


def test_materialize_online_features_and_push(small: Path) -> None:
    cfg = load_config(small)
    defs = load_definitions(cfg)
    entity = {"card_id": CARD, "merchant_id": MERCHANT}
    with backline.open(small) as project:
        result = project.materialize(end=T0)
        assert result.entities > 0
        one = project.online_features("test_v1", entity, request={"amount": 20.0}, at=T0)
        want = get_online_features(
            cfg, defs, "test_v1", [entity], request_rows=[{"amount": 20.0}], at=T0
        )
        assert one.to_dicts() == want.to_dicts() and one.column("n_10m") == [1]
        assert one.column("amount_ratio") == [2.0]
        many = project.online_features(
            "test_v1",
            [entity, {"card_id": OTHER, "merchant_id": MERCHANT}],
            request=[{"amount": 1.0}, {"amount": 1.0}],
            at=T0,
        )
        assert many.column("n_10m") == [1, 0] and many.status("n_10m") == ["ok", "missing"]

        pushed = project.push("transactions", [tx(CARD, T0, 30.0, country="BR")])
        assert pushed.status == "committed" and pushed.rows_accepted == 1
        later = project.online_features("test_v1", entity, {"amount": 1.0}, at=T0 + minutes(1))
        assert later.column("n_10m") == [2] and later.column("last_country") == ["BR"]
        again = project.push("transactions", table([tx(OTHER, T0, 3.0)]))
        assert again.rows_accepted == 1
        assert project.sql("SELECT count(*) AS n FROM transactions").to_pylist() == [{"n": 3}]

        with pytest.raises(InvalidArgument, match="pass a dict"):
            project.online_features("test_v1", "card_0000001", at=T0)
        with pytest.raises(InvalidArgument, match="list of dicts"):
            project.push("transactions", "rows")
        with pytest.raises(NotFoundError, match="test_v2"):
            project.online_features("test_v2", entity, at=T0)


def test_apply_reloads_features_py_and_the_read_plans(small: Path) -> None:
    entity = {"card_id": CARD, "merchant_id": MERCHANT}
    with backline.open(small) as project:
        project.materialize(end=T0)
        before = project.online_features("test_v1", entity, {"amount": 1.0}, at=T0)
        assert "n_10m" in before.columns
        path = small / "features.py"
        path.write_text(path.read_text().replace('name="n_10m"', 'name="n_ten_minutes"'))
        changes = project.apply()
        assert {c.name for c in changes if c.action == "update"} >= {"card_stats"}
        project.materialize(end=T0)
        after = project.online_features("test_v1", entity, {"amount": 1.0}, at=T0)
        assert "n_ten_minutes" in after.columns and after.column("n_ten_minutes") == [1]


# -- models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fraud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = init_project(tmp_path_factory.mktemp("handle") / "fraud")
    data = generate(GeneratorConfig(days=24, cards=600, seed=11))
    paths = write_generated(data, root / "data", fmt="parquet")
    with backline.open(root) as project:
        project.ingest("transactions", paths["transactions"])
        project.ingest("labels", paths["labels"])
        project.apply()
    return root


def test_train_then_model_loads_a_verified_package_by_alias(fraud: Path) -> None:
    with backline.open(fraud) as project:
        released = project.train(max_steps=20)
        version = released.version
        assert (version.model, released.train.steps) == ("fraud", 20)
        project.registry.promote("fraud", version.version, actor="test", force=True, reason="t")
        scorer = project.model("fraud@champion")
        assert project.model("fraud").variant == scorer.variant
        by_number = project.model(f"fraud:{version.version}", variant="fp32")
        assert by_number.variant == "fp32"
        entities = project.sql(
            "SELECT card_id, merchant_id, amount, event_time AS event_timestamp "
            "FROM transactions ORDER BY transaction_id LIMIT 50"
        )
        examples = project.historical_features(entities, "fraud_v1")
        scores = scorer.score(examples)
        assert scores.shape == (50,) and ((scores >= 0) & (scores <= 1)).all()
        assert by_number.score(examples).shape == (50,)
        with pytest.raises(NotFoundError):
            project.model("nosuchmodel@champion")
        with pytest.raises(InvalidArgument, match="MODEL@ALIAS"):
            project.model("fraud@")


# -- close, and two handles ----------------------------------------------------------------------


def test_close_releases_the_online_store_and_the_registry(small: Path) -> None:
    online_db = small / ".backline" / "online.db"
    registry_db = small / ".backline" / "registry.db"
    entity = {"card_id": CARD, "merchant_id": MERCHANT}
    project = backline.open(small)
    project.materialize(end=T0)
    project.online_features("test_v1", entity, {"amount": 1.0}, at=T0)
    project.registry.list_models()
    project.sql("SELECT 1")
    assert _open_fds(online_db) > 0 and _open_fds(registry_db) > 0
    project.close()
    assert project.closed
    assert _open_fds(online_db) == 0 and _open_fds(registry_db) == 0
    # nothing holds the files: they can be moved away, and a new handle makes fresh ones
    online_db.rename(small / "online-old.db")
    registry_db.rename(small / "registry-old.db")
    for calls in (
        lambda: project.online_features("test_v1", entity, at=T0),
        lambda: project.materialize(end=T0),
        lambda: project.push("transactions", [tx(CARD, T0, 1.0)]),
        lambda: project.historical_features(small / "entities.parquet", "test_v1"),
        lambda: project.sql("SELECT 1"),
        lambda: project.ingest("transactions", small / "data"),
        lambda: project.train(max_steps=1),
        lambda: project.model("fraud@champion"),
        lambda: project.apply(),
        lambda: project.refresh(),
        lambda: project.registry,
        lambda: project.definitions,
    ):
        with pytest.raises(InvalidArgument, match=r"handle on .* is closed; open it again"):
            calls()
    project.close()  # twice is fine
    with pytest.raises(BacklineError, match="closed"), project:
        pass
    with backline.open(small) as fresh:
        read = fresh.online_features("test_v1", entity, {"amount": 1.0}, at=T0)
        assert read.status("n_10m") == ["missing"]
        assert fresh.registry.list_models() == []
    assert online_db.exists()


@pytest.mark.redis
def test_close_disconnects_the_redis_pool(tmp_path: Path) -> None:
    cfg, _ = make_project(tmp_path / "p", redis=True)
    with cleaned(cfg):
        ingest_rows(cfg, [tx(CARD, T0 - minutes(5), 10.0)])
        project = backline.Project(cfg)
        project.materialize(end=T0)
        project.online_features(
            "test_v1", {"card_id": CARD, "merchant_id": MERCHANT}, {"amount": 1}, at=T0
        )
        pool = project._online.client.connection_pool  # type: ignore[union-attr]
        assert any(c._sock is not None for c in pool._available_connections)
        project.close()
        assert all(c._sock is None for c in pool._available_connections)
        assert not pool._in_use_connections


@contextmanager
def _pair(tmp_path: Path, redis: bool) -> Iterator[tuple[backline.Project, backline.Project]]:
    """Two projects whose stores hold different values for the same entity: CARD has one event
    of 10.0 in the first and three of 99.0 in the second."""
    configs = []
    for name, amount, n in (("one", 10.0, 1), ("two", 99.0, 3)):
        cfg, _ = make_project(tmp_path / name, redis=redis)
        ingest_rows(cfg, [tx(CARD, T0 - minutes(5 + i), amount) for i in range(n)])
        configs.append(cfg)
    if redis:
        assert configs[0].online.uri == configs[1].online.uri == REDIS_URL
    first, second = (backline.Project(c) for c in configs)
    try:
        with cleaned(configs[0]), cleaned(configs[1]):
            yield first, second
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize(
    "redis",
    [pytest.param(False, id="sqlite"), pytest.param(True, id="redis", marks=pytest.mark.redis)],
)
def test_two_projects_in_one_process_share_nothing(tmp_path: Path, redis: bool) -> None:
    entity = {"card_id": CARD, "merchant_id": MERCHANT}
    with _pair(tmp_path, redis) as (first, second):
        first.materialize(end=T0)
        second.materialize(end=T0)
        for at in (T0, T0 + minutes(1), T0 + timedelta(minutes=2)):
            a = first.online_features("test_v1", entity, {"amount": 1.0}, at=at).to_dicts()[0]
            b = second.online_features("test_v1", entity, {"amount": 1.0}, at=at).to_dicts()[0]
            assert (a["n_10m"], a["last_amount"]) == (1, 10.0)
            assert (b["n_10m"], b["last_amount"]) == (3, 99.0)
        first.push("transactions", [tx(CARD, T0, 11.0)])
        a = first.online_features("test_v1", entity, {"amount": 1.0}, at=T0).to_dicts()[0]
        b = second.online_features("test_v1", entity, {"amount": 1.0}, at=T0).to_dicts()[0]
        assert (a["n_10m"], a["last_amount"]) == (2, 11.0)
        assert (b["n_10m"], b["last_amount"]) == (3, 99.0)
        first.close()  # closing one leaves the other working
        again = second.online_features("test_v1", entity, {"amount": 1.0}, at=T0)
        assert again.column("n_10m") == [3]
