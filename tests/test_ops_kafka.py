"""Readiness and the failure policy on the real Kafka ledger: stop the broker, watch the snapshot age."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import pytest

from llmgw.ledger.kafka_ledger import KafkaLedger
from llmgw.ledger.topics import Topics
from llmgw.ledger.worker import LedgerWorker
from llmgw.proxy.failure import STALE_TAG
from tests.fixtures.kafka import create_topics, unique_topic
from tests.gateway_harness import GatewayHarness
from tests.waits import until

pytestmark = pytest.mark.kafka
POLICY = {"failure_policy": {"default": {"mode": "fail_closed", "max_stale_s": 4},
                             "workspaces": {"research": {"mode": "fail_open"}}}}


async def status(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/readyz") as r:
            return r.status, await r.json()


async def readyz_until(url: str, want: int, timeout_s: float) -> dict:
    seen: dict = {}

    async def answers() -> bool:
        seen["code"], seen["body"] = await status(url)
        return seen["code"] == want

    await until(answers, timeout_s, 0.25, what=f"/readyz answering {want}")
    return seen["body"]


async def metric(url: str, name: str) -> float:
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(url + "/metrics")).text()
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def call(url: str, key: str) -> None:
    await anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0).messages.create(
        model="claude-sonnet-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])


async def test_broker_outage_flips_readiness_and_applies_the_failure_policy(kafka_broker, fake_provider, tmp_path):
    bootstrap = kafka_broker.bootstrap
    prefix = unique_topic("ops")
    await create_topics(bootstrap, {f"{prefix}.usage": 2, f"{prefix}.snapshots": 2}, compacted={f"{prefix}.snapshots"})
    ledger = KafkaLedger(bootstrap, tmp_path, topic_prefix=prefix, send_timeout_s=1.0, retry_backoff_s=0.25,
                         connect_timeout_s=2.0)
    # a fresh snapshot needs a live fold: without a worker the replica is (rightly) never ready for long
    worker = LedgerWorker(bootstrap, Topics(prefix, partitions=2), group_id=f"{prefix}-ledger",
                          session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
    await worker.start()
    h = GatewayHarness(fake_provider, tmp_path, ledger=ledger, snapshot_max_age_s=2.0, file_config=POLICY)
    await h.start()
    try:
        body = await readyz_until(h.url, 200, 60)                 # caught up on the (empty) snapshot topic
        assert body["mode"] == "kafka"
        closed, _ = h.key("acme", "backend", "alice")
        opened, _ = h.key("acme", "research", "bob")
        await call(h.url, closed)

        await kafka_broker.astop()
        body = await readyz_until(h.url, 503, 30)
        assert "LLMGW_SNAPSHOT_MAX_AGE_S" in body["reason"]
        while (await status(h.url))[1]["snapshot_age_s"] <= 4:   # past the policy's max_stale_s
            await asyncio.sleep(0.25)
        with pytest.raises(anthropic.InternalServerError) as exc:
            await call(h.url, closed)
        assert exc.value.status_code == 503
        await call(h.url, opened)                         # fail_open: served, event spooled
        for _ in range(100):
            if await metric(h.url, "llmgw_spool_depth_events") >= 1:
                break
            await asyncio.sleep(0.1)
        assert await metric(h.url, "llmgw_spool_depth_events") >= 1
        assert await metric(h.url, "llmgw_producer_errors_total") >= 1
    finally:
        if not kafka_broker.is_running():
            await kafka_broker.astart()
    try:
        await readyz_until(h.url, 200, 90)                       # the follower reconnected and caught up
        await ledger.flush(60)                            # the spool drained onto Kafka
        assert await metric(h.url, "llmgw_spool_depth_events") == 0
        await call(h.url, closed)
    finally:
        await h.stop()
        await worker.stop()
    tags = [e.tags for e in await _usage(bootstrap, prefix)]
    assert sorted(STALE_TAG in t for t in tags) == [False, False, True]


async def _usage(bootstrap: str, prefix: str):
    from aiokafka import AIOKafkaConsumer

    from llmgw.ledger.started import usage_event_of
    consumer = AIOKafkaConsumer(f"{prefix}.usage", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out, deadline = {}, time.monotonic() + 30
        while len(out) < 3 and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for rec in recs:
                    if (ev := usage_event_of(rec.value)) is not None:    # not a started record
                        out[ev.event_id] = ev
        return list(out.values())
    finally:
        await consumer.stop()
