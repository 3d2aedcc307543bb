"""The proxy side of the Kafka ledger: send usage events, follow the snapshots.

``submit`` counts a settled call in the local spend view at once and queues
it; nothing on the client's path waits for Kafka. One sender task owns the
idempotent producer (``acks=all``), sends each event keyed by
``started.usage_key`` (its API key by default, so one organization's calls
spread over every partition) to ``{prefix}.usage`` and, on the ack, tells
the view where the event landed (``view.placed``).

When Kafka does not take an event (the producer cannot start, a send fails,
or no ack within ``send_timeout_s``) the event goes to the local spool
(``ledger.spool``), loudly, together with everything submitted after it;
while the spool is not empty every new event goes behind it, and the sender
replays the spool in order until it is empty again. A spool left by a
previous run is replayed on start and its events are counted in the local
view meanwhile.

Guarantee: no loss; duplicates only as the same ``event_id`` (an event whose
ack was lost is sent again, with the same key, so into the same partition),
which the processor's fold skips. Order per key is the submit order (of
first copies): one producer, one batch at a time, and aiokafka keeps each
partition in order. Events are only in memory between ``submit`` and the
sender's next step (milliseconds; up to
``send_timeout_s`` while Kafka first stops answering, before the spooling
starts) or, while the spool is full, in the overflow ``spool_full`` reports.

``begin`` queues a call's ``CallStarted`` record (``ledger/started.py``) the
same way, before the call is forwarded: same key as its usage event, so both
land in one partition, in order, and the ledger worker charges the calls whose
usage event never comes (``docs/ledger.md``, "Crash-safe metering").

``SnapshotFollower`` reads ``{prefix}.snapshots`` from the beginning
(``read_committed``) into the view (``apply_snapshot``; ``advance`` on the
processor's ``__progress__|<p>`` records) and keeps following it. A snapshot
record is partition p's partial total of its key; the view adds the partitions.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from .driver import KAFKA, UNKNOWN_WORKERS, LedgerHealth
from llmgw.core.files import atomic_write
from llmgw.core.events import UsageEvent
from .fold import TzOf, utc
from .fold_watch import FoldWatch
from .spend import SpendView
from .spool import DEFAULT_MAX_BYTES, Spool
from .started import (KEY_KEY, ORG_KEY, USAGE_KEYS, CallStarted, Record, encode_record, record_id,
                      usage_key as usage_key_of)
from .topics import Topics, decode_progress, decode_snapshot, ensure_topics, is_progress_key

if TYPE_CHECKING:
    from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.ledger.kafka")

_MAX_BACKOFF_S = 5.0
T = TypeVar("T")


def _delivered(fut: "asyncio.Future[Any]") -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _retrieve(fut: "asyncio.Future[Any]") -> None:
    """Mark a failed delivery's exception as seen (the event is in the spool; no stray warning)."""
    if not fut.cancelled():
        fut.exception()


class KafkaLedger:
    """Sends usage events to Kafka, spools what Kafka does not take, follows the snapshots."""

    def __init__(self, bootstrap: str, data_dir: str | Path, *, topic_prefix: str = "llmgw",
                 tz_of: TzOf = utc, gateway_id: str = "", spool_max_bytes: int = DEFAULT_MAX_BYTES,
                 send_timeout_s: float = 5.0, connect_timeout_s: float = 10.0,
                 retry_backoff_s: float = 0.5, batch_max: int = 500, linger_ms: int = 5,
                 follow_snapshots: bool = True, create_topics: bool = True, worker_group: str = "",
                 fold_watch_interval_s: float = 1.0, replication_factor: int = 0,
                 min_insync_replicas: int = 0, usage_key: str = KEY_KEY) -> None:
        self.bootstrap = bootstrap
        self.usage_key = usage_key
        if usage_key not in USAGE_KEYS:
            raise ValueError(f"LLMGW_USAGE_KEY={usage_key!r}: expected one of {', '.join(USAGE_KEYS)}")
        self.topics = Topics(topic_prefix)
        self.replication = (replication_factor, min_insync_replicas)   # 0: ensure_topics' defaults
        self.usage_topic, self.snapshot_topic = self.topics.usage, self.topics.snapshots
        self.create_topics = create_topics
        self.spool_dir = Path(data_dir) / "spool"
        self.spool_max_bytes = spool_max_bytes
        self.gateway_id = gateway_id
        self.send_timeout_s = send_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.batch_max = batch_max
        self.linger_ms = linger_ms
        self.view = SpendView(tz_of=tz_of)
        self.follower: SnapshotFollower | None = (
            SnapshotFollower(bootstrap, self.snapshot_topic, self.view, client_id=self._client_id("snapshots"),
                             retry_backoff_s=retry_backoff_s) if follow_snapshots else None)
        # the fold's health: needs the progress records the follower reads (ledger/fold_watch.py)
        self.fold_watch: FoldWatch | None = (
            FoldWatch(bootstrap, self.usage_topic, worker_group or f"{topic_prefix}-ledger", self.view.progress,
                      self.follower.progress_ms, client_id=self._client_id("fold-watch"),
                      interval_s=fold_watch_interval_s, retry_backoff_s=retry_backoff_s)
            if self.follower is not None else None)
        self.spool: Spool | None = None
        self._queue: deque[Record] = deque()       # submitted, not yet handed to Kafka or the spool
        self._overflow: deque[Record] = deque()    # refused by a full spool; goes in before _queue
        self._inflight: list[Record] = []          # the batch being sent (not in the spool)
        self._futures: dict[str, asyncio.Future[Any]] = {}   # record_id -> delivery of the live producer
        self._producer: AIOKafkaProducer | None = None
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._next_connect_at = 0.0
        self._backoff_s = retry_backoff_s
        self._refused_at_bytes = -1                    # spool size when it last refused; retry once it shrinks
        # counters and gauges, for metrics
        self.events_submitted = 0
        self.started_submitted = 0
        self.events_acked = 0
        self.events_spooled = 0
        self.events_replayed = 0
        self.send_failures = 0
        self.connect_failures = 0
        self.kafka_connected = False
        self.spool_full = False
        self.spool_depth_events = 0        # copies of the spool's gauges (see _refresh_spool_gauges)
        self.spool_depth_bytes = 0
        self.spool_file_bytes = 0
        self.spool_refused_events = 0

    @classmethod
    def from_settings(cls, settings: "Settings", tz_of: TzOf = utc) -> "KafkaLedger":
        return cls(settings.kafka_bootstrap, settings.data_dir, topic_prefix=settings.topic_prefix,
                   tz_of=tz_of, gateway_id=settings.gateway_id,
                   spool_max_bytes=getattr(settings, "spool_max_bytes", DEFAULT_MAX_BYTES),
                   replication_factor=settings.kafka_replication_factor,
                   min_insync_replicas=settings.kafka_min_insync_replicas,
                   usage_key=settings.usage_key)

    # -- the Ledger protocol ---------------------------------------------------------
    def submit(self, event: UsageEvent) -> None:
        """Count the call locally and queue it; never blocks, never raises on Kafka trouble."""
        self.view.add_local(event)
        self._queue.append(event)
        self.events_submitted += 1
        self._wakeup.set()

    def begin(self, started: CallStarted) -> None:
        """Queue the call's started record, in order with usage events; never blocks. Durable once
        Kafka acks it (or the spool took it): see docs/ledger.md for the window before that."""
        self._queue.append(started)
        self.started_submitted += 1
        self._wakeup.set()

    async def start(self) -> None:
        """Open the spool (replaying a previous run's events into the view) and start the
        sender and the snapshot follower. Does not need Kafka: they connect and retry on their own."""
        spool = await asyncio.to_thread(Spool, self.spool_dir, max_bytes=self.spool_max_bytes)
        self.usage_key = await asyncio.to_thread(self._keying_of, spool)
        pending = spool.iter_pending()
        while chunk := await asyncio.to_thread(lambda: list(itertools.islice(pending, 5_000))):
            for ev in chunk:      # the snapshot does not show these yet: count them here meanwhile
                if isinstance(ev, UsageEvent):
                    self.view.add_local(ev)
        self.spool = spool
        self._refresh_spool_gauges()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._send_loop(), name="llmgw-ledger-sender"))
        if self.follower is not None:
            self._tasks.append(loop.create_task(self.follower.run(), name="llmgw-snapshot-follower"))
        if self.fold_watch is not None:
            self._tasks.append(loop.create_task(self.fold_watch.run(), name="llmgw-fold-watch"))

    def _keying_of(self, spool: Spool) -> str:
        """The keying this process sends with: the configured one, unless the spool holds records a
        process keyed otherwise. A spooled record may already be on Kafka (its ack was lost); sent again
        under another key it would land in another partition, whose fold cannot see it is a copy. So a
        spool is only ever continued with the keying it was written with (a spool from before keying
        was configurable was keyed by org), and a new keying takes effect at a start with an empty spool."""
        marker = self.spool_dir / "keying"
        if spool.depth_events:
            written = marker.read_text().strip() if marker.exists() else ORG_KEY
            if written != self.usage_key:
                log.warning("LLMGW_USAGE_KEY=%s waits for the spool to empty: its %d records were keyed by "
                            "%s, and so is everything this process sends", self.usage_key, spool.depth_events,
                            written, extra={"event": "ledger_keying_kept"})
            return written if written in USAGE_KEYS else ORG_KEY
        if not marker.exists() or marker.read_text().strip() != self.usage_key:
            with atomic_write(marker) as f:        # durable before any record is spooled under it
                f.write(self.usage_key + "\n")
        return self.usage_key

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until everything submitted so far is acked by Kafka (not merely spooled).
        Raises ``TimeoutError`` past the deadline."""
        async with asyncio.timeout(timeout_s):
            while self.backlog_events:
                await asyncio.sleep(0.005)

    async def recorded(self, event_ids: set[str]) -> set[str]:
        """None, as far as this producer can tell; and none needs to be: the ledger worker folds an
        ``event_id`` once within its dedup horizon (docs/ledger.md), so a repeated event counts once."""
        return set()

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Flush within the deadline, then spool whatever Kafka has not acked, and close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            await self.flush(timeout_s)
        except TimeoutError:
            log.error("ledger stop: %d events not on Kafka after %.1fs; they stay in the spool",
                      self.backlog_events, timeout_s, extra={"event": "ledger_stop_unflushed"})
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._spool_leftovers()
        if self.follower is not None:
            await self.follower.close()
        if self._producer is not None:
            await self._drop_producer(max(1.0, deadline - loop.time()), reason="ledger stopping")
        if self.spool is not None:
            await asyncio.to_thread(self.spool.close)

    # -- gauges ------------------------------------------------------------------------
    @property
    def backlog_events(self) -> int:
        """Submitted events Kafka has not acked yet (memory + in flight + spool)."""
        return len(self._queue) + len(self._overflow) + len(self._inflight) + self.spool_depth_events

    @property
    def overflow_events(self) -> int:
        return len(self._overflow)

    @property
    def snapshot_ready(self) -> bool:
        return self.follower is not None and self.follower.snapshot_ready

    @property
    def last_snapshot_ms(self) -> int:
        return self.follower.last_snapshot_ms if self.follower is not None else 0

    def health(self) -> LedgerHealth:
        fw = self.fold_watch
        return LedgerHealth(KAFKA, snapshot_ready=self.snapshot_ready, last_snapshot_ms=self.last_snapshot_ms,
                            backlog_events=self.backlog_events, spool_depth_events=self.spool_depth_events,
                            errors=self.send_failures + self.connect_failures,
                            fold_behind_since_ms=fw.behind_since_ms if fw else 0,
                            fold_lag=tuple(sorted(fw.lag.items())) if fw else (),
                            ledger_workers=fw.workers if fw else UNKNOWN_WORKERS)

    def stats(self) -> dict[str, int | bool]:
        """Everything a metrics exporter needs, in one call."""
        out: dict[str, int | bool] = {
            "events_submitted": self.events_submitted, "events_acked": self.events_acked,
            "events_spooled": self.events_spooled, "events_replayed": self.events_replayed,
            "send_failures": self.send_failures, "connect_failures": self.connect_failures,
            "kafka_connected": self.kafka_connected, "spool_full": self.spool_full,
            "queue_events": len(self._queue), "overflow_events": len(self._overflow),
            "spool_depth_events": self.spool_depth_events, "spool_depth_bytes": self.spool_depth_bytes,
            "spool_refused_events": self.spool_refused_events,
        }
        if self.follower is not None:
            out.update(self.follower.stats())
        if self.fold_watch is not None:
            out.update(self.fold_watch.stats())
        return out

    # -- the sender --------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            try:
                await self._step()
            except asyncio.CancelledError:
                raise
            except Exception:      # the loop must survive; nothing is dropped (events stay queued/spooled)
                log.exception("ledger sender: unexpected error; retrying", extra={"event": "ledger_sender_error"})
                await asyncio.sleep(self.retry_backoff_s)

    async def _step(self) -> None:
        if self._producer is None and not await self._connect():
            await self._spool_memory()
            await self._idle_until(self._next_connect_at)
        elif self._spooling:
            await self._spool_memory()
            await self._replay()
        else:
            await self._direct()

    @property
    def _spooling(self) -> bool:
        return bool(self._overflow) or self.spool_depth_events > 0

    async def _direct(self) -> None:
        """Normal path: the next batch from memory straight to Kafka."""
        if not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
            return
        n = min(len(self._queue), self.batch_max)
        self._inflight = [self._queue.popleft() for _ in range(n)]
        acked = await self._deliver(self._inflight)
        failed = [ev for ev, ok in zip(self._inflight, acked) if not ok]
        self._settle([ev for ev, ok in zip(self._inflight, acked) if ok])
        if failed:   # into overflow before any await: a cancellation now cannot lose them
            self._overflow.extend(failed)
            self._inflight = []
            log.error("Kafka did not ack %d of %d events within %.1fs; spooling them and what follows",
                      len(failed), n, self.send_timeout_s, extra={"event": "ledger_spooling"})
            await self._spool_memory()
        self._inflight = []

    async def _replay(self) -> None:
        """Spool path: the oldest spooled events to Kafka; ack them in the spool once Kafka did.

        Only a prefix of acked events leaves the spool; an acked event behind an unacked one keeps
        its settled delivery in ``_futures``, so the next try does not send it again."""
        spool = self.spool
        assert spool is not None
        batch = await self._off_loop(lambda: spool.peek(self.batch_max))
        if not batch:
            if self._overflow:   # the spool is empty but would not take the overflow: send it from memory
                await self._replay_overflow()
            else:                # nothing readable left (gauges catch up on the next spool call): never spin
                await self._idle_until(asyncio.get_running_loop().time() + self.retry_backoff_s)
            return
        acked = await self._deliver(batch)
        done = next((i for i, ok in enumerate(acked) if not ok), len(acked))
        if done:
            def settle(_: None) -> None:
                self._settle(batch[:done])
                self.events_replayed += done
            await self._off_loop(lambda: spool.ack(done), then=settle)
            if not self.spool_depth_events and not self._overflow:
                log.warning("spool drained: every spooled event is on Kafka (%d replayed so far)",
                            self.events_replayed, extra={"event": "ledger_spool_drained"})
        if done < len(batch):
            log.warning("Kafka still not taking events: %d in the spool, %d in memory",
                        self.spool_depth_events, len(self._overflow) + len(self._queue),
                        extra={"event": "ledger_replay_failed"})
            await self._idle_until(asyncio.get_running_loop().time() + self._next_backoff())
        else:
            self._backoff_s = self.retry_backoff_s

    async def _replay_overflow(self) -> None:
        n = min(len(self._overflow), self.batch_max)
        self._inflight = [self._overflow.popleft() for _ in range(n)]
        acked = await self._deliver(self._inflight)
        self._settle([ev for ev, ok in zip(self._inflight, acked) if ok])
        self._overflow.extendleft(reversed([ev for ev, ok in zip(self._inflight, acked) if not ok]))
        self._inflight = []
        if not all(acked):
            await self._idle_until(asyncio.get_running_loop().time() + self._next_backoff())

    def _settle(self, events: Sequence[Record]) -> None:
        """Acked events leave memory (and, before this, the spool): each is settled once, so this is
        where the view learns where the log put it (``placed_many``; the local sums drop it once the
        snapshot passes that position)."""
        placed = []
        for ev in events:
            fut = self._futures.pop(record_id(ev), None)
            if isinstance(ev, UsageEvent) and fut is not None and _delivered(fut):
                md = fut.result()
                placed.append((ev, md.partition, md.offset))
        self.view.placed_many(placed)
        self.events_acked += len(events)

    async def _deliver(self, batch: Sequence[Record]) -> list[bool]:
        """Send what is not already on its way, wait for acks until the deadline; which were acked.

        An event whose delivery is pending (or done) from an earlier try is waited for, not sent
        again: the idempotent producer retries it itself, so an outage does not multiply copies.
        A delivery that fails (not merely late) means the producer's sequence state for that
        partition is broken (aiokafka does not reset it, e.g. OutOfOrderSequenceNumber after
        batches expired during an outage): the producer is replaced and the event sent again.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.send_timeout_s
        sends = loop.create_task(self._send_missing(batch, deadline))
        try:
            await self._wait_for([sends], deadline + 1.0)   # it has its own deadline; this is a backstop
        finally:
            if not sends.done():
                sends.cancel()     # cancelling aiokafka's send() drops that one record: it stays unacked
                await asyncio.wait([sends])
        if sends.cancelled():
            futs: list[asyncio.Future[Any] | None] = [self._futures.get(record_id(ev)) for ev in batch]
            broken: BaseException | None = TimeoutError("send() did not return")
        else:
            futs, broken = sends.result()
        await self._wait_for([f for f in futs if f is not None], deadline)
        acked = []
        for ev, fut in zip(batch, futs):
            ok = fut is not None and _delivered(fut)
            if not ok and fut is not None and fut.done() and broken is None:
                broken = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            acked.append(ok)
        if not all(acked):
            self.send_failures += 1
        if broken is not None and not isinstance(broken, (TimeoutError, KafkaTimeoutError)):
            log.error("Kafka delivery failed (%r); replacing the producer", broken,
                      extra={"event": "ledger_producer_failed"})
            self._backoff_s = self.retry_backoff_s     # the broker answered: reconnect at once
            await self._drop_producer(self.connect_timeout_s, reason=repr(broken))
        return acked

    async def _send_missing(self, batch: Sequence[Record], deadline: float
                            ) -> tuple[list[asyncio.Future[Any] | None], BaseException | None]:
        """Hand the producer every event that has no live delivery; (delivery per event, first error)."""
        producer = self._producer
        assert producer is not None
        futs: list[asyncio.Future[Any] | None] = []
        broken: BaseException | None = None
        for ev in batch:
            rid = record_id(ev)
            fut = self._futures.get(rid)
            if fut is None or (fut.done() and not _delivered(fut)):
                fut = None
                if broken is None:
                    try:
                        async with asyncio.timeout_at(deadline):
                            fut = await producer.send(self.usage_topic, encode_record(ev),
                                                      key=usage_key_of(ev, self.usage_key))
                    except (TimeoutError, KafkaError) as exc:
                        broken = exc
                    if fut is not None:
                        fut.add_done_callback(_retrieve)
                        self._futures[rid] = fut
            futs.append(fut)
        return futs, broken

    async def _wait_for(self, futs: Sequence[asyncio.Future[Any]], deadline: float) -> None:
        """Wait until every future is done or the deadline. While spooling, new submissions go to the
        spool as they come, so they never wait in memory for a broker that is away."""
        loop = asyncio.get_running_loop()
        if not self._spooling:
            pending = [f for f in futs if not f.done()]
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()))
            return
        while (pending := [f for f in futs if not f.done()]) and (left := deadline - loop.time()) > 0:
            self._wakeup.clear()
            woke = loop.create_task(self._wakeup.wait())
            try:
                await asyncio.wait([*pending, woke], timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                woke.cancel()
            if self._spooling:
                await self._spool_memory()

    # -- producer lifecycle ------------------------------------------------------------
    async def _connect(self) -> bool:
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_connect_at:
            return False
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, client_id=self._client_id("usage"),
                                    enable_idempotence=True, acks="all", linger_ms=self.linger_ms,
                                    request_timeout_ms=15_000, retry_backoff_ms=200)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if self.create_topics:   # idempotent; the worker calls the same on its start
                    self.topics = await ensure_topics(self.bootstrap, self.topics,
                                                      timeout_s=self.connect_timeout_s,
                                                      replication_factor=self.replication[0],
                                                      min_insync_replicas=self.replication[1])
                    self.create_topics = False
                await producer.start()
                await producer.partitions_for(self.usage_topic)   # the topic exists and has leaders
        except (KafkaError, OSError, RuntimeError) as exc:   # RuntimeError: TopicLayoutError
            self.connect_failures += 1
            self.kafka_connected = False
            backoff = self._next_backoff()
            self._next_connect_at = loop.time() + backoff
            log.error("Kafka at %s unavailable for %s (%r); events go to the spool (%d there); retry in %.1fs",
                      self.bootstrap, self.usage_topic, exc, self.spool_depth_events,
                      backoff, extra={"event": "ledger_kafka_unavailable"})
            await self._close_producer(producer, 2.0)
            return False
        self._producer = producer
        self.kafka_connected = True
        self._backoff_s = self.retry_backoff_s
        log.info("Kafka producer connected to %s", self.bootstrap, extra={"event": "ledger_kafka_connected"})
        return True

    async def _drop_producer(self, timeout_s: float, reason: str) -> None:
        producer, self._producer = self._producer, None
        self.kafka_connected = False
        self._next_connect_at = asyncio.get_running_loop().time() + self._next_backoff()
        if producer is not None:
            await self._close_producer(producer, timeout_s, reason)
        # settled deliveries stay known (no second copy of those); the rest are sent again
        self._futures = {k: f for k, f in self._futures.items() if _delivered(f)}

    async def _close_producer(self, producer: AIOKafkaProducer, timeout_s: float, reason: str = "") -> None:
        if any(not f.done() for f in self._futures.values()):
            # An idempotent producer retries forever, so stop() would wait for a broker that is gone.
            # Those events are in the spool; fail their deliveries so stop() returns. aiokafka 0.14 has
            # no public close-without-flush, hence the private accumulator.
            producer._message_accumulator.fail_all(
                KafkaConnectionError(f"llmgw: producer closed ({reason}); undelivered events are spooled"))
        try:
            async with asyncio.timeout(timeout_s):
                await producer.stop()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.error("Kafka producer did not close cleanly: %r", exc)

    def _next_backoff(self) -> float:
        b = self._backoff_s
        self._backoff_s = min(_MAX_BACKOFF_S, self._backoff_s * 2)
        return b

    def _client_id(self, role: str) -> str:
        return f"llmgw-{role}-{self.gateway_id}" if self.gateway_id else f"llmgw-{role}"

    # -- the spool side ------------------------------------------------------------------
    async def _spool_memory(self) -> None:
        """Move overflow then queue (oldest first) into the spool; a full spool keeps them in overflow."""
        if not self._queue and not self._overflow:
            return
        self._overflow.extend(self._queue)
        self._queue.clear()
        spool = self.spool
        if spool is None:
            return
        if self.spool_full and self.spool_file_bytes >= self._refused_at_bytes:
            return        # nothing was freed since the last refusal; don't log a refusal per event
        while self._overflow:
            chunk = [self._overflow[i] for i in range(min(len(self._overflow), self.batch_max))]
            written = await self._off_loop(lambda: spool.append(chunk, partial=True), then=self._spooled)
            if written < len(chunk):
                if not self.spool_full:
                    log.error("spool full: %d events held in memory until Kafka or the spool takes them; "
                              "they are lost if the process dies", len(self._overflow),
                              extra={"event": "ledger_spool_full"})
                self.spool_full = True
                self._refused_at_bytes = self.spool_file_bytes
                return
        self.spool_full = False

    def _spooled(self, n: int) -> None:
        """Bookkeeping after an append wrote the first ``n`` events of the overflow."""
        for _ in range(n):
            self._overflow.popleft()
        self.events_spooled += n

    async def _off_loop(self, fn: Callable[[], T], then: Callable[[T], None] | None = None) -> T:
        """Run a spool call in a thread (its fsync stays off the event loop), then ``then(result)``
        on the loop. Even when cancelled it first waits for the call and runs ``then``: the spool is
        never used by two threads at once, and what the call did is always accounted for."""
        fut = asyncio.ensure_future(asyncio.to_thread(fn))
        cancelled = False
        while not fut.done():
            try:
                await asyncio.wait([fut])     # never cancels fut, never raises fn's error
            except asyncio.CancelledError:
                cancelled = True
        self._refresh_spool_gauges()
        result = fut.result()
        if then is not None:
            then(result)
        if cancelled:
            raise asyncio.CancelledError
        return result

    def _refresh_spool_gauges(self) -> None:
        """Copy the spool's depth to plain attributes, read on the loop only while no thread is in it."""
        s = self.spool
        if s is not None:
            self.spool_depth_events, self.spool_depth_bytes = s.depth_events, s.depth_bytes
            self.spool_file_bytes, self.spool_refused_events = s.file_bytes, s.refused_events

    async def _spool_leftovers(self) -> None:
        """At stop, with the sender gone: make every unacked event durable."""
        acked = {rid for ev in self._inflight
                 if (f := self._futures.get(rid := record_id(ev))) is not None and _delivered(f)}
        self._settle([ev for ev in self._inflight if record_id(ev) in acked])
        inflight = [ev for ev in self._inflight if record_id(ev) not in acked]
        self._overflow.extendleft(reversed(inflight))
        self._inflight = []
        self.spool_full = False
        await self._spool_memory()
        if self._overflow:
            log.critical("ledger stop: the spool is full; %d events could not be made durable and are lost",
                         len(self._overflow), extra={"event": "ledger_events_lost"})

    async def _idle_until(self, when: float) -> None:
        """Wait until ``when``, spooling new submissions as they come (they must not wait in memory)."""
        loop = asyncio.get_running_loop()
        while (left := when - loop.time()) > 0:
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            await self._spool_memory()


class SnapshotFollower:
    """Reads the snapshot topic into a ``SpendView`` from the beginning, then keeps following it.

    ``snapshot_ready``: caught up to the end offsets the topic had when following started.
    ``last_snapshot_ms``: wall clock (ms) of the last fetch that found us at the end of every
    partition, i.e. the view was complete as of then (staleness = now - last_snapshot_ms).
    ``last_record_delay_ms``: for the last record applied, apply time minus its Kafka timestamp.
    """

    def __init__(self, bootstrap: str, topic: str, view: SpendView, *, client_id: str = "llmgw-snapshots",
                 retry_backoff_s: float = 0.5, poll_ms: int = 200, fetch_max_wait_ms: int = 500) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.view = view
        self.client_id = client_id
        self.retry_backoff_s = retry_backoff_s
        self.poll_ms = poll_ms
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.snapshot_ready = False
        self.last_snapshot_ms = 0
        self.last_record_ts_ms = 0
        self.last_record_delay_ms = 0
        self.records_applied = 0
        self.bad_records = 0
        self.progress_ms: dict[int, int] = {}    # usage partition -> timestamp of its last progress record
        self._positions: dict[int, int] = {}     # next offset per partition, kept across reconnects
        self._consumer: AIOKafkaConsumer | None = None

    def stats(self) -> dict[str, int | bool]:
        return {"snapshot_ready": self.snapshot_ready, "last_snapshot_ms": self.last_snapshot_ms,
                "last_record_delay_ms": self.last_record_delay_ms, "snapshot_records": self.records_applied,
                "snapshot_bad_records": self.bad_records}

    async def run(self) -> None:
        backoff = self.retry_backoff_s
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id=self.client_id,
                                        enable_auto_commit=False, auto_offset_reset="earliest",
                                        isolation_level="read_committed", fetch_max_wait_ms=self.fetch_max_wait_ms)
            self._consumer = consumer
            try:
                await consumer.start()
                backoff = self.retry_backoff_s
                await self._follow(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # top of a background loop: log, back off, reconnect
                log.error("snapshot follower: %r; retrying in %.1fs", exc, backoff,
                          extra={"event": "ledger_snapshot_follower_error"})
            finally:
                self._consumer = None
                await _stop_quietly(consumer)
            await asyncio.sleep(backoff)
            backoff = min(_MAX_BACKOFF_S, backoff * 2)

    async def close(self) -> None:
        if self._consumer is not None:
            await _stop_quietly(self._consumer)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        tps = await self._partitions()
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, self._positions.get(tp.partition, 0))
        end = await consumer.end_offsets(tps)
        while True:
            batches = await consumer.getmany(timeout_ms=self.poll_ms, max_records=2_000)  # short loop slices
            for records in batches.values():
                for rec in records:
                    self._apply(rec)
            for tp in tps:
                self._positions[tp.partition] = await consumer.position(tp)
            if not self.snapshot_ready and all(self._positions[tp.partition] >= end[tp] for tp in tps):
                self.snapshot_ready = True
                self.last_snapshot_ms = int(time.time() * 1000)
                log.info("snapshot follower caught up: %d records from %s", self.records_applied, self.topic,
                         extra={"event": "ledger_snapshot_ready"})
            self._mark_caught_up(consumer, tps)

    async def _partitions(self) -> list[TopicPartition]:
        """The snapshot topic's partitions, once it exists (the processor creates it)."""
        warned = False
        while True:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
            try:
                await admin.start()
                meta = (await admin.describe_topics([self.topic]))[0]
            finally:
                await admin.close()
            parts = sorted(p["partition"] for p in meta["partitions"])
            if meta["error_code"] == 0 and parts:
                return [TopicPartition(self.topic, p) for p in parts]
            if not warned:
                log.warning("snapshot topic %s does not exist yet; waiting for the ledger processor to create it",
                            self.topic, extra={"event": "ledger_snapshot_topic_missing"})
                warned = True
            await asyncio.sleep(self.retry_backoff_s)

    def _mark_caught_up(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> None:
        """The view is complete as of the oldest fetch that found a partition at its end."""
        oldest = None
        for tp in tps:
            lso, fetched_ms = consumer.last_stable_offset(tp), consumer.last_poll_timestamp(tp)
            if lso is None or fetched_ms is None or self._positions[tp.partition] < lso:
                return
            oldest = fetched_ms if oldest is None else min(oldest, fetched_ms)
        if oldest is not None and self.snapshot_ready:
            self.last_snapshot_ms = max(self.last_snapshot_ms, oldest)

    def _apply(self, rec: "ConsumerRecord[bytes, bytes]") -> None:
        try:
            key = rec.key.decode() if rec.key is not None else ""
            if is_progress_key(key):
                if rec.value is not None:   # co-partitioned: the record's partition is its usage partition
                    self.view.advance(rec.partition, decode_progress(rec.value))
                    self.progress_ms[rec.partition] = rec.timestamp
            elif key:   # the partition's partial totals of the key; the view sums the partitions
                self.view.apply_snapshot(key, decode_snapshot(rec.value), rec.partition)
            else:
                raise ValueError("record without a key")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.bad_records += 1
            log.error("snapshot follower: skipping unreadable record %s[%d]@%d: %r", rec.topic, rec.partition,
                      rec.offset, exc, extra={"event": "ledger_snapshot_bad_record"})
            return
        now_ms = int(time.time() * 1000)
        self.records_applied += 1
        self.last_record_ts_ms = rec.timestamp
        self.last_record_delay_ms = max(0, now_ms - rec.timestamp)


async def _stop_quietly(consumer: AIOKafkaConsumer) -> None:
    try:
        await consumer.stop()
    except (KafkaError, OSError) as exc:
        log.warning("snapshot consumer did not close cleanly: %r", exc)


__all__ = ["KafkaLedger", "SnapshotFollower"]
