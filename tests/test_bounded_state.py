"""Bounded state on the real broker (issue 21, item 4).

- Closed windows leave the snapshot topic after their retention: the worker writes tombstones,
  the proxies' followers forget the keys, open windows are untouched, rebuild agrees.
- A Kafka outage costs gateway memory per budget key, not per call: the calls stay in the spool
  on disk, the local view keeps sums per key, and once Kafka is back every dollar is counted once.
"""
from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from llmgw.core.events import Tokens, UsageEvent, new_event_id
from llmgw.core.windows import window_start
from llmgw.ledger.fold import Totals, fold, fold_all, keys_of
from llmgw.ledger.kafka_ledger import KafkaLedger
from llmgw.ledger.kafka_rebuild import compare, read_snapshots
from llmgw.ledger.retention import expired
from llmgw.ledger.started import usage_key
from llmgw.ledger.topics import PartitionReader, Topics, ensure_topics
from tests.fixtures.kafka import KafkaBroker, unique_topic
from tests.test_ledger_worker import new_worker, produce, wait_caught_up

pytestmark = pytest.mark.kafka


def call(org: str, user: str, cost: int, ts_ms: int) -> UsageEvent:
    return UsageEvent(event_id=new_event_id(), ts_start_ms=ts_ms, ts_end_ms=ts_ms + 40, org=org, workspace="ws",
                      user=user, key_id=f"k-{org}-{user}", provider="openai", api="chat", model_requested="gpt-4o",
                      model_served="gpt-4o", tokens=Tokens(input=12, output=7), cost_micro_usd=cost,
                      request_id=new_event_id())


async def snapshot_records(bootstrap: str, topics: Topics) -> list[tuple[str, bytes | None]]:
    """Every (key, value) of the snapshot topic as the log holds it (tombstones as None)."""
    out: list[tuple[str, bytes | None]] = []
    async with PartitionReader(bootstrap) as reader:
        start: dict[TopicPartition, int | None] = {TopicPartition(topics.snapshots, p): None
                                                   for p in range(topics.partitions)}
        async for _, records in reader.read(start):
            out += [(r.key.decode(), r.value) for r in records if r.key is not None]
    return out


async def test_closed_windows_are_tombstoned_after_retention_and_rebuild_agrees(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = await ensure_topics(kafka_bootstrap, Topics(unique_topic("retain"), partitions=4))
    now = int(time.time() * 1000)
    old_hour = window_start("hour", now - 2 * 3_600_000)
    # the hour window of two hours ago closed at old_hour + 1 h; keep it until ~8 s from now
    retain_ms = now + 8_000 - (old_hour + 3_600_000)
    old = [call(f"org{i % 3}", f"u{i % 4}", 1_000 + i, old_hour + 60_000 + i) for i in range(60)]
    new = [call(f"org{i % 3}", f"u{i % 4}", 2_000 + i, now - i) for i in range(60)]
    closed = {k for e in old for k in keys_of(e) if "|hour|" in k}
    assert closed and all(not expired(k, now, retain_ms) for k in closed)
    # each partition tombstones its own partial of a key: calls are keyed by id, spread over partitions
    parts, partition_of = list(range(topics.partitions)), DefaultPartitioner()   # the producer's partitioner
    partials = {(partition_of(usage_key(e), parts, parts), k) for e in old for k in keys_of(e) if k in closed}
    assert len(partials) > len(closed)
    proxy = KafkaLedger(kafka_bootstrap, tmp_path, topic_prefix=topics.prefix, gateway_id="p")
    worker = new_worker(kafka_bootstrap, topics, retain_closed_ms=retain_ms, tick_s=1.0)
    async with asyncio.timeout(120):
        await worker.start()
        await proxy.start()
        try:
            await produce(kafka_bootstrap, topics, old + new)
            await wait_caught_up(kafka_bootstrap, topics)
            before = await read_snapshots(kafka_bootstrap, topics)
            while not closed <= set(proxy.view.folded):
                await asyncio.sleep(0.05)
            # nothing more is sent: idle partitions tick on their own once the windows expire
            while worker.stats.tombstones < len(partials):
                await asyncio.sleep(0.2)
            while closed & set(proxy.view.folded):
                await asyncio.sleep(0.05)
            after_tombstones = await read_snapshots(kafka_bootstrap, topics)
            # a late event for the deleted window: never folded into it, but into its open windows
            late = call("org0", "u0", 777, old_hour + 120_000)
            await produce(kafka_bootstrap, topics, [late])
            await wait_caught_up(kafka_bootstrap, topics)
            live = await read_snapshots(kafka_bootstrap, topics)
            report = await compare(kafka_bootstrap, topics, retain_closed_ms=retain_ms)
            records = await snapshot_records(kafka_bootstrap, topics)
            view = dict(proxy.view.folded)
        finally:
            await proxy.stop(5)
            await worker.stop()
        # a new owner reads the topic back: the deleted keys stay deleted, the rest is exact
        again = new_worker(kafka_bootstrap, topics, retain_closed_ms=retain_ms)
        await again.start()
        try:
            more = [call("org1", "u1", 5, int(time.time() * 1000))]
            await produce(kafka_bootstrap, topics, more)
            await wait_caught_up(kafka_bootstrap, topics)
            final = await read_snapshots(kafka_bootstrap, topics)
            final_report = await compare(kafka_bootstrap, topics, retain_closed_ms=retain_ms)
        finally:
            await again.stop()

    everything = fold_all(old + new)
    assert before == everything, "before the retention: every window, exactly"
    kept = {k: t for k, t in everything.items() if k not in closed}
    assert after_tombstones == kept, "the closed hour windows are gone, every other key untouched"
    assert worker.stats.tombstones == len(partials)
    tombstoned = {k for k, v in records if v is None}
    assert tombstoned == closed, "the closed windows, and only they, are tombstoned on the compacted topic"
    assert live == {k: t for k, t in fold_all(old + new + [late]).items() if k not in closed}
    assert not (closed & set(live)) and not (closed & set(view)), "the follower forgot the deleted keys"
    assert {k: view[k] for k in live} == live
    assert report.identical and report.counts.folded == len(old) + len(new) + 1
    assert final == {k: t for k, t in fold_all(old + new + [late] + more).items() if k not in closed}
    assert final_report.identical


async def test_kafka_outage_memory_is_bounded_by_keys_and_every_dollar_counts_once(
        kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = await ensure_topics(bootstrap, Topics(unique_topic("outage"), partitions=4))
    ledger = KafkaLedger(bootstrap, tmp_path, topic_prefix=topics.prefix, gateway_id="g",
                         send_timeout_s=2.0, retry_backoff_s=0.25, connect_timeout_s=2.0)
    worker = new_worker(bootstrap, topics)
    users = [f"u{i}" for i in range(5)]
    expected: dict[str, Totals] = {}         # folded as they are sent: the test keeps no event either
    keys: set[str] = set()
    count = 0

    def calls(n: int) -> None:
        nonlocal count
        for _ in range(n):
            ev = call(f"org{count % 2}", users[count % len(users)], 1_000 + count % 997, int(time.time() * 1000))
            count += 1
            expected.update(fold(expected, ev))
            keys.update(keys_of(ev))
            ledger.submit(ev)

    def ledger_bytes() -> int:
        gc.collect()
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/ledger/*")])
        return sum(stat.size for stat in snap.statistics("filename"))

    async def gateway_bytes() -> int:
        """Bytes still held that the ledger's code (ledger/) allocated: the least of three looks
        0.2 s apart. (aiokafka's grow with the reconnection attempts, by time, not by calls; the
        spool's sender, retrying, holds the records of one peek while it reads it, ~1 MB for a
        moment: what a call leaves behind shows in every look, a peek under way in some.)"""
        looks = []
        for _ in range(3):
            looks.append(ledger_bytes())
            await asyncio.sleep(0.2)
        return min(looks)

    async with asyncio.timeout(240):
        await worker.start()
        await ledger.start()
        try:
            calls(200)
            await ledger.flush(20)
            while ledger.view.local_backlog:          # the snapshot shows them: the outage starts clean
                await asyncio.sleep(0.05)
            await kafka_broker.astop()
            sizes = []
            tracemalloc.start()
            try:
                for _ in range(4):                        # broker stopped: N calls in four rounds
                    calls(1_500)
                    while ledger.spool_depth_events < count - 200:     # the sender spools them
                        await asyncio.sleep(0.1)
                    assert ledger.spool is not None
                    sizes.append((ledger.view.local.entries, len(ledger._futures), ledger.overflow_events,
                                  ledger.stats()["queue_events"], await gateway_bytes()))
            finally:
                tracemalloc.stop()
            backlog_in_outage = ledger.view.local_backlog
            spent_in_outage = {k: ledger.view.spent_nano(k) for k in keys}
            await kafka_broker.astart()
            await ledger.flush(120)
            await wait_caught_up(bootstrap, topics, timeout_s=120)
            while ledger.view.local_backlog:              # the follower reaches the last progress
                await asyncio.sleep(0.05)
            live = await read_snapshots(bootstrap, topics)
            report = await compare(bootstrap, topics)
            view_after = {k: ledger.view.spent_nano(k) for k in keys}
            entries_after = ledger.view.local.entries
        finally:
            await ledger.stop(5)
            await worker.stop()
            if not kafka_broker.is_running():
                await kafka_broker.astart()

    n_outage = count - 200
    print(f"\noutage: {n_outage} calls, {len(keys)} keys; (entries, futures, overflow, queue, traced bytes) "
          f"per round: {sizes}")
    assert backlog_in_outage == n_outage
    for entries, futures, overflow, queue, _ in sizes:
        assert entries <= len(keys), "one sum per key touched, whatever the number of calls"
        assert futures <= 2 * ledger.batch_max and overflow == 0 and queue == 0
    held = [b for *_, b in sizes[1:]]
    # What the ledger holds may rise by one spool batch (the last peek: 500 records, ~0.4 MB) and no
    # more; 3,000 calls kept at the former ~2 KB each would be 6 MB.
    assert max(held) - min(held) < 1_000_000, f"{held}: memory grows per call"
    assert live == expected, "every call of the outage folded once"
    assert report.identical
    assert {k: v.spend_nano_usd for k, v in expected.items() if k in keys} == {k: v for k, v in view_after.items() if v}
    assert spent_in_outage == {k: expected[k].spend_nano_usd if k in expected else 0 for k in keys}, \
        "during the outage the view counted every call"
    assert entries_after == 0, "every acked event left the local sums"
