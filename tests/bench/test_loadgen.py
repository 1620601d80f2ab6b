"""The load generator against servers on loopback: what it counts, and from when."""

from __future__ import annotations

import asyncio
import io
import json
import time

import numpy as np
import pytest
from rich.console import Console

from backline.bench.loadgen import (
    behind_schedule,
    closed_loop,
    open_loop,
    predict_url,
    print_report,
    run_closed_loop,
    run_open_loop,
)
from backline.bench.server import free_port
from backline.core.errors import InvalidArgument
from tests.bench.conftest import body


def test_open_loop_sends_every_scheduled_request_once(noop_base: str) -> None:
    url = predict_url(noop_base, "fraud")
    report = run_open_loop(url, [body()], rate=400, duration=1.0, seed=1)
    assert report.mode == "open" and report.scheduled > 300
    assert report.sent == report.completed == report.ok == report.scheduled
    assert report.errors == {} and report.error_samples == {}
    assert report.throughput == pytest.approx(report.scheduled / 1.0)
    assert 0 < report.latency_ms["p50"] <= report.latency_ms["p99"] <= report.latency_ms["max"]
    lag = report.lag_ms
    assert lag["p50"] is not None and 0 <= lag["p50"] <= lag["max"]
    json.dumps(report.to_json(), allow_nan=False)  # valid JSON: no NaN anywhere


def test_latency_counts_from_the_scheduled_send_time(noop_base: str) -> None:
    """A generator stalled for 250 ms (here: its event loop blocked) sends the requests due
    meanwhile late; the user waited from the scheduled time, so the latency must show it."""

    async def stalled() -> object:
        asyncio.get_running_loop().call_later(0.5, time.sleep, 0.25)
        return await open_loop(predict_url(noop_base, "fraud"), [body()], rate=200, duration=1.5)

    report = asyncio.run(stalled())
    assert report.ok == report.scheduled
    assert report.latency_ms["max"] >= 200
    assert report.lag_ms["max"] >= 200
    assert any("fell behind its schedule" in w for w in report.warnings)


def test_a_request_that_waits_for_a_connection_counts_the_wait(asgi_base: str) -> None:
    """Two connections to a server taking 50 ms each carry 40 requests a second; at 80 a second
    the rest queue for a connection, and their wait is lag and latency, not hidden."""
    url = predict_url(asgi_base, "fraud")
    report = run_open_loop(url, [body("tx_sleep_50")], rate=80, duration=1.0, max_connections=2)
    assert report.connections == 2 and report.ok == report.scheduled
    assert report.waited_for_connection > report.scheduled / 3
    assert report.latency_ms["max"] >= 300 and report.lag_ms["max"] >= 250
    assert any("fell behind" in w for w in report.warnings)
    assert any("the offered load was lower than asked for" in w for w in report.warnings)


def test_the_behind_schedule_warning_fires_at_its_thresholds_only() -> None:
    on_time = np.full(1000, 0.2)
    assert behind_schedule(on_time, 1000, 1000, 10, 0) == []
    assert behind_schedule(on_time, 950, 1000, 10, 0) == []  # exactly 95% sent in the window
    late = on_time.copy()
    late[-11:] = 6.0  # 1.1% of sends over 5 ms: the p99 is 6 ms
    (warning,) = behind_schedule(late, 1000, 1000, 10, 3)
    assert "p99 send lag 6.0 ms" in warning and "3 requests waited" in warning
    late[-11:] = 5.0  # at the threshold, not over it
    assert behind_schedule(late, 1000, 1000, 10, 0) == []
    (short,) = behind_schedule(on_time, 949, 1000, 10, 0)
    assert "sent 949 of 1,000 scheduled requests within the 10 s window" in short


def test_connections_are_opened_on_demand(asgi_base: str) -> None:
    url = predict_url(asgi_base, "fraud")
    report = run_open_loop(url, [body("tx_sleep_100")], rate=200, duration=1.0, seed=2)
    # about 20 requests in flight at a time: more than the 10 opened up front
    assert report.connections > 12 and report.ok == report.scheduled


def test_closed_loop_keeps_c_requests_in_flight_and_counts_them(noop_base: str) -> None:
    url = predict_url(noop_base, "fraud")
    report = run_closed_loop(url, [body()], concurrency=4, duration=1.0)
    assert report.mode == "closed" and report.concurrency == 4 and report.connections == 4
    assert report.completed > 200
    assert report.sent == report.completed == report.ok == report.scheduled
    assert report.throughput == pytest.approx(report.completed / 1.0)
    assert report.lag_ms == {"p50": None, "p99": None, "max": None}


def test_closed_loop_latency_is_the_servers_time(asgi_base: str) -> None:
    url = predict_url(asgi_base, "fraud")
    report = run_closed_loop(url, [body("tx_sleep_40")], concurrency=3, duration=1.0)
    # each client does one request per ~40 ms: about 25 a second each, never 3 at once more
    assert 40 <= report.latency_ms["p50"] < 200
    assert report.completed <= 3 * (1.0 / 0.040) + 3


def test_errors_are_counted_by_status_and_kept_out_of_latency(asgi_base: str) -> None:
    bodies = [body(), body("tx_status_429"), body("tx_status_500"), body("tx_sleep_5")]
    report = run_open_loop(predict_url(asgi_base, "fraud"), bodies, rate=150, duration=1.0)
    n = report.scheduled
    # request i carries bodies[i % 4]
    assert report.errors == {"429": len(range(1, n, 4)), "500": len(range(2, n, 4))}
    assert report.ok == len(range(0, n, 4)) + len(range(3, n, 4))
    assert report.completed == n
    assert "told to answer 429" in report.error_samples["429"]
    assert report.within_slo <= report.ok


def test_goodput_counts_successes_within_the_slo_only(asgi_base: str) -> None:
    """Fast successes count; slow successes and fast errors do not."""
    bodies = [body(), body("tx_sleep_80"), body("tx_status_500")]
    report = run_open_loop(
        predict_url(asgi_base, "fraud"), bodies, rate=60, duration=1.0, slo_ms=40
    )
    n = report.scheduled
    fast, slow = len(range(0, n, 3)), len(range(1, n, 3))
    assert report.ok == fast + slow and report.errors == {"500": len(range(2, n, 3))}
    assert report.within_slo == fast
    assert report.goodput == pytest.approx(fast / 1.0)
    assert report.latency_ms["max"] >= 80


def test_transport_errors_are_named(asgi_base: str) -> None:
    nothing = predict_url(f"http://127.0.0.1:{free_port()}", "fraud")
    refused = run_closed_loop(nothing, [body()], concurrency=2, duration=0.3)
    assert set(refused.errors) == {"connect"} and refused.errors["connect"] >= 2
    assert refused.sent == 0 and refused.ok == 0
    assert any("no request succeeded" in w for w in refused.warnings)
    late = run_open_loop(
        predict_url(asgi_base, "fraud"),
        [body("tx_sleep_1000")],
        rate=20,
        duration=0.3,
        client_timeout_s=0.1,
    )
    assert late.errors == {"timeout": late.scheduled} and late.ok == 0
    assert "no answer within 0.1 s" in late.error_samples["timeout"]


def test_timeout_ms_is_sent_as_the_deadline_header(asgi_base: str) -> None:
    url, bodies = predict_url(asgi_base, "fraud"), [body("tx_deadline_250")]
    told = run_closed_loop(url, bodies, concurrency=1, duration=0.3, timeout_ms=250)
    assert told.ok == told.completed > 0
    untold = run_closed_loop(url, bodies, concurrency=1, duration=0.3)
    assert untold.ok == 0 and set(untold.errors) == {"400"}


def test_the_report_prints_as_a_table_with_its_warnings(noop_base: str) -> None:
    report = run_open_loop(predict_url(noop_base, "fraud"), [body()], rate=50, duration=0.3)
    report = type(report)(**{**report.__dict__, "warnings": ("the generator fell behind",)})
    console = Console(file=io.StringIO(), width=120)
    print_report(report, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "open loop against" in text and "p99" in text and "goodput" in text
    assert "warning: the generator fell behind" in text


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 10, "burstiness": -1}, "burstiness"),
        ({"rate": 10, "slo_ms": 0}, "slo_ms"),
        ({"rate": 10, "max_connections": 0}, "max_connections"),
    ],
)
def test_bad_arguments_say_which(kwargs: dict[str, float], word: str) -> None:
    with pytest.raises(InvalidArgument, match=word):
        run_open_loop("http://127.0.0.1:1/x", [b"{}"], duration=1, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="concurrency"):
        asyncio.run(closed_loop("http://127.0.0.1:1/x", [b"{}"], concurrency=0, duration=1))
    with pytest.raises(InvalidArgument, match="not an http"):
        run_closed_loop("ftp://host/x", [b"{}"], concurrency=1, duration=1)
