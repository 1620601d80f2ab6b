"""The monitoring report: one self-contained HTML page that charts what the monitor saw.

    data = ReportData(model="fraud", generated_at=now, windows=records, alerts=events)
    write_report(data, "report.html")              # open it anywhere, with no network
    data = ReportData.from_json(Path("monitor.json").read_text())   # what the runner saved

The monitor's runner keeps one `WindowRecord` per processed window (drift per feature, binned
distributions, latency, labels) and one `AlertEvent` per alert state change. They are plain
records with a JSON form of their own, independent of the modules that compute them, so a
report can be drawn again from a saved file long after the windows were processed.

The page must work on a laptop on a plane and inside a locked-down intranet, so it loads
nothing: the charts are inline SVG drawn here, the CSS and the little JavaScript (a legend
highlight, nothing the charts need) are inline, and a Content-Security-Policy forbids the
browser from fetching anything at all. Every string from the data (model, feature and alert
names) is HTML-escaped, and none reaches the script. Missing values (None, NaN, infinities)
leave a gap in a line instead of a wrong point, and a chart without data says so.

Charts, each an `<svg data-plot="...">`: drift (effect per feature over time, top features),
distribution (reference against latest window, one per top drifting feature), score, latency,
coverage, performance (realised against the estimate's interval), alerts (timeline) and
multivariate.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from backline.core.errors import InvalidArgument
from backline.core.files import write_text_atomic

ALERT_STATES = ("inactive", "pending", "firing", "resolved")
PLOTS = (
    "drift",
    "distribution",
    "score",
    "latency",
    "coverage",
    "performance",
    "alerts",
    "multivariate",
)
"""The `data-plot` value of every chart the page draws."""


# ---------------------------------------------------------------------------------------------
# The input: plain records with a strict-JSON form (non-finite numbers become null)
# ---------------------------------------------------------------------------------------------


def _num(value: Any, what: str) -> float | None:
    """A finite float, or None for a missing, NaN or infinite value."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{what} must be a number or null, not {value!r}.")
    number = float(value)
    return number if math.isfinite(number) else None


def _utc(value: datetime | str, what: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidArgument(f"{what}: {value!r} is not an ISO 8601 time.") from exc
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgument(
            f"{what} must be a timezone-aware UTC time (datetime.now(UTC)), not {value!r}."
        )
    return value.astimezone(UTC)


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift test in one window."""

    effect: float | None
    """Effect size (normalised Wasserstein, Jensen-Shannon, ...): the y of the drift chart."""

    p_value: float | None
    drifted: bool
    """The feature alarmed: significant and over the effect floor."""

    test: str = ""
    """Which test gave `effect`, e.g. 'wasserstein' or 'jensen_shannon'."""

    threshold: float | None = None
    """The effect floor, drawn as a dashed line."""

    def __post_init__(self) -> None:
        _set(self, "effect", _num(self.effect, "effect"))
        _set(self, "p_value", _num(self.p_value, "p_value"))
        _set(self, "threshold", _num(self.threshold, "threshold"))
        _set(self, "drifted", bool(self.drifted))

    def to_dict(self) -> dict[str, Any]:
        return {
            "effect": self.effect,
            "p_value": self.p_value,
            "drifted": self.drifted,
            "test": self.test,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FeatureDrift:
        return cls(
            d["effect"], d.get("p_value"), d["drifted"], d.get("test", ""), d.get("threshold")
        )


@dataclass(frozen=True)
class Distribution:
    """Binned counts of one column in the reference and in one window.

    Numeric: `edges` has one more value than the counts (the first and last bins are open).
    Categorical: `categories` names each bin ('other' and 'null' are categories like any)."""

    reference: tuple[int, ...]
    current: tuple[int, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "reference", tuple(int(c) for c in self.reference))
        _set(self, "current", tuple(int(c) for c in self.current))
        _set(self, "edges", tuple(float(e) for e in self.edges))
        _set(self, "categories", tuple(str(c) for c in self.categories))
        bins = len(self.reference)
        inner = self.edges[1:-1]
        ascending = all(a <= b for a, b in zip(self.edges, self.edges[1:], strict=False))
        if not all(math.isfinite(e) for e in inner) or not ascending:
            raise InvalidArgument(
                f"distribution edges must ascend and be finite (only the outer two may be "
                f"infinite); got {list(self.edges)}."
            )
        if len(self.current) != bins or min(self.reference + self.current, default=0) < 0:
            raise InvalidArgument(
                f"a distribution needs as many current counts as reference counts, none "
                f"negative; got {len(self.reference)} and {len(self.current)}."
            )
        if self.edges and (len(self.edges) != bins + 1 or self.categories):
            raise InvalidArgument(
                f"a numeric distribution needs one more edge than counts ({bins + 1}), and no "
                f"categories; got {len(self.edges)} edges."
            )
        if not self.edges and len(self.categories) != bins:
            raise InvalidArgument(
                f"a categorical distribution needs one category per count ({bins}); got "
                f"{len(self.categories)}. Pass edges= for a numeric one."
            )

    def bin_labels(self) -> list[str]:
        if not self.edges:
            return list(self.categories)
        e, n = self.edges, len(self.reference)
        if n == 1:
            return ["all"]
        return [
            f"< {_fmt(e[1])}"
            if i == 0
            else f"≥ {_fmt(e[i])}"
            if i == n - 1
            else f"{_fmt(e[i])}–{_fmt(e[i + 1])}"
            for i in range(n)
        ]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"reference": list(self.reference), "current": list(self.current)}
        if self.edges:
            d["edges"] = [e if math.isfinite(e) else None for e in self.edges]
        else:
            d["categories"] = list(self.categories)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Distribution:
        edges = list(d.get("edges", ()))
        if edges:  # JSON has no infinity: an open outer edge was written as null
            edges[0] = -math.inf if edges[0] is None else edges[0]
            edges[-1] = math.inf if edges[-1] is None else edges[-1]
        categories = tuple(d.get("categories", ()))
        return cls(tuple(d["reference"]), tuple(d["current"]), tuple(edges), categories)


@dataclass(frozen=True)
class Estimate:
    """A performance estimate before labels arrive, with its interval."""

    value: float | None
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        for name in ("value", "low", "high"):
            _set(self, name, _num(getattr(self, name), f"estimate {name}"))


@dataclass(frozen=True)
class Labels:
    """What the delayed labels say about one window so far."""

    coverage: float | None
    """Share of the window's predictions that have a label (0 to 1)."""

    realised: Mapping[str, float | None] = field(default_factory=dict)
    """Metric name (auc_pr, ...) -> value on the labelled rows; None below the coverage bar."""

    estimated: Mapping[str, Estimate] = field(default_factory=dict)

    def __post_init__(self) -> None:
        coverage = _num(self.coverage, "label coverage")
        if coverage is not None and not 0 <= coverage <= 1:
            raise InvalidArgument(f"label coverage is a share from 0 to 1, not {coverage}.")
        _set(self, "coverage", coverage)
        _set(self, "realised", {str(k): _num(v, k) for k, v in self.realised.items()})
        _set(self, "estimated", dict(self.estimated))

    def to_dict(self) -> dict[str, Any]:
        est = {
            k: {"value": e.value, "low": e.low, "high": e.high} for k, e in self.estimated.items()
        }
        return {"coverage": self.coverage, "realised": dict(self.realised), "estimated": est}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Labels:
        est = {
            k: Estimate(e["value"], e.get("low"), e.get("high"))
            for k, e in d.get("estimated", {}).items()
        }
        return cls(d.get("coverage"), dict(d.get("realised", {})), est)


@dataclass(frozen=True)
class WindowRecord:
    """Everything the report shows about one processed window of the prediction log."""

    start: datetime
    end: datetime
    model: str
    model_version: str
    rows: int
    drift: Mapping[str, FeatureDrift] = field(default_factory=dict)
    """Feature name -> its drift test in this window."""

    distributions: Mapping[str, Distribution] = field(default_factory=dict)
    """Feature name -> reference against this window, on the reference's bins."""

    score: Distribution | None = None
    latency_ms: Mapping[str, float | None] = field(default_factory=dict)
    """Percentile name -> milliseconds, e.g. {"p50": 3.1, "p90": 7.9, "p99": 21.0}."""

    labels: Labels | None = None
    multivariate: float | None = None
    """The joint-shift statistic (e.g. PCA reconstruction error), if computed."""

    multivariate_threshold: float | None = None

    def __post_init__(self) -> None:
        _set(self, "start", _utc(self.start, "window start"))
        _set(self, "end", _utc(self.end, "window end"))
        if self.end < self.start:
            raise InvalidArgument(f"window end {self.end} is before its start {self.start}.")
        _set(self, "model_version", str(self.model_version))
        if int(self.rows) < 0:
            raise InvalidArgument(f"a window's rows cannot be negative, not {self.rows}.")
        _set(self, "rows", int(self.rows))
        _set(self, "drift", dict(self.drift))
        _set(self, "distributions", dict(self.distributions))
        _set(self, "latency_ms", {str(k): _num(v, k) for k, v in self.latency_ms.items()})
        _set(self, "multivariate", _num(self.multivariate, "multivariate"))
        _set(self, "multivariate_threshold", _num(self.multivariate_threshold, "threshold"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "model": self.model,
            "model_version": self.model_version,
            "rows": self.rows,
            "drift": {k: v.to_dict() for k, v in self.drift.items()},
            "distributions": {k: v.to_dict() for k, v in self.distributions.items()},
            "score": self.score.to_dict() if self.score else None,
            "latency_ms": dict(self.latency_ms),
            "labels": self.labels.to_dict() if self.labels else None,
            "multivariate": self.multivariate,
            "multivariate_threshold": self.multivariate_threshold,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowRecord:
        return cls(
            start=d["start"],
            end=d["end"],
            model=d["model"],
            model_version=d["model_version"],
            rows=int(d["rows"]),
            drift={k: FeatureDrift.from_dict(v) for k, v in d.get("drift", {}).items()},
            distributions={
                k: Distribution.from_dict(v) for k, v in d.get("distributions", {}).items()
            },
            score=Distribution.from_dict(d["score"]) if d.get("score") else None,
            latency_ms=dict(d.get("latency_ms", {})),
            labels=Labels.from_dict(d["labels"]) if d.get("labels") else None,
            multivariate=d.get("multivariate"),
            multivariate_threshold=d.get("multivariate_threshold"),
        )


@dataclass(frozen=True)
class AlertEvent:
    """One alert changed state (pending, firing, resolved; or inactive: a pending streak broke)."""

    at: datetime
    name: str
    state: str
    severity: str = ""
    value: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    """The series' own labels (feature="amount"): each label set is its own alert."""

    def __post_init__(self) -> None:
        _set(self, "at", _utc(self.at, "alert time"))
        if self.state not in ALERT_STATES:
            raise InvalidArgument(
                f"alert state {self.state!r} is not one of {', '.join(ALERT_STATES)}."
            )
        _set(self, "value", _num(self.value, "alert value"))
        _set(self, "labels", {str(k): str(v) for k, v in self.labels.items()})

    @property
    def key(self) -> str:
        """The alert's name and labels, as one row of the timeline shows it."""
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.name}{{{inner}}}" if inner else self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "name": self.name,
            "state": self.state,
            "severity": self.severity,
            "value": self.value,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AlertEvent:
        return cls(
            d["at"],
            d["name"],
            d["state"],
            d.get("severity", ""),
            d.get("value"),
            d.get("labels", {}),
        )


@dataclass(frozen=True)
class ReportData:
    """What one report shows: the model's windows in time order, and its alert changes."""

    model: str
    generated_at: datetime
    windows: tuple[WindowRecord, ...] = ()
    alerts: tuple[AlertEvent, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "generated_at", _utc(self.generated_at, "generated_at"))
        _set(self, "windows", tuple(sorted(self.windows, key=lambda w: (w.end, w.start))))
        _set(self, "alerts", tuple(sorted(self.alerts, key=lambda a: a.at)))

    def to_json(self) -> str:
        """Strict JSON (no NaN): a browser's JSON.parse and jq read it too."""
        doc = {
            "model": self.model,
            "generated_at": self.generated_at.isoformat(),
            "windows": [w.to_dict() for w in self.windows],
            "alerts": [a.to_dict() for a in self.alerts],
        }
        return json.dumps(doc, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ReportData:
        try:
            d = json.loads(text)
            return cls(
                d["model"],
                d["generated_at"],
                tuple(WindowRecord.from_dict(w) for w in d.get("windows", ())),
                tuple(AlertEvent.from_dict(a) for a in d.get("alerts", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidArgument(
                f"the monitoring report data cannot be read ({type(exc).__name__}: {exc}); "
                "it must be the JSON that ReportData.to_json writes."
            ) from exc


# ---------------------------------------------------------------------------------------------
# Rendering: plain strings of HTML and SVG, every outside string through _esc
# ---------------------------------------------------------------------------------------------

WIDTH = 760
PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#b07aa1",
    "#76b7b2",
    "#edc948",
    "#9c755f",
    "#ff9da7",
    "#bab0ac",
    "#e15759",
)
STATE_COLORS = {"pending": "#edc948", "firing": "#e15759", "resolved": "#59a14f"}
FLAG = "#d62728"
# The browser may fetch nothing; only the page's own script (by hash) runs.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src '{script}'; img-src 'none'"
_TIME_STEPS = tuple(
    m * 60 for m in (1, 5, 15, 30, 60, 180, 360, 720, 1440, 2880, 10080, 20160, 43200, 131040)
)


def _esc(text: object) -> str:
    """HTML-escaped text; lone surrogates (which UTF-8 cannot hold) become '?'."""
    return escape(str(text).encode("utf-8", "replace").decode("utf-8"), quote=True)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) from at most lo to at least hi;
    just [lo, hi] where floats cannot hold round steps (spans near 1e308, or below 1e-300)."""
    raw = (hi - lo) / count
    if not (math.isfinite(raw) and raw > 1e-300):
        return [lo, hi]
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = lo / step
    if not math.isfinite(first) or not math.isfinite(hi / step):
        return [lo, hi]
    k = math.floor(first + 1e-9)
    ticks = [(k + i) * step for i in range(max(1, math.ceil(hi / step - k - 1e-9)) + 1)]
    return ticks if len(ticks) <= 2 * count + 2 and ticks[0] < ticks[-1] else [lo, hi]


def _pixel(value: float) -> float:
    """A coordinate an svg attribute can hold: rounded, and finite even for absurd data."""
    return round(max(-10 * WIDTH, min(10 * WIDTH, value)), 1) if math.isfinite(value) else 0.0


class _Frame:
    """Pixel mapping of one chart: data (x, y) to the plot area of a WIDTH x height svg."""

    def __init__(self, x: tuple[float, float], y: tuple[float, float], height: int, left: int = 60):
        self.x0, self.x1, self.y0, self.y1 = *x, *y
        self.left, self.right, self.top, self.bottom = left, WIDTH - 16, 24, height - 36
        self.height = height

    def px(self, x: float) -> float:
        return _pixel(self.left + (x - self.x0) / (self.x1 - self.x0) * (self.right - self.left))

    def py(self, y: float) -> float:
        return _pixel(
            self.bottom - (y - self.y0) / (self.y1 - self.y0 or 1.0) * (self.bottom - self.top)
        )

    def y_axis(self, ticks: Sequence[float], title: str) -> list[str]:
        out = [f'<text class="axis-title" x="4" y="{self.top - 12}">{_esc(title)}</text>']
        for t in ticks:
            y = self.py(t)
            out.append(f'<line class="grid" x1="{self.left}" x2="{self.right}" y1="{y}" y2="{y}"/>')
            out.append(
                f'<text class="tick" x="{self.left - 6}" y="{y + 4}" text-anchor="end">{t:g}</text>'
            )
        return out

    def time_axis(self) -> list[str]:
        span = self.x1 - self.x0
        years = 365 * 86400 * max(1, math.ceil(span / 7 / (365 * 86400)))
        step = next((s for s in _TIME_STEPS if span / s <= 7), years)
        fmt = "%m-%d %H:%M" if step < 86400 else "%Y-%m-%d" if step < 365 * 86400 else "%Y"
        out = [
            f'<line class="axis" x1="{self.left}" x2="{self.right}" y1="{self.bottom}" y2="{self.bottom}"/>'
        ]
        t = math.ceil(self.x0 / step) * step
        while t <= self.x1:
            x = self.px(t)
            label = datetime.fromtimestamp(t, UTC).strftime(fmt)
            anchor = "end" if x > WIDTH - 40 else "middle"  # the last label stays on the page
            out.append(
                f'<line class="axis" x1="{x}" x2="{x}" y1="{self.bottom}" y2="{self.bottom + 5}"/>'
            )
            out.append(
                f'<text class="tick" x="{x}" y="{self.bottom + 18}" text-anchor="{anchor}">{label}</text>'
            )
            t += step
        return out


def _svg(plot: str, label: str, height: int, parts: Iterable[str], extra: str = "") -> str:
    return (
        f'<svg class="plot" data-plot="{plot}" {extra}viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}" role="img" aria-label="{_esc(label)}">'
        + "".join(parts)
        + "</svg>"
    )


def _empty(plot: str, label: str, note: str = "No data yet", extra: str = "") -> str:
    text = (
        f'<text class="empty-note" x="{WIDTH / 2}" y="60" text-anchor="middle">{_esc(note)}</text>'
    )
    return _svg(plot, label, 110, [text], extra + 'data-empty="true" ')


def _legend(items: Sequence[tuple[str, str, bool]]) -> str:
    """An HTML legend: (name, colour, dashed) per series, hover-linked to data-series=i."""
    lis = "".join(
        f'<li data-series="{i}"><span class="swatch{" dashed" if dashed else ""}" '
        f'style="border-color:{color}"></span>{_esc(name)}</li>'
        for i, (name, color, dashed) in enumerate(items)
    )
    return f'<ul class="legend">{lis}</ul>' if items else ""


@dataclass
class _Series:
    """One line of a time chart: a point per window, None for a gap."""

    name: str
    points: list[tuple[float, float | None]]
    color: str
    dashed: bool = False
    flags: list[bool] = field(default_factory=list)
    """Per point: ring it (drifted, below the estimate's interval)."""

    band: list[tuple[float, float | None, float | None]] = field(default_factory=list)
    """(time, low, high) per point: a shaded interval."""


def _runs(items: Sequence[tuple[float | None, ...]]) -> list[list[tuple[float, ...]]]:
    """Consecutive stretches of points with no None in them."""
    runs: list[list[tuple[float, ...]]] = [[]]
    for item in items:
        present = tuple(v for v in item if v is not None)
        if len(present) < len(item):
            runs.append([])
        else:
            runs[-1].append(present)
    return [r for r in runs if r]


def _line_chart(
    plot: str,
    label: str,
    series: Sequence[_Series],
    domain: tuple[float, float],
    *,
    y_title: str,
    versions: Sequence[tuple[float, str]] = (),
    hlines: Sequence[tuple[float, str]] = (),
    y_range: tuple[float, float] | None = None,
    flag_note: str = "",
) -> str:
    values = [v for s in series for _, v in s.points if v is not None]
    values += [v for s in series for _, *lh in s.band for v in lh if v is not None]
    if not values:
        return _empty(plot, label)
    marks = [h for h, _ in hlines]
    lo, hi = y_range or (min([0.0, *values, *marks]), max([*values, *marks]))
    hi = hi if hi > lo else lo + (abs(lo) or 1.0)
    ticks = _nice_ticks(lo, hi)
    frame = _Frame(domain, (ticks[0], ticks[-1]), 260)
    out = frame.y_axis(ticks, y_title) + frame.time_axis()
    for t, version in versions:
        x = frame.px(t)
        out.append(
            f'<line class="version" x1="{x}" x2="{x}" y1="{frame.top}" y2="{frame.bottom}"/>'
        )
        out.append(
            f'<text class="tick" x="{x + 3}" y="{frame.top + 10}">{_esc(_short("v" + version, 16))}</text>'
        )
    for value, text in hlines:
        y = frame.py(value)
        out.append(
            f'<line class="threshold" x1="{frame.left}" x2="{frame.right}" y1="{y}" y2="{y}"><title>{_esc(text)}</title></line>'
        )
    # Past 300 windows a dot per point is clutter (and megabytes): only rings keep a tooltip.
    many = max(len(s.points) for s in series) > 300
    for i, s in enumerate(series):
        out.append(f'<g data-series="{i}">')
        for run in _runs(s.band):
            top = [(frame.px(t), frame.py(h)) for t, _, h in run]
            bottom = [(frame.px(t), frame.py(lw)) for t, lw, _ in reversed(run)]
            if len(run) == 1:  # a lone interval: a bar, since a polygon of it has no area
                top = [(top[0][0] - 3, top[0][1]), (top[0][0] + 3, top[0][1])]
                bottom = [(bottom[0][0] + 3, bottom[0][1]), (bottom[0][0] - 3, bottom[0][1])]
            d = "M" + " L".join(f"{x},{y}" for x, y in top + bottom) + " Z"
            out.append(f'<path class="band" d="{d}" fill="{s.color}"/>')
        dash = ' stroke-dasharray="6 4"' if s.dashed else ""
        for run in _runs(s.points):
            d = "M" + " L".join(f"{frame.px(t)},{frame.py(v)}" for t, v in run)
            out.append(f'<path class="line" d="{d}" stroke="{s.color}"{dash}/>')
        for j, (t, v) in enumerate(s.points):
            if v is None:
                continue
            flagged = j < len(s.flags) and s.flags[j]
            tip = f"<title>{_esc(s.name)} · {_when(t)} · {_fmt(v)}{' · ' + flag_note if flagged else ''}</title>"
            x, y = frame.px(t), frame.py(v)
            if flagged:
                out.append(
                    f'<circle class="flag" cx="{x}" cy="{y}" r="5" stroke="{FLAG}">{tip}</circle>'
                )
            elif not many:
                out.append(
                    f'<circle class="point" cx="{x}" cy="{y}" r="2.5" fill="{s.color}">{tip}</circle>'
                )
        out.append("</g>")
    legend = [(s.name, s.color, s.dashed) for s in series]
    return _svg(plot, label, frame.height, out) + _legend(legend)


def _bar_chart(plot: str, label: str, dist: Distribution, extra: str = "") -> str:
    ref_total, cur_total = sum(dist.reference), sum(dist.current)
    if not dist.reference or ref_total + cur_total == 0:
        return _empty(plot, label, extra=extra)
    ref = [c / ref_total if ref_total else 0.0 for c in dist.reference]
    cur = [c / cur_total if cur_total else 0.0 for c in dist.current]
    ticks = _nice_ticks(0.0, max([*ref, *cur]) or 1.0)
    frame = _Frame((0.0, len(ref)), (0.0, ticks[-1]), 240)
    out = frame.y_axis(ticks, "share of rows")
    out.append(
        f'<line class="axis" x1="{frame.left}" x2="{frame.right}" y1="{frame.bottom}" y2="{frame.bottom}"/>'
    )
    names = dist.bin_labels()
    every = max(1, math.ceil(len(names) / 10))
    band = frame.px(1) - frame.px(0)
    for i, name in enumerate(names):
        tip = (
            f"<title>{_esc(name)}: reference {ref[i]:.1%} ({dist.reference[i]}), "
            f"current {cur[i]:.1%} ({dist.current[i]})</title>"
        )
        for k, (share, color) in enumerate(((ref[i], PALETTE[0]), (cur[i], PALETTE[1]))):
            x, y = frame.px(i) + band * (0.1 + 0.4 * k), frame.py(share)
            out.append(
                f'<rect data-series="{k}" x="{x:.1f}" y="{y}" width="{band * 0.4:.1f}" '
                f'height="{max(frame.bottom - y, 0.5):.1f}" fill="{color}">{tip}</rect>'
            )
        if i % every == 0:
            x = frame.px(i + 0.5)
            out.append(
                f'<text class="tick" x="{x}" y="{frame.bottom + 16}" text-anchor="middle">{_esc(_short(name, 12))}<title>{_esc(name)}</title></text>'
            )
    legend = [
        (f"reference ({ref_total} rows)", PALETTE[0], False),
        (f"current ({cur_total} rows)", PALETTE[1], False),
    ]
    return _svg(plot, label, frame.height, out, extra) + _legend(legend)


def _timeline(alerts: Sequence[AlertEvent], domain: tuple[float, float]) -> str:
    """One row per alert (name and labels): pending and firing as spans, resolved as a tick."""
    label = "alert timeline"
    rows: dict[str, list[AlertEvent]] = {}
    for event in alerts:
        rows.setdefault(event.key, []).append(event)
    if not rows:
        return _empty("alerts", label, "No alert has changed state")
    frame = _Frame(domain, (0.0, float(len(rows))), 60 + 24 * len(rows), left=190)
    out = frame.time_axis()
    for r, (key, events) in enumerate(rows.items()):
        y = frame.py(r + 1) + 4
        out.append(
            f'<text class="tick" x="{frame.left - 8}" y="{y + 12}" text-anchor="end">{_esc(_short(key, 28))}<title>{_esc(key)}</title></text>'
        )
        for i, event in enumerate(events):
            start = frame.px(event.at.timestamp())
            tip = f"{key} · {event.state} from {_when(event.at.timestamp())}"
            tip += f" · value {_fmt(event.value)}" + (
                f" · {event.severity}" if event.severity else ""
            )
            if event.state in ("pending", "firing"):
                later = events[i + 1].at.timestamp() if i + 1 < len(events) else frame.x1
                width = max(frame.px(later) - start, 3.0)
                out.append(
                    f'<rect class="span" data-state="{event.state}" x="{start}" y="{y}" '
                    f'width="{width:.1f}" height="16" fill="{STATE_COLORS[event.state]}">'
                    f"<title>{_esc(tip)}</title></rect>"
                )
            else:
                color = STATE_COLORS.get(event.state, "#999")
                out.append(
                    f'<path class="mark" data-state="{event.state}" d="M{start},{y} l4,8 l-4,8 '
                    f'l-4,-8 Z" fill="{color}"><title>{_esc(tip)}</title></path>'
                )
    legend = [(name, color, False) for name, color in STATE_COLORS.items()]
    return _svg("alerts", label, frame.height, out) + _legend(legend)


def _domain(data: ReportData) -> tuple[float, float]:
    """The time span every time chart shares: all windows and alert changes."""
    times = [t for w in data.windows for t in (w.start.timestamp(), w.end.timestamp())]
    times += [a.at.timestamp() for a in data.alerts]
    if not times:
        now = data.generated_at.timestamp()
        return now - 3600, now
    lo, hi = min(times), max(times)
    pad = max((hi - lo) * 0.02, 1800.0 if hi - lo < 60 else 0.0)
    return lo - pad, hi + pad


def _rank(drift: Mapping[str, FeatureDrift]) -> list[str]:
    """Feature names, drifted first, then by effect size (largest first), then by name."""
    return sorted(drift, key=lambda f: (not drift[f].drifted, -(drift[f].effect or 0.0), f))


def _top_over_time(windows: Sequence[WindowRecord], n: int) -> list[str]:
    """The n features that drifted in the most windows (then the largest effect ever)."""
    score: dict[str, tuple[int, float]] = {}
    for w in windows:
        for name, d in w.drift.items():
            count, effect = score.get(name, (0, 0.0))
            score[name] = (count + d.drifted, max(effect, d.effect or 0.0))
    return sorted(score, key=lambda f: (-score[f][0], -score[f][1], f))[:n]


def _versions(windows: Sequence[WindowRecord]) -> list[tuple[float, str]]:
    """Where the served version changed: (start of the first window on it, version)."""
    changes, last = [], None
    for w in windows:
        if last is not None and w.model_version != last:
            changes.append((w.start.timestamp(), w.model_version))
        last = w.model_version
    return changes


def _series(
    windows: Sequence[WindowRecord],
    name: str,
    color: str,
    values: Iterable[float | None],
    **kw: Any,
) -> _Series:
    """A line with one point per window, at the window's end."""
    points = [(w.end.timestamp(), v) for w, v in zip(windows, values, strict=True)]
    return _Series(name, points, color, **kw)


def _performance_metric(windows: Sequence[WindowRecord]) -> str | None:
    names = {m for w in windows if w.labels for m in (*w.labels.realised, *w.labels.estimated)}
    return "auc_pr" if "auc_pr" in names else min(names, default=None)


def _charts(data: ReportData, top_n: int, top_distributions: int) -> dict[str, str]:
    """The HTML of every chart, by plot name."""
    ws, domain, versions = data.windows, _domain(data), _versions(data.windows)
    time_chart = functools.partial(_line_chart, domain=domain, versions=versions)
    charts = {"alerts": _timeline(data.alerts, domain)}

    lines = []
    for i, name in enumerate(_top_over_time(ws, top_n)):
        drift = [w.drift.get(name) for w in ws]
        flags = [bool(d and d.drifted) for d in drift]
        effects = [d.effect if d else None for d in drift]
        lines.append(_series(ws, name, PALETTE[i % len(PALETTE)], effects, flags=flags))
    shown = {line.name for line in lines}
    floors = {
        t for w in ws for f, d in w.drift.items() if f in shown and (t := d.threshold) is not None
    }
    # One dashed line per floor; with many different floors the lines would only be noise.
    hlines = [(t, f"effect floor {_fmt(t)}") for t in sorted(floors)] if len(floors) <= 3 else []
    charts["drift"] = time_chart(
        "drift",
        "drift effect per feature over time",
        lines,
        y_title="effect size",
        hlines=hlines,
        flag_note="drifted",
    )

    latest = ws[-1] if ws else None
    figures = []
    if latest:
        ranked = _rank(latest.drift) + sorted(set(latest.distributions) - set(latest.drift))
        for name in [f for f in ranked if f in latest.distributions][:top_distributions]:
            label = f"{name}: reference against latest window"
            chart = _bar_chart(
                "distribution", label, latest.distributions[name], f'data-feature="{_esc(name)}" '
            )
            figures.append(
                f"<figure>{chart}<figcaption>{_caption(name, latest.drift.get(name))}</figcaption></figure>"
            )
    charts["distribution"] = "".join(figures) or _empty("distribution", "feature distributions")
    label = "score distribution, reference against latest window"
    charts["score"] = (
        _bar_chart("score", label, latest.score)
        if latest and latest.score
        else _empty("score", label)
    )

    percentiles = sorted({p for w in ws for p in w.latency_ms}, key=lambda p: (len(p), p))
    latency = [
        _series(ws, p, PALETTE[i % len(PALETTE)], [w.latency_ms.get(p) for w in ws])
        for i, p in enumerate(percentiles)
    ]
    charts["latency"] = time_chart(
        "latency", "latency percentiles over time", latency, y_title="milliseconds"
    )

    labels = [w.labels or Labels(None) for w in ws]
    coverage = _series(ws, "label coverage", PALETTE[2], [lb.coverage for lb in labels])
    charts["coverage"] = time_chart(
        "coverage",
        "label coverage over time",
        [coverage],
        y_title="share labelled",
        y_range=(0.0, 1.0),
    )

    metric = _performance_metric(ws)
    if metric is None:
        charts["performance"] = _empty("performance", "performance", "No labels or estimates yet")
    else:
        estimates = [lb.estimated.get(metric) or Estimate(None) for lb in labels]
        realised = [lb.realised.get(metric) for lb in labels]
        below = [
            r is not None and e.low is not None and r < e.low
            for r, e in zip(realised, estimates, strict=True)
        ]
        est = _series(
            ws, f"estimated {metric}", PALETTE[0], [e.value for e in estimates], dashed=True
        )
        est.band = [(t, e.low, e.high) for (t, _), e in zip(est.points, estimates, strict=True)]
        real = _series(ws, f"realised {metric}", PALETTE[1], realised, flags=below)
        charts["performance"] = time_chart(
            "performance",
            f"realised against estimated {metric}",
            [est, real],
            y_title=metric,
            flag_note="below the estimate's interval",
        )

    stat = _series(ws, "statistic", PALETTE[3], [w.multivariate for w in ws])
    limit = _series(ws, "threshold", "#888888", [w.multivariate_threshold for w in ws], dashed=True)
    charts["multivariate"] = time_chart(
        "multivariate", "multivariate drift statistic over time", [stat, limit], y_title="statistic"
    )
    return charts


def _caption(name: str, drift: FeatureDrift | None) -> str:
    text = f"<b>{_esc(name)}</b>"
    if drift:
        floor = f" (floor {_fmt(drift.threshold)})" if drift.threshold is not None else ""
        text += _esc(f" · {drift.test or 'effect'} {_fmt(drift.effect)}{floor}")
        text += _esc(f" · p = {_fmt(drift.p_value)}") + (" · drifted" if drift.drifted else "")
    return text


def _summary(data: ReportData, top_n: int) -> str:
    ws = data.windows
    if not ws:
        return (
            '<p class="note">No data yet: the monitor has not processed a window for this '
            "model. Run <code>backline monitor --once</code> after the server has logged "
            "predictions.</p>"
        )
    counts: dict[str, int] = {}
    for w in ws:
        counts[w.model_version] = counts.get(w.model_version, 0) + 1
    versions = ", ".join(f"{_esc(v)} ({n} windows)" for v, n in counts.items())
    latest_state: dict[str, AlertEvent] = {a.key: a for a in data.alerts}
    firing = [a for a in latest_state.values() if a.state == "firing"]
    firing_html = (
        ", ".join(
            f'<span class="firing">{_esc(a.key)}</span>'
            + (f" ({_esc(a.severity)})" if a.severity else "")
            for a in firing
        )
        or "none"
    )
    latest = ws[-1]
    top = [f for f in _rank(latest.drift) if latest.drift[f].drifted][:top_n]
    top_html = ", ".join(f"{_esc(f)} ({_fmt(latest.drift[f].effect)})" for f in top) or "none"
    rows = [
        ("Model", _esc(data.model)),
        ("Versions served", versions),
        (
            "Windows",
            f"{len(ws)} from {_when(ws[0].start.timestamp())} to {_when(latest.end.timestamp())}, {sum(w.rows for w in ws):,} predictions",
        ),
        ("Firing now", firing_html),
        ("Drifting in the latest window", top_html),
    ]
    if latest.labels and latest.labels.coverage is not None:
        rows.append(("Label coverage (latest window)", f"{latest.labels.coverage:.1%}"))
    if latest.multivariate is not None:
        threshold = latest.multivariate_threshold
        over = threshold is not None and latest.multivariate > threshold
        rows.append(
            (
                "Multivariate statistic (latest)",
                f"{_fmt(latest.multivariate)} (threshold {_fmt(threshold)}){' · over' if over else ''}",
            )
        )
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


_SECTIONS = (
    (
        "drift",
        "Drift per feature over time",
        "Effect size per window for the top features; a ring marks a window where the feature drifted, dashed lines the effect floor, dotted verticals a new model version.",
    ),
    (
        "distribution",
        "Reference against current: top drifting features",
        "Share of rows per bin in the reference profile and in the latest window.",
    ),
    (
        "score",
        "Score distribution",
        "The model's scores in the reference profile and in the latest window.",
    ),
    ("latency", "Latency percentiles", "Serving latency per window."),
    ("coverage", "Label coverage", "Share of each window's predictions whose label has arrived."),
    (
        "performance",
        "Realised against estimated performance",
        "The estimate (dashed, with its interval shaded) is there before labels arrive; a ring marks a realised value below the interval: concept drift.",
    ),
    (
        "alerts",
        "Alert timeline",
        "Pending (amber) and firing (red) spans; a green diamond marks a resolution.",
    ),
    (
        "multivariate",
        "Multivariate drift",
        "A joint-shift statistic that catches changes per-feature tests miss.",
    ),
)

_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:820px;color:#222;padding:0 12px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 2px}
.meta,.hint,figcaption{color:#666;font-size:13px}.note{background:#fff6d5;padding:8px 12px}
dl{display:grid;grid-template-columns:max-content auto;gap:4px 16px}dt{font-weight:600}dd{margin:0}
.firing{color:#c62828;font-weight:600}figure{margin:8px 0 18px}
svg.plot{display:block;max-width:100%;height:auto}
.grid{stroke:#e5e5e5}.axis{stroke:#888}.tick{font-size:11px;fill:#555}
.axis-title{font-size:11px;fill:#555}.empty-note{font-size:15px;fill:#888}
.line{fill:none;stroke-width:2}.band{opacity:.18}.flag{fill:none;stroke-width:2}
.threshold{stroke:#888;stroke-dasharray:4 3}.version{stroke:#aaa;stroke-dasharray:1 3}
.legend{list-style:none;padding:0;margin:4px 0 0 60px;display:flex;flex-wrap:wrap;gap:4px 16px}
.legend li{cursor:default;font-size:12px}.swatch{display:inline-block;width:18px;border-top:3px solid;margin:0 6px 3px 0}
.swatch.dashed{border-top-style:dashed}.dim{opacity:.12}
"""

# Hovering a legend entry fades the figure's other series. Reads no data and is not needed
# to see the charts.
_SCRIPT = """
document.querySelectorAll("figure").forEach(function (fig) {
  fig.querySelectorAll(".legend li[data-series]").forEach(function (item) {
    function mark(on) {
      fig.querySelectorAll("svg [data-series]").forEach(function (el) {
        var other = el.getAttribute("data-series") !== item.getAttribute("data-series");
        el.classList.toggle("dim", on && other);
      });
    }
    item.addEventListener("mouseenter", function () { mark(true); });
    item.addEventListener("mouseleave", function () { mark(false); });
  });
});
"""


def render_report(data: ReportData, *, top_n: int = 8, top_distributions: int = 4) -> str:
    """The whole page as one HTML string; loads nothing from anywhere.

    `top_n` features get a line in the drift chart (those drifted in most windows) and a place
    in the summary; `top_distributions` of the latest window's most drifting features get
    their reference-against-current bars."""
    if top_n < 1 or top_distributions < 1:
        raise InvalidArgument(
            f"top_n and top_distributions must be at least 1, not {top_n} and {top_distributions}."
        )
    charts = _charts(data, top_n, top_distributions)
    body = []
    for plot, title, hint in _SECTIONS:
        chart = charts[plot]
        if plot != "distribution":  # those are figures already, one per feature
            chart = f"<figure>{chart}</figure>"
        body.append(
            f'<section id="{plot}"><h2>{title}</h2><p class="hint">{hint}</p>{chart}</section>'
        )
    digest = base64.b64encode(hashlib.sha256(_SCRIPT.encode()).digest()).decode()
    csp = _CSP.format(script=f"sha256-{digest}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Monitoring: {_esc(data.model)}</title><style>{_STYLE}</style></head>
<body><header><h1>Monitoring: {_esc(data.model)}</h1>
<p class="meta">Generated {_when(data.generated_at.timestamp())} by backline. All times UTC.</p></header>
<section id="summary">{_summary(data, top_n)}</section>
{"".join(body)}
<script>{_SCRIPT}</script></body></html>
"""


def write_report(data: ReportData, path: str | Path, **options: int) -> Path:
    """Render the report and replace `path` with it atomically; returns the path written."""
    target = Path(path)
    write_text_atomic(target, render_report(data, **options))
    return target
