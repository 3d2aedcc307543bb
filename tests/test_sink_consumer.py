"""The Kafka sink in-process, on the real broker and the session's chDB: bounded lag, a ClickHouse
outage (the table detached under it), and records that are not usage events."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from llmgw.analytics import queries
from llmgw.analytics.consumer import KafkaSink, SinkOptions, batch_token, decode_batch
from llmgw.core.events import Tokens, encode, new_event_id
from tests.fixtures.chdb import AnalyticsDB, usage_event
from tests.fixtures.kafka import create_topics, unique_topic
from tests.waits import until

pytestmark = pytest.mark.kafka


class Running:
    def __init__(self, sink: KafkaSink, task: asyncio.Task[None], stop: asyncio.Event, bootstrap: str) -> None:
        self.sink, self.task, self.stop, self.bootstrap = sink, task, stop, bootstrap

    async def committed(self) -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            offsets = await admin.list_consumer_group_offsets(self.sink.options.group_id)
        finally:
            await admin.close()
        return sum(meta.offset for meta in offsets.values())


@pytest.fixture
async def running(kafka_bootstrap: str, analytics_db: AnalyticsDB) -> AsyncIterator[Running]:
    topic = unique_topic("sink") + ".usage"
    await create_topics(kafka_bootstrap, {topic: 4})
    options = SinkOptions(kafka_bootstrap, topic, f"{topic}-analytics", max_batch_events=50, max_wait_s=0.2,
                          session_timeout_ms=6000)
    sink = KafkaSink(analytics_db.sink, options)
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(sink.run(stop))
    try:
        yield Running(sink, task, stop, kafka_bootstrap)
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


async def _produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, key=k, value=v) for k, v in values])
    finally:
        await producer.stop()


def _stored(db: AnalyticsDB) -> tuple[int, int]:
    rows = queries.spend(db.client, db.database, [], 0, 2**62)
    return (rows[0].requests, rows[0].cost_micro_usd) if rows else (0, 0)


async def test_events_land_within_the_wait_bound(running: Running, analytics_db: AnalyticsDB) -> None:
    events = [usage_event(i, org=f"org-{i % 5}", event_id=new_event_id()) for i in range(333)]
    await _produce(running.bootstrap, running.sink.options.topic,
                   [(e.ledger_key.encode(), encode(e)) for e in events])
    want = (len(events), sum(e.cost_micro_usd for e in events))

    async def landed() -> bool:
        return await asyncio.to_thread(_stored, analytics_db) == want
    await until(landed)
    # One trickling event is not held back waiting for a full batch: it lands within max_wait plus an insert.
    late = usage_event(999, event_id=new_event_id())
    sent_at = time.monotonic()
    await _produce(running.bootstrap, running.sink.options.topic, [(late.ledger_key.encode(), encode(late))])

    async def late_landed() -> bool:
        return (await asyncio.to_thread(_stored, analytics_db))[0] == len(events) + 1
    await until(late_landed, timeout_s=10)
    assert time.monotonic() - sent_at < 5.0
    await until(lambda: _committed_is(running, len(events) + 1))
    assert running.sink.batches >= 8                       # 333 events in batches of at most 50


async def _committed_is(running: Running, offset_sum: int) -> bool:
    return await running.committed() == offset_sum


async def test_clickhouse_outage_commits_nothing_then_catches_up(running: Running, analytics_db: AnalyticsDB) -> None:
    db = analytics_db
    first = [usage_event(i, event_id=new_event_id()) for i in range(20)]
    await _produce(running.bootstrap, running.sink.options.topic, [(e.ledger_key.encode(), encode(e)) for e in first])
    await until(lambda: _committed_is(running, 20))
    db.client.command(f"DETACH TABLE {db.database}.usage_events")       # ClickHouse refuses every insert
    try:
        second = [usage_event(100 + i, event_id=new_event_id()) for i in range(30)]
        await _produce(running.bootstrap, running.sink.options.topic,
                       [(e.ledger_key.encode(), encode(e)) for e in second])
        await until(lambda: asyncio.sleep(0, result=running.sink.insert_failures >= 2))
        assert await running.committed() == 20                            # nothing committed past the outage
    finally:
        db.client.command(f"ATTACH TABLE {db.database}.usage_events")
    await until(lambda: _committed_is(running, 50), timeout_s=60)
    assert _stored(db) == (50, sum(e.cost_micro_usd for e in first + second))


async def test_unusable_records_are_skipped_and_committed(running: Running, analytics_db: AnalyticsDB) -> None:
    good = usage_event(1, event_id=new_event_id())
    bad_tokens = usage_event(2, event_id=new_event_id(), tokens=Tokens(input=-5))
    records = [(b"acme", b"not json"), (b"acme", b'{"event_id": "x"}'), (b"acme", encode(bad_tokens)),
               (b"acme", encode(good))]
    await _produce(running.bootstrap, running.sink.options.topic, records)
    await until(lambda: _committed_is(running, 4))
    assert _stored(analytics_db) == (1, good.cost_micro_usd) and running.sink.records_skipped == 3


def test_token_and_decoding() -> None:
    assert batch_token("llmgw.usage", 3, 1200, 1299) == "kafka:llmgw.usage:3:1200-1299"

    class Record:
        def __init__(self, offset: int, value: bytes | None) -> None:
            self.topic, self.partition, self.offset, self.value = "t", 0, offset, value

    good = usage_event(1)
    events, bad = decode_batch([Record(0, encode(good)), Record(1, None), Record(2, b"[]")])  # type: ignore[list-item]
    assert events == [good] and bad == 2
