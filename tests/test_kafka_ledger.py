"""The proxy side of the Kafka ledger, on the real broker: delivery, outage and spool, replay after a
restart, the snapshot follower, and the config log on Kafka."""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.ledger.configlog import open_config_log
from llmgw.core.events import Tokens, UsageEvent, decode, new_event_id
from llmgw.ledger.fold import Totals, fold_all, keys_of
from llmgw.ledger.kafka_config import KafkaConfigLog
from llmgw.ledger.kafka_ledger import KafkaLedger
from llmgw.ledger.started import usage_key
from llmgw.ledger.topics import encode_progress, encode_snapshot, progress_key
from tests.fixtures.kafka import KafkaBroker, create_topics, unique_topic

pytestmark = pytest.mark.kafka

DEAD_BOOTSTRAP = "127.0.0.1:9"   # discard port: nothing listens, connections are refused at once


def event(i: int, org: str = "acme", cost: int = 1_000) -> UsageEvent:
    now = int(time.time() * 1000)
    return UsageEvent(event_id=new_event_id(), ts_start_ms=now, ts_end_ms=now + 50, org=org, workspace="ws",
                      user=f"u{i % 3}", key_id=f"k-{org}-{i % 4}", provider="openai", api="chat",
                      model_requested="gpt-4o", model_served="gpt-4o", tokens=Tokens(input=10, output=5),
                      cost_micro_usd=cost, request_id=f"r{i}")


async def usage_topics(bootstrap: str, partitions: int = 8) -> str:
    prefix = unique_topic("t")
    await create_topics(bootstrap, {f"{prefix}.usage": partitions, f"{prefix}.snapshots": partitions},
                        compacted={f"{prefix}.snapshots"})
    return prefix


async def read_topic(bootstrap: str, topic: str, want_ids: set[str], *, idle_s: float = 1.0,
                     timeout_s: float = 60.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the topic, once all ``want_ids`` are seen and ``idle_s`` passed with nothing new."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    seen: set[str] = set()
    try:
        async with asyncio.timeout(timeout_s):
            while not want_ids <= seen:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
                    seen.update(decode(r.value or b"").event_id for r in batch)
            while batch_map := await consumer.getmany(timeout_ms=int(idle_s * 1000)):
                for batch in batch_map.values():
                    records.extend(batch)
    finally:
        await consumer.stop()
    return records


def check_log(records: list[ConsumerRecord[bytes, bytes]], submitted: list[UsageEvent]) -> int:
    """Every submitted event is on the log; copies only as the same event_id (so in the same
    partition); first copies in submit order per partition; each record keyed by ``usage_key``.
    Returns the number of duplicate copies."""
    by_offset = sorted(records, key=lambda r: (r.partition, r.offset))
    events = [decode(r.value or b"") for r in by_offset]
    for r, ev in zip(by_offset, events):
        assert r.key == usage_key(ev)
    counts = collections.Counter(ev.event_id for ev in events)
    assert set(counts) == {ev.event_id for ev in submitted}, "lost or foreign events"
    original = {ev.event_id: ev for ev in submitted}
    assert all(ev == original[ev.event_id] for ev in events), "a copy differs from the original"
    first_seen: dict[int, list[str]] = collections.defaultdict(list)
    partition_of: dict[str, int] = {}
    for r, ev in zip(by_offset, events):
        if ev.event_id in partition_of:
            assert partition_of[ev.event_id] == r.partition, "a copy in another partition"
        else:
            partition_of[ev.event_id] = r.partition
            first_seen[r.partition].append(ev.event_id)
    for p, ids in first_seen.items():
        assert ids == [ev.event_id for ev in submitted if partition_of.get(ev.event_id) == p], f"{p} out of order"
    return sum(counts.values()) - len(counts)


async def test_submitted_events_land_on_the_usage_topic_once_each(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = await usage_topics(kafka_bootstrap)
    ledger = KafkaLedger(kafka_bootstrap, tmp_path, topic_prefix=prefix, follow_snapshots=False)
    submitted = [event(i, org=f"org{i % 5}") for i in range(1_000)]
    async with asyncio.timeout(60):
        await ledger.start()
        try:
            t0 = time.perf_counter()
            for ev in submitted:
                ledger.submit(ev)
            await ledger.flush(20)
            flush_s = time.perf_counter() - t0
        finally:
            await ledger.stop(5)
        records = await read_topic(kafka_bootstrap, f"{prefix}.usage", {e.event_id for e in submitted})
    assert check_log(records, submitted) == 0
    assert len(records) == len(submitted)
    assert ledger.events_acked == 1_000 and ledger.events_spooled == 0
    assert ledger.view.local_backlog == 1_000, "placed, waiting for the snapshot to pass them"
    print(f"\n1000 events submitted and acked in {flush_s:.3f}s")


async def test_kafka_down_30s_while_calls_continue_loses_nothing(
        kafka_broker: KafkaBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue acceptance (b): the broker stops for ~30 s at 20 calls/s; afterwards every event is on the
    topic, copies only as identical event_ids, first copies in order per key, the spool empty."""
    bootstrap = kafka_broker.bootstrap
    prefix = await usage_topics(bootstrap)
    ledger = KafkaLedger(bootstrap, tmp_path, topic_prefix=prefix, follow_snapshots=False,
                         send_timeout_s=2.0, retry_backoff_s=0.25)
    submitted: list[UsageEvent] = []
    stop_submitting = asyncio.Event()

    async def calls() -> None:   # 20/s, like a proxy settling calls
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        i = 0
        while not stop_submitting.is_set():
            ev = event(i, org=f"org{i % 7}")
            submitted.append(ev)
            ledger.submit(ev)
            i += 1
            await asyncio.sleep(max(0.0, t0 + i * 0.05 - loop.time()))

    timings: dict[str, float] = {}
    caplog.set_level(logging.WARNING, logger="llmgw.ledger")
    async with asyncio.timeout(240):
        await ledger.start()
        caller = asyncio.get_running_loop().create_task(calls())
        try:
            await asyncio.sleep(2)
            t0 = time.monotonic()
            await kafka_broker.astop()
            timings["broker_stop_s"] = time.monotonic() - t0
            before_outage = len(submitted)
            # a second gateway starts while Kafka is down: start() must not fail, and it follows up
            late = KafkaLedger(bootstrap, tmp_path / "late", topic_prefix=prefix, retry_backoff_s=0.25,
                               connect_timeout_s=2.0)
            await late.start()
            late_events = [event(10_000 + i, org="late") for i in range(40)]
            for ev in late_events:
                late.submit(ev)
            await asyncio.sleep(30)
            assert late.spool is not None and late.spool.depth_events == 40 and not late.kafka_connected
            spooled_during = ledger.spool.depth_events if ledger.spool else 0
            t1 = time.monotonic()
            await kafka_broker.astart()
            timings["broker_start_s"] = time.monotonic() - t1
            await asyncio.sleep(2)
        finally:
            stop_submitting.set()
            await caller
            if not kafka_broker.is_running():
                await kafka_broker.astart()
        t2 = time.monotonic()
        await ledger.flush(90)
        timings["drain_after_start_s"] = time.monotonic() - t2 + 2
        await ledger.stop(5)
        await late.flush(30)
        while not late.snapshot_ready:       # its snapshot follower connected once Kafka came back
            await asyncio.sleep(0.1)
        await late.stop(5)
        records = await read_topic(bootstrap, f"{prefix}.usage", {e.event_id for e in submitted + late_events})

    late_ids = {e.event_id for e in late_events}
    ours = [r for r in records if decode(r.value or b"").event_id not in late_ids]
    dups = check_log(ours, submitted)
    assert check_log([r for r in records if decode(r.value or b"").event_id in late_ids], late_events) == 0
    outage_events = len(submitted) - before_outage
    print(f"\noutage test: {len(submitted)} submitted ({outage_events} during/after the outage), "
          f"{spooled_during} in the spool before the broker returned, {ledger.events_spooled} spooled in all, "
          f"{dups} duplicate copies, timings {timings}")
    assert outage_events >= 600
    assert spooled_during >= 500, "events went to the spool while Kafka was down"
    assert ledger.spool is not None and ledger.spool.depth_events == 0
    assert list((tmp_path / "spool").glob("seg-*")) == [], "acked segments are deleted"
    assert ledger.events_replayed >= spooled_during
    assert "spooling" in caplog.text or "unavailable" in caplog.text, "the outage was logged loudly"


async def test_restart_with_a_non_empty_spool_replays_it(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = await usage_topics(kafka_bootstrap)
    first = [event(i, org=f"org{i % 3}") for i in range(50)]
    async with asyncio.timeout(60):
        down = KafkaLedger(DEAD_BOOTSTRAP, tmp_path, topic_prefix=prefix, follow_snapshots=False,
                           connect_timeout_s=1.0)
        await down.start()                      # Kafka unreachable: start must not fail
        for ev in first:
            down.submit(ev)
        await asyncio.sleep(0.5)
        assert down.spool is not None and down.spool.depth_events == 50, "spooled while Kafka is away"
        with pytest.raises(TimeoutError):
            await down.flush(0.5)
        await down.stop(0.5)
        assert list((tmp_path / "spool").glob("seg-*")), "the spool survives the process"

        up = KafkaLedger(kafka_bootstrap, tmp_path, topic_prefix=prefix, follow_snapshots=False)
        key = keys_of(first[0])[0]
        assert up.view.spent(key) == 0
        later = [event(100 + i, org=f"org{i % 3}") for i in range(20)]
        await up.start()
        expected_local = sum(e.cost_micro_usd for e in first if key in keys_of(e))
        assert up.view.spent(key) >= expected_local, "spooled spend counts in the local view at once"
        for ev in later:
            up.submit(ev)
        await up.flush(20)
        await up.stop(5)
        records = await read_topic(kafka_bootstrap, f"{prefix}.usage", {e.event_id for e in first + later})
    assert check_log(records, first + later) == 0
    assert up.events_replayed >= 50 and up.spool is not None and up.spool.depth_events == 0


async def test_full_spool_refuses_loudly_keeps_events_in_memory_and_loses_none(
        kafka_bootstrap: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    prefix = await usage_topics(kafka_bootstrap)
    ledger = KafkaLedger(DEAD_BOOTSTRAP, tmp_path, topic_prefix=prefix, follow_snapshots=False,
                         spool_max_bytes=10 * 700, connect_timeout_s=1.0, retry_backoff_s=0.1)
    submitted = [event(i, org=f"org{i % 2}") for i in range(30)]
    caplog.set_level(logging.ERROR, logger="llmgw.ledger")
    async with asyncio.timeout(60):
        await ledger.start()
        for ev in submitted:
            ledger.submit(ev)
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        assert ledger.spool is not None
        in_spool, held = ledger.spool.depth_events, ledger.overflow_events
        assert ledger.spool_full and 0 < in_spool < 30 and in_spool + held == 30, (in_spool, held)
        assert ledger.spool.refused_events > 0 and ledger.stats()["spool_full"] is True
        assert "spool full" in caplog.text
        ledger.bootstrap = kafka_bootstrap       # Kafka "comes back"
        await ledger.flush(20)
        assert not ledger.spool_full and ledger.overflow_events == 0
        await ledger.stop(5)
        records = await read_topic(kafka_bootstrap, f"{prefix}.usage", {e.event_id for e in submitted})
    assert check_log(records, submitted) == 0


async def test_snapshot_follower_applies_snapshots_and_advances_the_view(kafka_bootstrap: str,
                                                                          tmp_path: Path) -> None:
    prefix = await usage_topics(kafka_bootstrap, partitions=4)
    snaps = f"{prefix}.snapshots"
    txn = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{prefix}-test-worker")
    await txn.start()
    try:
        async with asyncio.timeout(60):
            # written before the proxy starts: read on catch-up; a stale key deleted by a tombstone
            async with txn.transaction():
                await txn.send_and_wait(snaps, snapshot_value([5, 1, 1, 1], 1, 0), key=b"org|old|day|0", partition=1)
                await txn.send_and_wait(snaps, snapshot_value([7, 1, 1, 1], 2, 0), key=b"org|gone|day|0", partition=2)
            async with txn.transaction():
                await txn.send_and_wait(snaps, None, key=b"org|gone|day|0", partition=2)
            with pytest.raises(RuntimeError):
                async with txn.transaction():   # aborted: read_committed must never show it
                    await txn.send_and_wait(snaps, snapshot_value([999, 1, 1, 1], 1, 1), key=b"org|old|day|0",
                                            partition=1)
                    raise RuntimeError("abort")

            ledger = KafkaLedger(kafka_bootstrap, tmp_path, topic_prefix=prefix)
            await ledger.start()
            try:
                while not ledger.snapshot_ready:
                    await asyncio.sleep(0.05)
                assert ledger.view.totals("org|old|day|0").spend_micro_usd == 5
                assert "org|gone|day|0" not in ledger.view.folded
                first_seen_complete = ledger.last_snapshot_ms
                assert first_seen_complete > 0
                await asyncio.sleep(0.7)       # idle topic: the follower still confirms it is at the end
                assert ledger.last_snapshot_ms > first_seen_complete

                evs = [event(i, org="snaporg", cost=1_000 + i) for i in range(10)]
                for ev in evs:
                    ledger.submit(ev)
                await ledger.flush(10)
                key = keys_of(evs[0])[0]
                assert ledger.view.spent(key) == sum(e.cost_micro_usd for e in evs), "local only so far"
                assert ledger.view.local_backlog == 10

                # play the processor: fold the events it read, publish totals then progress in one transaction
                records = await read_topic(kafka_bootstrap, f"{prefix}.usage", {e.event_id for e in evs},
                                           idle_s=0.2)
                # each event's partition folds it: one transaction per partition, totals then progress
                by_partition: dict[int, list[ConsumerRecord[bytes, bytes]]] = collections.defaultdict(list)
                for r in records:
                    by_partition[r.partition].append(r)
                assert len(by_partition) > 1, "ten calls of one org (four keys) spread over the partitions"
                for partition, part in sorted(by_partition.items()):
                    last = max(r.offset for r in part)
                    async with txn.transaction():
                        for k, t in fold_all([decode(r.value) for r in part]).items():
                            await txn.send(snaps, snapshot_value(t.to_list(), partition, last), key=k.encode(),
                                           partition=partition)
                        await txn.send_and_wait(snaps, encode_progress(partition, last),
                                                key=progress_key(partition).encode(), partition=partition)
                totals = fold_all(evs)
                t0 = time.monotonic()
                while ledger.view.local_backlog:
                    await asyncio.sleep(0.01)
                print(f"\nsnapshot visible {1000 * (time.monotonic() - t0):.0f} ms after its commit")
                assert ledger.view.spent(key) == totals[key].spend_micro_usd, "folded, and local dropped"
                assert ledger.view.totals(key).requests == 10
                assert ledger.follower is not None and ledger.follower.last_record_delay_ms < 5_000
                stats = ledger.stats()
                assert stats["snapshot_ready"] is True and stats["snapshot_records"] >= 4
            finally:
                await ledger.stop(5)
    finally:
        await txn.stop()


def snapshot_value(t: list[int], p: int, o: int) -> bytes:
    return encode_snapshot(Totals.from_list(t), p, o)


async def test_kafka_config_log_append_load_follow_across_two_instances(kafka_bootstrap: str) -> None:
    topic = unique_topic("cfg")          # not created: the config log creates it (the CLI may run first)
    writer = KafkaConfigLog(kafka_bootstrap, topic)
    reader = open_config_log("/nonexistent", kafka_bootstrap, topic_prefix="x")
    assert isinstance(reader, KafkaConfigLog)
    reader = KafkaConfigLog(kafka_bootstrap, topic)
    changes = asyncio.Event()
    async with asyncio.timeout(60):
        await writer.append(ConfigRecord.put("key", "alice", {"org": "acme", "hash": "h1"}))
        await writer.append(ConfigRecord.put("budget", "acme-day", {"limit_micro_usd": 5_000_000}))
        state = await reader.load()
        assert set(state.records) == {"key:alice", "budget:acme-day"}

        follower = asyncio.get_running_loop().create_task(reader.follow(state, changes.set, interval_s=0.1))
        try:
            await writer.append(ConfigRecord.put("key", "bob", {"org": "acme", "hash": "h2"}))
            await writer.append(ConfigRecord.put("key", "alice", None, reason="revoked"))
            while "key:bob" not in state.records or "key:alice" in state.records:
                await changes.wait()
                changes.clear()
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
        assert set(state.records) == {"key:bob", "budget:acme-day"}

        fresh = await KafkaConfigLog(kafka_bootstrap, topic).load()
        assert set(fresh.records) == set(state.records)
        raw = await read_raw(kafka_bootstrap, topic)
        partitions, policy = await topic_layout(kafka_bootstrap, topic)
    assert [r.key for r in raw] == [b"key:alice", b"budget:acme-day", b"key:bob", b"key:alice"]
    delete = orjson.loads(raw[-1].value or b"null")
    assert delete["data"] is None and delete["reason"] == "revoked", "a delete is an auditable record"
    assert (partitions, policy) == (1, "compact")


async def test_config_log_follow_survives_a_state_built_elsewhere(kafka_bootstrap: str) -> None:
    """follow() on an instance that never loaded reads from the beginning."""
    topic = unique_topic("cfg")
    await KafkaConfigLog(kafka_bootstrap, topic).append(ConfigRecord.put("key", "carol", {"org": "o"}))
    state = ConfigState()
    log_ = KafkaConfigLog(kafka_bootstrap, topic)
    changed = asyncio.Event()
    task = asyncio.get_running_loop().create_task(log_.follow(state, changed.set, interval_s=0.1))
    try:
        async with asyncio.timeout(30):
            await changed.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert set(state.records) == {"key:carol"}


async def read_raw(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        out: list[ConsumerRecord[bytes, bytes]] = []
        while await consumer.position(tp) < end:
            out.extend((await consumer.getmany(tp, timeout_ms=500)).get(tp, []))
        return out
    finally:
        await consumer.stop()


async def topic_layout(bootstrap: str, topic: str) -> tuple[int, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        meta = (await admin.describe_topics([topic]))[0]
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {e[0]: e[1] for e in configs[0].resources[0][4]}
        return len(meta["partitions"]), entries["cleanup.policy"]
    finally:
        await admin.close()
