"""Kafka mode: revoking a key through one gateway closes its Responses WebSocket on another within a second."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from llmgw.ledger.topics import Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.fixtures.kafka import unique_topic
from tests.test_proxy_websocket import closed_within, until_done

pytestmark = pytest.mark.kafka


async def open_ws(http: aiohttp.ClientSession, url: str, key: str, timeout_s: float) -> aiohttp.ClientWebSocketResponse:
    """The session, once the gateway at ``url`` has followed the config topic far enough to know the key."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        try:
            return await http.ws_connect(url + "/v1/responses", headers={"authorization": f"Bearer {key}"})
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401 and loop.time() < deadline, exc
            await asyncio.sleep(0.05)


async def test_a_key_revoked_on_one_gateway_loses_its_websocket_on_another_within_a_second(
        kafka_bootstrap, fake_provider, tmp_path):
    prefix = unique_topic("wsrevoke")
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix, partitions=2))
    worker = LedgerWorker(kafka_bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)       # proxies in Kafka mode need the folded snapshot
    await worker.start()
    gateways = [admin_harness(fake_provider, tmp_path / name, kafka_bootstrap=kafka_bootstrap, topic_prefix=prefix,
                              gateway_id=f"gw-{name}") for name in ("a", "b")]
    for g in gateways:
        await g.start()
    a, b = gateways
    try:
        async with aiohttp.ClientSession() as http:
            admin_a = Api(http, a.url, OWNER_KEY)
            made = await admin_a.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "codex"})
            ws = await open_ws(http, b.url, made["key"], 10.0)
            await ws.send_json({"type": "response.create", "model": "gpt-5", "input": "on b"})
            assert (await until_done(ws))[-1]["type"] == "response.completed"
            await admin_a.ok("DELETE", f"/admin/keys/{made['key_id']}")
            frames, took_s = await closed_within(ws, 1.0)
            assert took_s < 1.0 and ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert [f["status"] for f in frames] == [401]
            assert b.gw.key_sessions == {}
    finally:
        for g in gateways:
            await g.stop()
        await worker.stop()
