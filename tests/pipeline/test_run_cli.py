"""`backline run` and `backline runs` as a user types them: tables, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backline.cli import main
from tests.pipeline.conftest import Landing, apply_features, land


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_run_prints_each_step_with_its_state_and_the_same_key_again_does_nothing(
    landed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = str(landed)
    code, out, _ = _run(
        capsys,
        "run",
        "--project",
        p,
        "--until",
        "validate",
        "--logical-time",
        "2026-02-01T06:00:00Z",
    )
    assert code == 0, out
    assert "Run fraud @ 2026-02-01T06:00:00+00:00: succeeded" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["ingest", "validate"]
    assert all("succeeded" in r and "never ran" in r for r in rows)
    assert all(r.split("│")[4].strip().endswith("s") for r in rows)  # a duration

    code, out, _ = _run(
        capsys,
        "run",
        "--project",
        p,
        "--until",
        "validate",
        "--logical-time",
        "2026-02-01T06:00:00Z",
    )
    assert code == 0
    assert "already succeeded" in out and "nothing to do" in out

    code, out, _ = _run(capsys, "run", "--project", p, "--until", "validate", "--json")
    record = json.loads(out)
    assert record["state"] == "succeeded" and not record["already_done"]
    assert [s["state"] for s in record["steps"]] == ["skipped", "skipped"]
    assert record["steps"][0]["reason"] == "fresh: inputs unchanged"

    code, out, _ = _run(capsys, "runs", "--project", p, "--limit", "1")
    assert code == 0 and "ingest· validate·" in out and "2026-02-01" not in out
    code, out, _ = _run(capsys, "runs", "--project", p, "--json")
    runs = json.loads(out)
    assert [r["logical_time"] for r in runs][-1] == "2026-02-01T06:00:00+00:00"
    assert runs[-1]["steps"][0]["outputs"]["new_batches"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--until", "trian"],
            "--until 'trian': there is no pipeline step 'trian'. Did you mean 'train'? Steps: "
            "ingest, validate, materialize, training_set, train, evaluate, gate, promote.",
        ),
        (
            ["--logical-time", "yesterday"],
            "--logical-time 'yesterday' is not a date or ISO-8601 time. Write it as 2026-03-01 "
            "or 2026-03-01T12:00:00+00:00.",
        ),
        (
            ["--logical-time", "2026-02-01T06:00:00"],
            "--logical-time 2026-02-01T06:00:00 has no timezone",
        ),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    landed: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, "run", "--project", str(landed), *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (landed / ".backline" / "registry.db").exists()  # refused before anything ran


def test_runs_with_a_bad_limit_is_a_usage_error(
    landed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["runs", "--project", str(landed), "--limit", "0"])
    assert exc.value.code == 2
    assert "--limit must be positive" in capsys.readouterr().err


def test_a_failed_step_shows_in_the_table_and_exits_by_its_kind(
    tmp_path: Path, landing_files: Landing, capsys: pytest.CaptureFixture[str]
) -> None:
    from backline.core.config import load_config
    from backline.core.workspace import init_project

    root = init_project(tmp_path / "proj")
    land(root, "transactions", landing_files.early)
    land(root, "labels", landing_files.labels)
    p = str(root)
    code, out, _ = _run(capsys, "runs", "--project", p)
    assert code == 0 and "No pipeline runs yet" in out

    key = ["--logical-time", "2026-02-01"]
    code, out, err = _run(capsys, "run", "--project", p, "--until", "materialize", *key)
    assert code == 2  # a user error: features.py is not applied
    assert "Run fraud @ 2026-02-01T00:00:00+00:00: failed" in out
    assert "schema_error: needs a fix" in out and "feature view" not in out
    assert err.strip().startswith("error: feature view") and "backline features apply" in err

    apply_features(load_config(root, env={}))
    with pytest.MonkeyPatch.context() as mp:  # a store that is down: exit 1, run it again
        mp.setenv("BACKLINE_ONLINE_URI", "redis://127.0.0.1:1/0")
        code, out, err = _run(capsys, "run", "--project", p, "--until", "materialize", *key)
    assert code == 1
    assert "(resumed)" in out and "store_unavailable: retryable" in out
    assert (
        "step materialize failed" in err and "run --logical-time 2026-02-01T00:00:00+00:00" in err
    )

    code, out, _ = _run(capsys, "run", "--project", p, "--until", "materialize", *key)
    assert code == 0 and "succeeded (resumed)" in out
    code, out, _ = _run(capsys, "runs", "--project", p)
    assert "ingest✓ validate✓ materialize✓" in out
