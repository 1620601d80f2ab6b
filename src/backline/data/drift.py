"""Drift specifications for the synthetic transaction generator.

A drift spec tells `backline.data.generator` to change one distribution of the generated data
from a given moment on, so that monitoring and retraining can be exercised against a known,
controlled change. The textual grammar (the `--drift` option of the CLI) is

    DATE:KIND=VALUE[;[DATE:]KIND=VALUE...]

where DATE is `YYYY-MM-DD` (midnight UTC) or an ISO-8601 datetime with a time zone
(`2026-01-15T12:00:00Z`, `2026-01-15T12:00:00+01:00`). A later part may start with its own
DATE; without one it reuses the previous part's DATE. KIND=VALUE is one of

    amount_scale=1.6                 every amount from DATE on is multiplied by 1.6
    country_mix=BR:0.3               from DATE on, a share 0.3 of transactions happen in BR
    channel_mix=online:0.5           from DATE on, a share 0.5 of transactions use channel online
    new_category=crypto:0.05         a fraction 0.05 of transactions from DATE on go to the new
                                     merchant category `crypto`, at new merchants (m_9xxxxx)
    new_fraud=account_takeover:0.3   concept drift: a fraction 0.3 of the legitimate transactions
                                     in the pattern's segment become fraud from DATE on

`@path.json` instead of a spec reads a JSON list of objects with the keys `start`, `kind`,
`target` and `value` (the same meaning as above; `target` is null for amount_scale).
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backline.core.errors import DriftSpecError
from backline.core.suggest import did_you_mean

DRIFT_KINDS: tuple[str, ...] = (
    "amount_scale",
    "country_mix",
    "channel_mix",
    "new_category",
    "new_fraud",
)

#: Segment (column -> value) in which each `new_fraud` pattern turns transactions into fraud.
NEW_FRAUD_SEGMENTS: dict[str, dict[str, str]] = {
    "account_takeover": {"channel": "online", "merchant_category": "digital_goods"},
}

_EXAMPLES: dict[str, str] = {
    "amount_scale": "2026-01-15:amount_scale=1.6",
    "country_mix": "2026-01-15:country_mix=BR:0.3",
    "channel_mix": "2026-01-15:channel_mix=online:0.5",
    "new_category": "2026-01-15:new_category=crypto:0.05",
    "new_fraud": "2026-01-15:new_fraud=account_takeover:0.3",
}


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_CATEGORY_NAME = re.compile(r"[a-z][a-z_]{0,31}")


@dataclass(frozen=True)
class DriftChange:
    """One change of the generated data that begins at `start` (normalised to UTC).

    `kind` is one of DRIFT_KINDS; `target` names the country code, channel, new category or
    fraud pattern the change is about (None for amount_scale); `value` is the scale factor
    (amount_scale) or the fraction/share (all other kinds).
    """

    start: datetime
    kind: str
    target: str | None
    value: float

    def __post_init__(self) -> None:
        if not isinstance(self.start, datetime):
            raise DriftSpecError(
                f"drift start {self.start!r} is not a datetime; "
                "pass a tz-aware datetime such as datetime(2026, 1, 15, tzinfo=UTC)."
            )
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise DriftSpecError(
                f"drift start {self.start.isoformat()!r} has no time zone; "
                "use a tz-aware datetime, e.g. 2026-01-15T00:00:00Z."
            )
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        if self.kind not in DRIFT_KINDS:
            raise DriftSpecError(
                f"unknown drift kind {self.kind!r}; use one of {', '.join(DRIFT_KINDS)}, "
                f"e.g. {_EXAMPLES['amount_scale']!r}.{did_you_mean(self.kind, DRIFT_KINDS)}"
            )
        value = self.value
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise DriftSpecError(
                f"{self.kind} value {value!r} is not a number; write e.g. {_EXAMPLES[self.kind]!r}."
            )
        object.__setattr__(self, "value", float(value))
        self._check_target_and_value()

    def _check_target_and_value(self) -> None:
        # Imported here: the generator module imports this one for DriftChange.
        from backline.data.generator import CHANNELS, COUNTRIES, MERCHANT_CATEGORIES

        kind, target, value = self.kind, self.target, self.value
        example = _EXAMPLES[kind]
        if kind == "amount_scale":
            if target is not None:
                raise DriftSpecError(
                    f"amount_scale takes no target, got {target!r}; write e.g. {example!r}."
                )
            if not (math.isfinite(value) and value > 0):
                raise DriftSpecError(
                    f"amount_scale factor {value!r} must be a positive number; "
                    f"write e.g. {example!r}."
                )
            return
        allowed: tuple[str, ...] | None = {
            "country_mix": COUNTRIES,
            "channel_mix": CHANNELS,
            "new_fraud": tuple(NEW_FRAUD_SEGMENTS),
        }.get(kind)
        if not isinstance(target, str) or not target:
            raise DriftSpecError(f"{kind} needs a target, got {target!r}; write e.g. {example!r}.")
        if allowed is not None and target not in allowed:
            raise DriftSpecError(
                f"{kind} target {target!r} is not known; use one of {', '.join(allowed)}, "
                f"e.g. {example!r}.{did_you_mean(target, allowed)}"
            )
        if kind == "new_category":
            if target in MERCHANT_CATEGORIES:
                raise DriftSpecError(
                    f"new_category {target!r} already exists; use a name not in "
                    f"{', '.join(MERCHANT_CATEGORIES)}, e.g. {example!r}."
                )
            if not _CATEGORY_NAME.fullmatch(target):
                raise DriftSpecError(
                    f"new_category name {target!r} must be lowercase letters and '_' "
                    f"(at most 32, starting with a letter); write e.g. {example!r}."
                )
        low_ok = kind in ("country_mix", "channel_mix")
        if not (math.isfinite(value) and (value >= 0.0 if low_ok else value > 0.0) and value <= 1):
            bound = "between 0 and 1" if low_ok else "above 0 and at most 1"
            raise DriftSpecError(
                f"{kind} fraction {value!r} for {target!r} must be {bound}; write e.g. {example!r}."
            )


def _parse_start(text: str, context: str) -> datetime:
    text = text.strip()
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise DriftSpecError(
            f"drift spec {context!r}: date {text!r} is not YYYY-MM-DD or an ISO datetime; "
            f"write e.g. {_EXAMPLES['amount_scale']!r}."
        ) from None
    if _DATE_ONLY.fullmatch(text):
        return parsed.replace(tzinfo=UTC)
    if parsed.tzinfo is None:
        raise DriftSpecError(
            f"drift spec {context!r}: datetime {text!r} has no time zone; "
            f"append 'Z' or an offset, e.g. '{text}Z'."
        )
    return parsed.astimezone(UTC)


def _parse_number(text: str, kind: str, context: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise DriftSpecError(
            f"drift spec {context!r}: {kind} value {text!r} is not a number; "
            f"write e.g. {_EXAMPLES[kind]!r}."
        ) from None


def _parse_part(part: str, start: datetime | None) -> DriftChange:
    head, sep, value_text = part.partition("=")
    if not sep:
        raise DriftSpecError(
            f"drift spec {part!r} has no '=': write DATE:KIND=VALUE, "
            f"e.g. {_EXAMPLES['amount_scale']!r}."
        )
    if ":" in head:
        date_text, kind = head.rsplit(":", 1)
        start = _parse_start(date_text, part)
    else:
        kind = head
    kind = kind.strip()
    if start is None:
        raise DriftSpecError(
            f"drift spec {part!r} has no date: start it with YYYY-MM-DD:, "
            f"e.g. {_EXAMPLES['amount_scale']!r}."
        )
    if kind not in DRIFT_KINDS:
        raise DriftSpecError(
            f"drift spec {part!r}: unknown kind {kind!r}; use one of {', '.join(DRIFT_KINDS)}, "
            f"e.g. {_EXAMPLES['amount_scale']!r}.{did_you_mean(kind, DRIFT_KINDS)}"
        )
    value_text = value_text.strip()
    target: str | None = None
    if kind != "amount_scale":
        target, colon, value_text = value_text.rpartition(":")
        if not colon or not target.strip():
            raise DriftSpecError(
                f"drift spec {part!r}: {kind} needs TARGET:FRACTION, got {value_text!r}; "
                f"write e.g. {_EXAMPLES[kind]!r}."
            )
        target = target.strip()
    value = _parse_number(value_text, kind, part)
    try:
        return DriftChange(start=start, kind=kind, target=target, value=value)
    except DriftSpecError as err:
        raise DriftSpecError(f"drift spec {part!r}: {err}") from None


def _load_json(path_text: str) -> tuple[DriftChange, ...]:
    path = Path(path_text).expanduser()
    example = '[{"start": "2026-01-15", "kind": "amount_scale", "target": null, "value": 1.6}]'
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise DriftSpecError(
            f"drift file {str(path)!r} cannot be read ({err.strerror or err}); "
            "check the path after '@'."
        ) from None
    except json.JSONDecodeError as err:
        raise DriftSpecError(
            f"drift file {str(path)!r} is not valid JSON (line {err.lineno}: {err.msg}); "
            f"write a list like {example}."
        ) from None
    if not isinstance(raw, list):
        raise DriftSpecError(
            f"drift file {str(path)!r} holds a {type(raw).__name__}, not a list; "
            f"write a list like {example}."
        )
    changes = []
    for i, item in enumerate(raw):
        where = f"drift file {str(path)!r} item {i}"
        if not isinstance(item, dict) or not {"start", "kind", "value"} <= item.keys():
            raise DriftSpecError(
                f"{where} is {json.dumps(item)[:80]}, not an object with start, kind, target "
                f"and value; write items like {example[1:-1]}."
            )
        unknown = sorted(set(item) - {"start", "kind", "target", "value"})
        if unknown:
            raise DriftSpecError(
                f"{where} has unknown key(s) {', '.join(unknown)}; "
                "allowed keys: start, kind, target, value."
            )
        if not isinstance(item["start"], str):
            raise DriftSpecError(
                f"{where}: start {item['start']!r} must be a string like '2026-01-15'."
            )
        start = _parse_start(item["start"], where)
        try:
            changes.append(
                DriftChange(
                    start=start, kind=item["kind"], target=item.get("target"), value=item["value"]
                )
            )
        except DriftSpecError as err:
            raise DriftSpecError(f"{where}: {err}") from None
    return tuple(changes)


def parse_drift(spec: str) -> tuple[DriftChange, ...]:
    """Parse a drift spec (see the module docstring) into DriftChange values, in spec order.

    Raises DriftSpecError naming the bad part and showing a correct example.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DriftSpecError(
            f"drift spec {spec!r} is empty; write DATE:KIND=VALUE, "
            f"e.g. {_EXAMPLES['amount_scale']!r}."
        )
    spec = spec.strip()
    if spec.startswith("@"):
        return _load_json(spec[1:].strip())
    changes: list[DriftChange] = []
    start: datetime | None = None
    for raw_part in spec.split(";"):
        part = raw_part.strip()
        if not part:
            continue
        change = _parse_part(part, start)
        start = change.start
        changes.append(change)
    if not changes:
        raise DriftSpecError(
            f"drift spec {spec!r} has no change; write DATE:KIND=VALUE, "
            f"e.g. {_EXAMPLES['amount_scale']!r}."
        )
    return tuple(changes)
