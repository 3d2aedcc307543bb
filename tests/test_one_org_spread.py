"""One organization's calls spread over every usage partition, on the real broker (no hot org).

A gateway (``KafkaLedger``, keyed by API key, the default, or by call) sends one org's calls, with their started records; two
ledger workers share the partitions; a second gateway follows the snapshot topic. Each partition's
snapshot holds that partition's partial totals: their sum, in the topic, in the follower's view and
in a rebuild, must be exactly ``fold_all`` of the calls, with every copy counted once. Keyed by org
(``LLMGW_USAGE_KEY=org``, the rolling-upgrade setting) the same calls stay in one partition.
"""
from __future__ import annotations

import asyncio
import collections
import random
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition

from llmgw.core.events import Tokens, UsageEvent, decode, new_event_id
from llmgw.ledger.fold import fold_all
from llmgw.ledger.kafka_ledger import KafkaLedger
from llmgw.ledger.kafka_rebuild import compare, read_snapshots
from llmgw.ledger.started import CALL_KEY, KEY_KEY, CallStarted, decode_record, encode_record, usage_key
from llmgw.ledger.topics import PartitionReader, Topics, ensure_topics
from tests.fixtures.kafka import unique_topic
from tests.test_kafka_ledger import read_topic
from tests.test_ledger_worker import new_worker, wait_caught_up

pytestmark = pytest.mark.kafka
PARTITIONS = 4


def one_org_calls(n: int, seed: int) -> list[tuple[CallStarted, UsageEvent]]:
    """``n`` calls of org ``acme``: 30 users in 3 workspaces with two keys each, a few tags, costs up to
    0.25 USD."""
    rng, now = random.Random(seed), int(time.time() * 1000)
    calls = []
    for i in range(n):
        eid, user = new_event_id(), rng.randrange(30)
        ws, key, user = f"ws{user % 3}", f"acme-u{user}-k{rng.randrange(2)}", f"u{user}"
        start = now - rng.randrange(60_000)
        started = CallStarted(eid, start, "acme", ws, user, key, "anthropic", "messages", "claude-sonnet-4-5",
                              300_000_000, "gw-a")
        usage = UsageEvent(event_id=eid, ts_start_ms=start, ts_end_ms=start + rng.randrange(20_000), org="acme",
                           workspace=ws, user=user, key_id=key, provider="anthropic", api="messages",
                           model_requested="claude-sonnet-4-5", model_served="claude-sonnet-4-5",
                           tokens=Tokens(input=rng.randrange(4_000), output=rng.randrange(1_500)),
                           cost_nano_usd=rng.randrange(250_000_000),
                           tags=("project:p1",) if rng.random() < 0.4 else (), request_id=f"r{i}")
        calls.append((started, usage))
    return calls


async def usage_records(bootstrap: str, topics: Topics) -> list[ConsumerRecord[bytes, bytes]]:
    """The usage topic's calls from its beginning to its end now: started records and usage events
    (the worker's ticks, which have no key, left out)."""
    parts = [TopicPartition(topics.usage, p) for p in range(topics.partitions)]
    async with PartitionReader(bootstrap) as reader:
        ends = await reader.end_offsets(parts)
        return [r async for _, batch in reader.read(dict.fromkeys(parts), ends) for r in batch if r.key]


@pytest.mark.parametrize("keying", [KEY_KEY, CALL_KEY])
async def test_one_orgs_calls_fold_in_every_partition_and_add_up_exactly(kafka_bootstrap: str, tmp_path: Path,
                                                                         keying: str) -> None:
    topics = await ensure_topics(kafka_bootstrap, Topics(unique_topic("spread"), partitions=PARTITIONS))
    calls = one_org_calls(1_200, seed=7)
    events = [u for _, u in calls]
    expected = fold_all(events)
    copies = events[:50]                      # a spool's re-sends: same key, so the same partition
    gateway = KafkaLedger(kafka_bootstrap, tmp_path / "a", topic_prefix=topics.prefix, gateway_id="gw-a",
                          follow_snapshots=False, usage_key=keying)
    reader = KafkaLedger(kafka_bootstrap, tmp_path / "b", topic_prefix=topics.prefix, gateway_id="gw-b")
    w1, w2 = new_worker(kafka_bootstrap, topics), new_worker(kafka_bootstrap, topics)
    async with asyncio.timeout(120):
        await w1.start()
        await w2.start()
        while not (w1.owned and w2.owned and len(w1.owned) + len(w2.owned) == PARTITIONS):
            await asyncio.sleep(0.05)
        await gateway.start()
        await reader.start()
        try:
            for started, usage in calls:
                gateway.begin(started)
                gateway.submit(usage)
            await gateway.flush(30)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all")
            await producer.start()
            try:
                await asyncio.gather(*[await producer.send(topics.usage, encode_record(e), key=usage_key(e, keying))
                                       for e in copies])
            finally:
                await producer.stop()
            await wait_caught_up(kafka_bootstrap, topics, timeout_s=90)
            live = await read_snapshots(kafka_bootstrap, topics)
            report = await compare(kafka_bootstrap, topics)
            while any(reader.view.totals(k) != t for k, t in expected.items()):   # the follower catches up
                await asyncio.sleep(0.05)
            view = {k: reader.view.totals(k) for k in expected}
            folded = (w1.stats.events_folded, w2.stats.events_folded)
            duplicates = w1.stats.duplicates + w2.stats.duplicates
        finally:
            await reader.stop(5)
            await gateway.stop(5)
            await w1.stop()
            await w2.stop()
        records = await usage_records(kafka_bootstrap, topics)

    assert len(records) == 2 * len(calls) + len(copies)
    usage_partition = {r.key: r.partition for r in records
                       if not isinstance(decode_record(r.value or b""), CallStarted)}
    per_partition = collections.Counter(r.partition for r in records)
    assert sorted(per_partition) == list(range(PARTITIONS)), "one org's calls reach every partition"
    assert min(per_partition.values()) > 0.1 * len(records)
    for r in records:                          # a call's started record and its usage event share a partition
        assert usage_partition[r.key] == r.partition
    assert all(n > 0 for n in folded), f"both workers folded the org's calls: {folded}"
    assert duplicates == len(copies)
    assert live == expected, "the partitions' partials add up to fold_all"
    assert view == expected, "a proxy's view adds the partials too"
    assert report.identical and report.rebuilt == expected and report.counts.duplicates == len(copies)
    assert sum(t.requests for k, t in live.items() if k.startswith("org|acme|month|")) == len(events)


async def test_keyed_by_org_the_same_calls_stay_in_one_partition(kafka_bootstrap: str, tmp_path: Path) -> None:
    topics = await ensure_topics(kafka_bootstrap, Topics(unique_topic("orgkey"), partitions=PARTITIONS))
    events = [u for _, u in one_org_calls(200, seed=8)]
    gateway = KafkaLedger(kafka_bootstrap, tmp_path, topic_prefix=topics.prefix, follow_snapshots=False,
                          usage_key="org")
    async with asyncio.timeout(60):
        await gateway.start()
        try:
            for e in events:
                gateway.submit(e)
            await gateway.flush(20)
        finally:
            await gateway.stop(5)
        records = await read_topic(kafka_bootstrap, topics.usage, {e.event_id for e in events}, idle_s=0.3)
    assert len({r.partition for r in records}) == 1 and {r.key for r in records} == {b"acme"}
    assert sorted(decode(r.value or b"").event_id for r in records) == sorted(e.event_id for e in events)
