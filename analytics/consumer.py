"""The Kafka sink: ``{prefix}.usage`` into ClickHouse, each event once, with bounded lag.

One consumer in the group ``{prefix}-analytics`` (``read_committed``, no
auto-commit) buffers the records of each partition it owns and flushes a
partition when its buffer holds ``max_batch_events`` records or its oldest
record has waited ``max_wait_s``. A flush is one ``Sink.insert`` (in a worker
thread) with the token ``kafka:{topic}:{partition}:{first}-{last}``, and only
after the insert returned is offset ``last + 1`` committed. So:

- a crash before the commit re-delivers the batch; cut the same way it is
  dropped by its token, cut differently its events are dropped by the sink's
  known-id filter (``analytics/sink.py``), rollups included;
- an event re-sent by a proxy (same ``event_id``, a later offset) is dropped by
  the same filter;
- lag is bounded: a record reaches ClickHouse within ``max_wait_s`` plus one
  insert, and a partition whose buffer is full is paused until it is flushed,
  so memory is bounded while ClickHouse is down (the insert is retried with
  backoff and nothing is committed meanwhile).

A record that is not a usage event is logged, counted and skipped (its offset
is committed with the batch): one bad record must not stop the partition.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import (
    AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition)
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from llmgw.analytics import store
from llmgw.analytics.sink import Sink, check_event
from llmgw.ledger.topics import TopicLayoutError, partitions_of
from llmgw.core.events import UsageEvent, decode
from llmgw.ledger.orphans import is_tick
from llmgw.ledger.started import is_started

log = logging.getLogger("llmgw.analytics.sink")

DEFAULT_MAX_BATCH_EVENTS = 5000
DEFAULT_MAX_WAIT_S = 1.0
_RETRY_MIN_S, _RETRY_MAX_S = 0.5, 30.0


def group_id(topic_prefix: str) -> str:
    """The sink's consumer group: one per deployment, separate from the ledger's."""
    return f"{topic_prefix}-analytics"


def batch_token(topic: str, partition: int, first: int, last: int) -> str:
    """The insert deduplication token of one batch: the same offsets give the same token."""
    return f"kafka:{topic}:{partition}:{first}-{last}"


@dataclass(frozen=True, slots=True)
class SinkOptions:
    bootstrap: str
    topic: str
    group_id: str
    max_batch_events: int = DEFAULT_MAX_BATCH_EVENTS
    max_wait_s: float = DEFAULT_MAX_WAIT_S
    session_timeout_ms: int = 10_000
    # Chaos tests only: hold each batch this long between its insert and its commit.
    pause_after_insert_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch_events < 1:
            raise ValueError("max_batch_events must be at least 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s cannot be negative")


@dataclass(slots=True)
class _Buffer:
    records: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    since: float = 0.0            # monotonic time the oldest buffered record arrived


def decode_batch(records: Sequence[ConsumerRecord[bytes, bytes]]) -> tuple[list[UsageEvent], int]:
    """The usage events of ``records`` and how many records were not usable (logged). A call's
    started record and a ledger worker's tick share the topic; they are not usage and are passed over."""
    events: list[UsageEvent] = []
    bad = 0
    for r in records:
        try:
            if r.value is None:
                raise ValueError("empty record")
            raw = orjson.loads(r.value)
            if isinstance(raw, dict) and (is_started(raw) or is_tick(raw)):
                continue
            event = decode(raw)
            check_event(event)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:   # whatever decode makes of junk
            bad += 1
            log.error("%s[%d] offset %d: not a usable usage event, skipped: %s",
                      r.topic, r.partition, r.offset, exc, extra={"event": "sink_bad_record"})
            continue
        events.append(event)
    return events, bad


class KafkaSink:
    """Consumes one usage topic into one ``Sink``; ``run`` until ``stop`` is set."""

    def __init__(self, sink: Sink, options: SinkOptions) -> None:
        self.sink = sink
        self.options = options
        self._buffers: dict[TopicPartition, _Buffer] = {}
        self._paused: set[TopicPartition] = set()
        self._flush_lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        # counters, for logs and metrics
        self.batches = 0
        self.events_inserted = 0        # sent to ClickHouse (after dropping known ids)
        self.records_committed = 0
        self.records_skipped = 0
        self.insert_failures = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set, then flush what is buffered (one try) and leave the group."""
        opts = self.options
        consumer = AIOKafkaConsumer(
            bootstrap_servers=opts.bootstrap, group_id=opts.group_id, client_id=f"{opts.group_id}-sink",
            enable_auto_commit=False, isolation_level="read_committed", auto_offset_reset="earliest",
            session_timeout_ms=opts.session_timeout_ms, max_poll_records=opts.max_batch_events)
        consumer.subscribe([opts.topic], listener=_Revocations(self))
        self._consumer = consumer
        await consumer.start()
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=self._poll_timeout_ms(),
                                                 max_records=opts.max_batch_events)
                now = time.monotonic()
                for tp, records in fetched.items():
                    buf = self._buffers.setdefault(tp, _Buffer())
                    if not buf.records:
                        buf.since = now
                    buf.records.extend(records)
                    if len(buf.records) >= opts.max_batch_events and tp not in self._paused:
                        consumer.pause(tp)          # bounded memory: fetch again once flushed
                        self._paused.add(tp)
                await self._flush_due(stop)
            await self._flush_all()
        finally:
            self._consumer = None
            await consumer.stop()

    def _poll_timeout_ms(self) -> int:
        wait_s = min(self.options.max_wait_s, 0.5)
        if self._buffers:
            oldest = min((b.since for b in self._buffers.values() if b.records), default=None)
            if oldest is not None:
                wait_s = min(wait_s, max(0.0, oldest + self.options.max_wait_s - time.monotonic()))
        return max(1, int(wait_s * 1000))

    async def _flush_due(self, stop: asyncio.Event) -> None:
        now = time.monotonic()
        for tp, buf in list(self._buffers.items()):
            if not buf.records:
                continue
            if len(buf.records) >= self.options.max_batch_events or now - buf.since >= self.options.max_wait_s:
                await self._flush_partition(tp, retry_until=stop)

    async def _flush_all(self) -> None:
        """At shutdown: one try per partition; what fails is simply re-read by the next run."""
        for tp in list(self._buffers):
            try:
                await self._flush_partition(tp, retry_until=None)
            except Exception as exc:   # shutdown path: log and leave the rest uncommitted
                log.error("%s[%d]: final flush failed, left for the next run: %r", tp.topic, tp.partition, exc)

    async def _flush_partition(self, tp: TopicPartition, retry_until: asyncio.Event | None) -> None:
        """Insert then commit the partition's buffer, ``max_batch_events`` records at a time.

        With ``retry_until`` a failing insert is retried with backoff until it
        succeeds or the event is set; without it the error propagates.
        """
        async with self._flush_lock:
            buf = self._buffers.get(tp)
            while buf is not None and buf.records:
                chunk = buf.records[:self.options.max_batch_events]
                if not await self._insert_with_retry(tp, chunk, retry_until):
                    return
                committed = await self._commit(tp, chunk[-1].offset + 1)
                del buf.records[:len(chunk)]
                buf.since = time.monotonic()
                if not committed or self._buffers.get(tp) is not buf:
                    self._buffers.pop(tp, None)   # taken from us: its next owner re-reads it
                    return
                self.records_committed += len(chunk)
            self._buffers.pop(tp, None)
            if tp in self._paused and self._consumer is not None:
                self._paused.discard(tp)
                if tp in self._consumer.assignment():
                    self._consumer.resume(tp)

    async def _insert_with_retry(self, tp: TopicPartition, chunk: list[ConsumerRecord[bytes, bytes]],
                                 retry_until: asyncio.Event | None) -> bool:
        events, bad = decode_batch(chunk)
        first, last = chunk[0].offset, chunk[-1].offset
        token = batch_token(tp.topic, tp.partition, first, last)
        backoff = _RETRY_MIN_S
        while True:
            try:
                sent = await asyncio.to_thread(self.sink.insert, events, token) if events else 0
                break
            except Exception as exc:   # ClickHouse down or refusing: keep the batch, commit nothing
                self.insert_failures += 1
                if retry_until is None:
                    raise
                log.error("%s[%d] offsets %d-%d: insert failed, retrying in %.1fs: %r",
                          tp.topic, tp.partition, first, last, backoff, exc,
                          extra={"event": "sink_insert_failed"})
                try:
                    await asyncio.wait_for(retry_until.wait(), timeout=backoff)
                    return False     # stopping: leave it uncommitted
                except TimeoutError:
                    backoff = min(backoff * 2, _RETRY_MAX_S)
        self.batches += 1
        self.events_inserted += sent
        self.records_skipped += bad
        log.info("inserted %s[%d] offsets %d-%d: %d records, %d new events, %d known, %d skipped",
                 tp.topic, tp.partition, first, last, len(chunk), sent, len(events) - sent, bad,
                 extra={"event": "sink_inserted"})
        if self.options.pause_after_insert_s:
            await asyncio.sleep(self.options.pause_after_insert_s)
        return True

    async def _commit(self, tp: TopicPartition, next_offset: int) -> bool:
        consumer = self._consumer
        if consumer is None:
            return False
        try:
            await consumer.commit({tp: next_offset})
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("%s[%d]: commit of offset %d refused (%r); the partition's next owner re-reads it",
                        tp.topic, tp.partition, next_offset, exc, extra={"event": "sink_commit_refused"})
            return False
        log.info("committed %s[%d] at %d", tp.topic, tp.partition, next_offset, extra={"event": "sink_committed"})
        return True

    async def drop(self, partitions: Sequence[TopicPartition], wait_s: float = 10.0) -> None:
        """Forget buffered records of partitions we lost.

        Waits (boundedly: the whole group waits for this callback) for a flush
        in flight to commit first, which saves its new owner re-reading it.
        """
        try:
            await asyncio.wait_for(self._flush_lock.acquire(), timeout=wait_s)
        except TimeoutError:
            log.warning("partitions revoked while a flush is stuck; dropping their buffers anyway")
            locked = False
        else:
            locked = True
        try:
            for tp in partitions:
                self._buffers.pop(tp, None)
                self._paused.discard(tp)
        finally:
            if locked:
                self._flush_lock.release()


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: KafkaSink) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self._owner.drop(list(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned),
                 extra={"event": "sink_assigned"})


async def serve(dsn: str, options: SinkOptions, database: str | None = None,
                stop: asyncio.Event | None = None) -> int:
    """Run the sink until SIGTERM/SIGINT (or ``stop``); 0 after a clean stop.

    Opens the store (``chdb://...`` embedded in this process, or a server) and
    applies the schema first, so a fresh store works at once.
    """
    client = await asyncio.to_thread(store.connect, dsn, database=database)
    sink = Sink(client, str(client.database))
    await asyncio.to_thread(sink.ensure_schema)
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    try:
        await partitions_of(options.bootstrap, options.topic)
    except (TopicLayoutError, KafkaError) as exc:
        log.warning("%s: %s; waiting for it to appear", options.topic, exc)
    consumer = KafkaSink(sink, options)
    log.info("analytics sink started: %s -> %s (group %s, batches of up to %d events, %.1fs max wait)",
             options.topic, store.Target.from_dsn(dsn).kind, options.group_id, options.max_batch_events,
             options.max_wait_s, extra={"event": "sink_started"})
    await consumer.run(stop)
    log.info("analytics sink stopped: %d batches, %d events inserted, %d records skipped",
             consumer.batches, consumer.events_inserted, consumer.records_skipped,
             extra={"event": "sink_stopped"})
    return 0


__all__ = ["DEFAULT_MAX_BATCH_EVENTS", "DEFAULT_MAX_WAIT_S", "KafkaSink", "SinkOptions", "batch_token",
           "decode_batch", "group_id", "serve"]
