"""Graceful shutdown: stop accepting, let open streams finish (up to a deadline), flush their events."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest

from llmgw.core import events as E
from llmgw.ledger.embedded import log_events
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.test_cli_serve import free_port, llmgw

BODY = {"model": "claude-sonnet-4-5", "max_tokens": 500, "stream": True,
        "messages": [{"role": "user", "content": "a long answer please"}]}


async def stream_until_eof(url: str, key: str, first: asyncio.Event) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/messages", json=BODY,
                             headers={"x-api-key": key, "anthropic-version": "2023-06-01"}) as r:
            body = b""
            try:
                async for chunk in r.content.iter_any():
                    body += chunk
                    first.set()
            except aiohttp.ClientPayloadError:      # cut at the deadline: what arrived is the answer
                pass
            return r.status, body


async def refused(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)):
                return False
    except (aiohttp.ClientConnectorError, aiohttp.ServerDisconnectedError, asyncio.TimeoutError):
        return True


async def test_runner_cleanup_lets_an_open_stream_finish_and_records_it(fake_provider, tmp_path):
    h = GatewayHarness(fake_provider, tmp_path)
    await h.start()
    key, _ = h.key()
    fake_provider.script(Reply(chunks=60, chunk_delay_s=0.02, usage=Usage(input=5, output=60)))
    first = asyncio.Event()
    client = asyncio.create_task(stream_until_eof(h.url, key, first))
    await asyncio.wait_for(first.wait(), 10)
    stopping = asyncio.create_task(h.stop())               # what SIGTERM does in `llmgw serve`
    await asyncio.sleep(0.1)
    assert await refused(h.url), "a stopping gateway must not accept new connections"
    status, body = await client
    await stopping
    assert status == 200
    assert body.count(b"event: content_block_delta") == 60 and b"message_stop" in body
    [ev] = log_events(tmp_path / "ledger" / "events.log")
    assert ev.outcome == E.OK and ev.tokens.output == 60 and not ev.usage_estimated


@pytest.fixture
def env(fake_provider, tmp_path):
    e = dict(os.environ)
    e.update(LLMGW_DATA_DIR=str(tmp_path / "data"), LLMGW_OPENAI_BASE_URL=fake_provider.openai_base_url,
             LLMGW_OPENAI_API_KEY=fake_provider.openai_key, LLMGW_ANTHROPIC_BASE_URL=fake_provider.anthropic_base_url,
             LLMGW_ANTHROPIC_API_KEY=fake_provider.anthropic_key, LLMGW_ANALYTICS="0",
             LLMGW_ADMIN_KEY="llmgw-admin-test-only-0123456789")
    e.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    return e


async def serve(env: dict[str, str], **extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env={**env, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("llmgw serve did not become ready")


def key_for(env: dict[str, str]) -> str:
    out = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "alice", env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def events_of(tmp_path) -> list[E.UsageEvent]:
    return log_events(tmp_path / "data" / "ledger" / "events.log")


async def test_sigterm_finishes_the_stream_and_flushes_its_event(env, fake_provider, tmp_path):
    key = key_for(env)
    proc, url = await serve(env, LLMGW_SHUTDOWN_TIMEOUT_S="20")
    try:
        fake_provider.script(Reply(chunks=100, chunk_delay_s=0.02, usage=Usage(input=9, output=100)))
        first = asyncio.Event()
        client = asyncio.create_task(stream_until_eof(url, key, first))
        await asyncio.wait_for(first.wait(), 10)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        assert await refused(url)
        status, body = await client
        code = await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0
    assert status == 200 and body.count(b"event: content_block_delta") == 100 and b"message_stop" in body
    [ev] = events_of(tmp_path)
    assert ev.outcome == E.OK and ev.tokens.output == 100
    stderr = proc.stderr.read()
    assert key not in stderr and fake_provider.anthropic_key not in stderr
    logged = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [access] = [o for o in logged if o.get("event") == "request"]
    assert access["status"] == 200 and access["outcome"] == "ok" and access["request_id"] == ev.request_id


async def test_sigterm_deadline_cuts_a_stream_that_is_too_long_and_still_records_it(env, fake_provider, tmp_path):
    key = key_for(env)
    proc, url = await serve(env, LLMGW_SHUTDOWN_TIMEOUT_S="1")
    try:
        fake_provider.script(Reply(chunks=300, chunk_delay_s=0.02, usage=Usage(input=9, output=300)))
        first = asyncio.Event()
        client = asyncio.create_task(stream_until_eof(url, key, first))
        await asyncio.wait_for(first.wait(), 10)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status, body = await client
        code = await asyncio.to_thread(proc.wait, 30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0 and took < 5, f"shutdown took {took:.1f}s with a 1s deadline"
    assert status == 200 and b"message_stop" not in body
    [ev] = events_of(tmp_path)                             # the cut call is still paid for
    assert ev.outcome == E.CANCELLED and ev.tokens.input == 9 and ev.tokens.output > 0   # estimated
    assert ev.usage_estimated and ev.cost_micro_usd > 0
