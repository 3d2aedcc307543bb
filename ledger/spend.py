"""The spend view a proxy checks budgets against.

``folded`` is what the ledger processor has published (the snapshot);
``local`` is this proxy's own settled calls that the snapshot does not show
yet, summed per spend key until the snapshot's progress passes their log
position (``ledger/local_sums.py``). Together they make a view never older
than the proxy's own traffic.

Spend is held in nano-USD (the events' precision); ``spent`` gives micro-USD
rounded up, which compared with ``>`` against an integer micro-USD limit is
exact. A difference of keys (a carve-out) is taken in nanos: ``spent_nano``.

On Kafka a spend key is folded in every usage partition its calls landed in
(events are keyed by API key, so one organization's spend spreads over all of
them): each snapshot partition holds that partition's partial totals, and
``folded`` is their sum over the partitions, updated as each partial arrives.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from llmgw.core.events import UsageEvent, micro_of_nano
from .fold import ZERO, Totals, contribution, keys_of, TzOf, utc
from .local_sums import LocalSums


@dataclass
class SpendView:
    tz_of: TzOf = utc
    folded: dict[str, Totals] = field(default_factory=dict)
    # Snapshot progress: highest source position folded, per log partition.
    progress: dict[int, int] = field(default_factory=dict)
    local: LocalSums = field(init=False)
    _partials: dict[int, dict[str, Totals]] = field(default_factory=dict)   # snapshot partition -> key -> totals
    # org -> (zone its counted, unplaced events were keyed in, how many): an event leaves the keys
    # it was counted in even if the org's zone changes meanwhile. Bounded by the orgs.
    _zones: dict[str, tuple[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.local = LocalSums(self.progress)

    def spent_nano(self, key: str) -> int:
        return self.folded.get(key, ZERO).spend_nano_usd + self.local.amount(key)

    def spent(self, key: str) -> int:
        """Micro-USD, rounded up from the exact nanos."""
        return micro_of_nano(self.spent_nano(key))

    def totals(self, key: str) -> Totals:
        return self.folded.get(key, ZERO)

    # -- this proxy's own calls -------------------------------------------------
    def add_local(self, event: UsageEvent, keys: list[str] | None = None) -> list[str]:
        """Count a settled call at once, before we know where the log put it (summed per key:
        nothing of the event is kept, see ``ledger/local_sums.py``). ``keys``: its ``keys_of`` under
        the org's zone now, if the caller has them. Returns the keys it was counted in."""
        amount = contribution(event).spend_nano_usd
        if not amount:
            return []
        zone, n = self._zones.get(event.org, ("", 0))
        if not n:
            zone = self.tz_of(event.org)
        self._zones[event.org] = (zone, n + 1)
        if keys is None or (n and self.tz_of(event.org) != zone):
            keys = keys_of(event, lambda _org: zone)
        self.local.add(keys, amount)
        return keys

    def placed(self, event: UsageEvent, partition: int, position: int) -> None:
        """The log acknowledged ``event`` (counted by ``add_local``) at ``position``."""
        self.placed_many(((event, partition, position),))

    def placed_many(self, placements: Iterable[tuple[UsageEvent, int, int]],
                    counted: Mapping[str, list[str]] | None = None) -> None:
        """One acknowledgement batch: (event, partition, position) of each event ``add_local``
        counted. Each must be placed once; it leaves the local sums once the snapshot passes it.
        ``counted``: event id -> the keys ``add_local`` returned, where the caller kept them."""
        for event, partition, position in placements:
            amount = contribution(event).spend_nano_usd
            if not amount:
                continue
            zone, n = self._zones.get(event.org, ("", 0))
            if n > 1:
                self._zones[event.org] = (zone, n - 1)
            else:
                self._zones.pop(event.org, None)
                zone = zone if n else self.tz_of(event.org)
            keys = counted.get(event.event_id) if counted is not None else None
            if keys is None:
                keys = keys_of(event, lambda _org: zone)
            self.local.place(keys, amount, partition, position)
        self.local.seal()

    # -- the processor's snapshot --------------------------------------------------
    def apply_snapshot(self, key: str, totals: Totals | None, partition: int = 0) -> None:
        """Partition ``partition``'s partial totals of ``key`` (None: its tombstone, a closed window
        past its retention); ``folded[key]`` becomes the sum of every partition's partial."""
        part = self._partials.setdefault(partition, {})
        if totals is None:
            part.pop(key, None)
        else:
            part[key] = totals
        found = [t for p in self._partials.values() if (t := p.get(key)) is not None]
        if not found:
            self.folded.pop(key, None)
            return
        total = found[0]
        for t in found[1:]:
            total = total.plus(t)
        self.folded[key] = total

    def advance(self, partition: int, position: int) -> None:
        self.local.advance(partition, position)

    @property
    def local_backlog(self) -> int:
        """Own events the snapshot does not show yet."""
        return self.local.backlog_events
