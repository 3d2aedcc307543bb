"""Budget windows: hour, day, ISO week, calendar month.

Boundaries are computed in the organization's time zone (UTC unless an org
says otherwise) and expressed as epoch milliseconds, so a window is a plain
``[start_ms, end_ms)`` interval everywhere else in the code.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

HOUR, DAY, WEEK, MONTH = "hour", "day", "week", "month"
WINDOWS = (HOUR, DAY, WEEK, MONTH)


@lru_cache(maxsize=256)
def zone(tz: str) -> ZoneInfo | timezone:
    """The zone of a name ``check_zone`` accepted. Its rules are read from the system's tzdata
    once per process (a few KB; ``ZoneInfo`` keeps them too), the first time a window needs them."""
    return timezone.utc if tz in ("", "UTC") else ZoneInfo(tz)


# Files in the tzdata tree that are not zones users name (available_timezones leaves them out too).
_NOT_ZONES = frozenset({"", "posixrules", "Factory", "localtime"})


@lru_cache(maxsize=1024)
def _is_zone(tz: str) -> bool:
    # Loading the one zone asked for, not listing the whole tzdata tree (available_timezones walks
    # hundreds of files): this runs in an admin request, on the serving loop.
    if tz in _NOT_ZONES:
        return False
    try:
        zone(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def check_zone(tz: object) -> str:
    """An IANA time zone name (``Europe/Paris``, ``America/New_York``, ``UTC``), or ``ValueError``:
    an org's day and month windows start at its local midnight, so a typo must not pass for UTC."""
    if not isinstance(tz, str) or len(tz) > 64 or not _is_zone(tz):
        raise ValueError(f"time zone {str(tz)[:60]!r}: expected an IANA name such as Europe/Paris, "
                         "America/New_York or UTC")
    return tz


def org_zones(file_config: Mapping[str, Any], org_records: Iterable[Mapping[str, Any] | None] = ()) -> dict[str, str]:
    """Each org's time zone: its org record's ``timezone`` (admin API, ``llmgw apply``), else the
    config file's ``orgs.NAME.timezone``; an org named in neither is UTC."""
    orgs = file_config.get("orgs") or {}
    out = {name: str(o.get("timezone", "UTC")) for name, o in orgs.items() if isinstance(o, dict)}
    for data in org_records:                  # the data of ``org:NAME`` config records
        if data and data.get("timezone"):
            out[str(data["name"])] = str(data["timezone"])
    return out


def _local(ts_ms: int, tz: str) -> datetime:
    return datetime.fromtimestamp(ts_ms / 1000, zone(tz))


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _floor(window: str, local: datetime) -> datetime:
    if window == HOUR:
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == DAY:
        return day
    if window == WEEK:
        return day - timedelta(days=day.weekday())   # ISO week starts on Monday
    if window == MONTH:
        return day.replace(day=1)
    raise ValueError(f"unknown window {window!r}; expected one of {', '.join(WINDOWS)}")


def _next(window: str, start: datetime) -> datetime:
    if window == HOUR:
        return start + timedelta(hours=1)
    if window == DAY:
        return start + timedelta(days=1)
    if window == WEEK:
        return start + timedelta(days=7)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _reattach(local_naive_like: datetime, tz: str) -> datetime:
    """Re-resolve a wall-clock time in its zone after date arithmetic (DST-safe)."""
    return local_naive_like.replace(tzinfo=None).replace(tzinfo=zone(tz))


def window_bounds(window: str, ts_ms: int, tz: str = "UTC") -> tuple[int, int]:
    """``[start_ms, end_ms)`` of the window that contains ``ts_ms``.

    Hours are real elapsed hours (floored in UTC offsets of the zone); days,
    weeks and months follow the zone's wall clock, so a DST day is 23 or 25 h.
    Every boundary falls on a whole minute (zone offsets are whole minutes),
    so bounds are cached per minute: the request path computes them for every
    call and every budget.
    """
    return _bounds_in_minute(window, ts_ms // 60_000, tz)


@lru_cache(maxsize=8192)
def _bounds_in_minute(window: str, minute: int, tz: str) -> tuple[int, int]:
    local = _local(minute * 60_000, tz)
    if window == HOUR:
        start = local.replace(minute=0, second=0, microsecond=0)
        return _ms(start), _ms(start) + 3_600_000
    start = _reattach(_floor(window, local), tz)
    end = _reattach(_next(window, start), tz)
    return _ms(start), _ms(end)


def window_start(window: str, ts_ms: int, tz: str = "UTC") -> int:
    return window_bounds(window, ts_ms, tz)[0]


def iso_utc(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
