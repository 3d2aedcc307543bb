"""The ledger processor on Kafka: folds usage partitions into the snapshot topic, exactly.

One consumer in the group (no auto-commit, ``read_committed``) and one transactional producer
per usage partition it owns (``transactional_id = f"{group}-p{N}"``). Exactness rests on four
rules, the design of ``notes/kafka-broker.md`` that was exact in every chaos trial:

1. Acquire before folding. Starting partition p's producer fences its previous owner and ends
   that owner's open transaction; only then is p's state read back (its snapshot partition with
   ``read_committed``, its committed offset) and the consumer seeked. The transactional id, not
   the group generation, is what makes one writer per partition.
2. One transaction per fetched batch: the new absolute totals of every key the batch changed,
   a progress record, and the consumed offset (``send_offsets_to_transaction``) commit together
   or not at all.
3. Memory changes only after the commit returned. Any error drops the partition's producer and
   re-acquires the partition from what Kafka committed (re-initialising the producer is the
   abort); ``ProducerFenced`` means another owner took it, so it is only retried much later if
   the group still gives it to us.
4. Records below the next expected offset, or of a partition not owned, are never folded.

Duplicates by ``event_id`` (a proxy's spool may re-send an event whose ack was lost) are dropped
by ``SeenIds``, a per-partition memory of ids within ``horizon_ms`` of *log time* (the usage
topic is stamped with the broker's append time). It is a pure function of the partition's
records, so it is rebuilt exactly on acquisition, and ``llmgw ledger rebuild`` reproduces it.

Calls a gateway started and never ended (it was killed mid-call) are charged here, by the same
kind of per-partition rule (``ledger/orphans.py``): ``OpenCalls`` is rebuilt with ``SeenIds``, and
the charge is folded in the transaction of the record that made it due. The worker also writes a
copy of each charge to the usage topic in that transaction (for analytics; the fold skips it) and
``tick`` records to idle partitions whose open calls are due.

Closed windows leave the snapshot topic ``retain_closed_ms`` of log time after they closed
(``ledger/retention.py``): the transaction that moves a partition's clock past a key's expiry
writes its tombstone, and no later event is folded into it. Same rule in rebuild.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import ProducerFenced

from llmgw.core.config import ConfigState
from llmgw.ledger.configlog import open_config_log
from llmgw.core.events import ORPHANED, UsageEvent, decode, encode
from .fold import Totals, TzOf, fold, utc
from .orphans import DEFAULT_ORPHAN_AFTER_MS, OpenCalls, encode_tick, is_tick
from .retention import DEFAULT_RETAIN_CLOSED_MS, ClosingWindows, expired
from .started import CallStarted, decode_started, is_started
from .topics import (PartitionReader, Topics, encode_progress, encode_snapshot, ensure_topics,
                     progress_key, read_snapshot_partitions)
from llmgw.core.windows import org_zones

if TYPE_CHECKING:
    from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.ledger.worker")

DEFAULT_GROUP = "llmgw-ledger"
DEFAULT_HORIZON_MS = 24 * 3_600_000


# -- duplicates ------------------------------------------------------------------------------
class SeenIds:
    """Event ids of one usage partition, remembered for ``horizon_ms`` of log time.

    ``clock_ms`` is the highest record timestamp seen. A sighting is a duplicate iff the same id
    was seen before at a record timestamp >= ``clock_ms - horizon_ms``; every sighting refreshes
    the id's timestamp. The state after offset n therefore depends only on records with a
    timestamp >= clock - horizon, which all lie at or after ``offsets_for_times(ts - horizon)``
    for the timestamp ts of the last record before n: that is how it is rebuilt, exactly.
    """

    __slots__ = ("horizon_ms", "clock_ms", "_last_ms", "_order")

    def __init__(self, horizon_ms: int = DEFAULT_HORIZON_MS) -> None:
        self.horizon_ms = horizon_ms
        self.clock_ms = -1
        self._last_ms: dict[str, int] = {}
        self._order: deque[tuple[int, str]] = deque()

    def __len__(self) -> int:
        return len(self._last_ms)

    def advance(self, ts_ms: int) -> None:
        """A record without an event id (a started record, a tick) moves the clock too."""
        if ts_ms > self.clock_ms:
            self.clock_ms = ts_ms
            self._evict()

    def last_seen_ms(self, event_id: str) -> int | None:
        return self._last_ms.get(event_id)

    def admit(self, event_id: str, ts_ms: int) -> bool:
        """Record a sighting; True if it is the first within the horizon (fold it)."""
        if ts_ms > self.clock_ms:
            self.clock_ms = ts_ms
        prev = self._last_ms.get(event_id)
        if prev is None or ts_ms > prev:
            self._last_ms[event_id] = ts_ms
            self._order.append((ts_ms, event_id))
        self._evict()
        return prev is None or prev < self.clock_ms - self.horizon_ms

    def begin(self) -> "SeenBatch":
        return SeenBatch(self)

    def commit(self, batch: "SeenBatch") -> None:
        for event_id, ts_ms in batch.changed.items():
            self._last_ms[event_id] = ts_ms
            self._order.append((ts_ms, event_id))
        self.clock_ms = batch.clock_ms
        self._evict()

    def _evict(self) -> None:
        floor = self.clock_ms - self.horizon_ms
        order, last = self._order, self._last_ms
        while order and order[0][0] < floor:
            ts_ms, event_id = order.popleft()
            if last.get(event_id) == ts_ms:
                del last[event_id]


class SeenBatch:
    """``SeenIds.admit`` staged over a base that changes only on ``SeenIds.commit``."""

    __slots__ = ("_base", "clock_ms", "changed")

    def __init__(self, base: SeenIds) -> None:
        self._base = base
        self.clock_ms = base.clock_ms
        self.changed: dict[str, int] = {}

    @property
    def horizon_ms(self) -> int:
        return self._base.horizon_ms

    def advance(self, ts_ms: int) -> None:
        if ts_ms > self.clock_ms:
            self.clock_ms = ts_ms

    def admit(self, event_id: str, ts_ms: int) -> bool:
        if ts_ms > self.clock_ms:
            self.clock_ms = ts_ms
        prev = self.changed.get(event_id)
        if prev is None:
            prev = self._base.last_seen_ms(event_id)
        if prev is None or ts_ms > prev:
            self.changed[event_id] = ts_ms
        return prev is None or prev < self.clock_ms - self._base.horizon_ms


# -- one record ------------------------------------------------------------------------------
FOLDED, DUPLICATE, UNREADABLE = "folded", "duplicate", "unreadable"
STARTED, TICK, ORPHAN_COPY = "started", "tick", "orphan_copy"


def admit_record(seen: SeenIds | SeenBatch, calls: OpenCalls, raw: dict[str, Any] | None,
                 ts_ms: int) -> tuple[str, list[CallStarted]]:
    """What one record does to a partition's memory (ids seen, calls open): its outcome and the
    calls it makes orphans, each already admitted as seen (fold them). No totals: rebuilding the
    memory on acquisition goes through here alone."""
    if raw is None:
        return UNREADABLE, []
    kind = STARTED if is_started(raw) else TICK if is_tick(raw) else None
    event_id = raw.get("event_id")
    if kind is None and (not isinstance(event_id, str) or not event_id):
        return UNREADABLE, []
    # Calls due by this record's timestamp are charged before the record itself acts (a call's own
    # late usage event or a copy of its started record then meets it charged, whatever came before).
    orphans: list[CallStarted] = []
    if ts_ms > seen.clock_ms:
        seen.advance(ts_ms)
        orphans = [s for at, s in calls.due(ts_ms) if seen.admit(s.started_event_id, at + calls.orphan_after_ms)]
    if kind == STARTED:
        try:
            started = decode_started(raw)
        except (KeyError, TypeError, ValueError):
            return UNREADABLE, orphans
        # a spool may send a started record twice: only its first sighting within the horizon opens
        # the call (after a charge or a close, a copy must not open it again)
        if seen.admit(f"started:{started.started_event_id}", ts_ms):
            calls.start(started, ts_ms)
        outcome = STARTED
    elif kind == TICK:
        outcome = TICK
    else:
        assert isinstance(event_id, str)
        calls.close(event_id)
        if raw.get("outcome") == ORPHANED:       # the worker's own copy of a charge it folded already
            seen.admit(event_id, ts_ms)
            outcome = ORPHAN_COPY
        else:
            outcome = FOLDED if seen.admit(event_id, ts_ms) else DUPLICATE
    return outcome, orphans


def fold_record(totals: Mapping[str, Totals], seen: SeenIds | SeenBatch, value: bytes | None,
                ts_ms: int, tz_of: TzOf, calls: OpenCalls | None = None,
                orphans: list[UsageEvent] | None = None,
                retain_closed_ms: int | None = None) -> tuple[str, dict[str, Totals]]:
    """What one usage record does: (outcome, new absolute totals of the keys it changes).

    The worker and ``llmgw ledger rebuild`` both go through here, so they agree on every record,
    including the ones they cannot read (logged, counted, folded nowhere). The orphan charges the
    record makes due are folded too, and appended to ``orphans``. With ``retain_closed_ms``, a key
    whose window closed that long before the partition's clock is frozen (``ledger/retention.py``).
    """
    raw = _parse(value)
    outcome, due = admit_record(seen, calls if calls is not None else OpenCalls(), raw, ts_ms)
    changes: dict[str, Totals] = {}
    if outcome == FOLDED:
        try:
            event = decode(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            outcome = UNREADABLE
        else:
            changes = fold(totals, event, tz_of)
    for started in due:
        orphan = started.orphan_event()
        now = _Staged(totals)          # the totals as this record's folds left them
        now.update(changes)
        changes.update(fold(now, orphan, tz_of))
        if orphans is not None:
            orphans.append(orphan)
    if retain_closed_ms is not None and changes:
        changes = {k: t for k, t in changes.items() if not expired(k, seen.clock_ms, retain_closed_ms)}
    return outcome, changes


def _parse(value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return raw if isinstance(raw, dict) else None


# -- the worker ------------------------------------------------------------------------------
class _Staged(dict[str, Totals]):
    """New totals of one batch; ``get`` falls through to the committed totals (a fast ChainMap)."""

    __slots__ = ("_base",)

    def __init__(self, base: Mapping[str, Totals]) -> None:
        super().__init__()
        self._base = base

    def get(self, key: str, default: Totals | None = None) -> Totals | None:  # type: ignore[override]
        found = dict.get(self, key)
        return self._base.get(key, default) if found is None else found


@dataclass(eq=False)
class _Owned:
    partition: int
    producer: AIOKafkaProducer
    totals: dict[str, Totals]
    seen: SeenIds
    next_offset: int
    calls: OpenCalls = field(default_factory=OpenCalls)
    closing: ClosingWindows | None = None   # keys by when their closed window expires (retention on)
    next_tick_at: float = 0.0          # monotonic; ticks of an idle partition are spaced by tick_s

    def stage(self, records: Sequence[Any], tz_of: TzOf, retain_closed_ms: int | None) -> _Transaction:
        """Fold ``records`` (Kafka records: value, timestamp, offset) against the committed state,
        without touching it: the transaction may still fail, and then nothing of it happened."""
        batch = self.seen.begin()
        calls = self.calls.copy()
        orphans: list[UsageEvent] = []
        changes = _Staged(self.totals)
        counts = {FOLDED: 0, DUPLICATE: 0, UNREADABLE: 0, STARTED: 0, TICK: 0, ORPHAN_COPY: 0}
        unreadable: list[int] = []
        for r in records:
            outcome, changed = fold_record(changes, batch, r.value, r.timestamp, tz_of, calls, orphans,
                                           retain_closed_ms)
            counts[outcome] += 1
            changes.update(changed)
            if outcome == UNREADABLE:
                unreadable.append(r.offset)
        gone: list[str] = []
        if self.closing is not None:
            # keys whose closed window expired by the batch's clock: the committed ones get a
            # tombstone; the batch's own new ones are dropped from ``changes`` (never written)
            for k in [k for k in changes if expired(k, batch.clock_ms, retain_closed_ms)]:
                del changes[k]
            gone = self.closing.due(batch.clock_ms)
        return _Transaction(batch, calls, changes, orphans, gone, counts, unreadable, records[-1].offset)

    def committed(self, txn: _Transaction) -> None:
        """What the worker holds once ``txn``'s commit returned (and only then)."""
        new_keys = [k for k in txn.changes if k not in self.totals]
        self.totals.update(txn.changes)
        if self.closing is not None:
            for k in txn.gone:
                del self.totals[k]
            self.closing.forget(txn.batch.clock_ms)
            self.closing.add(new_keys)
        self.seen.commit(txn.batch)
        self.calls = txn.calls
        self.next_offset = txn.last + 1


@dataclass
class _Transaction:
    batch: SeenBatch
    calls: OpenCalls
    changes: _Staged
    orphans: list[UsageEvent]
    gone: list[str]                    # committed keys to tombstone
    counts: dict[str, int]             # records by outcome
    unreadable: list[int]              # their offsets
    last: int                          # the last record's offset


@dataclass
class WorkerStats:
    events_folded: int = 0
    duplicates: int = 0
    unreadable: int = 0
    orphans_charged: int = 0
    tombstones: int = 0
    ticks: int = 0
    transactions: int = 0
    acquisitions: int = 0
    releases: int = 0
    failed_transactions: int = 0
    fenced: int = 0
    acquire_s: list[float] = field(default_factory=list)


class LedgerWorker:
    """Folds the usage partitions the group gives it; several run side by side to scale."""

    def __init__(self, bootstrap: str, topics: Topics, group_id: str = DEFAULT_GROUP, tz_of: TzOf = utc,
                 *, horizon_ms: int = DEFAULT_HORIZON_MS, session_timeout_ms: int = 10_000,
                 heartbeat_interval_ms: int = 3_000, transaction_timeout_s: float = 30.0,
                 acquire_timeout_s: float = 60.0, retry_s: float = 1.0, fenced_retry_s: float = 30.0,
                 max_records_per_txn: int = 5_000, client_id: str = "",
                 orphan_after_ms: int | None = None, tick_s: float = 5.0,
                 retain_closed_ms: int | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.group_id = group_id
        self.tz_of = tz_of
        orphan_after_ms = default_orphan_after(horizon_ms) if orphan_after_ms is None else orphan_after_ms
        if orphan_after_ms > horizon_ms:
            raise ValueError(f"orphan_after ({orphan_after_ms} ms) must not exceed the duplicate horizon "
                             f"({horizon_ms} ms): a copy of a started record must still be known when it is due")
        self.horizon_ms = horizon_ms
        self.orphan_after_ms = orphan_after_ms
        # None keeps closed windows forever; ``llmgw ledger worker`` sets LLMGW_SNAPSHOT_RETAIN_CLOSED_S
        self.retain_closed_ms = retain_closed_ms
        self._tick_s = tick_s
        self.stats = WorkerStats()
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._txn_timeout_s = transaction_timeout_s
        self._acquire_timeout_s = acquire_timeout_s
        self._retry_s = retry_s
        self._fenced_retry_s = fenced_retry_s
        self._max_records_per_txn = max(1, max_records_per_txn)
        self._client_id = client_id or group_id
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._assigned: set[int] = set()
        self._pending: dict[int, float] = {}      # partition -> monotonic time to (re)acquire at
        self._owned: dict[int, _Owned] = {}
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.group_id, client_id=self._client_id,
            enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms, heartbeat_interval_ms=self._heartbeat_interval_ms,
            max_partition_fetch_bytes=2 << 20)
        await consumer.start()
        self._consumer = consumer
        consumer.subscribe([self.topics.usage], listener=_Rebalance(self))
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmgw-ledger-worker")

    async def stop(self, timeout_s: float = 15.0) -> None:
        """Finish the batch in flight (bounded), release every partition, leave the group."""
        self._stopping = True
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for p in list(self._owned):
            await self._release(p, retry_s=None, why="stopping")
        if self._consumer is not None:
            await self._consumer.stop()

    @property
    def task(self) -> asyncio.Task[None]:
        """The processing loop; it ends only on ``stop`` or on a bug (then it holds the error)."""
        assert self._task is not None, "start() first"
        return self._task

    @property
    def owned(self) -> dict[int, int]:
        """Partitions this worker folds now, with the next usage offset of each."""
        return {p: o.next_offset for p, o in self._owned.items()}

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping:
            try:
                await self._acquire_due()
                fetched = await consumer.getmany(timeout_ms=200)
                if fetched:
                    await asyncio.gather(*(self._process(tp.partition, records)
                                           for tp, records in fetched.items() if records))
                await self._tick_idle()
            except BaseException as exc:  # the loop must survive; every partition keeps its committed state
                _raise_if_fatal(exc)
                log.exception("ledger worker loop error; continuing in %.1fs", self._retry_s)
                await asyncio.sleep(self._retry_s)

    async def _process(self, p: int, records: list[Any]) -> None:
        async with self._locks[p]:
            owned = self._owned.get(p)
            if owned is None or self._stopping:
                return
            if records[0].offset < owned.next_offset:
                records = [r for r in records if r.offset >= owned.next_offset]
                if not records:
                    return
            # One offset is the commit marker of a transaction that wrote to the usage topic (this
            # worker's ticks and orphan-charge copies): expected, not worth a warning.
            if records[0].offset > owned.next_offset + 1:
                log.warning("usage partition %d: expected offset %d, got %d (gap in the log)",
                            p, owned.next_offset, records[0].offset,
                            extra={"event": "ledger_offset_gap", "partition": p, "offset": records[0].offset})
            step = self._max_records_per_txn
            for i in range(0, len(records), step):
                if not await self._fold_and_commit(owned, records[i:i + step]):
                    return

    async def _fold_and_commit(self, owned: _Owned, records: list[Any]) -> bool:
        """One transaction; False if it failed (the partition is then released)."""
        p = owned.partition
        txn = owned.stage(records, self.tz_of, self.retain_closed_ms)
        for offset in txn.unreadable:
            log.error("usage partition %d offset %d: unreadable event, not folded", p, offset,
                      extra={"event": "ledger_unreadable_event", "partition": p, "offset": offset})
        try:
            async with asyncio.timeout(self._txn_timeout_s):
                await self._commit(owned, txn.changes, txn.last, txn.orphans, txn.gone)
        except ProducerFenced:
            self.stats.fenced += 1
            await self._release(p, retry_s=self._fenced_retry_s, why="fenced by a newer owner", locked=True)
            return False
        except BaseException as exc:
            _raise_if_fatal(exc)
            self.stats.failed_transactions += 1
            await self._release(p, retry_s=self._retry_s, why=f"transaction failed: {exc!r}", locked=True)
            return False
        owned.committed(txn)
        self.stats.tombstones += len(txn.gone)
        if txn.orphans:
            self.stats.orphans_charged += len(txn.orphans)
            log.warning("usage partition %d: charged %d orphaned calls their reservations (%d micro-USD)",
                        p, len(txn.orphans), sum(o.cost_micro_usd for o in txn.orphans),
                        extra={"event": "ledger_orphans_charged", "partition": p})
        self.stats.transactions += 1
        self.stats.events_folded += txn.counts[FOLDED]
        self.stats.duplicates += txn.counts[DUPLICATE]
        self.stats.unreadable += txn.counts[UNREADABLE]
        return True

    async def _commit(self, owned: _Owned, changes: Mapping[str, Totals], last: int,
                      orphans: Sequence[UsageEvent] = (), gone: Sequence[str] = ()) -> None:
        producer, p, topic = owned.producer, owned.partition, self.topics.snapshots
        await producer.begin_transaction()
        copies = [await producer.send(self.topics.usage, encode(o), key=o.ledger_key.encode(), partition=p)
                  for o in orphans]       # for analytics: the fold admits a copy and never folds it
        records: list[tuple[bytes, bytes | None]] = [
            (key.encode(), encode_snapshot(totals, p, last)) for key, totals in changes.items()]
        records += [(key.encode(), None) for key in gone]     # tombstones: closed windows past retention
        records.append((progress_key(p).encode(), encode_progress(p, last)))
        sent = []
        batch = producer.create_batch()
        for key, value in records:   # whole batches: far cheaper than one send() per record
            if batch.append(key=key, value=value, timestamp=None) is None:
                sent.append(await producer.send_batch(batch, topic, partition=p))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError(f"snapshot record for {key!r} larger than a whole batch")
        sent.append(await producer.send_batch(batch, topic, partition=p))
        await producer.send_offsets_to_transaction({TopicPartition(self.topics.usage, p): last + 1}, self.group_id)
        await asyncio.gather(*sent, *copies)
        await producer.commit_transaction()

    async def _tick_idle(self) -> None:
        """Append a tick to each owned partition whose oldest open call is due, or whose oldest closed
        window expired, by the wall clock: an idle partition's clock moves only with its records, and
        its orphans must be charged and its closed windows deleted."""
        now_ms, mono = int(time.time() * 1000), time.monotonic()
        for p, owned in list(self._owned.items()):
            oldest = owned.calls.oldest_ms()
            expiring = owned.closing.oldest_ms() if owned.closing is not None else None
            calls_due = oldest is not None and oldest + self.orphan_after_ms < now_ms
            windows_due = expiring is not None and expiring <= now_ms
            if not (calls_due or windows_due) or mono < owned.next_tick_at:
                continue
            owned.next_tick_at = mono + self._tick_s
            async with self._locks[p]:
                if self._owned.get(p) is not owned or self._stopping:
                    continue
                producer = owned.producer
                try:
                    async with asyncio.timeout(self._txn_timeout_s):
                        await producer.begin_transaction()
                        await (await producer.send(self.topics.usage, encode_tick(now_ms), partition=p))
                        await producer.commit_transaction()
                except ProducerFenced:
                    self.stats.fenced += 1
                    await self._release(p, retry_s=self._fenced_retry_s, why="fenced by a newer owner", locked=True)
                    continue
                except BaseException as exc:
                    _raise_if_fatal(exc)
                    self.stats.failed_transactions += 1
                    await self._release(p, retry_s=self._retry_s, why=f"tick failed: {exc!r}", locked=True)
                    continue
                self.stats.ticks += 1

    # -- ownership ----------------------------------------------------------------------------
    async def _on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == self.topics.usage}
        self._assigned -= parts
        for p in parts:
            self._pending.pop(p, None)
        # waits for a batch or an acquisition in flight on each partition (they hold its lock)
        await asyncio.gather(*(self._release(p, retry_s=None, why="revoked") for p in parts))

    def _on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        tps = [tp for tp in assigned if tp.topic == self.topics.usage]
        if not tps:
            return
        assert self._consumer is not None
        self._consumer.pause(*tps)     # nothing is fetched before the partition is acquired and seeked
        for tp in tps:
            self._assigned.add(tp.partition)
            self._pending[tp.partition] = 0.0

    async def _release(self, p: int, *, retry_s: float | None, why: str, locked: bool = False) -> None:
        """Forget partition p (state, producer); re-acquire it after ``retry_s`` if still assigned."""
        lock = contextlib.nullcontext() if locked else self._locks[p]
        async with lock:
            owned = self._owned.pop(p, None)
            if owned is None:
                return
            self.stats.releases += 1
            log.info("released usage partition %d at offset %d: %s", p, owned.next_offset, why,
                     extra={"event": "ledger_partition_released", "partition": p, "offset": owned.next_offset})
            tp = TopicPartition(self.topics.usage, p)
            if self._consumer is not None and tp in self._consumer.assignment():
                self._consumer.pause(tp)
            if retry_s is not None and p in self._assigned and not self._stopping:
                self._pending[p] = time.monotonic() + retry_s
            await _close_quietly(owned.producer)

    async def _acquire_due(self) -> None:
        now = time.monotonic()
        due = sorted(p for p, at in self._pending.items() if at <= now)
        if not due:
            return
        async with contextlib.AsyncExitStack() as stack:
            for p in due:
                await stack.enter_async_context(self._locks[p])
            due = [p for p in due if p in self._pending and p in self._assigned]  # revoked meanwhile?
            for p in due:
                stale = self._owned.pop(p, None)
                if stale is not None:
                    await _close_quietly(stale.producer)
            if due:
                await self._acquire(due)

    async def _acquire(self, parts: list[int]) -> None:
        began = time.monotonic()
        started = await asyncio.gather(*(self._start_producer(p) for p in parts), return_exceptions=True)
        producers: dict[int, AIOKafkaProducer] = {}
        for p, result in zip(parts, started):
            if isinstance(result, BaseException):
                log.warning("usage partition %d: producer did not start (%r); retrying", p, result)
                self._pending[p] = time.monotonic() + self._retry_s
            else:
                producers[p] = result
        if not producers:
            return
        try:
            async with asyncio.timeout(self._acquire_timeout_s):
                acquired = await self._read_back(producers)
        except BaseException as exc:
            _raise_if_fatal(exc)
            log.warning("usage partitions %s: state not read back (%r); retrying", sorted(producers), exc)
            for p, producer in producers.items():
                await _close_quietly(producer)
                self._pending[p] = time.monotonic() + self._retry_s
            return
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        for p, owned in acquired.items():
            tp = TopicPartition(self.topics.usage, p)
            if p not in self._assigned or tp not in assignment or self._stopping:
                await _close_quietly(owned.producer)      # revoked while we were reading it back
                continue
            self._owned[p] = owned
            self._pending.pop(p, None)
            self.stats.acquisitions += 1
            self._consumer.seek(tp, owned.next_offset)
            self._consumer.resume(tp)
            log.info("acquired usage partition %d at offset %d (%d keys, %d recent ids)",
                     p, owned.next_offset, len(owned.totals), len(owned.seen),
                     extra={"event": "ledger_partition_acquired", "partition": p, "offset": owned.next_offset})
        self.stats.acquire_s.append(time.monotonic() - began)

    async def _start_producer(self, p: int) -> AIOKafkaProducer:
        """Start p's transactional producer: this fences p's previous owner and ends its transaction."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, transactional_id=f"{self.group_id}-p{p}",
            client_id=f"{self._client_id}-p{p}", max_batch_size=512 << 10, linger_ms=0)  # < broker max 1 MB
        try:
            async with asyncio.timeout(self._acquire_timeout_s):
                await producer.start()
        except BaseException:
            await _close_quietly(producer)
            raise
        return producer

    async def _read_back(self, producers: dict[int, AIOKafkaProducer]) -> dict[int, _Owned]:
        """Totals, resume offset and recent ids of each partition, as Kafka committed them."""
        parts = sorted(producers)
        usage = {p: TopicPartition(self.topics.usage, p) for p in parts}
        committed = await self._committed_offsets(list(usage.values()))
        out: dict[int, _Owned] = {}
        async with PartitionReader(self.bootstrap) as reader:
            totals, progress = await read_snapshot_partitions(reader, self.topics, parts)
            first = await reader.beginning_offsets(list(usage.values()))
            for p in parts:
                tp = usage[p]
                nxt = _resume_offset(p, committed.get(tp), progress.get(p), first[tp])
                seen, calls = await rebuild_memory(reader, tp, first[tp], nxt, self.horizon_ms,
                                                   self.orphan_after_ms)
                closing = (ClosingWindows(self.retain_closed_ms, totals[p])
                           if self.retain_closed_ms is not None else None)
                out[p] = _Owned(p, producers[p], totals[p], seen, nxt, calls, closing)
        return out

    async def _committed_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            found = await admin.list_consumer_group_offsets(self.group_id, partitions=tps)
        finally:
            await admin.close()
        return {tp: meta.offset for tp, meta in found.items() if meta.offset >= 0}


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: LedgerWorker) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker._on_assigned(assigned)


def retain_closed_ms(retain_closed_s: float) -> int | None:
    """``LLMGW_SNAPSHOT_RETAIN_CLOSED_S`` in ms; 0 or less keeps closed windows forever (None)."""
    return int(retain_closed_s * 1000) if retain_closed_s > 0 else None


def default_orphan_after(horizon_ms: int) -> int:
    """The default ``orphan_after``, within a horizon shortened below it (tests, tight memory)."""
    return min(DEFAULT_ORPHAN_AFTER_MS, horizon_ms)


def _resume_offset(p: int, committed: int | None, progress: int | None, first: int) -> int:
    """Where folding resumes. The committed offset and the progress record are written in the same
    transaction; the progress record also survives the expiry of an idle group's offsets."""
    if committed is not None and progress is not None and committed != progress + 1:
        log.warning("usage partition %d: committed offset %d but snapshot progress %d; resuming at the later",
                    p, committed, progress)
    candidates = [c for c in (committed, None if progress is None else progress + 1) if c is not None]
    nxt = max(candidates) if candidates else first
    if nxt < first:
        log.error("usage partition %d: offsets %d..%d were deleted before they were folded", p, nxt, first - 1)
        nxt = first
    return nxt


async def rebuild_memory(reader: PartitionReader, tp: TopicPartition, first: int, nxt: int,
                         horizon_ms: int, orphan_after_ms: int) -> tuple[SeenIds, OpenCalls]:
    """The ``SeenIds`` and ``OpenCalls`` of ``tp`` after offset ``nxt - 1``, read back from the usage
    log from the first record stamped >= last stamp - 2 x horizon - orphan_after (ledger/orphans.py)."""
    seen, calls = SeenIds(horizon_ms), OpenCalls(orphan_after_ms)
    if nxt <= first:
        return seen, calls
    last_ts = await _last_timestamp(reader, tp, first, nxt)
    if last_ts is None:
        return seen, calls
    start = await reader.offset_for_time(tp, last_ts - 2 * horizon_ms - orphan_after_ms)
    start = first if start is None else max(first, min(start, nxt - 1))
    async for _, records in reader.read({tp: start}, {tp: nxt}):
        for r in records:
            admit_record(seen, calls, _parse(r.value), r.timestamp)
    return seen, calls


async def _last_timestamp(reader: PartitionReader, tp: TopicPartition, first: int, nxt: int) -> int | None:
    back = 1
    while True:
        lo = max(first, nxt - back)
        last = None
        async for _, records in reader.read({tp: lo}, {tp: nxt}):
            last = records[-1]
        if last is not None:
            return int(last.timestamp)
        if lo == first:
            return None
        back *= 16


def _raise_if_fatal(exc: BaseException) -> None:
    """Re-raise what must end the task: our own cancellation, KeyboardInterrupt, SystemExit.

    aiokafka can let a CancelledError out of a send or a transaction call when a connection
    closes under it (a broker restart); that is an error of the call, not a cancellation of us.
    """
    if isinstance(exc, Exception):
        return
    task = asyncio.current_task()
    if not isinstance(exc, asyncio.CancelledError) or (task is not None and task.cancelling()):
        raise exc


async def _close_quietly(producer: AIOKafkaProducer, timeout_s: float = 5.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            await producer.stop()
    except BaseException as exc:  # a producer we give up on; the next owner's init fences it anyway
        _raise_if_fatal(exc)
        log.debug("producer stop: %r", exc)


# -- entry points ------------------------------------------------------------------------------
async def serve(bootstrap: str, topics: Topics, *, replication_factor: int = 0, min_insync_replicas: int = 0,
                **worker_options: Any) -> int:
    """Run one worker until SIGTERM/SIGINT; 0 after a clean stop, 1 if the loop died."""
    topics = await ensure_topics(bootstrap, topics, replication_factor=replication_factor,
                                 min_insync_replicas=min_insync_replicas)
    worker = LedgerWorker(bootstrap, topics, **worker_options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await worker.start()
    log.info("ledger worker started: group %s, topic %s (%d partitions)",
             worker.group_id, topics.usage, topics.partitions)
    stopper = loop.create_task(stop.wait(), name="llmgw-ledger-stop")
    try:
        await asyncio.wait({stopper, worker.task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        await worker.stop()
    if not worker.task.cancelled() and worker.task.exception() is not None:
        log.error("ledger worker loop died: %r", worker.task.exception())
        return 1
    return 0


def tz_of_settings(settings: "Settings", state: ConfigState | None = None) -> TzOf:
    """Each org's zone as the gateways read it: its org record's (``state``), else the config file's."""
    zones = org_zones(dict(settings.file_config), [r.data for r in state.of_type("org")] if state else ())
    return lambda org: zones.get(org, "UTC")


async def _serve_following_zones(settings: "Settings") -> int:
    """``serve`` folding by each org's zone, followed from the config log: an org's time zone set through
    the admin API or ``llmgw apply`` moves the windows the worker folds into as it moves the ones the
    gateways read (the usage it has folded stays in the windows it was folded into)."""
    log = open_config_log(settings.data_dir, settings.kafka_bootstrap, settings.topic_prefix)
    state = await log.load()
    file_config = dict(settings.file_config)
    zones: dict[str, str] = {}

    def refresh() -> None:
        fresh = org_zones(file_config, [r.data for r in state.of_type("org")])
        if fresh != zones:
            zones.clear()
            zones.update(fresh)
    refresh()
    follower = asyncio.get_running_loop().create_task(log.follow(state, refresh), name="llmgw-worker-config")
    try:
        return await serve(settings.kafka_bootstrap, Topics(settings.topic_prefix),
                           group_id=f"{settings.topic_prefix}-ledger", tz_of=lambda org: zones.get(org, "UTC"),
                           orphan_after_ms=int(settings.orphan_after_s * 1000),
                           replication_factor=settings.kafka_replication_factor,
                           min_insync_replicas=settings.kafka_min_insync_replicas,
                           retain_closed_ms=retain_closed_ms(settings.snapshot_retain_closed_s))
    finally:
        follower.cancel()
        await asyncio.gather(follower, return_exceptions=True)


def run_worker(settings: "Settings") -> int:
    """``llmgw ledger worker``: fold ``{prefix}.usage`` into ``{prefix}.snapshots`` until stopped."""
    try:
        from llmgw.core.logs import configure_logging   # the gateway's structured, redacting logs
        configure_logging(settings)
    except ImportError:
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(_serve_following_zones(settings))


def main(argv: list[str] | None = None) -> int:
    """``python -m ledger.worker --bootstrap HOST:PORT [--prefix P]``: one worker, no settings file."""
    ap = argparse.ArgumentParser(prog="python -m ledger.worker", description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--prefix", default="llmgw")
    ap.add_argument("--partitions", type=int, default=8, help="for topics this creates")
    ap.add_argument("--group", default="", help="consumer group (default: <prefix>-ledger)")
    ap.add_argument("--horizon-s", type=float, default=DEFAULT_HORIZON_MS / 1000)
    ap.add_argument("--orphan-after-s", type=float, default=DEFAULT_ORPHAN_AFTER_MS / 1000,
                    help="charge a started call whose usage event has not come after this long")
    ap.add_argument("--retain-closed-s", type=float, default=DEFAULT_RETAIN_CLOSED_MS / 1000,
                    help="delete a closed window's totals this long after it closed (0: keep forever)")
    ap.add_argument("--session-timeout-ms", type=int, default=10_000)
    ap.add_argument("--heartbeat-interval-ms", type=int, default=3_000)
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return asyncio.run(serve(
        args.bootstrap, Topics(args.prefix, args.partitions), group_id=args.group or f"{args.prefix}-ledger",
        horizon_ms=int(args.horizon_s * 1000), orphan_after_ms=int(args.orphan_after_s * 1000),
        retain_closed_ms=retain_closed_ms(args.retain_closed_s), session_timeout_ms=args.session_timeout_ms,
        heartbeat_interval_ms=args.heartbeat_interval_ms))


if __name__ == "__main__":
    sys.exit(main())
