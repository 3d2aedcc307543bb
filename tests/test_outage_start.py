"""A Kafka-mode gateway started while Kafka is away: it starts from its config cache, serves per the
failure policy, refuses admin writes with a 503 in the admin shape, and catches up when Kafka is back."""
from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import anthropic
import pytest
from aiokafka import AIOKafkaConsumer

from llmgw.ledger.config_cache import CACHE_NAME, ConfigCache
from llmgw.core.config import ConfigRecord
from llmgw.ledger.started import usage_event_of
from llmgw.ledger.topics import Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from llmgw.proxy import keys as K
from llmgw.proxy.failure import STALE_TAG
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.fixtures.kafka import unique_topic
from tests.waits import until

DEAD_BOOTSTRAP = "127.0.0.1:9"   # discard port: nothing listens, connections are refused at once
POLICY = {"failure_policy": {"default": {"mode": "fail_closed", "max_stale_s": 4},
                             "workspaces": {"research": {"mode": "fail_open"}}}}


async def call(url: str, key: str) -> anthropic.types.Message:
    async with anthropic.AsyncAnthropic(base_url=url, api_key=key, max_retries=0) as client:
        return await client.messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                            messages=[{"role": "user", "content": "x"}])


async def get(url: str, path: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url + path) as r:
        return r.status, await r.json()


def test_the_cache_round_trips_and_ignores_another_topics_or_a_broken_file(tmp_path: Path) -> None:
    _, key = K.mint("acme", "backend", "alice")
    gone = ConfigRecord.put("key", "kgone", None)
    cache = ConfigCache(tmp_path, "p.config")
    assert cache.load() is None
    cache.save([key, gone])
    state = cache.load()
    assert state is not None and list(state.records) == [key.id]
    assert state.records[key.id].data == key.data
    assert (tmp_path / CACHE_NAME).stat().st_mode & 0o777 == 0o600     # key hashes: private to the owner
    assert ConfigCache(tmp_path, "other.config").load() is None
    (tmp_path / CACHE_NAME).write_bytes(b'{"topic": "p.config"}\n{"id": "key:k1", "ty')
    assert cache.load() is None


async def test_started_with_kafka_refusing_it_serves_from_the_cache_per_policy(fake_provider, tmp_path):
    """No broker at all: the start does not fail, calls follow the failure policy on the cached keys,
    admin writes and reads answer 503 in the admin shape, and nothing is ready."""
    closed, closed_rec = K.mint("acme", "backend", "alice")
    opened, opened_rec = K.mint("acme", "research", "bob")
    ConfigCache(tmp_path, "llmgw.config").save([closed_rec, opened_rec])
    h = admin_harness(fake_provider, tmp_path, kafka_bootstrap=DEAD_BOOTSTRAP, snapshot_max_age_s=0.5,
                      file_config=POLICY)
    await h.start()
    try:
        assert (await get(h.url, "/healthz"))[0] == 200
        code, body = await get(h.url, "/readyz")
        assert code == 503 and body["status"] == "not_ready"
        with pytest.raises(anthropic.InternalServerError) as refused:
            await call(h.url, closed)                                      # fail_closed: never loaded
        assert refused.value.status_code == 503
        assert refused.value.body["error"]["type"] == "overloaded_error"          # the Anthropic shape
        served = await call(h.url, opened)                                 # fail_open: served, tagged
        assert served.usage.output_tokens > 0
        with pytest.raises(anthropic.AuthenticationError):
            await call(h.url, "sk-llmgw-kdeadbeef0000-not-a-key")
        async with aiohttp.ClientSession() as http:
            api = Api(http, h.url, OWNER_KEY)
            status, err = await api.call("POST", "/admin/keys", {"org": "acme", "workspace": "backend",
                                                                  "user": "carol"})
            assert status == 503, err
            assert err["error"]["type"] == "service_unavailable_error" and err["error"]["code"] == "unavailable"
            assert "nothing was changed" in err["error"]["message"]
            status, err = await api.get("/admin/audit")                       # a read of the config log
            assert status == 503 and err["error"]["code"] == "unavailable", err
        assert h.gw.config_current is False
        assert h.gw.ledger.health().spool_depth_events + h.gw.ledger.health().backlog_events >= 1
    finally:
        await h.stop()


@pytest.mark.kafka
async def test_started_with_the_broker_stopped_then_the_broker_comes_back(kafka_broker, fake_provider, tmp_path):
    bootstrap = kafka_broker.bootstrap
    prefix = unique_topic("outage")
    topics = await ensure_topics(bootstrap, Topics(prefix, partitions=2))
    worker = LedgerWorker(bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)      # ready needs a live fold (ledger/fold_watch.py)
    await worker.start()
    first = admin_harness(fake_provider, tmp_path, kafka_bootstrap=bootstrap, topic_prefix=prefix,
                          gateway_id="gw-before", snapshot_max_age_s=5.0, file_config=POLICY)
    await first.start()
    try:
        async with aiohttp.ClientSession() as http:
            api = Api(http, first.url, OWNER_KEY)
            closed = (await api.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "alice"}))
            opened = (await api.ok("POST", "/admin/keys", {"org": "acme", "workspace": "research", "user": "bob"}))
        cache = ConfigCache(tmp_path, f"{prefix}.config")

        def cached() -> bool:
            state = cache.load()
            return state is not None and {f"key:{closed['key_id']}", f"key:{opened['key_id']}"} <= set(state.records)
        await until(cached, 10.0, what="both keys in the config cache")
    finally:
        await first.stop()

    await kafka_broker.astop()
    h = admin_harness(fake_provider, tmp_path, kafka_bootstrap=bootstrap, topic_prefix=prefix, gateway_id="gw-after",
                      snapshot_max_age_s=2.0, file_config=POLICY)
    try:
        await h.start()                                    # raised KafkaConnectionError before the cache
        assert (await get(h.url, "/readyz"))[0] == 503
        with pytest.raises(anthropic.InternalServerError) as refused:
            await call(h.url, closed["key"])
        assert refused.value.status_code == 503
        await call(h.url, opened["key"])
        async with aiohttp.ClientSession() as http:
            status, err = await Api(http, h.url, OWNER_KEY).call("POST", "/admin/keys", {
                "org": "acme", "workspace": "backend", "user": "carol"})
        assert status == 503 and err["error"]["code"] == "unavailable"
    finally:
        if not kafka_broker.is_running():
            await kafka_broker.astart()
    try:
        async def ready() -> bool:
            return (await get(h.url, "/readyz"))[0] == 200
        await until(ready, 90.0, 0.25, what="/readyz 200 after the broker came back")
        await until(lambda: h.gw.config_current, 30.0, what="the config topic read again")
        await h.gw.ledger.flush(60)                        # type: ignore[attr-defined]
        await call(h.url, closed["key"])                   # fresh snapshot: served
        async with aiohttp.ClientSession() as http:
            await Api(http, h.url, OWNER_KEY).ok("POST", "/admin/keys", {
                "org": "acme", "workspace": "backend", "user": "carol"})
        await h.gw.ledger.flush(30)                        # type: ignore[attr-defined]
    finally:
        await h.stop()
        await worker.stop()
    events = await usage_events(bootstrap, prefix, want=2)
    by_key = {}
    for ev in events:
        by_key.setdefault(ev.key_id, []).append(ev)
    assert [STALE_TAG in e.tags for e in by_key[opened["key_id"]]] == [True]
    assert [STALE_TAG in e.tags for e in by_key[closed["key_id"]]] == [False]


async def usage_events(bootstrap: str, prefix: str, want: int) -> list:
    consumer = AIOKafkaConsumer(f"{prefix}.usage", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out, deadline = {}, time.monotonic() + 30
        while len(out) < want and time.monotonic() < deadline:
            for recs in (await consumer.getmany(timeout_ms=500)).values():
                for rec in recs:
                    if (ev := usage_event_of(rec.value)) is not None:
                        out[ev.event_id] = ev
        return list(out.values())
    finally:
        await consumer.stop()
