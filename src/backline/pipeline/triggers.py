"""Runs the monitor asks for: new lines of `retrain-requests.jsonl`, each at most one run.

    inbox = AlertInbox(Path(".backline/monitor"), Path(".backline/scheduler/alerts.json"),
                       cooldown=timedelta(hours=6), clock=clock)
    polled = inbox.poll()
    polled.triggered       # {model: [requests]}: start one run per model
    polled.suppressed      # requests inside the cooldown: consumed, no run
    polled.malformed       # lines that did not parse: skipped, reported, never fatal

The monitor appends `{"model", "at", "alerts"}` lines to
`.backline/monitor/<model>/retrain-requests.jsonl` (backline.pipeline.monitor). The inbox keeps
a byte offset per file in its state file, so a restarted scheduler reads only what is new,
and a line still being written (no newline yet) waits for the next poll. Offsets are saved
before `poll` returns: a request triggers at most one run, and if the scheduler dies before
starting it the request is lost, not repeated (the monitor asks again after its own cooldown
while the alert keeps firing). Between two alert-triggered runs of one model at least
`cooldown` passes; requests in one poll for one model make one run.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backline.core.errors import InvalidArgument
from backline.core.files import write_text_atomic
from backline.pipeline.schedule import Clock

REQUESTS_FILE = "retrain-requests.jsonl"


@dataclass(frozen=True)
class RetrainRequest:
    model: str
    at: datetime
    """When the monitor asked (its clock, UTC)."""
    alerts: tuple[str, ...]
    source: str
    """'<file>:<byte offset>' of the line the request came from."""


@dataclass(frozen=True)
class Malformed:
    source: str
    reason: str


@dataclass(frozen=True)
class Polled:
    triggered: dict[str, tuple[RetrainRequest, ...]]
    """Model -> the requests its one run answers."""
    suppressed: tuple[RetrainRequest, ...]
    """Requests that came inside the model's cooldown (consumed, no run)."""
    malformed: tuple[Malformed, ...]


def parse_request(line: str, source: str) -> RetrainRequest | Malformed:
    """One JSON line of the requests file, or why it is not a request."""
    try:
        obj: Any = json.loads(line)
        model, at, alerts = obj["model"], obj["at"], obj.get("alerts", [])
        if not isinstance(model, str) or not model:
            raise ValueError(f"model {model!r} is not a name")
        when = datetime.fromisoformat(str(at))
        if when.tzinfo is None:
            raise ValueError(f"at {at!r} has no timezone")
        if not isinstance(alerts, list):
            raise ValueError(f"alerts {alerts!r} is not a list")
    except (ValueError, KeyError, TypeError) as exc:
        return Malformed(source, f"not a retrain request ({exc!r}): {line[:120]!r}")
    return RetrainRequest(model, when.astimezone(UTC), tuple(map(str, alerts)), source)


@dataclass
class Cooldown:
    """At least `period` between alert-triggered runs of one model (pure: `now` is passed)."""

    period: timedelta
    last_run: dict[str, datetime] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.period < timedelta(0):
            raise InvalidArgument(f"alert-run cooldown {self.period} must not be negative.")

    def allow(self, model: str, now: datetime) -> bool:
        """Whether a run of `model` may start at `now`; if so it is recorded as started."""
        last = self.last_run.get(model)
        if last is not None and now < last + self.period:
            return False
        self.last_run[model] = now
        return True


def decide_alert_runs(
    requests: Sequence[RetrainRequest], cooldown: Cooldown, now: datetime
) -> Polled:
    """Group `requests` by model and let each model through the cooldown at most once."""
    by_model: dict[str, list[RetrainRequest]] = {}
    for r in requests:
        by_model.setdefault(r.model, []).append(r)
    triggered: dict[str, tuple[RetrainRequest, ...]] = {}
    suppressed: list[RetrainRequest] = []
    for model, asked in by_model.items():
        if cooldown.allow(model, now):
            triggered[model] = tuple(asked)
        else:
            suppressed += asked
    return Polled(triggered, tuple(suppressed), ())


class AlertInbox:
    """Reads new retrain requests under `root` (`<root>/<model>/retrain-requests.jsonl`)."""

    def __init__(self, root: Path, state_path: Path, *, cooldown: timedelta, clock: Clock):
        self.root, self.state_path, self.clock = Path(root), Path(state_path), clock
        self.notes: list[str] = []
        """What went wrong with the state file (reported, never fatal)."""
        state = self._load()
        self.offsets: dict[str, int] = {k: int(v) for k, v in state.get("offsets", {}).items()}
        last = {k: datetime.fromisoformat(v) for k, v in state.get("last_run", {}).items()}
        self.cooldown = Cooldown(cooldown, last)

    def _load(self) -> Mapping[str, Any]:
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            return state if isinstance(state, dict) else {}
        except FileNotFoundError:
            return {}
        except ValueError:
            # a damaged offset file: starting over re-reads old requests, and the cooldown
            # (also lost) would let each model run once; say so rather than stop scheduling
            self.notes.append(f"{self.state_path} did not parse; read every request file anew")
            return {}

    def _read_new(self) -> tuple[list[RetrainRequest], list[Malformed]]:
        requests: list[RetrainRequest] = []
        malformed: list[Malformed] = []
        for path in sorted(self.root.glob(f"*/{REQUESTS_FILE}")):
            key = str(path)
            offset = self.offsets.get(key, 0)
            with path.open("rb") as f:
                size = f.seek(0, 2)
                if size < offset:  # the file was replaced by a shorter one: read it all
                    malformed.append(Malformed(key, f"file shrank below offset {offset}"))
                    offset = 0
                f.seek(offset)
                data = f.read()
            complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
            pos = offset
            for raw in complete.splitlines(keepends=True):
                where = f"{key}:{pos}"  # the byte offset where the line starts
                pos += len(raw)
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    malformed.append(Malformed(where, "not UTF-8"))
                    continue
                parsed = parse_request(text, where)
                if isinstance(parsed, RetrainRequest):
                    requests.append(parsed)
                else:
                    malformed.append(parsed)
            self.offsets[key] = offset + len(complete)
        return requests, malformed

    def poll(self) -> Polled:
        """Read what is new, decide which models run, save offsets and cooldowns, return."""
        requests, malformed = self._read_new()
        decided = decide_alert_runs(requests, self.cooldown, self.clock().astimezone(UTC))
        state = {
            "offsets": self.offsets,
            "last_run": {k: v.isoformat() for k, v in self.cooldown.last_run.items()},
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.state_path, json.dumps(state, sort_keys=True))
        return Polled(decided.triggered, decided.suppressed, tuple(malformed))
