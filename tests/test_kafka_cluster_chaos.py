"""Broker failover on a 3-node cluster: the gateway keeps serving, and the ledger stays exact.

A Kafka-mode gateway (in this process, with a ledger worker beside it) serves OpenAI SDK callers in
two workspaces of one org: ``backend`` is fail_closed, ``research`` fail_open (``max_stale_s``
``MAX_STALE_S`` both). The usage topic is replicated 3 times with ``min.insync.replicas=2`` (what
``ensure_topics`` picks on three brokers). Mid-run the leader of the busiest usage partition is
killed with SIGKILL (its partitions move to the two left, which still make an ISR of 2), then a
second node: with one broker of three, no produce gets ``acks=all`` and the controller quorum is
gone too. Calls must then follow the failure policy: backend is refused with a 503 once the spend
snapshot is older than ``max_stale_s``, research is served and tagged ``llmgw:stale``, and their
events wait in the gateway's spool (``ledger/spool.py``). Both nodes are restarted; then every call
the provider served must be exactly one event: by request id and ``event_id`` on the usage topic,
in token sums against what the fake provider served, and in the worker's snapshot totals (equal to
``fold_all`` of the unique events, and ``llmgw ledger rebuild`` identical). The figures it prints
are the ones in docs/ledger.md ("Broker failover").
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from dataclasses import dataclass, field

import openai
import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from llmgw.core.events import OK, UsageEvent
from llmgw.core.settings import Settings
from llmgw.ledger.alert_store import ensure_alert_topic
from llmgw.ledger.fold import fold_all
from llmgw.ledger.kafka_config import KafkaConfigLog
from llmgw.ledger.kafka_ledger import KafkaLedger
from llmgw.ledger.kafka_rebuild import compare, read_snapshots
from llmgw.ledger.started import usage_event_of
from llmgw.ledger.topics import PartitionReader, Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from llmgw.proxy import keys as K
from llmgw.proxy.failure import STALE_TAG
from tests.fake_provider import FakeProvider
from tests.fixtures.kafka import KafkaCluster, unique_topic
from tests.gateway_harness import GatewayHarness
from tests.waits import until

pytestmark = pytest.mark.kafka

MAX_STALE_S = 8.0
POLICY = {"failure_policy": {"default": {"mode": "fail_closed", "max_stale_s": MAX_STALE_S},
                             "workspaces": {"research": {"mode": "fail_open"}}}}
PARTITIONS = 4
CALLERS_PER_WORKSPACE = 2
PAUSE_S = 0.1                 # between one caller's calls: ~15-20 calls/s in all on an idle box
BASELINE_S = 4.0
AFTER_RESTART_S = 4.0
TEST_TIMEOUT_S = 240
SERVED, REFUSED = "served", "refused"


@dataclass
class Call:
    workspace: str
    began: float                 # monotonic
    latency_s: float
    outcome: str                 # SERVED, REFUSED (503 of the failure policy) or what else went wrong
    request_id: str = ""
    input_tokens: int = 0
    output_tokens: int = 0


@dataclass
class Sample:
    t: float
    backlog: int
    spooled: int
    snapshot_age_s: float


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)   # phase -> monotonic time it began
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def caller(client: openai.AsyncOpenAI, workspace: str, rng: random.Random, run: Run) -> None:
    while not run.stop.is_set():
        words = " ".join(rng.choice(("budget", "ledger", "spend", "window", "hold")) for _ in range(rng.randint(1, 60)))
        began = time.monotonic()
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", max_tokens=64, messages=[{"role": "user", "content": words}])
            done = raw.parse()
            assert done.usage is not None
            run.calls.append(Call(workspace, began, time.monotonic() - began, SERVED,
                                  raw.headers.get("x-llmgw-request-id", ""), done.usage.prompt_tokens,
                                  done.usage.completion_tokens))
        except openai.APIStatusError as exc:
            kind = REFUSED if exc.status_code == 503 and "fail_closed" in str(exc) else f"{exc.status_code}: {exc}"
            run.calls.append(Call(workspace, began, time.monotonic() - began, kind))
        except openai.APIConnectionError as exc:
            run.calls.append(Call(workspace, began, time.monotonic() - began, f"connection: {exc!r}"))
        await asyncio.sleep(PAUSE_S)


async def monitor(ledger: KafkaLedger, run: Run) -> None:
    """What the gateway's ledger shows, every 50 ms: unacked events, spool depth, snapshot age."""
    while not run.stop.is_set():
        run.samples.append(Sample(time.monotonic(), ledger.backlog_events, ledger.spool_depth_events,
                                  ledger.health().snapshot_age_s()))
        await asyncio.sleep(0.05)


async def usage_layout(bootstrap: str, topics: Topics) -> tuple[dict[int, tuple[int, list[int], list[int]]], str]:
    return await topic_layout(bootstrap, topics.usage)


async def topic_layout(bootstrap: str, topic: str) -> tuple[dict[int, tuple[int, list[int], list[int]]], str]:
    """Per partition (leader, replicas, isr), and the topic's min.insync.replicas. A node that has not
    applied the topic's creation yet answers with an error code and no entries: asked again then."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
        for _ in range(50):
            configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
            error_code, _, _, _, found = configs[0].resources[0]
            if error_code == 0:
                break
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    entries = {e[0]: e[1] for e in found}
    return ({p["partition"]: (p["leader"], list(p["replicas"]), list(p["isr"])) for p in meta["partitions"]},
            entries["min.insync.replicas"])


async def busiest_partition(bootstrap: str, topics: Topics) -> int:
    async with PartitionReader(bootstrap) as reader:
        ends = await reader.end_offsets([TopicPartition(topics.usage, p) for p in range(topics.partitions)])
    return max(ends, key=lambda tp: ends[tp]).partition


async def usage_records(bootstrap: str, topics: Topics) -> list[bytes]:
    out: list[bytes] = []
    async with PartitionReader(bootstrap) as reader:
        start: dict[TopicPartition, int | None] = {TopicPartition(topics.usage, p): None
                                                   for p in range(topics.partitions)}
        async for _, records in reader.read(start):
            out.extend(r.value for r in records if r.value is not None)
    return out


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else 0.0)


def longest_unacked_s(samples: list[Sample], since: float, until_t: float) -> float:
    """The longest stretch in [since, until_t) with events submitted but not acked by Kafka."""
    longest, began = 0.0, None
    for s in samples:
        if not since <= s.t < until_t:
            continue
        if s.backlog > 0 and began is None:
            began = s.t
        elif s.backlog == 0 and began is not None:
            longest, began = max(longest, s.t - began), None
    if began is not None:
        longest = max(longest, until_t - began)
    return longest


def phase_figures(run: Run, name: str, start: float, end: float, base_p50: float) -> str:
    calls = [c for c in run.calls if start <= c.began < end]
    served = [c.latency_s * 1000 for c in calls if c.outcome == SERVED]
    refused = [c for c in calls if c.outcome == REFUSED]
    refusal_window = (max(c.began for c in refused) - min(c.began for c in refused)) if refused else 0.0
    return (f"{name}: {len(calls)} calls, {len(served)} served (p50 {pct(served, 50):.1f} ms, "
            f"{pct(served, 50) - base_p50:+.1f} ms on the baseline; max {max(served, default=0):.0f} ms), "
            f"{len(refused)} refused by fail_closed over {refusal_window:.1f} s")


async def test_replication_and_min_isr_come_from_settings(kafka_cluster: KafkaCluster, tmp_path) -> None:
    """Three brokers give 3 and 2 by default (the chaos test below checks that); LLMGW_KAFKA_* override
    both for the topics the gateway creates, and a min ISR no replica set can meet is refused."""
    bootstrap, prefix = kafka_cluster.bootstrap, unique_topic("replication")
    settings = Settings.load({"LLMGW_KAFKA_BOOTSTRAP": bootstrap, "LLMGW_TOPIC_PREFIX": prefix,
                              "LLMGW_DATA_DIR": str(tmp_path), "LLMGW_KAFKA_REPLICATION_FACTOR": "2",
                              "LLMGW_KAFKA_MIN_INSYNC_REPLICAS": "1"})
    ledger = KafkaLedger.from_settings(settings)
    await ledger.start()
    try:
        await until(lambda: ledger.kafka_connected, 60, what="the gateway's producer connected")
    finally:
        await ledger.stop()
    layout, min_isr = await usage_layout(bootstrap, Topics(prefix))
    assert {len(replicas) for _, replicas, _ in layout.values()} == {2} and min_isr == "1"
    with pytest.raises(ValueError, match="min.insync.replicas 3 > replication factor 2"):
        await ensure_topics(bootstrap, Topics(unique_topic("unwritable")), replication_factor=2,
                            min_insync_replicas=3)


async def test_config_and_alert_topics_get_3_replicas_and_min_isr_2(kafka_cluster: KafkaCluster) -> None:
    """Created on their own (``llmgw keys create`` may run before any gateway), not by ensure_topics."""
    prefix = unique_topic("own")
    await KafkaConfigLog(kafka_cluster.bootstrap, f"{prefix}.config").ensure_topic()
    await ensure_alert_topic(kafka_cluster.bootstrap, f"{prefix}.alerts")
    for topic in (f"{prefix}.config", f"{prefix}.alerts"):
        async def described() -> bool:        # the broker asked may learn of a new topic a moment later
            return bool((await topic_layout(kafka_cluster.bootstrap, topic))[0])
        await until(described, 30, what=f"{topic} described with its partitions")
        layout, min_isr = await topic_layout(kafka_cluster.bootstrap, topic)
        assert [len(replicas) for _, replicas, _ in layout.values()] == [3] and min_isr == "2", topic


async def test_leader_killed_then_a_second_broker_every_served_call_is_one_event(
        kafka_cluster: KafkaCluster, fake_provider: FakeProvider, tmp_path) -> None:
    bootstrap = kafka_cluster.bootstrap
    assert kafka_cluster.running() == [1, 2, 3], "the module's cluster starts whole"
    prefix = unique_topic("cluster")
    topics = await ensure_topics(bootstrap, Topics(prefix, partitions=PARTITIONS))
    layout, min_isr = await usage_layout(bootstrap, topics)
    assert all(len(replicas) == 3 and len(isr) == 3 for _, replicas, isr in layout.values()), layout
    assert min_isr == "2"

    worker = LedgerWorker(bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)
    gw = GatewayHarness(fake_provider, tmp_path / "gw", kafka_bootstrap=bootstrap, topic_prefix=prefix,
                        gateway_id="gw-cluster", file_config=POLICY)
    run = Run()
    clients: list[openai.AsyncOpenAI] = []
    tasks: list[asyncio.Task[None]] = []
    figures: dict[str, float] = {}
    await worker.start()
    await gw.start()
    try:
        ledger = gw.gw.ledger
        assert isinstance(ledger, KafkaLedger)
        for ws in ("backend", "research"):
            key, rec = K.mint("acme", ws, f"{ws}-user")
            gw.gw.config.apply(rec)
            clients += [openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=60)
                        for _ in range(CALLERS_PER_WORKSPACE)]
        gw.gw.config_changed()
        await until(lambda: ledger.health().snapshot_age_s() < 2, 60, what="the gateway's first snapshot")
        loop = asyncio.get_running_loop()
        rng = random.Random(21)
        async with asyncio.timeout(TEST_TIMEOUT_S):
            run.marks["baseline"] = time.monotonic()
            tasks.append(loop.create_task(monitor(ledger, run)))
            tasks += [loop.create_task(caller(c, "backend" if i < CALLERS_PER_WORKSPACE else "research",
                                              random.Random(rng.random()), run))
                      for i, c in enumerate(clients)]
            await asyncio.sleep(BASELINE_S)

            # 1. SIGKILL the leader of the busiest usage partition: its partitions move, ISR 2 of 3
            partition = await busiest_partition(bootstrap, topics)
            first = (await usage_layout(bootstrap, topics))[0][partition][0]
            run.marks["leader_killed"] = time.monotonic()
            await asyncio.to_thread(kafka_cluster.node(first).stop, kill=True)
            figures["leader_moved_s"] = await until(
                lambda: _new_leader(bootstrap, topics, partition, first), 60, 0.1,
                what=f"a new leader for usage partition {partition}")
            # every event submitted so far acked again: the gateway's producer found the new leaders
            submitted = ledger.events_submitted + ledger.started_submitted
            figures["acked_again_s"] = time.monotonic() - run.marks["leader_killed"] + await until(
                lambda: ledger.events_acked >= submitted and ledger.spool_depth_events == 0, 90, 0.05,
                what="the ledger acked after the leader moved")
            await asyncio.sleep(2)

            # 2. SIGKILL a second node: one broker of three, min ISR 2 cannot be met
            second = (await usage_layout(bootstrap, topics))[0][partition][0]
            assert second not in (first, -1)
            run.marks["second_killed"] = time.monotonic()
            spooled_before = figures["spooled_in_move"] = ledger.events_spooled
            await asyncio.to_thread(kafka_cluster.node(second).stop, kill=True)
            assert len(kafka_cluster.running()) == 1
            await until(lambda: ledger.health().snapshot_age_s() > MAX_STALE_S, 60, 0.1,
                        what="the snapshot to go stale past max_stale_s")
            stale_at = time.monotonic()
            await until(lambda: sum(c.outcome == REFUSED and c.began > stale_at for c in run.calls) >= 5
                        and sum(c.outcome == SERVED and c.workspace == "research" and c.began > stale_at
                                for c in run.calls) >= 5, 30, 0.1, what="calls under the failure policy")
            figures["spooled_in_outage"] = ledger.spool_depth_events

            # 3. both nodes back
            run.marks["restart"] = time.monotonic()
            await kafka_cluster.astart()
            run.marks["restarted"] = time.monotonic()
            figures["restart_s"] = run.marks["restarted"] - run.marks["restart"]
            figures["serving_again_s"] = await until(
                lambda: any(c.outcome == SERVED and c.workspace == "backend" and c.began > run.marks["restarted"]
                            for c in run.calls), 60, 0.05, what="backend served again")
            await asyncio.sleep(AFTER_RESTART_S)
            run.marks["end"] = time.monotonic()
            run.stop.set()
            await asyncio.gather(*tasks)
            tasks.clear()

            await ledger.flush(60)
            figures["outage_spooled_total"] = ledger.events_spooled - spooled_before
            records = await usage_records(bootstrap, topics)
            copies: dict[str, list[UsageEvent]] = {}
            for value in records:
                if (ev := usage_event_of(value)) is not None:
                    copies.setdefault(ev.event_id, []).append(ev)
            events = [evs[0] for evs in copies.values()]

            async def folded() -> bool:
                return await read_snapshots(bootstrap, topics) == fold_all(events)

            await until(folded, 90, 0.5, what="the worker's snapshots to equal fold_all of the usage topic")
            report = await compare(bootstrap, topics)
    finally:
        run.stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
        await gw.stop()
        await worker.stop()
        if len(kafka_cluster.running()) < 3:
            await kafka_cluster.astart()      # the module's cluster stays whole for whoever comes next

    served = [c for c in run.calls if c.outcome == SERVED]
    refused = [c for c in run.calls if c.outcome == REFUSED]
    other = [c for c in run.calls if c.outcome not in (SERVED, REFUSED)]
    assert not other, f"{len(other)} calls failed otherwise, e.g. {other[0]}"
    assert {c.workspace for c in refused} == {"backend"}, "only the fail_closed workspace is ever refused"
    # refused before any upstream call; the provider served exactly the calls the clients got
    assert len(fake_provider.requests) == len(fake_provider.served) == len(served)
    # nothing lost, nothing doubled: one usage event per served call, by request id and event_id
    assert all(ev.outcome == OK for ev in events)
    assert len(events) == len(served)
    assert all(c.request_id for c in served)
    assert sorted(ev.request_id for ev in events) == sorted(c.request_id for c in served)
    assert all(len({(e.request_id, e.cost_nano_usd, e.tokens) for e in evs}) == 1 for evs in copies.values())
    assert sum(ev.tokens.input for ev in events) == sum(u.input for u in fake_provider.served) \
        == sum(c.input_tokens for c in served)
    assert sum(ev.tokens.output for ev in events) == sum(u.output for u in fake_provider.served) \
        == sum(c.output_tokens for c in served)
    blind = [ev for ev in events if STALE_TAG in ev.tags]
    assert blind and {ev.workspace for ev in blind} == {"research"}, "served blind only where fail_open"
    # the folded totals count each served call once
    totals = await read_snapshots(bootstrap, topics)
    [org_day] = [t for k, t in totals.items() if k.startswith("org|acme|day|")]
    assert org_day.requests == len(served)
    assert org_day.spend_nano_usd == sum(ev.cost_nano_usd for ev in events)
    assert report.identical, report.differences[:5]
    assert figures["outage_spooled_total"] > 0, "the outage's events went through the spool"
    assert ledger.spool_depth_events == 0 and ledger.backlog_events == 0

    m = run.marks
    base = [c.latency_s * 1000 for c in served if c.began < m["leader_killed"]]
    base_p50 = pct(base, 50)
    lines = [
        f"{len(run.calls)} calls: {len(served)} served = {len(events)} events "
        f"({len(records)} usage-topic records incl. started records; "
        f"{sum(len(v) - 1 for v in copies.values())} repeated copies), {len(refused)} refused, {len(blind)} "
        f"served blind (llmgw:stale)",
        f"baseline: p50 {base_p50:.1f} ms, max {max(base):.0f} ms over {len(base)} calls",
        phase_figures(run, "leader killed -> second killed", m["leader_killed"], m["second_killed"], base_p50),
        phase_figures(run, "two of three down", m["second_killed"], m["restart"], base_p50),
        phase_figures(run, "two nodes restarting", m["restart"], m["restarted"], base_p50),
        phase_figures(run, "after restart", m["restarted"], m["end"], base_p50),
        f"leader moved {figures['leader_moved_s']:.1f} s after the kill; gateway acked everything again "
        f"{figures['acked_again_s']:.1f} s after it ({figures['spooled_in_move']:.0f} records spooled meanwhile); "
        "longest unacked stretch "
        f"{longest_unacked_s(run.samples, m['leader_killed'], m['second_killed']):.1f} s; max snapshot age "
        f"{max((s.snapshot_age_s for s in run.samples if m['leader_killed'] <= s.t < m['second_killed']), default=0):.1f} s",
        f"two down: first refusal {min(c.began for c in refused if c.began >= m['second_killed']) - m['second_killed']:.1f}"
        " s after the second kill "
        f"(max_stale_s {MAX_STALE_S:g}); {figures['spooled_in_outage']:.0f} records in the spool at the restart, "
        f"{figures['outage_spooled_total']:.0f} spooled in all; restart of two nodes {figures['restart_s']:.1f} s; "
        f"spool empty {drained_s(run, m['restart']):.1f} s after the restart began; backend served again "
        f"{figures['serving_again_s']:.1f} s after it ended",
    ]
    print("\n" + "\n".join(lines))


def drained_s(run: Run, since: float) -> float:
    """Seconds from ``since`` to the first sample with the spool empty again."""
    return next((s.t - since for s in run.samples if s.t >= since and s.spooled == 0), float("nan"))


async def _new_leader(bootstrap: str, topics: Topics, partition: int, old: int) -> bool:
    try:
        leader, _, _ = (await usage_layout(bootstrap, topics))[0][partition]
    except (KafkaError, OSError, TimeoutError):   # the metadata may be unreachable mid-failover: not yet
        return False
    return leader not in (old, -1)
