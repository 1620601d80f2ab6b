"""The HTML monitoring report: its records, the page it draws, and that page in a real browser.

Pure tests read the page with the standard library's HTML parser. The `chromium` tests load the
written file in headless Chromium and drive it over the DevTools protocol on a pipe
(`--remote-debugging-pipe`: null-terminated JSON on file descriptors 3 and 4), which needs no
websocket client, and collect every uncaught exception, console.error and browser log error.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import math
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backline.core.errors import InvalidArgument
from backline.monitor.report import (
    PLOTS,
    AlertEvent,
    Distribution,
    Estimate,
    FeatureDrift,
    Labels,
    ReportData,
    WindowRecord,
    render_report,
    write_report,
)
from tests.conftest import find_binary

T0 = datetime(2026, 1, 5, tzinfo=UTC)
EVIL = "<script>alert(1)</script>"
FEATURES = ("amount", "merchant_category", "hour", "distance_km", "velocity_1h", EVIL)


def window(i: int, **changes: Any) -> WindowRecord:
    """Hour i of a day of traffic. 'amount' drifts from hour 12 on (effect up 0.1 an hour); the
    others stay near 0.02, except that in the last hour 'hour' has the largest effect of all
    without being significant. Version 3 serves until hour 8, then version 4. Realised AUC-PR
    is 0.6, dips to 0.58 (below the estimate, inside its interval) from hour 8 and falls out
    of the interval to 0.4 from hour 16."""
    drift = {
        name: FeatureDrift(
            effect := 0.02 + 0.001 * j + (0.1 * (i - 11) if name == "amount" and i >= 12 else 0),
            1e-6 if effect > 0.1 else 0.5,
            effect > 0.1,
            "wasserstein",
            0.1,
        )
        for j, name in enumerate(FEATURES)
    }
    if i == 23:
        drift["hour"] = FeatureDrift(1.5, 0.5, False, "wasserstein", 0.1)
    fields: dict[str, Any] = dict(
        start=T0 + timedelta(hours=i),
        end=T0 + timedelta(hours=i + 1),
        model="fraud",
        model_version="3" if i < 8 else "4",
        rows=10_000,
        drift=drift,
        distributions={
            "amount": Distribution((25, 25, 25, 25), (10, 20, 30, 40), edges=(0, 10, 50, 120, 1e4)),
            EVIL: Distribution((50, 30, 20), (40, 40, 20), categories=("a", "b", "<b>other</b>")),
            "hour": Distribution((1, 1), (1, 1), edges=(0, 12, 24)),
        },
        score=Distribution((10, 20, 30, 40), (12, 22, 28, 38), edges=(0, 0.25, 0.5, 0.75, 1)),
        latency_ms={"p50": 3.0 + i % 3, "p90": 8.0 + i % 2, "p99": 20.0 + i % 4},
        labels=Labels(
            coverage=max(0.0, 1 - i / 24),
            realised={"auc_pr": 0.6 if i < 8 else 0.58 if i < 16 else 0.4},
            estimated={"auc_pr": Estimate(0.6, 0.55, 0.65)},
        ),
        multivariate=1.0 + 0.1 * i,
        multivariate_threshold=2.5,
    )
    fields.update(changes)
    return WindowRecord(**fields)


ALERTS = (
    AlertEvent(T0 + timedelta(hours=5), "Latency", "pending", "page", 30.0),
    AlertEvent(T0 + timedelta(hours=6), "Latency", "firing", "page", 31.0),
    AlertEvent(T0 + timedelta(hours=9), "Latency", "resolved", "page", 3.0),
    AlertEvent(
        T0 + timedelta(hours=13), "FeatureDrift", "pending", "warning", 1.0, {"feature": EVIL}
    ),
    AlertEvent(
        T0 + timedelta(hours=14), "FeatureDrift", "firing", "warning", 2.0, {"feature": EVIL}
    ),
)


def day(model: str = "fraud", hours: int = 24) -> ReportData:
    return ReportData(
        model, T0 + timedelta(hours=hours), tuple(window(i) for i in range(hours)), ALERTS
    )


# ---------------------------------------------------------------------------------------------
# Reading the page back
# ---------------------------------------------------------------------------------------------


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str | None = None, **attrs: str) -> list[Element]:
        """Every descendant with this tag (any when None) and these attribute values."""
        found = []
        for child in self.children:
            if (tag is None or child.tag == tag) and all(
                child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items()
            ):
                found.append(child)
            found += child.find(tag, **attrs)
        return found

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class _TreeBuilder(HTMLParser):
    VOID = frozenset({"meta", "br", "img", "link", "input"})  # HTML's; SVG closes its own

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack[-1].tag == tag, f"</{tag}> closes <{self.stack[-1].tag}>"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        holder = self.stack[-1]
        if holder.children:  # text after a child: keep it in order by a text node
            holder.children.append(Element("#text", {}, text=data))
        else:
            holder.text += data


def parse(html: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    assert builder.stack == [builder.root], "every element is closed"
    return builder.root


def plots(page: Element, name: str) -> list[Element]:
    return page.find("svg", data_plot=name)


def drawn(svg: Element) -> int:
    return sum(len(svg.find(tag)) for tag in ("path", "rect", "circle"))


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def test_every_plot_is_an_svg_that_draws_something() -> None:
    page = parse(render_report(day()))
    for name in PLOTS:
        svgs = plots(page, name)
        assert svgs, f"no <svg data-plot={name!r}>"
        for svg in svgs:
            assert "data-empty" not in svg.attrs, name
            assert drawn(svg) > 0, f"{name} draws nothing"
            assert svg.find("title"), f"{name} has no tooltips"
    assert page.find("section", id="summary")


def test_page_loads_nothing_from_anywhere() -> None:
    html = render_report(day())
    assert not re.search(r"(?i)\b(https?|ftp):|//[a-z0-9]", html), "a URL in the page"
    page = parse(html)
    loaders = [e for e in page.find() if {"src", "href", "xlink:href", "srcset"} & set(e.attrs)]
    assert loaders == []
    assert not page.find("link") and not page.find("img") and not page.find("iframe")
    assert "url(" not in html and "@import" not in html
    # The browser itself is told to fetch nothing, and to run only the page's own script.
    (csp,) = [m.attrs["content"] for m in page.find("meta", http_equiv="Content-Security-Policy")]
    assert "default-src 'none'" in csp
    (script,) = page.find("script")
    digest = base64.b64encode(hashlib.sha256(script.text.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in csp


def test_user_strings_are_escaped_everywhere() -> None:
    model = 'fr"a<u>d & co'
    html = render_report(day(model))
    assert EVIL not in html and "<b>other" not in html and "<u>" not in html
    page = parse(html)
    assert len(page.find("script")) == 1, "only the page's own script"
    assert all(b.all_text() != "other" for b in page.find("b"))  # a category made no <b>
    assert page.find("title")[0].all_text() == f"Monitoring: {model}"
    assert "<b>other</b>" in page.all_text()  # shown, as text
    # The evil feature is in the drift legend, a distribution (by data-feature) and an alert.
    assert EVIL in [li.all_text() for li in page.find("section", id="drift")[0].find("li")]
    (evil_chart,) = page.find("svg", data_feature=EVIL)
    assert evil_chart.attrs["data-plot"] == "distribution"
    assert EVIL in plots(page, "alerts")[0].all_text()


def test_no_windows_yet_draws_every_plot_with_a_note() -> None:
    html = render_report(ReportData("fraud", T0))
    page = parse(html)
    assert "No data yet" in page.find("section", id="summary")[0].all_text()
    for name in PLOTS:
        (svg,) = plots(page, name)
        assert svg.attrs.get("data-empty") == "true", name
        assert svg.find("text"), name


def test_missing_values_leave_gaps_and_empty_charts() -> None:
    """A window without labels, NaN latency and a feature without a test still render."""
    nan = math.nan
    windows = [window(i) for i in range(6)]
    windows[2] = window(2, labels=None, latency_ms={"p50": nan, "p90": None, "p99": 21.0})
    windows[4] = window(4, drift={}, score=None, multivariate=math.inf)
    page = parse(render_report(ReportData("fraud", T0 + timedelta(hours=6), tuple(windows))))
    (latency,) = plots(page, "latency")
    groups = latency.find("g")
    assert [len(g.find("path", **{"class": "line"})) for g in groups] == [2, 2, 1]  # p50 p90 p99
    (coverage,) = plots(page, "coverage")
    assert len(coverage.find("path", **{"class": "line"})) == 2
    (mv,) = plots(page, "multivariate")
    assert len(mv.find("g")[0].find("path", **{"class": "line"})) == 2
    # Only labelless windows: the performance chart says so instead of drawing nothing.
    bare = tuple(window(i, labels=None) for i in range(3))
    page = parse(render_report(ReportData("fraud", T0, bare)))
    assert plots(page, "performance")[0].attrs.get("data-empty") == "true"
    assert plots(page, "coverage")[0].attrs.get("data-empty") == "true"
    assert plots(page, "drift")[0].attrs.get("data-empty") is None


def test_drift_chart_shows_top_features_and_rings_drifted_windows() -> None:
    data = day()
    page = parse(render_report(data, top_n=3))
    (drift,) = plots(page, "drift")
    section = page.find("section", id="drift")[0]
    legend = [li.all_text() for li in section.find("li")]
    assert len(legend) == 3 and legend[0] == "amount"  # the only one that ever drifted leads
    assert len(drift.find("circle", **{"class": "flag"})) == 12  # hours 12..23
    thresholds = drift.find("line", **{"class": "threshold"})
    assert len(thresholds) == 1 and "0.1" in thresholds[0].all_text()
    assert len(drift.find("line", **{"class": "version"})) == 1  # 3 -> 4 at hour 8


def test_distributions_follow_the_latest_windows_drift_ranking() -> None:
    page = parse(render_report(day(), top_distributions=2))
    charts = plots(page, "distribution")
    # amount drifted, so it leads hour's larger but insignificant effect; EVIL comes third.
    assert [c.attrs["data-feature"] for c in charts] == ["amount", "hour"]
    three = plots(parse(render_report(day(), top_distributions=3)), "distribution")
    assert three[2].attrs["data-feature"] == EVIL
    bars = charts[0].find("rect")
    assert len(bars) == 8  # 4 bins, reference and current
    tips = [b.find("title")[0].all_text() for b in bars]
    assert tips[0] == "< 10: reference 25.0% (25), current 10.0% (10)"
    assert tips[2].startswith("10–50: ")
    heights = [float(b.attrs["height"]) for b in bars]
    assert heights[7] == pytest.approx(4 * heights[1], rel=0.02)  # 40% against 10%


def test_performance_rings_realised_values_below_the_interval() -> None:
    page = parse(render_report(day()))
    (perf,) = plots(page, "performance")
    # hours 16..23 (0.4 < 0.55); not 8..15, whose 0.58 is below the estimate but inside its interval
    assert len(perf.find("circle", **{"class": "flag"})) == 8
    assert perf.find("path", **{"class": "band"})


def test_alert_timeline_spans_states_until_the_next_change() -> None:
    page = parse(render_report(day()))
    (timeline,) = plots(page, "alerts")
    spans = timeline.find("rect")
    states = [(r.attrs["data-state"], r.find("title")[0].all_text().split(" · ")[0]) for r in spans]
    assert states == [
        ("pending", "Latency"),
        ("firing", "Latency"),
        ("pending", f"FeatureDrift{{feature={EVIL}}}"),
        ("firing", f"FeatureDrift{{feature={EVIL}}}"),
    ]
    hour = float(spans[0].attrs["width"])
    assert float(spans[1].attrs["width"]) == pytest.approx(3 * hour, rel=0.01)  # 6h to 9h
    # Still firing: the span runs to the end of the charts (hour 24 plus the margin).
    end = float(spans[3].attrs["x"]) + float(spans[3].attrs["width"])
    assert end == pytest.approx(760 - 16, abs=0.2)
    (resolved,) = timeline.find("path", data_state="resolved")
    assert "Latency · resolved" in resolved.all_text()


def test_summary_names_what_needs_attention_now() -> None:
    summary = parse(render_report(day())).find("section", id="summary")[0]
    rows = dict(
        zip(
            [dt.all_text() for dt in summary.find("dt")],
            [dd.all_text() for dd in summary.find("dd")],
            strict=True,
        )
    )
    assert rows["Versions served"] == "3 (8 windows), 4 (16 windows)"
    assert rows["Firing now"] == f"FeatureDrift{{feature={EVIL}}} (warning)"  # Latency resolved
    assert rows["Drifting in the latest window"] == "amount (1.22)"  # not hour: insignificant
    assert rows["Label coverage (latest window)"] == "4.2%"
    assert rows["Multivariate statistic (latest)"] == "3.3 (threshold 2.5) · over"
    assert rows["Windows"].startswith(
        "24 from 2026-01-05 00:00 UTC to 2026-01-06 00:00 UTC, 240,000"
    )


# ---------------------------------------------------------------------------------------------
# The records
# ---------------------------------------------------------------------------------------------

odd_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from([EVIL, "", "\x00&"])
number = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6)
instant = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@st.composite
def records(draw: st.DrawFn) -> ReportData:
    windows = []
    for _ in range(draw(st.integers(0, 3))):
        start = draw(instant)
        bins = draw(st.integers(1, 4))
        counts = st.tuples(*[st.integers(0, 10**9)] * bins)
        edges = sorted(draw(st.lists(st.floats(-1e9, 1e9), min_size=bins - 1, max_size=bins - 1)))
        dist = draw(
            st.builds(Distribution, counts, counts, st.just((-math.inf, *edges, math.inf)))
            | st.builds(
                Distribution,
                counts,
                counts,
                categories=st.lists(odd_text, min_size=bins, max_size=bins).map(tuple),
            )
        )
        drift = st.builds(FeatureDrift, number, number, st.booleans(), odd_text, number)
        labels = st.none() | st.builds(
            Labels,
            st.none() | st.floats(0, 1),
            st.dictionaries(odd_text, number, max_size=2),
            st.dictionaries(odd_text, st.builds(Estimate, number, number, number), max_size=2),
        )
        windows.append(
            WindowRecord(
                start,
                start + timedelta(seconds=draw(st.integers(0, 10**6))),
                draw(odd_text),
                draw(odd_text),
                draw(st.integers(0, 10**9)),
                draw(st.dictionaries(odd_text, drift, max_size=3)),
                draw(st.dictionaries(odd_text, st.just(dist), max_size=2)),
                draw(st.none() | st.just(dist)),
                draw(st.dictionaries(odd_text, number, max_size=3)),
                draw(labels),
                draw(number),
                draw(number),
            )
        )
    alert = st.builds(
        AlertEvent,
        instant,
        odd_text,
        st.sampled_from(["pending", "firing", "resolved", "inactive"]),
        odd_text,
        number,
        st.dictionaries(odd_text, odd_text, max_size=2),
    )
    return ReportData(
        draw(odd_text), draw(instant), tuple(windows), tuple(draw(st.lists(alert, max_size=4)))
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_json_round_trip_is_exact_and_strict(data: ReportData) -> None:
    text = data.to_json()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert ReportData.from_json(text) == data
    # Whatever the strings and numbers, the page renders and holds no raw markup from them.
    page = parse(render_report(data))
    assert len(page.find("script")) == 1
    for name in PLOTS:
        assert plots(page, name), name
    shapes = [e for svg in page.find("svg") for e in svg.find()]
    for element in shapes:  # a NaN coordinate would be a console error in a browser
        for attr in ("x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "width", "height", "d"):
            assert not re.search(r"(?i)nan|inf|e[+-]", element.attrs.get(attr, "")), element


def test_non_finite_numbers_are_missing_values() -> None:
    drift = FeatureDrift(math.nan, math.inf, True)
    assert drift.effect is None and drift.p_value is None
    assert Labels(math.nan, {"auc_pr": -math.inf}).realised == {"auc_pr": None}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: window(0, start=datetime(2026, 1, 5)), "timezone-aware"),
        (lambda: window(0, end=T0 - timedelta(hours=1)), "before its start"),
        (lambda: Distribution((1, 2), (1,), edges=(0, 1, 2)), "as many current counts"),
        (lambda: Distribution((1, 2), (1, 2), edges=(0, 1)), "one more edge"),
        (lambda: Distribution((1, 2), (1, 2), edges=(0, 2, 1)), "must ascend"),
        (lambda: Distribution((1, 2), (1, 2)), "one category per count"),
        (lambda: Labels(1.5), "0 to 1"),
        (lambda: AlertEvent(T0, "x", "burning"), "pending, firing"),
        (lambda: FeatureDrift("big", None, True), "number or null"),
        (lambda: render_report(day(hours=1), top_n=0), "at least 1"),
    ],
)
def test_bad_records_are_refused_with_the_reason(make: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        make()


@pytest.mark.parametrize(
    "text", ["{", "[]", '{"model": "m"}', '{"model": "m", "generated_at": "now"}']
)
def test_unreadable_json_is_a_clear_error(text: str) -> None:
    with pytest.raises(InvalidArgument, match=r"ReportData\.to_json|ISO 8601"):
        ReportData.from_json(text)


def test_write_report_replaces_the_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "report.html"
    target.write_text("old")
    assert write_report(day(), target) == target
    assert target.read_text(encoding="utf-8") == render_report(day())
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]


# ---------------------------------------------------------------------------------------------
# In a real browser
# ---------------------------------------------------------------------------------------------


class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (fds 3 and 4)."""

    def __init__(self, binary: str, profile: Path, timeout: float = 60.0) -> None:
        to_browser, self._write = os.pipe()
        self._read, from_browser = os.pipe()
        args = [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--no-default-browser-check", "--disable-extensions", "--mute-audio",
            "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank",
        ]  # fmt: skip
        self.log = (profile.parent / "chromium.log").open("wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser} 4>&{from_browser}', "bash", *args],
            pass_fds=(to_browser, from_browser),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        os.close(to_browser)
        os.close(from_browser)
        self.timeout, self._buffer, self._id = timeout, b"", 0
        self.events: list[dict[str, Any]] = []

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self._read, 1 << 16)
            if not chunk:
                raise ConnectionError(f"chromium exited ({self.proc.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> None:
        """Read messages until `method` has arrived for `session`; every message is kept."""
        deadline = time.monotonic() + self.timeout
        wanted = {"method": method, "sessionId": session}
        while not any(wanted.items() <= e.items() for e in self.events):
            self.events.append(self._message(deadline))

    def open(self, url: str) -> Page:
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.send(f"{domain}.enable", session)
        self.send("Page.navigate", session, url=url)
        self.wait_for("Page.loadEventFired", session)
        return Page(self, session)

    def close(self) -> None:
        with contextlib.suppress(OSError, TimeoutError, ConnectionError, RuntimeError):
            self.send("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
        os.close(self._read)
        os.close(self._write)
        self.log.close()


@dataclass
class Page:
    browser: Chromium
    session: str

    def evaluate(self, expression: str) -> Any:
        reply = self.browser.send(
            "Runtime.evaluate", self.session, expression=expression, returnByValue=True
        )
        assert "exceptionDetails" not in reply, reply["exceptionDetails"]
        return reply["result"].get("value")

    def errors(self) -> list[str]:
        """Uncaught exceptions, console.error/assert calls and browser errors (a blocked
        load, a CSP violation) of this page so far."""
        self.evaluate("0")  # a round trip: every event sent before it has arrived
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            params, method = event.get("params", {}), event["method"]
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
                )
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    binary = find_binary("chromium")
    assert binary, "conftest skips (or fails in CI) a chromium test without chromium"
    browser = Chromium(binary, tmp_path_factory.mktemp("chromium") / "profile")
    try:
        yield browser
    finally:
        browser.close()


_DRAWN = """Array.from(document.querySelectorAll("svg[data-plot]")).map(function (svg) {
  var box = svg.getBoundingClientRect();
  var shapes = Array.from(svg.querySelectorAll("path, rect, circle")).filter(function (el) {
    var b = el.getBBox(); return b.width > 0 || b.height > 0;
  });
  return [svg.getAttribute("data-plot"), shapes.length, box.width, box.height];
})"""


@pytest.mark.chromium
def test_report_renders_in_chromium_without_console_errors(
    chromium: Chromium, tmp_path: Path
) -> None:
    path = write_report(day('fr"a<u>d'), tmp_path / "report.html")
    page = chromium.open(path.as_uri())
    drawn = page.evaluate(_DRAWN)
    assert sorted({name for name, *_ in drawn}) == sorted(PLOTS)
    for name, shapes, width, height in drawn:
        assert shapes > 0 and width > 300 and height > 100, (name, shapes, width, height)
    assert page.evaluate("document.scripts.length") == 1  # the escaped names made none
    assert page.evaluate("document.title") == 'Monitoring: fr"a<u>d'
    # The legend script ran: hovering 'amount' fades the drift chart's other lines.
    dimmed = page.evaluate(
        """(function () {
          var item = document.querySelector("#drift .legend li[data-series='0']");
          item.dispatchEvent(new MouseEvent("mouseenter"));
          var n = document.querySelectorAll("#drift svg g.dim").length;
          item.dispatchEvent(new MouseEvent("mouseleave"));
          return [n, document.querySelectorAll("#drift svg g.dim").length];
        })()"""
    )
    assert dimmed == [len(FEATURES) - 1, 0]
    assert page.errors() == []


@pytest.mark.chromium
def test_empty_report_renders_in_chromium_without_console_errors(
    chromium: Chromium, tmp_path: Path
) -> None:
    path = write_report(ReportData("fraud", T0), tmp_path / "empty.html")
    page = chromium.open(path.as_uri())
    assert page.evaluate('document.querySelectorAll("svg[data-empty]").length') == len(PLOTS)
    assert "No data yet" in page.evaluate("document.body.innerText")
    assert page.errors() == []


@pytest.mark.chromium
@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("<script>undefinedFunction()</script>", "undefinedFunction is not defined"),
        ("<script>console.error('planted')</script>", "planted"),
        # The report's policy blocks any load: a remote image is refused, and that is an error.
        ('<img src="https://example.invalid/x.png">', "Content Security Policy"),
    ],
)
def test_the_console_check_catches_a_planted_error(
    chromium: Chromium, tmp_path: Path, body: str, expected: str
) -> None:
    html = render_report(day(hours=2)).replace("</body>", body + "</body>")
    if "<script>" in body:  # the page's policy would block a second script before it errs
        html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    path = tmp_path / "planted.html"
    path.write_text(html, encoding="utf-8")
    errors = chromium.open(path.as_uri()).errors()
    assert any(expected in e for e in errors), errors
