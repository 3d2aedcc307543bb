"""The official SDKs through the real gateway to the fake provider, and the events it records."""
from __future__ import annotations

import asyncio
import time

import aiohttp
import anthropic
import openai
import pytest

from llmgw.core import events as E
from tests.fake_provider import OPENAI_CHAT, Reply, Usage
from tests.gateway_harness import GatewayHarness

# Every test here runs against compact, spaced and pretty/escaped provider JSON (tests/fixtures/provider.py).
pytestmark = pytest.mark.usefixtures("wire_style")


def oai(gw: GatewayHarness, key: str, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, **kw)


def ant(gw: GatewayHarness, key: str, **kw) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, **{"max_retries": 0, **kw})


async def test_chat_non_stream_is_forwarded_and_metered(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "alice")
    fake_provider.script(Reply(text="hi there", usage=Usage(input=120, cache_read=80, output=7, reasoning=3)))
    resp = await oai(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-llmgw-tags": "project:payments,agent:script", "x-llmgw-session": "sess-1"})
    assert resp.choices[0].message.content == "hi there"
    assert resp.usage.prompt_tokens == 200 and resp.usage.completion_tokens == 7

    up = fake_provider.requests_for(OPENAI_CHAT)[-1]
    assert up.headers["authorization"] == f"Bearer {fake_provider.openai_key}"
    assert key not in str(up.headers)            # the gateway key never reaches the provider

    [ev] = await gw.events()
    assert (ev.org, ev.workspace, ev.user, ev.key_id) == ("acme", "backend", "alice", key_id)
    assert ev.tokens == E.Tokens(input=120, cache_read=80, output=7, reasoning=3)
    assert ev.outcome == E.OK and ev.http_status == 200 and ev.api == "chat"
    assert ev.tags == ("agent:script", "project:payments") and ev.project == "payments"
    assert ev.session_id == "sess-1"
    assert ev.cost_micro_usd > 0 and ev.price_version


async def test_chat_stream_usage_is_asked_for_and_hidden(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(text="one two three", usage=Usage(input=50, output=3)))
    stream = await oai(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "count"}], stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert all(c.choices for c in chunks), "the client did not ask for the usage chunk"
    assert fake_provider.requests_for(OPENAI_CHAT)[-1].json["stream_options"] == {"include_usage": True}
    [ev] = await gw.events()
    assert ev.tokens.input == 50 and ev.tokens.output == 3 and ev.stream and ev.ttft_ms is not None


async def test_chat_stream_client_that_asked_gets_usage(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=9, output=4)))
    stream = await oai(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert chunks[-1].usage.prompt_tokens == 9 and chunks[-1].choices == []
    [ev] = await gw.events()
    assert ev.tokens.output == 4


async def test_anthropic_stream_with_cache_writes(gw, fake_provider):
    key, key_id = gw.key("acme", "ml", "bob")
    usage = Usage(input=10, cache_write_5m=1000, cache_write_1h=2000, cache_read=5000, output=42)
    fake_provider.script(Reply(text="streamed answer", usage=usage))
    async with ant(gw, key).messages.stream(
            model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Claude-Code-Session-Id": "cc-123"}) as s:
        text = "".join([t async for t in s.text_stream])
        final = await s.get_final_message()
    assert text == "streamed answer" and final.usage.output_tokens == 42
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=10, cache_write_5m=1000, cache_write_1h=2000, cache_read=5000, output=42)
    assert ev.session_id == "cc-123" and ev.api == "messages" and ev.key_id == key_id
    assert ev.provider == "anthropic" and ev.outcome == E.OK


async def test_anthropic_bearer_auth_and_non_stream(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(text="plain", usage=Usage(input=11, output=2)))
    client = anthropic.AsyncAnthropic(base_url=gw.url, auth_token=key, max_retries=0)
    msg = await client.messages.create(model="claude-haiku-4-5", max_tokens=50,
                                       messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "plain"
    up = fake_provider.requests[-1]
    assert up.headers["x-api-key"] == fake_provider.anthropic_key and "authorization" not in up.headers
    [ev] = await gw.events()
    assert ev.tokens.input == 11 and ev.tokens.output == 2


async def test_count_tokens_and_models_pass_through_unmetered(gw, fake_provider):
    key, _ = gw.key()
    c = ant(gw, key)
    counted = await c.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens > 0
    models = await c.models.list()
    assert any(m.id.startswith("claude") for m in models.data)
    omodels = await oai(gw, key).models.list()
    assert any(m.id.startswith("gpt") for m in omodels.data)
    assert await gw.events() == []


async def test_responses_stream_and_embeddings(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(text="resp text", usage=Usage(input=300, cache_read=200, output=50, reasoning=20)))
    client = oai(gw, key)
    stream = await client.responses.create(model="gpt-5-mini", input="hi", stream=True)
    done = [e async for e in stream if e.type == "response.completed"]
    assert done and done[0].response.usage.output_tokens == 50
    fake_provider.script(Reply(usage=Usage(input=5000)))
    emb = await client.embeddings.create(model="text-embedding-3-small", input="vector me")
    assert emb.usage.prompt_tokens == 5000
    r, e = await gw.events()
    assert r.api == "responses" and r.tokens == E.Tokens(input=300, cache_read=200, output=50, reasoning=20)
    assert e.api == "embeddings" and e.tokens.input == 5000
    assert e.cost_micro_usd == 100                    # 5,000 tokens x $0.02 per million


async def test_cancelled_stream_still_produces_an_event(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(chunks=200, chunk_delay_s=0.01, usage=Usage(input=40, output=200)))
    client = ant(gw, key)
    got = 0
    async with client.messages.stream(model="claude-sonnet-4-5", max_tokens=500,
                                      messages=[{"role": "user", "content": "long"}]) as s:
        async for _ in s.text_stream:
            got += 1
            if got == 20:
                break
    await fake_provider.wait_for_abandoned(1)
    for _ in range(100):
        evs = await gw.events()
        if evs:
            break
        await asyncio.sleep(0.05)
    [ev] = evs
    assert ev.outcome == E.CANCELLED
    assert ev.tokens.input == 40                      # known from message_start
    assert 20 <= ev.tokens.output <= 500              # estimated from what streamed, capped by max_tokens
    assert ev.usage_estimated and ev.cost_micro_usd > 0


async def test_upstream_errors_pass_through_and_are_recorded(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(status=429, error_message="slow down"), Reply(status=500))
    with pytest.raises(anthropic.RateLimitError) as exc:
        await ant(gw, key).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                           messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["error"]["message"] == "slow down"
    with pytest.raises(openai.InternalServerError):
        await oai(gw, key).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    a, b = await gw.events()
    assert (a.outcome, a.http_status, a.cost_micro_usd) == (E.UPSTREAM_ERROR, 429, 0)
    assert (b.outcome, b.http_status) == (E.UPSTREAM_ERROR, 500)


async def test_gateway_errors_speak_each_api_shape(gw, fake_provider):
    async with aiohttp.ClientSession() as http:
        r = await http.post(gw.url + "/v1/messages", json={"model": "x"},
                            headers={"anthropic-version": "2023-06-01", "x-api-key": "nope"})
        assert r.status == 401
        body = await r.json()
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
        r = await http.post(gw.url + "/v1/chat/completions", json={}, headers={"authorization": "Bearer nope"})
        assert r.status == 401 and (await r.json())["error"]["code"] == "invalid_api_key"
        key, _ = gw.key()
        r = await http.post(gw.url + "/v1/chat/completions", data=b"{not json",
                            headers={"authorization": f"Bearer {key}"})
        assert r.status == 400 and "not valid JSON" in (await r.json())["error"]["message"]
        r = await http.post(gw.url + "/v1/chat/completions", json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
                            headers={"authorization": f"Bearer {key}"})
        assert r.status == 400 and "no price" in (await r.json())["error"]["message"]
        r = await http.head(gw.url + "/api/hello")
        assert r.status == 200
    assert fake_provider.requests == []            # nothing reached the provider


async def test_body_too_large_is_refused_before_upstream(fake_provider, tmp_path):
    h = GatewayHarness(fake_provider, tmp_path, max_body_bytes=1000)
    await h.start()
    try:
        key, _ = h.key()
        with pytest.raises(openai.APIStatusError) as exc:
            await oai(h, key).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x" * 5000}])
        assert exc.value.status_code == 413
        assert fake_provider.requests == []
    finally:
        await h.stop()


async def test_budget_refusal_is_immediate_and_never_reaches_upstream(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "carol")
    gw.budget("user:carol", "day", "0.01")
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=3)
    t0 = time.monotonic()
    with pytest.raises(anthropic.RateLimitError) as exc:
        await client.messages.create(model="claude-opus-4-1", max_tokens=4000,
                                     messages=[{"role": "user", "content": "expensive"}])
    assert time.monotonic() - t0 < 2.0, "x-should-retry: false must stop the SDK's retries"
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert int(exc.value.response.headers["retry-after"]) > 0
    msg = exc.value.body["error"]["message"]
    assert "user carol daily budget $0.01" in msg and "resets at" in msg
    assert fake_provider.requests == []
    [ev] = await gw.events()
    assert ev.outcome == E.REJECTED_BUDGET and ev.cost_micro_usd == 0


async def test_model_allow_list(gw, fake_provider):
    key, _ = gw.key(allowed_models=("claude-haiku-*",))
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        await ant(gw, key).messages.create(model="claude-opus-4-1", max_tokens=10,
                                           messages=[{"role": "user", "content": "x"}])
    assert "claude-haiku-*" in exc.value.body["error"]["message"]
    assert fake_provider.requests == []


async def test_clients_cannot_set_the_gateways_own_tags(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=5, output=5)))
    await oai(gw, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
        extra_headers={"x-llmgw-tags": "llmgw:stale,project:ok"}, metadata={"llmgw": "forged"})
    [ev] = await gw.events()
    assert ev.tags == ("project:ok",)


async def test_openai_cache_writes_are_split_out_of_the_prompt(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=100, cache_read=300, cache_write_5m=600, output=5)))
    resp = await oai(gw, key).responses.create(model="gpt-5-mini", input="hi")
    assert resp.usage.input_tokens == 1000
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=100, cache_write_5m=600, cache_read=300, output=5)


async def test_a_cookie_one_callers_response_set_never_rides_on_another_callers_call(fake_provider, tmp_path):
    """Providers answer with Set-Cookie (Cloudflare's __cf_bm): one shared upstream session must not
    keep it and replay it on the next caller's request, nor hand it down to the caller."""
    upstream = fake_provider.openai_base_url.replace("127.0.0.1", "localhost")   # a cookie jar ignores IP hosts
    async with GatewayHarness(fake_provider, tmp_path, openai_base_url=upstream) as h:
        alice, _ = h.key("acme", "backend", "alice")
        bob, _ = h.key("other", "ops", "bob")
        fake_provider.script(Reply(headers={"set-cookie": "__cf_bm=alice-session; Path=/; HttpOnly"}), Reply())
        async with aiohttp.ClientSession() as http:
            for key in (alice, bob):
                async with http.post(h.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                     json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}) as r:
                    assert r.status == 200 and "set-cookie" not in r.headers
        first, second = fake_provider.requests_for(OPENAI_CHAT)[-2:]
        assert "cookie" not in first.headers and "cookie" not in second.headers


def _price_now(model: str, tokens: E.Tokens, tier: str | None) -> int:
    from llmgw.pricing import cost, load_catalog
    return cost(tokens, load_catalog().price_at(model, int(time.time() * 1000)), service_tier=tier).micro_usd


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_fast_mode_is_billed_at_the_fast_rate(gw, fake_provider, stream):
    """Claude Code's /fast sends speed: fast; Opus 4.8 then bills x2. Metering at standard
    rates would let a fast-mode session spend twice its budget."""
    key, _ = gw.key()
    fake_provider.script(Reply(text="quick", usage=Usage(input=2_000, cache_read=10_000, output=500)))
    client = ant(gw, key)
    kwargs = dict(model="claude-opus-4-8", max_tokens=1_000, messages=[{"role": "user", "content": "go"}],
                  extra_body={"speed": "fast"})
    if stream:
        async with client.messages.stream(**kwargs) as s:
            final = await s.get_final_message()
    else:
        final = await client.messages.create(**kwargs)
    assert final.content[0].text == "quick"
    [ev] = await gw.events()
    tokens = E.Tokens(input=2_000, cache_read=10_000, output=500)
    standard = _price_now("claude-opus-4-8", tokens, None)
    # $10 x 2,000 + $1 x 10,000 + $50 x 500 = 55,000 micro-USD: twice the standard 27,500
    assert (ev.cost_micro_usd, standard) == (55_000, 27_500)
    assert ev.service_tier == "fast" and ev.tokens == tokens


async def test_fast_mode_that_fell_back_to_standard_speed_is_billed_at_standard(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=2_000, output=500), served_tier="standard"))
    await ant(gw, key).messages.create(model="claude-opus-4-8", max_tokens=1_000, extra_body={"speed": "fast"},
                                       messages=[{"role": "user", "content": "go"}])
    [ev] = await gw.events()
    assert ev.service_tier == "standard"
    assert ev.cost_micro_usd == _price_now("claude-opus-4-8", E.Tokens(input=2_000, output=500), None) == 22_500


async def test_fast_mode_on_a_model_without_a_fast_price_is_flagged_as_estimated(gw, fake_provider):
    """The catalog has no fast price for Fable 5.2: the call is billed at base rates, and the
    event says that figure is a guess instead of passing it off as exact."""
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=2_000, output=500)))
    await ant(gw, key).messages.create(model="claude-fable-5-2", max_tokens=1_000, extra_body={"speed": "fast"},
                                       messages=[{"role": "user", "content": "go"}])
    [ev] = await gw.events()
    assert ev.service_tier == "fast" and ev.cost_estimated
    assert ev.cost_micro_usd == _price_now("claude-fable-5-2", E.Tokens(input=2_000, output=500), None) > 0


async def test_a_standard_call_is_not_flagged_as_estimated(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=2_000, output=500)))
    await ant(gw, key).messages.create(model="claude-fable-5-2", max_tokens=1_000,
                                       messages=[{"role": "user", "content": "go"}])
    [ev] = await gw.events()
    assert ev.service_tier == "standard" and not ev.cost_estimated


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_openai_bills_the_tier_it_says_it_served(gw, fake_provider, api):
    """A project whose default tier is priority (fast) is served and billed at it even when the
    request names no tier; the response's service_tier is what the invoice follows."""
    key, _ = gw.key()
    fake_provider.script(Reply(usage=Usage(input=1_000, output=1_000), served_tier="priority"))
    client = oai(gw, key)
    if api == "chat":
        await client.chat.completions.create(model="gpt-5.1", messages=[{"role": "user", "content": "hi"}])
    else:
        await client.responses.create(model="gpt-5.1", input="hi")
    [ev] = await gw.events()
    tokens = E.Tokens(input=1_000, output=1_000)
    assert ev.service_tier == "priority"
    assert ev.cost_micro_usd == _price_now("gpt-5.1", tokens, "priority") == 2 * _price_now("gpt-5.1", tokens, None)
