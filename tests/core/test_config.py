"""backline.toml: typed loading, environment overrides, and errors that name key, value and fix."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from backline.cli import main
from backline.core.config import load_config
from backline.core.errors import ConfigError, StoreError
from backline.core.uris import check_reachable, parse_uri
from tests.conftest import POSTGRES_URL, REDIS_URL


def _edit(project: Path, old: str, new: str) -> None:
    path = project / "backline.toml"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def test_example_config_loads_with_typed_values(project: Path) -> None:
    cfg = load_config(project, env={})
    assert cfg.ingest.max_future == timedelta(days=1)
    assert set(cfg.sources) == {"transactions", "labels"}
    tx = cfg.sources["transactions"]
    assert tx.primary_key == ("transaction_id",)
    assert tx.column("amount").type == "float64"
    assert tx.column("amount").min == 0.01
    assert tx.column("channel").allowed == ("pos", "contactless", "online", "mobile")
    assert cfg.store_uri("offline").path == project.resolve() / ".backline/offline"
    assert cfg.sources["labels"].event_time == "label_time"


def test_every_key_of_the_example_is_commented(project: Path) -> None:
    lines = (project / "backline.toml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if "=" in stripped and not stripped.startswith("#") and not stripped.startswith("["):
            key = stripped.split("=", 1)[0].strip()
            if key in (
                "type",
                "required",
                "min",
                "max",
                "allowed",
                "pattern",
                "max_length",
                "not_before",
                "categorical",
                "description",
            ):
                continue  # column keys are documented once, in the block above the sources
            assert lines[i - 1].strip().startswith("#"), (
                f"key {key!r} on line {i + 1} has no comment"
            )


def test_unknown_key_suggests_the_right_one(project: Path) -> None:
    _edit(project, 'uri = "file://.backline/offline"', 'urii = "file://.backline/offline"')
    with pytest.raises(ConfigError, match=r"unknown key 'offline\.urii'\. Did you mean 'uri'\?"):
        load_config(project, env={})


def test_unknown_section(project: Path) -> None:
    (project / "backline.toml").write_text(
        (project / "backline.toml").read_text() + "\n[onlnie]\nuri = 'x'\n"
    )
    with pytest.raises(ConfigError, match=r"unknown section \[onlnie\]\. Did you mean 'online'\?"):
        load_config(project, env={})


def test_wrong_type_names_key_and_value(project: Path) -> None:
    _edit(project, "duckdb_threads = 1", 'duckdb_threads = "many"')
    with pytest.raises(ConfigError, match=r"ingest\.duckdb_threads = 'many' must be an integer"):
        load_config(project, env={})


def test_bad_duration(project: Path) -> None:
    _edit(project, 'max_future = "1d"', 'max_future = "tomorrow"')
    with pytest.raises(ConfigError, match=r"ingest\.max_future = 'tomorrow' must be a duration"):
        load_config(project, env={})


def test_env_override_wins_and_is_typed(project: Path) -> None:
    cfg = load_config(
        project,
        env={
            "BACKLINE_ONLINE_URI": "redis://127.0.0.1:6379/3",
            "BACKLINE_INGEST_DUCKDB_THREADS": "2",
            "BACKLINE_INGEST_MAX_FUTURE": "12h",
        },
    )
    assert cfg.online.uri == "redis://127.0.0.1:6379/3"
    assert cfg.ingest.duckdb_threads == 2
    assert cfg.ingest.max_future == timedelta(hours=12)


def test_env_override_errors(project: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"BACKLINE_INGEST_DUCKDB_THREADS.*|duckdb_threads = 'x' must be an integer",
    ):
        load_config(project, env={"BACKLINE_INGEST_DUCKDB_THREADS": "x"})
    with pytest.raises(
        ConfigError,
        match=r"BACKLINE_ONLINE_URL names unknown key 'online\.url'\. Did you mean 'uri'\?",
    ):
        load_config(project, env={"BACKLINE_ONLINE_URL": "redis://x"})


def test_wrong_scheme_for_a_store(project: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"online\.uri = 'postgresql://h/db' uses scheme postgresql://.*sqlite:// or redis://",
    ):
        load_config(project, env={"BACKLINE_ONLINE_URI": "postgresql://h/db"})
    with pytest.raises(ConfigError, match=r"unknown scheme 'mongodb'"):
        load_config(project, env={"BACKLINE_REGISTRY_URI": "mongodb://h/db"})


def test_bad_source_declarations(project: Path) -> None:
    _edit(project, 'primary_key = ["transaction_id"]', 'primary_key = ["tx_id"]')
    with pytest.raises(
        ConfigError, match=r"primary_key names 'tx_id', which is not a declared column"
    ):
        load_config(project, env={})


def test_bad_column_type_and_range(project: Path) -> None:
    _edit(project, 'type = "float64"', 'type = "decimal"')
    with pytest.raises(
        ConfigError,
        match=r"sources\.transactions\.columns\.amount\.type = 'decimal' must be one of string, ",
    ):
        load_config(project, env={})


def test_invalid_toml_syntax(project: Path) -> None:
    (project / "backline.toml").write_text("[offline\nuri = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(project, env={})


def test_uri_parsing_relative_and_absolute(tmp_path: Path) -> None:
    assert parse_uri("file://data/x", base=tmp_path, key="k").path == tmp_path / "data/x"
    assert parse_uri("file:///var/x", base=tmp_path, key="k").path == Path("/var/x")
    assert parse_uri("sqlite:///a.db", base=tmp_path, key="k").path == tmp_path / "a.db"
    assert parse_uri("sqlite:////tmp/a.db", base=tmp_path, key="k").path == Path("/tmp/a.db")
    r = parse_uri("redis://127.0.0.1:6390/2", base=tmp_path, key="k")
    assert (r.host, r.port, r.database) == ("127.0.0.1", 6390, "2")
    with pytest.raises(ConfigError, match="needs three slashes"):
        parse_uri("sqlite://a.db", base=tmp_path, key="k")
    with pytest.raises(ConfigError, match="is not a URI"):
        parse_uri("/just/a/path", base=tmp_path, key="k")


def test_unreachable_redis_and_postgres_are_clear(tmp_path: Path) -> None:
    redis_down = parse_uri("redis://127.0.0.1:1/0", base=tmp_path, key="online.uri")
    with pytest.raises(
        StoreError,
        match=r"online\.uri = 'redis://127\.0\.0\.1:1/0': Redis is not answering.*BACKLINE_ONLINE_URI",
    ):
        check_reachable(redis_down, timeout=0.5)
    pg_down = parse_uri("postgresql://postgres@127.0.0.1:1/test", base=tmp_path, key="registry.uri")
    with pytest.raises(StoreError, match=r"registry\.uri = .*PostgreSQL is not answering"):
        check_reachable(pg_down, timeout=1)


def test_unwritable_folder_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    uri = parse_uri(f"file://{blocker}", base=tmp_path, key="offline.uri")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        check_reachable(uri)


@pytest.mark.redis
def test_reachable_redis() -> None:
    assert check_reachable(parse_uri(REDIS_URL, base=Path("."), key="online.uri")).startswith(
        "redis "
    )


@pytest.mark.postgres
def test_reachable_postgres() -> None:
    assert check_reachable(parse_uri(POSTGRES_URL, base=Path("."), key="registry.uri")).startswith(
        "postgresql "
    )


@pytest.mark.redis
@pytest.mark.postgres
def test_doctor_passes_on_real_servers_and_fails_with_exit_2(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKLINE_ONLINE_URI", REDIS_URL)
    monkeypatch.setenv("BACKLINE_REGISTRY_URI", POSTGRES_URL)
    assert main(["--project", str(project), "doctor"]) == 0
    monkeypatch.setenv("BACKLINE_ONLINE_URI", "redis://127.0.0.1:1/0")
    assert main(["--project", str(project), "doctor"]) == 2
    assert "Redis is not answering" in capsys.readouterr().err


def test_cli_config_error_is_one_line_and_exit_2(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(project, "duckdb_threads = 1", "duckdb_threads = -1")
    code = main(["--project", str(project), "ingest", "transactions", str(project)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in captured.err
    assert "duckdb_threads = -1 must be at least 1" in captured.err


@pytest.mark.postgres
def test_a_missing_postgres_database_is_not_a_server_that_is_down() -> None:
    base = POSTGRES_URL.rsplit("/", 1)[0]
    uri = parse_uri(f"{base}/backline_no_such_db_7", base=Path("."), key="registry.uri")
    with pytest.raises(StoreError) as caught:
        check_reachable(uri, timeout=2)
    message = str(caught.value)
    assert "is running, but database 'backline_no_such_db_7' does not exist" in message
    assert "createdb" in message and "backline_no_such_db_7" in message
    assert "not answering" not in message and "Start it" not in message


def test_each_store_lists_only_the_schemes_it_accepts(project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(project, env={"BACKLINE_ONLINE_URI": "mongodb://h/db"})
    message = str(caught.value)
    assert "Use sqlite:// or redis://." in message
    assert "postgresql" not in message and "file://" not in message
    with pytest.raises(ConfigError, match=r"Use sqlite:// or postgresql://\.$"):
        load_config(project, env={"BACKLINE_REGISTRY_URI": "mysql://h/db"})
    _edit(project, 'uri = "file://.backline/offline"', 'uri = "s3://bucket/offline"')
    with pytest.raises(ConfigError, match=r"^backline\.toml: offline\.uri = .*Use file://\.$"):
        load_config(project, env={})


@pytest.mark.parametrize(
    ("var", "value", "expected"),
    [
        ("BACKLINE_INGEST_DUCKDB_THREADS", "x", r"ingest\.duckdb_threads = 'x' must be an integer"),
        ("BACKLINE_INGEST_DUCKDB_THREADS", "0", r"ingest\.duckdb_threads = 0 must be at least 1"),
        ("BACKLINE_INGEST_MAX_FUTURE", "soon", r"ingest\.max_future = 'soon' must be a duration"),
        ("BACKLINE_TRAIN_HIDDEN", "128,x", r"train\.hidden\[1\] = 'x' must be an integer"),
        ("BACKLINE_ONLINE_URI", "postgresql://h/db", r"online\.uri = .* uses scheme postgresql"),
        ("BACKLINE_ONLINE_URI", "nowhere", r"online\.uri = 'nowhere' is not a URI"),
    ],
)
def test_env_override_errors_name_the_variable_not_the_file(
    project: Path, var: str, value: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(project, env={var: value})
    message = str(caught.value)
    assert message.startswith(f"environment variable {var}: "), message
    assert "backline.toml" not in message
    assert re.search(expected, message), message
    assert "\n" not in message


def test_a_list_valued_variable_is_comma_separated(project: Path) -> None:
    cfg = load_config(project, env={"BACKLINE_TRAIN_HIDDEN": "256, 32,16"})
    assert cfg.train.hidden == (256, 32, 16)
    assert load_config(project, env={"BACKLINE_TRAIN_HIDDEN": "64"}).train.hidden == (64,)


_MISSING_KEY_SOURCE = """
[sources.clicks]
{keys}
[sources.clicks.columns.id]
type = "string"
[sources.clicks.columns.at]
type = "timestamp"
"""


@pytest.mark.parametrize(
    ("keys", "missing"),
    [
        ('event_time = "at"', "'primary_key'"),
        ('primary_key = ["id"]', "'event_time'"),
        ("", "'primary_key', 'event_time'"),
    ],
)
def test_a_source_missing_a_required_key_is_one_line_without_python_internals(
    project: Path, keys: str, missing: str
) -> None:
    path = project / "backline.toml"
    path.write_text(path.read_text() + _MISSING_KEY_SOURCE.format(keys=keys))
    with pytest.raises(ConfigError) as caught:
        load_config(project, env={})
    message = str(caught.value)
    assert message.startswith(f"backline.toml: [sources.clicks] is missing {missing}. Add it")
    for leak in ("__init__", "positional argument", "SourceSpec", "TypeError"):
        assert leak not in message
    assert "\n" not in message
