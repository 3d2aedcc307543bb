"""Instants as int milliseconds since the Unix epoch, parsed from and printed as ISO UTC.

No float ever touches a timestamp: ``datetime.timestamp()`` returns a float, so
milliseconds are computed by integer division of a ``timedelta``.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
DAY_MS = 86_400_000


def parse_instant_ms(text: str) -> int:
    """``2025-09-29``, ``2025-09-29T12:00:00Z`` or any ISO offset -> UTC epoch ms.

    A date alone means midnight UTC; a time without an offset is read as UTC.
    """
    s = text.strip()
    if len(s) == 10:
        s += "T00:00:00+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError as exc:
        raise ValueError(f"not an ISO date or instant: {text!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _MS


def format_instant(ts_ms: int) -> str:
    """Epoch ms -> ``YYYY-MM-DDTHH:MM:SSZ`` (with ``.mmm`` only when needed)."""
    dt = _EPOCH + timedelta(milliseconds=ts_ms)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    frac = ts_ms % 1000
    return f"{base}.{frac:03d}Z" if frac else f"{base}Z"


def version_stamp(ts_ms: int) -> str:
    """The instant part of a price version id: a bare date at midnight UTC, else the full instant."""
    if ts_ms % DAY_MS == 0:
        return format_instant(ts_ms)[:10]
    return format_instant(ts_ms)
