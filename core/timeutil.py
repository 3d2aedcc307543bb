"""Durations ("30d", "20m", "1h") and instants (ISO dates, or a duration from now) as milliseconds."""
from __future__ import annotations

import re
from datetime import datetime, timezone

_UNITS_S = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "mo": 30 * 86400}
_DURATION = re.compile(r"^\s*(\d+)\s*(s|min|mo|m|h|d|w)\s*$")


def parse_duration_s(text: str) -> int:
    """``"30s"``, ``"20m"``/``"20min"``, ``"1h"``, ``"30d"``, ``"2w"``, ``"1mo"`` (30 days) in seconds."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError(f"duration {text!r}: expected a number and a unit, e.g. 30s, 20m, 1h, 30d, 2w, 1mo")
    return int(m.group(1)) * _UNITS_S[m.group(2)]


def parse_instant_ms(text: str, now_ms: int) -> int:
    """An ISO date or datetime (UTC unless stated), or a duration from now ("2h", "7d")."""
    if _DURATION.match(str(text)):
        return now_ms + parse_duration_s(text) * 1000
    try:
        dt = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"time {text!r}: expected an ISO date/time (2026-12-31, 2026-12-31T18:00Z) "
                         "or a duration from now (2h, 7d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def iso_ms(ms: int) -> str | None:
    """ISO 8601 UTC for an epoch-ms instant; None for 0 (never)."""
    if not ms:
        return None
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")
