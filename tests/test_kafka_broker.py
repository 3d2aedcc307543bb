"""The session broker behaves like the Kafka the ledger relies on: idempotent keyed writes,
transactions hidden from read_committed readers until committed, and durability across restarts."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from tests.fixtures.kafka import KafkaBroker, create_topics, unique_topic

pytestmark = pytest.mark.kafka

TEST_TIMEOUT_S = 60


async def consume(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    isolation_level: str = "read_uncommitted",
    idle_s: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read a topic from the start until ``count`` records came and then ``idle_s`` passed with none.

    The idle wait makes "no more than count" observable too: extra records would show up in it.
    """
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level=isolation_level,
    )
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        while len(records) < count:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        for batch in (await consumer.getmany(timeout_ms=int(idle_s * 1000))).values():
            records.extend(batch)
    finally:
        await consumer.stop()
    return records


def idempotent_producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")


async def test_idempotent_producer_keyed_records_read_back_in_key_order(kafka_bootstrap: str) -> None:
    topic = unique_topic("idem")
    await create_topics(kafka_bootstrap, {topic: 4})
    sent = [(f"budget-{i % 25}".encode(), str(i).encode()) for i in range(2_000)]
    async with asyncio.timeout(TEST_TIMEOUT_S):
        producer = idempotent_producer(kafka_bootstrap)
        await producer.start()
        try:
            batch = [await producer.send(topic, value=value, key=key) for key, value in sent]
            metadata = await asyncio.gather(*batch)
        finally:
            await producer.stop()
        records = await consume(kafka_bootstrap, topic, len(sent))

    assert {m.partition for m in metadata} == {0, 1, 2, 3}
    assert sorted((r.key, r.value) for r in records) == sorted(sent)
    partitions_by_key: dict[bytes | None, set[int]] = {}
    for r in records:
        partitions_by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions_by_key.values()), "one key, one partition"
    by_offset = sorted(records, key=lambda r: (r.partition, r.offset))
    for key in partitions_by_key:
        values = [int(r.value or b"") for r in by_offset if r.key == key]
        assert values == sorted(values), f"{key!r} out of order"


async def test_read_committed_sees_committed_transactions_only(kafka_bootstrap: str) -> None:
    topic = unique_topic("txn")
    await create_topics(kafka_bootstrap, {topic: 1})
    async with asyncio.timeout(TEST_TIMEOUT_S):
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic}-p0")
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send_and_wait(topic, b"first", key=b"k")
            with pytest.raises(RuntimeError, match="abort me"):
                async with producer.transaction():
                    await producer.send_and_wait(topic, b"aborted", key=b"k")
                    raise RuntimeError("abort me")
            async with producer.transaction():
                await producer.send_and_wait(topic, b"second", key=b"k")
        finally:
            await producer.stop()
        committed = await consume(kafka_bootstrap, topic, 2, isolation_level="read_committed")
        uncommitted = await consume(kafka_bootstrap, topic, 3, isolation_level="read_uncommitted")

    assert [r.value for r in committed] == [b"first", b"second"]
    # the control: the aborted record is in the log, so read_committed really filtered it out
    assert [r.value for r in uncommitted] == [b"first", b"aborted", b"second"]


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
async def test_restart_keeps_committed_records_and_offsets(kafka_broker: KafkaBroker, kill: bool) -> None:
    bootstrap = kafka_broker.bootstrap
    topic, group = unique_topic("restart"), unique_topic("group")
    await create_topics(bootstrap, {topic: 2})
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await produce_committed(bootstrap, topic)
        await commit_offset(bootstrap, group, TopicPartition(topic, 0), 7)

        await kafka_broker.astop(kill=kill)
        assert not kafka_broker.is_running()
        try:
            assert await kafka_broker.astart() == bootstrap, "restart keeps the same address"
        finally:
            if not kafka_broker.is_running():  # leave a broker for the rest of the session
                await kafka_broker.astart()

        committed = await consume(bootstrap, topic, 200, isolation_level="read_committed")
        offset = await committed_offset(bootstrap, group, TopicPartition(topic, 0))
        await produce_committed(bootstrap, topic)  # and it takes new writes

    assert sorted(int(r.value or b"") for r in committed) == list(range(200))
    assert offset == 7


async def produce_committed(bootstrap: str, topic: str) -> None:
    """100 idempotent records acked by the broker, then 100 in one committed transaction."""
    producer = idempotent_producer(bootstrap)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, str(i).encode(), key=b"a") for i in range(100)])
    finally:
        await producer.stop()
    txn = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-txn")
    await txn.start()
    try:
        async with txn.transaction():
            for i in range(100, 200):
                await txn.send(topic, str(i).encode(), key=b"b")
    finally:
        await txn.stop()


async def commit_offset(bootstrap: str, group: str, tp: TopicPartition, offset: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.commit({tp: OffsetAndMetadata(offset, "")})
    finally:
        await consumer.stop()


async def committed_offset(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        offset: int | None = await consumer.committed(tp)
    finally:
        await consumer.stop()
    return offset
