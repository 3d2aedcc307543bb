"""How long a closed window's totals stay in the snapshot topic.

Without this the snapshot topic, the workers' memory and every proxy's view grow by one key per
(entity, window) forever (hour windows dominate: 24 a day per user, key, workspace, ...). A window
is never checked against a budget once it has closed, so its key is deleted, a tombstone on the
compacted snapshot topic, ``retain_closed_ms`` after it closed (the alert store forgets alerts of
closed windows the same way, ``alerts.retain_closed_s``).

"Closed" is measured in the partition's **log time** (the highest record timestamp the fold has
seen, like the duplicate horizon), never a worker's wall clock, so it is a pure function of the
partition's records: ``llmgw ledger rebuild`` applies the same rule and agrees. Each key closes by
its start plus the longest its window can be (a day is 25 h across a DST change, a month 31 days
plus an hour): no time zone is needed, and a key never goes before its window ended.

The rule, per usage record (``ledger.worker.fold_record``): once the clock reaches a key's
``expires_at_ms`` the key is frozen (a later event for that window, e.g. a spool replayed long
after, is not folded into it: the usage topic and ClickHouse still have the event), and the
worker tombstones it in the transaction that moved the clock there. Open windows and windows
closed less than ``retain_closed_ms`` ago are folded exactly as before.
"""
from __future__ import annotations

import bisect
from typing import Iterable

from llmgw.core.spend_keys import parse_spend_key
from llmgw.core.windows import DAY, HOUR, MONTH, WEEK

DEFAULT_RETAIN_CLOSED_MS = 86_400_000

_HOUR_MS = 3_600_000
# the longest each window can last: DST adds an hour to a day, a week or a month
LONGEST_MS = {HOUR: _HOUR_MS, DAY: 25 * _HOUR_MS, WEEK: 7 * 24 * _HOUR_MS + _HOUR_MS,
              MONTH: 31 * 24 * _HOUR_MS + _HOUR_MS}


def expires_at_ms(key: str, retain_closed_ms: int) -> int | None:
    """Log time at which ``key`` is deleted; None if it is not a spend key (kept)."""
    try:
        _dim, _entity, window, start_ms = parse_spend_key(key)
    except ValueError:
        return None
    longest = LONGEST_MS.get(window)
    return None if longest is None else start_ms + longest + retain_closed_ms


def expired(key: str, clock_ms: int, retain_closed_ms: int | None) -> bool:
    if retain_closed_ms is None:
        return False
    at = expires_at_ms(key, retain_closed_ms)
    return at is not None and at <= clock_ms


class ClosingWindows:
    """A worker partition's keys by the log time they expire at: what the next transaction
    tombstones is found without scanning every key."""

    __slots__ = ("retain_closed_ms", "_times", "_keys")

    def __init__(self, retain_closed_ms: int, keys: Iterable[str] = ()) -> None:
        self.retain_closed_ms = retain_closed_ms
        self._times: list[int] = []              # sorted expiry times
        self._keys: dict[int, set[str]] = {}     # expiry time -> keys
        self.add(keys)

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys.values())

    def add(self, keys: Iterable[str]) -> None:
        for key in keys:
            at = expires_at_ms(key, self.retain_closed_ms)
            if at is None:
                continue
            group = self._keys.get(at)
            if group is None:
                group = self._keys[at] = set()
                bisect.insort(self._times, at)
            group.add(key)

    def due(self, clock_ms: int) -> list[str]:
        """Keys expired at ``clock_ms`` (nothing changes until ``forget``)."""
        end = bisect.bisect_right(self._times, clock_ms)
        return [k for at in self._times[:end] for k in self._keys[at]]

    def forget(self, clock_ms: int) -> None:
        """After the transaction that tombstoned ``due(clock_ms)`` committed."""
        end = bisect.bisect_right(self._times, clock_ms)
        for at in self._times[:end]:
            del self._keys[at]
        del self._times[:end]

    def oldest_ms(self) -> int | None:
        return self._times[0] if self._times else None


__all__ = ["DEFAULT_RETAIN_CLOSED_MS", "LONGEST_MS", "ClosingWindows", "expired", "expires_at_ms"]
