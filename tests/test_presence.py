"""The live proxy count that shares budgets' margins and rate limits, from heartbeats on Kafka."""
from __future__ import annotations

import asyncio

from llmgw.ledger.topics import Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from tests.fixtures.kafka import unique_topic
from tests.gateway_harness import GatewayHarness
from tests.waits import until


async def test_each_proxy_counts_the_live_proxies_and_drops_one_that_stops(kafka_bootstrap, fake_provider, tmp_path):
    prefix = unique_topic("presence")
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix, partitions=1))
    worker = LedgerWorker(kafka_bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)
    await worker.start()
    presence = {"presence": {"interval_s": 0.2, "ttl_s": 3.0}}
    proxies = [GatewayHarness(fake_provider, tmp_path / f"p{i}", kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix,
                              gateway_id=f"gw-{i}", file_config=presence) for i in range(3)]
    try:
        for p in proxies:
            await p.start()
        await until(lambda: all(p.gw.policy.proxies() == 3 for p in proxies), 20.0)
        await proxies[2].stop()                       # a clean stop leaves at once (tombstone)
        await until(lambda: all(p.gw.policy.proxies() == 2 for p in proxies[:2]), 5.0)
    finally:
        for p in proxies[:2]:
            await p.stop()
        await worker.stop()


async def test_a_pinned_count_in_the_config_file_wins(kafka_bootstrap, fake_provider, tmp_path):
    prefix = unique_topic("pinned")
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix, partitions=1))
    worker = LedgerWorker(kafka_bootstrap, topics, group_id=f"{prefix}-ledger")
    await worker.start()
    h = GatewayHarness(fake_provider, tmp_path, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix,
                       file_config={"policy": {"proxies": 4}})
    try:
        await h.start()
        await asyncio.sleep(1.0)
        assert h.gw.policy.proxies() == 4
    finally:
        await h.stop()
        await worker.stop()
