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

from llmgw.core import events as E
from llmgw.pricing import cost, load_catalog
from llmgw.proxy.adapters.bedrock import catalog_model
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
    """Anthropic's list price; geographic and in-region ids 10% more (the catalog's ``regional`` tier)."""
    price = load_catalog().price_at(catalog_model(model), ts_ms, provider="anthropic")
    list_price = cost(tokens, price, service_tier="standard").micro_usd
    return list_price if model.startswith("global.") else round(list_price * 1.1)


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


@pytest.mark.parametrize("model", [OPUS, "global.anthropic.claude-opus-5-5"])
async def test_invoke_non_stream(gw, bedrock, model):
    key, _ = gw.key()
    bedrock.script(BedrockReply(text="plain answer", usage=BedrockUsage(input=120000, output=3000)))
    client = abr(gw, key)
    try:
        msg = await client.messages.create(model=model, max_tokens=3200, messages=[{"role": "user", "content": "hi"}])
    finally:
        await client.close()
    assert msg.content[0].text == "plain answer"
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=120000, output=3000) and not ev.stream and ev.outcome == E.OK
    # $4/$20 per Mtok: $0.54 at the global endpoint, 10% more at a geographic one
    assert ev.cost_micro_usd == expected_cost(model, ev.tokens, ev.ts_start_ms) == \
        (540_000 if model.startswith("global.") else 594_000)
    assert ev.service_tier == ("standard" if model.startswith("global.") else "regional")


def boto_client(gw: GatewayHarness, key: str, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """boto3's bedrock-runtime client sending the gateway key as its Bedrock API key (a Bearer token)."""
    import boto3
    from botocore.config import Config

    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
    return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=gw.url + "/bedrock",
                        config=Config(retries={"total_max_attempts": 1}))


async def test_converse_and_converse_stream_via_boto3(gw, bedrock, monkeypatch):
    key, _ = gw.key()
    client = boto_client(gw, key, monkeypatch)
    bedrock.script(BedrockReply(text="conversed", usage=BedrockUsage(input=21, output=4, cache_read=10)),
                   BedrockReply(text="one two three four", usage=BedrockUsage(input=30, output=5, cache_write=64)))
    msgs = [{"role": "user", "content": [{"text": "hi"}]}]
    plain = await asyncio.to_thread(client.converse, modelId=SONNET, messages=msgs,
                                    inferenceConfig={"maxTokens": 100})
    assert plain["output"]["message"]["content"][0]["text"] == "conversed"

    def stream() -> tuple[str, dict]:
        resp = client.converse_stream(modelId=SONNET, messages=msgs, inferenceConfig={"maxTokens": 100})
        text, usage = "", {}
        for event in resp["stream"]:                 # botocore's EventStream parser checks every CRC
            text += event.get("contentBlockDelta", {}).get("delta", {}).get("text", "")
            usage = event.get("metadata", {}).get("usage", usage)
        return text, usage

    text, usage = await asyncio.to_thread(stream)
    assert text == "one two three four" and usage["cacheWriteInputTokens"] == 64
    assert [r.path for r in bedrock.requests] == [f"/model/{SONNET}/converse", f"/model/{SONNET}/converse-stream"]
    assert all(r.signed for r in bedrock.requests)
    e1, e2 = sorted(await gw.events(), key=lambda e: e.ts_start_ms)
    assert e1.tokens == E.Tokens(input=21, output=4, cache_read=10) and e1.api == "bedrock_converse"
    assert e2.tokens == E.Tokens(input=30, output=5, cache_write_5m=64) and e2.stream and e2.outcome == E.OK
    assert e2.cost_micro_usd == expected_cost(SONNET, e2.tokens, e2.ts_start_ms)


async def test_invoke_stream_via_boto3_event_stream_parser(gw, bedrock, monkeypatch):
    key, _ = gw.key()
    client = boto_client(gw, key, monkeypatch)
    bedrock.script(BedrockReply(text="a b c", usage=BedrockUsage(input=7, output=3)))
    body = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50,
                         "messages": [{"role": "user", "content": "hi"}]})

    def run() -> list[dict]:
        resp = client.invoke_model_with_response_stream(modelId=OPUS, body=body)
        return [orjson.loads(e["chunk"]["bytes"]) for e in resp["body"]]

    events = await asyncio.to_thread(run)
    assert [e["type"] for e in events][0] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3
    # boto3 percent-encodes the model id; the gateway sends it on as the id, re-signed
    assert bedrock.requests[-1].model == OPUS and bedrock.requests[-1].signed
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=7, output=3)


async def test_refusals_are_in_bedrock_shape_before_any_upstream_call(gw, bedrock, http):
    key, _ = gw.key()
    url = gw.url + f"/bedrock/model/{OPUS}/invoke"
    async with http.post(url, data=b'{"max_tokens": 5}') as r:               # no key
        assert r.status == 401 and (await r.json())["__type"] == "AccessDeniedException"
    auth = {"authorization": f"Bearer {key}"}
    async with http.post(url, data=b"[1, 2]", headers=auth) as r:
        assert r.status == 400 and (await r.json())["__type"] == "ValidationException"
    async with http.post(url, data=b'{"max_tokens": -1, "messages": []}', headers=auth) as r:
        assert r.status == 400 and "max_tokens" in (await r.json())["message"]
    llama = gw.url + "/bedrock/model/meta.llama3-70b-instruct-v1:0/converse"
    async with http.post(llama, data=b'{"messages": []}', headers=auth) as r:   # no price: no cap possible
        assert r.status == 400 and "no price" in (await r.json())["message"]
    async with http.get(gw.url + "/bedrock/inference-profiles?type=SYSTEM_DEFINED", headers=auth) as r:
        assert r.status == 404 and (await r.json())["__type"] == "ResourceNotFoundException"
    assert bedrock.requests == []
    assert all(e.cost_micro_usd == 0 for e in await gw.events())


async def test_upstream_throttling_is_relayed_and_costs_nothing(gw, bedrock, monkeypatch):
    from botocore.exceptions import ClientError

    key, _ = gw.key()
    client = boto_client(gw, key, monkeypatch)
    bedrock.script(BedrockReply(status=429))
    with pytest.raises(ClientError) as info:
        await asyncio.to_thread(client.converse, modelId=SONNET, messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert info.value.response["Error"]["Code"] == "ThrottlingException"
    [ev] = await gw.events()
    assert ev.outcome == E.UPSTREAM_ERROR and ev.http_status == 429 and ev.cost_micro_usd == 0


async def test_exception_mid_stream_bills_what_was_generated(gw, bedrock, http):
    key, _ = gw.key()
    bedrock.script(BedrockReply(text="one two three four five six", usage=BedrockUsage(input=50, output=6),
                                fail_mid_stream=True, seed=7))
    body = b'{"anthropic_version":"bedrock-2023-05-31","max_tokens":100,"messages":[{"role":"user","content":"x"}]}'
    async with http.post(gw.url + f"/bedrock/model/{OPUS}/invoke-with-response-stream", data=body,
                         headers={"authorization": f"Bearer {key}"}) as r:
        raw = await r.read()
    from botocore.eventstream import EventStreamBuffer
    buf = EventStreamBuffer()
    buf.add_data(raw)
    msgs = list(buf)                                  # every frame intact, CRCs included
    assert msgs[-1].headers[":message-type"] == "exception"
    [ev] = await gw.events()
    assert ev.outcome == E.UPSTREAM_ERROR and ev.error_type == "modelStreamErrorException"
    assert ev.tokens.input == 50 and 3 <= ev.tokens.output <= 100 and ev.cost_micro_usd > 0


async def test_converse_stream_cut_mid_way_is_billed_not_free(gw, bedrock, http):
    key, _ = gw.key()
    bedrock.script(BedrockReply(text="alpha beta gamma delta", usage=BedrockUsage(input=80, output=4),
                                drop_mid_stream=True))
    async with http.post(gw.url + f"/bedrock/model/{SONNET}/converse-stream",
                         data=b'{"messages":[{"role":"user","content":[{"text":"x"}]}],"inferenceConfig":{"maxTokens":9}}',
                         headers={"authorization": f"Bearer {key}"}) as r:
        try:
            await r.read()
        except Exception:                             # noqa: BLE001 - the cut reaches the client as it may
            pass
    [ev] = await gw.events()
    assert ev.outcome == E.UPSTREAM_ERROR and not ev.tokens.input
    assert 2 <= ev.tokens.output <= 9 and ev.usage_estimated and ev.cost_micro_usd > 0
