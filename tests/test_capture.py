"""Opt-in body capture: per workspace, redacted, in ClickHouse next to the event."""
from __future__ import annotations

import asyncio
import uuid

import openai

from llmgw.analytics import store
from llmgw.core.capture import record, redact
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness

SECRET = "sk-proj-" + "A1b2C3d4E5f6G7h8J9k0" * 2


def test_redaction_covers_the_usual_secrets():
    text = (f'key {SECRET} and Bearer abcdefghijk12345 and AKIAABCDEFGHIJKLMNOP '
            '{"password": "hunter22", "api_key": "xyz12345"} ghp_' + "a" * 36)
    out = redact(text)
    for secret in (SECRET, "abcdefghijk12345", "AKIAABCDEFGHIJKLMNOP", "hunter22", "xyz12345", "ghp_aaaa"):
        assert secret not in out
    assert out.count("[REDACTED]") == 6


async def test_capture_is_per_workspace_redacted_and_joined_by_event_id(fake_provider, tmp_path, chdb_dsn):
    database = "bodies_" + uuid.uuid4().hex[:8]
    dsn = f"{chdb_dsn}?database={database}"
    h = GatewayHarness(fake_provider, tmp_path, analytics=True, clickhouse_dsn=dsn)
    await h.start()
    try:
        h._put(record("acme", "backend", True, max_bytes=4096))
        on_key, _ = h.key("acme", "backend", "alice")
        off_key, _ = h.key("acme", "research", "bob")
        fake_provider.script(Reply(text="streamed reply", usage=Usage(input=10, output=2)),
                             Reply(text="not kept", usage=Usage(input=10, output=2)))
        stream = await openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=on_key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": f"my key is {SECRET}"}])
        [c async for c in stream]
        await openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=off_key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "private"}])
        events = await h.events()
        await h.gw.capture_sink.flush()
        client = store.connect(dsn)
        rows = []
        for _ in range(50):
            rows = (await asyncio.to_thread(client.query, f"SELECT event_id, workspace, request, response, truncated"
                                            f" FROM {database}.call_bodies FINAL")).result_rows
            if rows:
                break
            await asyncio.sleep(0.1)
        [(event_id, workspace, request, response, truncated)] = rows
        assert workspace == "backend" and event_id == events[0].event_id
        assert SECRET not in request and "[REDACTED]" in request and "my key is" in request
        assert "streamed" in response and "reply" in response and not truncated
    finally:
        await h.stop()
