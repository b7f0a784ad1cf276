"""Time helpers. Inside the core every instant is an ``int`` of UTC epoch milliseconds;
timezone-aware datetimes exist only at the edges (parsing input, printing output)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

MS_PER_SECOND = 1_000
MS_PER_MINUTE = 60 * MS_PER_SECOND
MS_PER_HOUR = 60 * MS_PER_MINUTE
MS_PER_DAY = 24 * MS_PER_HOUR
MS_PER_YEAR = 365 * MS_PER_DAY  # annualisation uses calendar time; crypto trades every day

_UNITS = {"s": MS_PER_SECOND, "m": MS_PER_MINUTE, "h": MS_PER_HOUR, "d": MS_PER_DAY, "w": 7 * MS_PER_DAY}
_TF = re.compile(r"^(\d+)([smhdw])$")


def parse_timeframe(text: str) -> int:
    """``"1h"`` -> 3_600_000. Accepts s, m, h, d, w units (ccxt style)."""
    match = _TF.match(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"invalid timeframe {text!r}: expected a number and a unit, e.g. 1m, 15m, 1h, 4h, 1d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_timeframe(ms: int) -> str:
    """3_600_000 -> ``"1h"``; the largest unit that divides the length exactly."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def to_ms(dt: datetime) -> int:
    """A timezone-aware datetime to epoch ms. Naive datetimes are refused: they hide a guess."""
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt.isoformat()} has no timezone; attach one (UTC?)")
    return int(round(dt.timestamp() * 1000))


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def iso(ms: int) -> str:
    """Epoch ms to ``2021-06-10T00:00:00Z`` (seconds precision, for people)."""
    return from_ms(ms).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_instant(text: str) -> int:
    """Parse a user-given instant (``2021-01-01``, ``2021-01-01T12:00``, ``...Z`` or with an offset).
    Without an offset it is read as UTC."""
    text = text.strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"invalid date {text!r}: expected ISO format such as 2021-01-31 or 2021-01-31T08:00") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return to_ms(dt)
