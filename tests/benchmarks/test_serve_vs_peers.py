"""benchmarks/serve_vs_peers.py without its peers: the search for goodput, the figures over
runs, the ratios, and a stand-in server started, pinned, measured and stopped for real.

The peers themselves (FastAPI, Ray Serve, BentoML) live in venvs the benchmark makes on first
use, minutes of installing, so they are not run here; `--quick` is the smoke test for them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("serve_vs_peers", ROOT / "benchmarks" / "serve_vs_peers.py")
common = _load("serve_peers_common", ROOT / "benchmarks" / "_serve_peers" / "common.py")


def _capacity(limit: float, calls: list[float]):
    """A fake measurement: every rate up to `limit` passes, with goodput = rate."""

    def measure(rate: float) -> dict[str, Any]:
        calls.append(rate)
        ok = rate <= limit
        return {"passed": ok, "goodput": rate if ok else 0.0, "latency_ms": {"p99": 5.0}}

    return measure


PLAN = bench.Plan(1.0, 20.0, (0.5, 0.7, 0.85, 1.0, 1.15), (0.3, 0.15, 0.05), 2, 0.1)


def test_sweep_climbs_until_a_rate_fails_then_bisects() -> None:
    calls: list[float] = []
    out = bench.sweep(_capacity(780.0, calls), 1000.0, PLAN)
    assert calls[:3] == pytest.approx([500.0, 700.0, 850.0])
    assert len(calls) == 5  # up to the first failure, then 2 halvings (geometric)
    assert calls[3] == pytest.approx((700.0 * 850.0) ** 0.5)
    assert 770.0 <= out["goodput"] <= 780.0
    assert out["goodput_rate"] == out["goodput"] and out["first_failing_rate"] > 780.0
    assert all(p["offered_rate"] == c for p, c in zip(out["points"], calls, strict=True))


def test_sweep_goes_down_when_half_the_maximum_fails() -> None:
    calls: list[float] = []
    out = bench.sweep(_capacity(200.0, calls), 1000.0, PLAN)
    assert calls[:3] == pytest.approx([500.0, 300.0, 150.0])
    assert 150.0 <= out["goodput"] <= 200.0


def test_sweep_reports_zero_when_nothing_passes() -> None:
    out = bench.sweep(_capacity(0.0, []), 1000.0, PLAN)
    assert out["goodput"] == 0.0 and out["goodput_rate"] is None


def test_sweep_never_offers_less_than_one_request_a_second() -> None:
    calls: list[float] = []
    bench.sweep(_capacity(0.0, calls), 2.0, PLAN)
    assert min(calls) == 1.0


def _figs(**values: float | None) -> dict[str, float | None]:
    base = {key: None for key, _, _ in bench.FIGURES}
    return {**base, **values}


def test_ratios_compare_backline_with_the_best_other_peer_the_floor_and_fastapi() -> None:
    run = {
        "backline": _figs(goodput_rps=3000.0, max_rps=4200.0, low_p99_ms=2.5),
        "fastapi": _figs(goodput_rps=1000.0, max_rps=1800.0, low_p99_ms=2.0),
        "ray": _figs(goodput_rps=1200.0, max_rps=1500.0),
        "noop": _figs(goodput_rps=9000.0, max_rps=6000.0),
    }
    out = bench.ratios(run)
    assert out["best_peer"] == "ray"  # the floor is no peer
    assert out["goodput_vs_best_peer"] == pytest.approx(2.5)
    assert out["max_vs_noop_floor"] == pytest.approx(0.7)
    assert out["low_p99_minus_unbatched_ms"] == pytest.approx(0.5)


def test_ratios_are_none_where_a_side_is_missing() -> None:
    out = bench.ratios({"backline": _figs(goodput_rps=10.0)})
    assert out["goodput_vs_best_peer"] is None and out["max_vs_noop_floor"] is None
    assert out["low_p99_minus_unbatched_ms"] is None


def test_summary_gives_median_and_spread_per_figure_and_checks_targets() -> None:
    runs = []
    for g, floor in ((2000.0, 5000.0), (2600.0, 5200.0), (2400.0, 4000.0)):
        runs.append(
            {
                "figures": {
                    "backline": _figs(goodput_rps=g, max_rps=3900.0, low_p99_ms=3.0),
                    "fastapi": _figs(goodput_rps=1000.0, low_p99_ms=2.5),
                    "noop": _figs(max_rps=floor),
                }
            }
        )
    summary = bench.summarize({"runs": runs, "peers": {"backline": {}, "fastapi": {}, "noop": {}}})
    g = summary["peers"]["backline"]["goodput_rps"]
    assert (g["median"], g["min"], g["max"], g["n"]) == (2400.0, 2000.0, 2600.0, 3)
    assert summary["peers"]["fastapi"]["max_rps"]["n"] == 0
    targets = summary["targets"]
    assert targets["goodput_vs_best_peer"]["median"] == pytest.approx(2.4)
    assert targets["goodput_vs_best_peer"]["met"] is True
    assert targets["max_vs_noop_floor"]["median"] == pytest.approx(0.78)
    assert targets["low_p99_minus_unbatched_ms"]["met"] is True  # 0.5 ms
    assert summary["ratios"]["best_peer_by_run"] == ["fastapi"] * 3


def test_spread_skips_runs_without_the_figure() -> None:
    assert bench.spread([None, 3.0, 1.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 2}
    assert bench.spread([None])["median"] is None


def test_figures_of_a_peer_without_a_low_load_point() -> None:
    point = {"ok_rate": 100.0, "latency_ms": {"p99": 4.0}}
    measured = {
        "closed": {"8": point, "64": point},
        "max_rps": 100.0,
        "sweep": {"goodput": 80.0, "goodput_rate": 90.0},
    }
    figs = bench.figures(measured)
    assert figs["max_rps"] == 100.0 and figs["goodput_rate"] == 90.0
    assert figs["low_p99_ms"] is None


def test_tuned_settings_parse_to_the_defaults_types() -> None:
    parse = bench._settings(bench.RAY_TUNED)
    assert parse("max_batch_size=64,batch_wait_ms=2") == {
        "max_batch_size": 64,
        "batch_wait_ms": 2.0,
    }
    with pytest.raises(Exception, match="K=V"):
        parse("batch=3")
    with pytest.raises(Exception, match="not a number"):
        parse("max_batch_size=lots")
    catalog = bench.peers(True, {"max_batch_size": 48}, {"max_latency_ms": 25})
    assert catalog["ray"].settings["max_batch_size"] == 48
    assert catalog["bentoml"].env["FRAUD_BENTO_MAX_LATENCY_MS"] == "25"
    assert catalog["ray-default"].settings["max_batch_size"] == 10
    assert "--no-prediction-log" in bench.peers(False)["backline"].args(
        Path("python"), Path("p"), 1
    )


def test_every_default_peer_is_known() -> None:
    assert set(bench.DEFAULT_PEERS) <= set(bench.peers())


def test_peer_app_parses_at_as_the_api_does() -> None:
    assert common.parse_at("2026-03-01T12:00:00Z") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert common.parse_at("2026-03-01T12:00:00") == datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert common.parse_at(None) is None
    with pytest.raises(common.BadRequest):
        common.parse_at("yesterday")
    model = common.FraudModel.__new__(common.FraudModel)
    model.keys, model.fields = ("card_id", "merchant_id"), ("amount",)
    body = {
        "instances": [
            {"card_id": "c", "merchant_id": "m", "amount": 1.5, "transaction_id": "tx_1"}
        ],
        "at": "2026-03-01T12:00:00Z",
    }
    parsed = model.parse(json.dumps(body))
    assert parsed.entities == [{"card_id": "c", "merchant_id": "m"}]
    assert parsed.fields == [{"amount": 1.5}]  # transaction_id is ignored
    with pytest.raises(common.BadRequest, match="merchant_id"):
        model.parse(json.dumps({"instances": [{"card_id": "c", "amount": 1.0}]}))
    with pytest.raises(common.BadRequest):
        model.parse(b"{}")


STAND_IN = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ANSWER = b'{"model_name":"fraud","model_version":1,"scores":[0.5]}'

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, body):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self._answer(b"{}")

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self._answer(ANSWER)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
    """
)


@pytest.mark.http
def test_a_stand_in_peer_is_pinned_measured_and_stopped(tmp_path: Path) -> None:
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    peer = bench.Peer(
        "stand-in",
        "stdlib HTTP server",
        None,
        args=lambda py, project, port: [str(py), str(script), str(port)],
        parity=False,
        start_timeout=30.0,
    )
    pin = len(os.sched_getaffinity(0)) >= 2 and bench.shutil.which("taskset") is not None
    plan = bench.Plan(0.3, 50.0, (0.5, 1.0), (0.2,), 0, 0.2, 20)
    bodies = [json.dumps({"instances": [{"card_id": "c"}]}).encode()]
    with bench.Running(peer, Path(sys.executable), tmp_path, tmp_path / "log", pin) as run:
        pid = run.process.pid
        measured = bench.measure_peer(
            run, bodies, plan, low_rate=None, seed=0, log=lambda _: None, own_low=True
        )
        spawned = run.spawned()
    assert measured["max_rps"] > 0 and measured["closed"]["8"]["ok"] > 0
    assert measured["closed"]["64"]["server_cpu_share"] >= 0
    assert measured["sweep"]["points"] and "low" in measured
    assert measured["low"]["offered_rate"] == pytest.approx(0.1 * measured["max_rps"])
    assert spawned["processes"] >= 1 and pid in {p["pid"] for p in spawned["list"]}
    assert spawned["all_on_server_core"] is pin
    assert not bench._alive([pid])
    figs = bench.figures(measured)
    assert figs["closed_c64_rps"] is not None and figs["low_p99_ms"] is not None
