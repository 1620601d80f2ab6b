"""`backline bench serve`: its arguments, and a whole run against a server given by --url."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backline.bench.server import free_port
from backline.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--rate", "0"], "--rate must be positive"),
        (["--rate", "-3"], "--rate must be positive"),
        (["--rate", "fast"], "--rate must be a number"),
        (["--rate", "5", "--burstiness", "0"], "--burstiness must be positive"),
        (["--concurrency", "0"], "--concurrency must be positive"),
        (["--rate", "5", "--concurrency", "2"], "not allowed with argument"),
        (["--duration", "0"], "--duration must be positive"),
        (["--skew", "-1"], "--skew must be 0 or more"),
        (["--slo-ms", "0"], "--slo-ms must be positive"),
        (["--instances", "0"], "--instances must be positive"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "serve", *argv])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_good_values_parse() -> None:
    args = build_parser().parse_args(
        ["bench", "serve", "--rate", "200", "--burstiness", "0.25", "--skew", "0"]
    )
    assert (args.rate, args.burstiness, args.skew, args.concurrency) == (200.0, 0.25, 0.0, None)
    assert (args.duration, args.slo_ms, args.instances, args.url) == (10.0, 20.0, 1, None)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--concurrency", "2", "--burstiness", "0.5"], "--burstiness 0.5 shapes the arrivals"),
        (["--burstiness", "2"], "add --rate R"),
        (["--url", "ftp://somewhere"], "--url: URL 'ftp://somewhere' is not an http://"),
        (["--url", "http://127.0.0.1:8080", "--workers", "2"], "--workers 2 is for the server"),
        (["--at", "yesterday"], "--at: at='yesterday' is not an ISO time"),
        (["--model", "nope", "--rate", "5"], "--model nope"),
        (["--model", "fraud@", "--rate", "5"], "--model: 'fraud@' is not MODEL"),
    ],
)
def test_usage_errors_exit_2_with_how_to_fix(
    project: Path, argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--project", str(project), "bench", "serve", *argv]) == 2
    err = capsys.readouterr().err
    assert says in " ".join(err.split())


def test_an_unknown_model_fails_before_any_server_starts(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--project", str(project), "bench", "serve", "--model", "nope"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--model nope: no model 'nope' in the registry" in err and "backline train" in err


def test_an_open_loop_run_against_a_url_writes_its_report(
    data_root: Path, asgi_base: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "report.json"
    argv = ["--project", str(data_root), "bench", "serve", "--url", asgi_base, "--model", "fraud"]
    argv += ["--rate", "60", "--duration", "1", "--json", str(report_path)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "open loop against" in out and f"Wrote the report to {report_path}" in out
    assert "from 198 entities" in " ".join(out.split())
    report = json.loads(report_path.read_text())
    assert report["mode"] == "open" and report["target_rate"] == 60.0
    assert report["ok"] == report["scheduled"] > 30 and report["errors"] == {}
    assert report["url"] == f"{asgi_base}/v1/models/fraud:predict"


def test_json_dash_prints_only_json_and_no_rate_means_8_clients(
    data_root: Path, asgi_base: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--project", str(data_root), "bench", "serve", "--url", asgi_base]
    assert main([*argv, "--model", "fraud", "--duration", "0.5", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "closed" and report["concurrency"] == 8 and report["ok"] > 0


def test_the_preflight_request_names_what_is_wrong(
    data_root: Path, asgi_base: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--project", str(data_root), "bench", "serve", "--duration", "0.5"]
    assert main([*base, "--url", asgi_base, "--model", "nope"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--model nope: the server at" in err and "answered 404" in err
    assert main([*base, "--url", asgi_base, "--model", "fraud@challenger"]) == 2
    assert "give just the name (--model fraud)" in " ".join(capsys.readouterr().err.split())
    nobody = f"http://127.0.0.1:{free_port()}"
    assert main([*base, "--url", nobody, "--model", "fraud"]) == 2
    assert f"--url {nobody}: nothing answers there" in " ".join(capsys.readouterr().err.split())


def test_a_run_where_nothing_succeeds_exits_1_and_shows_why(
    data_root: Path, asgi_base: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--project", str(data_root), "bench", "serve", "--url", asgi_base]
    assert main([*argv, "--model", "broken", "--rate", "40", "--duration", "0.5"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "500:" in out and "first 500: model 'broken' is broken" in out
    assert "warning: no request succeeded" in out
