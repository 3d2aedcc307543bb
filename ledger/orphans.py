"""Calls a usage partition saw start and never end: the ledger worker charges them.

In Kafka mode a gateway killed mid-call may never come back (scaled down, node
lost), so the worker, not the gateway, charges its orphans. ``OpenCalls`` is
the per-partition memory of ``CallStarted`` records (``ledger/started.py``)
no usage event has closed yet, in log time (the usage topic is stamped with
the broker's append time). A call is an orphan once the partition's clock
(the highest record timestamp seen) passes its started record's timestamp
plus ``orphan_after_ms``; it is then charged its reservation, folded in the
same transaction as the record that moved the clock.

The rule is a pure function of the partition's records, like ``SeenIds``, so a
worker taking a partition over rebuilds it exactly from the log, and ``llmgw
ledger rebuild`` charges the same orphans (``ledger.worker.admit_record``):

- a record first charges the calls its timestamp makes due, then acts;
- a started record opens its call only at the first sighting of its id within
  the horizon (``SeenIds`` under ``started:<id>``): a spool's second copy
  never opens a charged or closed call again;
- a usage event closes its call;
- the charge is admitted into ``SeenIds`` under the call's own ``event_id`` at
  the virtual time it became due (start + ``orphan_after_ms``), so a real
  usage event arriving later within the horizon is a duplicate (the orphan
  charge, an upper bound, stands).

With ``orphan_after_ms <= horizon`` (the worker refuses otherwise) every
decision after offset n depends only on records stamped at or after
``clock - 2 x horizon - orphan_after_ms``: that is how far back a worker reads
on acquisition (``tests/test_orphans.py`` checks it against full replays).

A partition with no traffic has no clock: the worker appends a ``tick``
record to it (in a transaction, like everything it writes) once an open call
is due by its wall clock, so an idle partition's orphans are charged too.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import orjson

from .started import CallStarted

DEFAULT_ORPHAN_AFTER_MS = 3_600_000   # longer than any call: first-byte timeout (600 s) plus long streams
TICK_KEY = "ledger_tick_ms"


class OpenCalls:
    """Started records of one usage partition not yet closed, oldest first (see the module docstring)."""

    __slots__ = ("orphan_after_ms", "_open", "_order")

    def __init__(self, orphan_after_ms: int = DEFAULT_ORPHAN_AFTER_MS) -> None:
        self.orphan_after_ms = orphan_after_ms
        self._open: dict[str, tuple[int, CallStarted]] = {}
        self._order: deque[str] = deque()      # ids in the order their started records came

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._open

    def start(self, started: CallStarted, ts_ms: int) -> None:
        event_id = started.started_event_id
        if event_id not in self._open:
            self._open[event_id] = (ts_ms, started)
            self._order.append(event_id)

    def close(self, event_id: str) -> None:
        self._open.pop(event_id, None)

    def due(self, clock_ms: int) -> list[tuple[int, CallStarted]]:
        """Take out every call due by ``clock_ms``: (its started record's timestamp, the record)."""
        out = []
        order, open_ = self._order, self._open
        while order:
            item = open_.get(order[0])
            if item is not None and item[0] + self.orphan_after_ms >= clock_ms:
                break
            event_id = order.popleft()
            if item is not None:
                del open_[event_id]
                out.append(item)
        return out

    def oldest_ms(self) -> int | None:
        """Log timestamp of the oldest open call (what a tick must pass to charge it)."""
        order, open_ = self._order, self._open
        while order and order[0] not in open_:
            order.popleft()
        return open_[order[0]][0] if order else None

    def copy(self) -> "OpenCalls":
        """A copy staged by one transaction; it replaces the original only once the commit returned."""
        new = OpenCalls(self.orphan_after_ms)
        new._open = dict(self._open)
        new._order = deque(self._order)
        return new


def encode_tick(now_ms: int) -> bytes:
    return orjson.dumps({TICK_KEY: now_ms})


def is_tick(raw: Mapping[str, Any]) -> bool:
    return TICK_KEY in raw


__all__ = ["DEFAULT_ORPHAN_AFTER_MS", "OpenCalls", "encode_tick", "is_tick"]
