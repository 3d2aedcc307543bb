"""The spend view a proxy checks budgets against.

``folded`` is what the ledger processor has published (the snapshot);
``local`` is this proxy's own settled calls that the snapshot does not show
yet, kept until the snapshot's progress passes their log position. Together
they make a view never older than the proxy's own traffic.

Spend is held in nano-USD (the events' precision); ``spent`` gives micro-USD
rounded up, which compared with ``>`` against an integer micro-USD limit is
exact. A difference of keys (a carve-out) is taken in nanos: ``spent_nano``.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from llmgw.core.events import UsageEvent, micro_of_nano
from .fold import ZERO, Totals, contribution, keys_of, TzOf, utc

_Pending = tuple[int, int, list[str], int]


@dataclass
class SpendView:
    tz_of: TzOf = utc
    folded: dict[str, Totals] = field(default_factory=dict)
    # Snapshot progress: highest source position folded, per log partition.
    progress: dict[int, int] = field(default_factory=dict)
    # This proxy's settled spend the snapshot does not show yet, nano-USD per key (read by the
    # budget check on every call; changed only here).
    local: dict[str, int] = field(default_factory=dict)
    _pending: deque[_Pending] = field(default_factory=deque)   # (partition, position, keys, nano_usd)
    _unplaced: dict[str, tuple[list[str], int]] = field(default_factory=dict)

    def spent_nano(self, key: str) -> int:
        return self.folded.get(key, ZERO).spend_nano_usd + self.local.get(key, 0)

    def spent(self, key: str) -> int:
        """Micro-USD, rounded up from the exact nanos."""
        return micro_of_nano(self.spent_nano(key))

    def totals(self, key: str) -> Totals:
        return self.folded.get(key, ZERO)

    # -- this proxy's own calls -------------------------------------------------
    def add_local(self, event: UsageEvent) -> None:
        """Count a settled call at once, before we know where the log put it."""
        amount = contribution(event).spend_nano_usd
        if not amount:
            return
        keys = keys_of(event, self.tz_of)
        for k in keys:
            self.local[k] = self.local.get(k, 0) + amount
        self._unplaced[event.event_id] = (keys, amount)

    def placed(self, event_id: str, partition: int, position: int) -> None:
        """The log acknowledged the event at ``position``: forget it once the snapshot passes it."""
        item = self._unplaced.pop(event_id, None)
        if item is None:
            return
        if self.progress.get(partition, -1) >= position:
            self._drop(*item)
        else:
            self._pending.append((partition, position, item[0], item[1]))

    # -- the processor's snapshot --------------------------------------------------
    def apply_snapshot(self, key: str, totals: Totals | None) -> None:
        if totals is None:
            self.folded.pop(key, None)
        else:
            self.folded[key] = totals

    def advance(self, partition: int, position: int) -> None:
        if position <= self.progress.get(partition, -1):
            return
        self.progress[partition] = position
        keep: deque[_Pending] = deque()
        while self._pending:
            p, pos, keys, amount = self._pending.popleft()
            if p == partition and pos <= position:
                self._drop(keys, amount)
            else:
                keep.append((p, pos, keys, amount))
        self._pending = keep

    def _drop(self, keys: list[str], amount: int) -> None:
        for k in keys:
            left = self.local.get(k, 0) - amount
            if left:
                self.local[k] = left
            else:
                self.local.pop(k, None)

    @property
    def local_backlog(self) -> int:
        return len(self._pending) + len(self._unplaced)
