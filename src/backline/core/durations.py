"""Durations and UTC timestamps as users write them in backline.toml and on the command line.

>>> parse_duration("36h")
datetime.timedelta(days=1, seconds=43200)
>>> parse_utc("2026-03-01").isoformat()
'2026-03-01T00:00:00+00:00'
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from backline.core.errors import InvalidArgument

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")


def parse_duration(text: str, *, what: str = "duration") -> timedelta:
    """'90s', '10m', '1h', '7d' or '2w' as a timedelta."""
    match = _DURATION.match(str(text))
    if not match:
        raise InvalidArgument(
            f"{what} {text!r} is not a duration. Write a number and a unit s, m, h, d or w, "
            "for example '10m' or '7d'."
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling of a duration: 600 s -> '10m'."""
    seconds = delta.total_seconds()
    for unit in ("d", "h", "m"):
        size = _UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def parse_utc(text: str | date | datetime, *, what: str = "time") -> datetime:
    """A date ('2026-03-01', midnight UTC) or an ISO datetime that carries its offset.

    A datetime without an offset is refused: backline never guesses a timezone.
    """
    if isinstance(text, datetime):
        value = text
    elif isinstance(text, date):
        return datetime(text.year, text.month, text.day, tzinfo=UTC)
    else:
        raw = str(text).strip()
        try:
            if len(raw) == 10:
                d = date.fromisoformat(raw)
                return datetime(d.year, d.month, d.day, tzinfo=UTC)
            value = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidArgument(
                f"{what} {raw!r} is not a date or ISO-8601 time. "
                "Write it as 2026-03-01 or 2026-03-01T12:00:00+00:00."
            ) from None
    if value.tzinfo is None:
        raise InvalidArgument(
            f"{what} {text!s} has no timezone. Add an offset such as +00:00 or Z "
            "(backline keeps every timestamp in UTC)."
        )
    return value.astimezone(UTC)
