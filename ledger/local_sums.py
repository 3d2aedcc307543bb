"""A proxy's own spend that the snapshot does not show yet, summed per spend key.

A proxy counts each settled call at once (``add``), before the log has it. The amount must stay
counted until the snapshot includes the event, and then leave exactly once. Keeping each event
until then costs ~2 KB per event (its id and its ~30 key strings), and during a Kafka outage
every call is such an event: 10 minutes at 1,000 calls/s was over a GB of gateway memory while
the events themselves sat in the on-disk spool anyway. So nothing per event is kept here:

- ``sums``: per spend key, the amount of every event counted and not yet dropped. This is what
  the view adds to the snapshot. It has at most one entry per key touched.
- ``buckets``: per log partition, the events the log has placed (``place``) and the snapshot
  does not pass yet, grouped as they were acknowledged (one bucket per acknowledgement batch),
  each bucket the sums of its events per key and the highest position among them. A bucket
  leaves ``sums`` once, when the partition's progress reaches that position (``advance``).

An event not yet placed (in memory, in flight, or in the spool on disk) is only in ``sums``: the
caller places it with the same ``keys`` and ``amount`` it added, from the event itself (the spool
hands the event back), so leaving needs nothing remembered per event. Memory is therefore bounded
by the keys touched: ``sums`` has one entry per key, and the buckets together at most
``ENTRY_FACTOR`` times that (or ``MIN_ENTRY_BUDGET``), in at most ``max_buckets`` per partition,
however many events an outage piles up.

The handoff, event by event: counted once in ``sums`` by ``add``; moved into one bucket by
``place`` (``sums`` unchanged), or dropped at once if the progress already passed its position;
dropped from ``sums`` with its bucket when the progress reaches the bucket's highest position,
which is at or after its own. So an event leaves exactly once and never before the snapshot
includes it: the view is never below the true spend. It can be above it while a progress record
lands inside a bucket (the events of that bucket at or below the progress are counted by the
snapshot and still here) until the progress passes the bucket's end, normally the next
transaction of the ledger worker. While the buckets fit those bounds a bucket is one
acknowledgement batch (at most ``KafkaLedger.batch_max`` events, usually a few); past them (the
worker far behind, e.g. a spool replaying a long outage while the fold catches up, or no worker
at all) the two neighbouring buckets with the fewest events are merged, which keeps the buckets
balanced: the excess is then about one bucket's share of that partition's placed backlog
(``2 / max_buckets`` of it at most when only the bucket count binds), and only until the progress
passes the bucket.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

DEFAULT_MAX_BUCKETS = 32
ENTRY_FACTOR = 4            # bucket entries kept at most this many times the keys counted (see place)
MIN_ENTRY_BUDGET = 4_096    # below this many bucket entries nothing is merged for size


@dataclass(slots=True)
class Bucket:
    last: int                    # highest position of its events: dropped once progress >= last
    events: int = 0
    sums: dict[str, int] = field(default_factory=dict)

    def add(self, keys: Iterable[str], amount: int) -> int:
        """Add one event; returns how many keys are new to the bucket."""
        sums, before = self.sums, len(self.sums)
        for k in keys:
            sums[k] = sums.get(k, 0) + amount
        self.events += 1
        return len(sums) - before

    def absorb(self, other: "Bucket") -> int:
        """Take the next bucket in; returns how many entries that saved."""
        before = len(self.sums) + len(other.sums)
        for k, v in other.sums.items():
            self.sums[k] = self.sums.get(k, 0) + v
        self.events += other.events
        self.last = max(self.last, other.last)
        return before - len(self.sums)


class LocalSums:
    """Own spend not in the snapshot yet; see the module docstring for the handoff."""

    __slots__ = ("sums", "progress", "_buckets", "_max_buckets", "unplaced_events", "placed_events", "_open",
                 "_bucket_entries")

    def __init__(self, progress: dict[int, int] | None = None, max_buckets: int = DEFAULT_MAX_BUCKETS) -> None:
        self.sums: dict[str, int] = {}
        # the snapshot's progress per partition (the view's own dict: it is advanced there)
        self.progress: dict[int, int] = progress if progress is not None else {}
        self._buckets: dict[int, deque[Bucket]] = {}
        self._max_buckets = max(2, max_buckets)
        self.unplaced_events = 0      # added, not placed yet
        self.placed_events = 0        # placed, the progress not past their bucket yet
        self._open: set[int] = set()  # partitions whose newest bucket still takes events (see ``seal``)
        self._bucket_entries = 0      # per-key entries in all buckets together

    def amount(self, key: str) -> int:
        return self.sums.get(key, 0)

    def add(self, keys: Iterable[str], amount: int) -> None:
        """Count an event at once (``amount`` nano-USD on each key), before the log placed it."""
        if not amount:
            return
        sums = self.sums
        for k in keys:
            sums[k] = sums.get(k, 0) + amount
        self.unplaced_events += 1

    def place(self, keys: Iterable[str], amount: int, partition: int, position: int) -> None:
        """The log put an added event at ``position`` of ``partition``: same ``keys`` and ``amount``
        as its ``add``. It joins the partition's open bucket (one per acknowledgement batch: ``seal``
        closes it), or leaves at once if the progress already passed it."""
        if not amount:
            return
        self.unplaced_events -= 1
        if self.progress.get(partition, -1) >= position:
            self._subtract(keys, amount)
            return
        buckets = self._buckets.get(partition)
        if buckets is None:
            buckets = self._buckets[partition] = deque()
        # A new bucket only if this position is past the newest one (positions then stay sorted);
        # an event acknowledged out of order joins the newest bucket: it leaves later, never earlier.
        if not buckets or (partition not in self._open and position > buckets[-1].last):
            # among the full ones, before the new one opens: at most max_buckets per partition, and
            # all buckets together at most ENTRY_FACTOR entries per key summed (the worker far behind)
            while len(buckets) >= 2 and (len(buckets) >= self._max_buckets or self._bucket_entries > max(
                    MIN_ENTRY_BUDGET, ENTRY_FACTOR * len(self.sums))):
                self._bucket_entries -= _merge_lightest_pair(buckets)
            buckets.append(Bucket(position))
            self._open.add(partition)
        bucket = buckets[-1]
        self._bucket_entries += bucket.add(keys, amount)
        bucket.last = max(bucket.last, position)
        self.placed_events += 1

    def seal(self) -> None:
        """End of an acknowledgement batch: the next ``place`` starts new buckets."""
        self._open.clear()

    def advance(self, partition: int, position: int) -> None:
        """The snapshot now includes the partition's events up to ``position``: drop the buckets it passed."""
        if position <= self.progress.get(partition, -1):
            return
        self.progress[partition] = position
        buckets = self._buckets.get(partition)
        while buckets and buckets[0].last <= position:
            gone = buckets.popleft()
            self.placed_events -= gone.events
            self._bucket_entries -= len(gone.sums)
            for k, v in gone.sums.items():
                self._subtract((k,), v)
        if buckets is not None and not buckets:
            del self._buckets[partition]
            self._open.discard(partition)

    @property
    def backlog_events(self) -> int:
        """Events counted here that the snapshot does not show yet."""
        return self.unplaced_events + self.placed_events

    @property
    def entries(self) -> int:
        """Per-key entries held (sums and buckets): the memory this costs, in keys."""
        return len(self.sums) + self._bucket_entries

    def bucket_count(self, partition: int) -> int:
        return len(self._buckets.get(partition, ()))

    def _subtract(self, keys: Iterable[str], amount: int) -> None:
        sums = self.sums
        for k in keys:
            left = sums.get(k, 0) - amount
            if left:
                sums[k] = left
            else:
                sums.pop(k, None)


def _merge_lightest_pair(buckets: deque[Bucket]) -> int:
    """Merge the two neighbours with the fewest events together (balanced buckets bound the
    excess while a progress record lands inside one); returns the entries saved."""
    best = min(range(len(buckets) - 1), key=lambda i: buckets[i].events + buckets[i + 1].events)
    saved = buckets[best].absorb(buckets[best + 1])
    del buckets[best + 1]
    return saved


__all__ = ["DEFAULT_MAX_BUCKETS", "Bucket", "LocalSums"]
