"""The Kafka ledger worker folds exactly: against ``fold_all`` over the same events, on the real broker.

Also the duplicate rule (``SeenIds``) as pure functions: staged and direct admission agree, and the
state rebuilt from the tail of a partition equals the state built from its beginning.
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from hypothesis import given, settings, strategies as st

from llmgw.ledger import kafka_rebuild
from llmgw.core.events import ADJUSTMENT, OK, REJECTED_BUDGET, Tokens, UsageEvent, encode, new_event_id
from llmgw.ledger.fold import Totals, fold_all
from llmgw.ledger.kafka_rebuild import compare, fold_topic, read_snapshot_state, read_snapshots
from llmgw.ledger.topics import (PartitionReader, TopicLayoutError, Topics, decode_progress, encode_snapshot,
                                 ensure_topics, is_progress_key, read_snapshot_partitions)
from llmgw.ledger.worker import SeenIds, LedgerWorker
from llmgw.core.settings import Settings
from tests.fixtures.kafka import unique_topic

TEST_TIMEOUT_S = 90


# -- events -----------------------------------------------------------------------------------
def random_event(rng: random.Random, now_ms: int, orgs: int = 20) -> UsageEvent:
    """One call of a random user of a random org; a few rejections, adjustments and late events."""
    org = f"org{rng.randrange(orgs)}"
    start = now_ms - rng.randrange(72 * 3_600_000) if rng.random() < 0.3 else now_ms - rng.randrange(60_000)
    roll = rng.random()
    outcome = REJECTED_BUDGET if roll < 0.05 else OK
    kind = ADJUSTMENT if 0.05 <= roll < 0.07 else "usage"
    cost = rng.randrange(-5_000, 5_000) if kind == ADJUSTMENT else rng.randrange(0, 250_000)
    tags = tuple(sorted({f"project:p{rng.randrange(4)}", f"team:t{rng.randrange(3)}"})) if rng.random() < 0.6 else ()
    return UsageEvent(
        event_id=new_event_id(), ts_start_ms=start, ts_end_ms=start + rng.randrange(30_000),
        org=org, workspace=f"ws{rng.randrange(3)}", user=f"user{rng.randrange(8)}",
        key_id=f"{org}-key{rng.randrange(4)}", provider="anthropic", api="messages",
        model_requested="claude", model_served="claude",
        tokens=Tokens(input=rng.randrange(4000), cache_read=rng.randrange(2000), output=rng.randrange(1500)),
        cost_micro_usd=cost, outcome=outcome, kind=kind, tags=tags)


def random_events(n: int, seed: int, orgs: int = 20) -> list[UsageEvent]:
    rng, now_ms = random.Random(seed), int(time.time() * 1000)
    return [random_event(rng, now_ms, orgs) for _ in range(n)]


async def produce(bootstrap: str, topics: Topics, events: Sequence[UsageEvent]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        sent = [await producer.send(topics.usage, encode(e), key=e.ledger_key.encode()) for e in events]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def usage_ends(bootstrap: str, topics: Topics) -> dict[int, int]:
    async with PartitionReader(bootstrap) as reader:
        ends = await reader.end_offsets([TopicPartition(topics.usage, p) for p in range(topics.partitions)])
    return {tp.partition: end for tp, end in ends.items()}


class ProgressWatcher:
    """Tails the snapshot topic (read_committed) and keeps each partition's latest progress offset."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.topics = topics
        self.progress: dict[int, int] = {}
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                          enable_auto_commit=False, auto_offset_reset="earliest")

    async def __aenter__(self) -> "ProgressWatcher":
        await self._consumer.start()
        self._consumer.assign([TopicPartition(self.topics.snapshots, p) for p in range(self.topics.partitions)])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        for records in (await self._consumer.getmany(timeout_ms=300)).values():
            for r in records:
                if r.key is not None and r.value is not None and is_progress_key(r.key.decode()):
                    self.progress[r.partition] = decode_progress(r.value)

    async def wait_for(self, ends: dict[int, int], timeout_s: float) -> None:
        """Until every partition's progress reached its end offset - 1 (the workers caught up)."""
        async with asyncio.timeout(timeout_s):
            while any(self.progress.get(p, -1) < end - 1 for p, end in ends.items() if end > 0):
                await self.poll()


async def wait_caught_up(bootstrap: str, topics: Topics, timeout_s: float = 60.0) -> None:
    """Until the snapshots' progress reached the last record of every usage partition. Not its end
    offset: a transaction that wrote to the usage topic (a worker's tick or orphan-charge copy)
    leaves a commit marker there, which takes an offset that no record has."""
    last: dict[int, int] = {}
    async with PartitionReader(bootstrap) as reader:
        tps = [TopicPartition(topics.usage, p) for p in range(topics.partitions)]
        ends = await reader.end_offsets(tps)
        start: dict[TopicPartition, int | None] = {tp: max(0, ends[tp] - 20) for tp in tps}
        async for tp, records in reader.read(start):
            last[tp.partition] = records[-1].offset
    async with ProgressWatcher(bootstrap, topics) as watcher:
        await watcher.wait_for({p: o + 1 for p, o in last.items()}, timeout_s)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
async def topics(kafka_bootstrap: str) -> Topics:
    return await ensure_topics(kafka_bootstrap, Topics(unique_topic("ledger"), partitions=4))


def new_worker(bootstrap: str, topics: Topics, **options: object) -> LedgerWorker:
    return LedgerWorker(bootstrap, topics, group_id=f"{topics.prefix}-ledger", session_timeout_ms=6_000,
                        heartbeat_interval_ms=1_000, **options)  # type: ignore[arg-type]


@pytest.fixture
async def worker(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[LedgerWorker]:
    w = new_worker(kafka_bootstrap, topics)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


# -- on the broker ----------------------------------------------------------------------------
@pytest.mark.kafka
async def test_ensure_topics_is_idempotent_and_refuses_topics_that_are_not_co_partitioned(
        kafka_bootstrap: str) -> None:
    wanted = Topics(unique_topic("layout"), partitions=3)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        first, second = await asyncio.gather(ensure_topics(kafka_bootstrap, wanted),
                                             ensure_topics(kafka_bootstrap, wanted))   # racing workers
        again = await ensure_topics(kafka_bootstrap, Topics(wanted.prefix, partitions=8))
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            usage_config = (await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, wanted.usage)]))
            await admin.create_topics([NewTopic(f"{wanted.prefix}x.usage", 2, 1),
                                       NewTopic(f"{wanted.prefix}x.snapshots", 4, 1)])
        finally:
            await admin.close()
        with pytest.raises(TopicLayoutError, match="co-partitioned"):
            await ensure_topics(kafka_bootstrap, Topics(f"{wanted.prefix}x", partitions=2))
    assert first == second == wanted
    assert again == wanted, "existing topics keep their partition count"
    configs = {name: value for name, value, *_ in usage_config[0].resources[0][4]}
    assert configs["message.timestamp.type"] == "LogAppendTime" and configs["retention.ms"] == "-1"


@pytest.mark.kafka
async def test_a_reader_closes_after_reading_partitions_with_nothing_to_read(kafka_bootstrap: str) -> None:
    """Empty partitions (a new deployment's snapshot topic) must not leave the reader unable to
    stop: a worker taking partitions over and ``llmgw ledger rebuild`` both close one."""
    wanted = Topics(unique_topic("emptyread"), partitions=3)
    await ensure_topics(kafka_bootstrap, wanted)
    start: dict[TopicPartition, int | None] = {TopicPartition(wanted.snapshots, p): None for p in range(3)}
    async with asyncio.timeout(30):                      # covers the reader's __aexit__ (stop) too
        for _ in range(2):
            async with PartitionReader(kafka_bootstrap) as reader:
                assert [batch async for batch in reader.read(start)] == []
                by_partition, progress = await read_snapshot_partitions(reader, wanted, [0, 1, 2])
            assert by_partition == {0: {}, 1: {}, 2: {}} and progress == {}


@pytest.mark.kafka
async def test_one_worker_folds_every_event_exactly(kafka_bootstrap: str, topics: Topics,
                                                   worker: LedgerWorker) -> None:
    events = random_events(3_000, seed=1)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await produce(kafka_bootstrap, topics, events)
        await wait_caught_up(kafka_bootstrap, topics)
        live = await read_snapshots(kafka_bootstrap, topics)
    expected = fold_all(events)
    assert len(expected) > 1_000
    assert live == expected
    assert worker.stats.events_folded == len(events) and worker.stats.duplicates == 0


@pytest.mark.kafka
async def test_the_same_event_id_twice_is_counted_once(kafka_bootstrap: str, topics: Topics,
                                                      worker: LedgerWorker) -> None:
    events = random_events(500, seed=2)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        # copies in the same batch as the original, and copies in a later batch
        await produce(kafka_bootstrap, topics, events + events[:40])
        await wait_caught_up(kafka_bootstrap, topics)
        await produce(kafka_bootstrap, topics, events[100:160])
        await wait_caught_up(kafka_bootstrap, topics)
        live = await read_snapshots(kafka_bootstrap, topics)
    assert live == fold_all(events)
    assert worker.stats.duplicates == 100


@pytest.mark.kafka
async def test_progress_advances_on_a_batch_that_changes_no_total(kafka_bootstrap: str, topics: Topics,
                                                                 worker: LedgerWorker) -> None:
    events = random_events(300, seed=3, orgs=4)
    rejected = [e.with_(event_id=new_event_id(), outcome=REJECTED_BUDGET) for e in events[:50]]
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await produce(kafka_bootstrap, topics, events)
        await wait_caught_up(kafka_bootstrap, topics)
        before, progress_before = await read_snapshot_state(kafka_bootstrap, topics)
        await produce(kafka_bootstrap, topics, rejected)
        ends = await usage_ends(kafka_bootstrap, topics)
        await wait_caught_up(kafka_bootstrap, topics)
        after, progress_after = await read_snapshot_state(kafka_bootstrap, topics)
    assert after == before == fold_all(events)
    assert progress_after == {p: end - 1 for p, end in ends.items() if end > 0}
    moved = sorted(p for p in progress_after if progress_after[p] > progress_before.get(p, -1))
    assert moved == sorted({p for p in progress_after if ends[p] - 1 > progress_before.get(p, -1)})
    assert moved, "the rejections landed somewhere"


@pytest.mark.kafka
async def test_rebuild_equals_live_and_catches_a_wrong_snapshot(kafka_bootstrap: str, topics: Topics,
                                                                worker: LedgerWorker) -> None:
    events = random_events(2_000, seed=4)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await produce(kafka_bootstrap, topics, events + events[:25])
        await wait_caught_up(kafka_bootstrap, topics)
        report = await compare(kafka_bootstrap, topics)
        refold = await fold_topic(kafka_bootstrap, topics)
        settings_ = Settings(kafka_bootstrap=kafka_bootstrap, topic_prefix=topics.prefix,
                             snapshot_retain_closed_s=0)   # as the worker here: events up to 72 h old
        exit_ok = await asyncio.to_thread(kafka_rebuild.main, settings_)
        # a snapshot value nobody folded: rebuild must say so
        async with PartitionReader(kafka_bootstrap) as reader:
            by_partition, _ = await read_snapshot_partitions(reader, topics, list(range(topics.partitions)))
        part, key = next((p, k) for p, keys in sorted(by_partition.items()) for k in sorted(keys))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.snapshots, encode_snapshot(Totals(spend_nano_usd=1_000, requests=1, input_tokens=1, output_tokens=1), part, 0),
                                         key.encode(), partition=part)
        finally:
            await producer.stop()
        exit_bad = await asyncio.to_thread(kafka_rebuild.main, settings_)
        tampered = await compare(kafka_bootstrap, topics)
    assert report.identical and report.live == fold_all(events) and not report.lag
    assert report.counts.duplicates == 25 and report.counts.folded == len(events)
    assert refold == report.live
    assert (exit_ok, exit_bad) == (0, 1)
    assert [k for k, _, _ in tampered.differences] == [key]


@pytest.mark.kafka
async def test_restarted_worker_resumes_exactly_and_still_drops_old_duplicates(
        kafka_bootstrap: str, topics: Topics) -> None:
    first, second = random_events(1_500, seed=5), random_events(1_500, seed=6)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        w1 = new_worker(kafka_bootstrap, topics)
        await w1.start()
        try:
            await produce(kafka_bootstrap, topics, first)
            await wait_caught_up(kafka_bootstrap, topics)
        finally:
            await w1.stop()
        # while no worker runs: new events, and copies of events folded before the restart
        await produce(kafka_bootstrap, topics, second + first[::10])
        w2 = new_worker(kafka_bootstrap, topics)
        await w2.start()
        try:
            await wait_caught_up(kafka_bootstrap, topics)
        finally:
            await w2.stop()
        live = await read_snapshots(kafka_bootstrap, topics)
    assert live == fold_all(first + second)
    assert w2.stats.duplicates == len(first[::10]) and w2.stats.events_folded == len(second)


@pytest.mark.kafka
async def test_a_copy_sent_after_the_horizon_counts_again_and_rebuild_agrees(
        kafka_bootstrap: str, topics: Topics) -> None:
    horizon_ms = 1_500
    events = random_events(50, seed=7, orgs=1)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        w = new_worker(kafka_bootstrap, topics, horizon_ms=horizon_ms)
        await w.start()
        try:
            await produce(kafka_bootstrap, topics, events)
            await asyncio.sleep(horizon_ms / 1000 + 0.5)
            await produce(kafka_bootstrap, topics, events[:5])     # too late to be recognised
            await produce(kafka_bootstrap, topics, events[:5])     # but these are within the horizon
            await wait_caught_up(kafka_bootstrap, topics)
        finally:
            await w.stop()
        live = await read_snapshots(kafka_bootstrap, topics)
        refold = await fold_topic(kafka_bootstrap, topics, horizon_ms=horizon_ms)
    assert live == fold_all(events + events[:5])
    assert refold == live


@pytest.mark.kafka
async def test_two_workers_hand_partitions_over_without_loss_or_double_count(
        kafka_bootstrap: str, topics: Topics) -> None:
    batches = [random_events(600, seed=10 + i) for i in range(4)]
    async with asyncio.timeout(TEST_TIMEOUT_S):
        w1 = new_worker(kafka_bootstrap, topics)
        await w1.start()
        await produce(kafka_bootstrap, topics, batches[0])
        w2 = new_worker(kafka_bootstrap, topics)
        await w2.start()                                   # rebalance: half the partitions move
        await produce(kafka_bootstrap, topics, batches[1])
        while not (w1.owned and w2.owned and len(w1.owned) + len(w2.owned) == topics.partitions):
            await asyncio.sleep(0.05)
        owned_by_both = (set(w1.owned), set(w2.owned))
        await wait_caught_up(kafka_bootstrap, topics)
        await produce(kafka_bootstrap, topics, batches[2])
        await w1.stop()                                    # rebalance: w2 takes everything
        await produce(kafka_bootstrap, topics, batches[3] + batches[0][:30])
        await wait_caught_up(kafka_bootstrap, topics)
        await w2.stop()
        live = await read_snapshots(kafka_bootstrap, topics)
    assert owned_by_both[0] and owned_by_both[1] and not owned_by_both[0] & owned_by_both[1]
    assert live == fold_all([e for b in batches for e in b])


@pytest.mark.kafka
async def test_a_fenced_worker_drops_the_partition_and_takes_it_back_exactly(
        kafka_bootstrap: str, topics: Topics) -> None:
    first, second = random_events(800, seed=20, orgs=8), random_events(800, seed=21, orgs=8)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        w = new_worker(kafka_bootstrap, topics, fenced_retry_s=1.0)
        await w.start()
        try:
            await produce(kafka_bootstrap, topics, first)
            await wait_caught_up(kafka_bootstrap, topics)
            # a "newer owner" of every partition initialises the same transactional ids
            for p in range(topics.partitions):
                fencer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap,
                                          transactional_id=f"{w.group_id}-p{p}")
                await fencer.start()
                await fencer.stop()
            await produce(kafka_bootstrap, topics, second + first[:20])
            await wait_caught_up(kafka_bootstrap, topics)
        finally:
            await w.stop()
        live = await read_snapshots(kafka_bootstrap, topics)
    assert w.stats.fenced >= 1 and w.stats.acquisitions > topics.partitions
    assert live == fold_all(first + second)


# -- the duplicate rule as pure functions -------------------------------------------------------
sightings = st.lists(st.tuples(st.integers(0, 12), st.integers(0, 60)), max_size=80)


def _direct(records: Sequence[tuple[str, int]], horizon_ms: int) -> tuple[list[bool], SeenIds]:
    seen = SeenIds(horizon_ms)
    return [seen.admit(i, ts) for i, ts in records], seen


def _members(seen: SeenIds, ids: set[str]) -> dict[str, int]:
    floor = seen.clock_ms - seen.horizon_ms
    return {i: ts for i in ids if (ts := seen.last_seen_ms(i)) is not None and ts >= floor}


@settings(max_examples=300, deadline=None)
@given(sightings, st.integers(1, 30), st.integers(1, 20))
def test_seen_ids_staged_batches_decide_like_direct_admission(raw: list[tuple[int, int]], horizon_ms: int,
                                                              batch: int) -> None:
    records = [(f"e{i}", ts) for i, ts in raw]
    expected, _ = _direct(records, horizon_ms)
    seen, got = SeenIds(horizon_ms), []
    for k in range(0, len(records), batch):
        staged = seen.begin()
        got += [staged.admit(i, ts) for i, ts in records[k:k + batch]]
        seen.commit(staged)
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(sightings, st.integers(1, 30))
def test_seen_ids_rebuilt_from_the_horizon_tail_equal_the_full_replay(raw: list[tuple[int, int]],
                                                                     horizon_ms: int) -> None:
    """What ``rebuild_memory`` reads (records from the first one stamped >= last stamp - horizon)
    gives the same decisions for every later record as the state built from offset 0."""
    records = [(f"e{i}", ts) for i, ts in raw]
    ids = {i for i, _ in records}
    for n in range(1, len(records) + 1):
        _, full = _direct(records[:n], horizon_ms)
        target = records[n - 1][1] - horizon_ms
        start = next(k for k, (_, ts) in enumerate(records) if ts >= target)
        _, tail = _direct(records[start:n], horizon_ms)
        assert tail.clock_ms == full.clock_ms
        assert _members(tail, ids) == _members(full, ids)
        later = records[n:]
        assert [full.admit(i, ts) for i, ts in later] == [tail.admit(i, ts) for i, ts in later]
