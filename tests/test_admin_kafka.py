"""Kafka mode: an approval made on one proxy lifts the refusal on another proxy within a second."""
from __future__ import annotations


import aiohttp
import openai
import pytest

from llmgw.ledger.topics import Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.fake_provider import Reply, Usage
from tests.fixtures.kafka import unique_topic
from tests.waits import until

pytestmark = pytest.mark.kafka


async def refused(client: openai.AsyncOpenAI, fake_provider) -> bool:
    fake_provider.script(Reply(usage=Usage(input=10, output=10)))
    try:
        await client.chat.completions.create(model="gpt-4o-mini", max_tokens=100,
                                             messages=[{"role": "user", "content": "hi"}])
        return False
    except openai.RateLimitError:
        return True


async def test_approval_on_one_proxy_lifts_a_refusal_on_another_within_a_second(kafka_bootstrap, fake_provider,
                                                                                tmp_path):
    prefix = unique_topic("gov")
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix, partitions=2))
    worker = LedgerWorker(kafka_bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)       # proxies in Kafka mode need the folded snapshot
    await worker.start()
    proxies = [admin_harness(fake_provider, tmp_path / name, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix,
                             gateway_id=f"gw-{name}") for name in ("a", "b")]
    for p in proxies:
        await p.start()
    try:
        async with aiohttp.ClientSession() as http:
            admin_a = Api(http, proxies[0].url, OWNER_KEY)
            made = await admin_a.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "alice"})
            await admin_a.ok("POST", "/admin/budgets", {"scope": "user:alice", "org": "acme", "window": "day",
                                                        "limit_micro_usd": 1})
            client_b = openai.AsyncOpenAI(base_url=proxies[1].url + "/v1", api_key=made["key"], max_retries=0)
            await until(lambda: refused(client_b, fake_provider), 5.0)     # proxy b follows the config topic
            engineer_b = admin_a.as_(made["key"])
            engineer_b.url = proxies[1].url
            filed = await engineer_b.ok("POST", "/v1/llmgw/increase-requests",
                                        {"window": "day", "amount_usd": 3, "reason": "demo day"}, 201)
            await until(lambda: _visible(admin_a, filed["id"]), 5.0)      # proxy a sees the request b wrote
            await admin_a.ok("POST", f"/admin/increase-requests/{filed['id']}/approve", {"reason": "ok"})
            lifted_after_s = await until(lambda: _not(refused(client_b, fake_provider)), 1.0)
            assert lifted_after_s < 1.0
    finally:
        for p in proxies:
            await p.stop()
        await worker.stop()


async def _visible(api: Api, req_id: str) -> bool:
    return (await api.get(f"/admin/increase-requests/{req_id}"))[0] == 200


async def _not(aw) -> bool:
    return not await aw
