"""Bedrock through the real gateway: the anthropic SDK's Bedrock client and boto3 (botocore's own
event-stream parser) as callers, the fake Bedrock (tests/fakes/bedrock.py) upstream checking SigV4."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import orjson
import pytest
import pytest_asyncio

from ledger import events as E
from pricing import cost, load_catalog
from proxy.adapters.bedrock import catalog_model
from tests.fakes.bedrock import ACCESS_KEY, BedrockReply, BedrockUsage, FakeBedrock
from tests.gateway_harness import GatewayHarness


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bedrock_server() -> AsyncIterator[FakeBedrock]:
    async with FakeBedrock() as fake:
        yield fake


@pytest.fixture
def bedrock(bedrock_server: FakeBedrock) -> FakeBedrock:
    bedrock_server.reset()
    return bedrock_server


@pytest.fixture
async def gw(fake_provider, bedrock: FakeBedrock, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    async with GatewayHarness(fake_provider, tmp_path, file_config={"upstreams": bedrock.upstream_config()}) as h:
        yield h


def abr(gw: GatewayHarness, key: str) -> anthropic.AsyncAnthropicBedrock:
    return anthropic.AsyncAnthropicBedrock(api_key=key, base_url=gw.url + "/bedrock", aws_region="us-east-1",
                                           max_retries=0)


def expected_cost(model: str, tokens: E.Tokens, ts_ms: int) -> int:
    price = load_catalog().price_at(catalog_model(model), ts_ms, provider="anthropic")
    return cost(tokens, price, service_tier="standard").micro_usd


SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
OPUS = "us.anthropic.claude-opus-5-5"


async def test_invoke_stream_via_anthropic_bedrock_sdk(gw, bedrock):
    key, key_id = gw.key("acme", "ml", "bob")
    usage = BedrockUsage(input=40, output=9, cache_read=700, cache_write=300)
    bedrock.script(BedrockReply(text="streamed from bedrock", usage=usage))
    client = abr(gw, key)
    try:
        async with client.messages.stream(model=SONNET, max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"X-Claude-Code-Session-Id": "cc-9"}) as s:
            text = "".join([t async for t in s.text_stream])
            final = await s.get_final_message()
    finally:
        await client.close()
    assert text == "streamed from bedrock" and final.usage.output_tokens == 9
    [up] = bedrock.requests
    assert up.signed and up.action == "invoke-with-response-stream" and up.model == SONNET
    assert up.path == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1:0/invoke-with-response-stream"
    assert key not in str(up.headers) and ACCESS_KEY in up.headers["authorization"]
    assert up.json["anthropic_version"] and "model" not in up.json
    [ev] = await gw.events()
    tokens = E.Tokens(input=40, cache_write_5m=300, cache_read=700, output=9)
    assert ev.tokens == tokens and ev.outcome == E.OK and ev.stream and ev.key_id == key_id
    assert (ev.provider, ev.api, ev.model_requested, ev.session_id) == ("bedrock", "bedrock_invoke", SONNET, "cc-9")
    assert ev.cost_micro_usd == expected_cost(SONNET, tokens, ev.ts_start_ms) > 0


async def test_invoke_non_stream(gw, bedrock):
    key, _ = gw.key()
    bedrock.script(BedrockReply(text="plain answer", usage=BedrockUsage(input=12, output=3)))
    client = abr(gw, key)
    try:
        msg = await client.messages.create(model=OPUS, max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert msg.content[0].text == "plain answer"
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=12, output=3) and not ev.stream and ev.outcome == E.OK
    assert ev.cost_micro_usd == expected_cost(OPUS, ev.tokens, ev.ts_start_ms)
