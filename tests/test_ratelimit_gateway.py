"""Rate limits on the real gateway with the official SDKs; the limiter's clock is frozen."""
from __future__ import annotations

import asyncio
import time

import anthropic
import openai
import pytest

from llmgw.core import events as E
from llmgw.proxy import keys as K
from llmgw.proxy.ratelimit import RateLimit
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.test_ratelimit_buckets import Clock
from llmgw.core.principal import Principal


@pytest.fixture
async def gw(fake_provider, tmp_path):
    h = GatewayHarness(fake_provider, tmp_path, file_config={"policy": {"max_wait_s": 1.0}})
    await h.start()
    h.clock = Clock()
    h.gw.policy.limiter.clock = h.clock
    yield h
    await h.stop()


def limit(h: GatewayHarness, scope: str, metric: str, n: int, burst: int = 0) -> None:
    kind, name = scope.split(":", 1)
    h._put(RateLimit(kind, name, metric, n, burst).record())


def principal(h: GatewayHarness, key: str) -> Principal:
    p = K.authenticate(h.gw.config, key, int(time.time() * 1000))
    assert p is not None
    return p


def oai(h: GatewayHarness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=key, max_retries=0)


async def chat(client: openai.AsyncOpenAI, **headers: str):
    return await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                                extra_headers=headers or None)


async def test_rpm_refuses_with_a_short_retry_after_then_admits_after_the_window(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "rita")
    limit(gw, "user:rita", "rpm", 2)
    client = oai(gw, key)
    await chat(client)
    await chat(client)
    with pytest.raises(openai.RateLimitError) as exc:
        await chat(client)
    h = exc.value.response.headers
    assert h["retry-after"] == "30" and h["x-should-retry"] == "true"
    assert exc.value.body["type"] == "rate_limit_exceeded"
    assert "user rita: 2 requests per minute" in exc.value.message
    assert len(fake_provider.requests) == 2                  # the refused call never went upstream
    gw.clock.advance(29)
    with pytest.raises(openai.RateLimitError) as exc:
        await chat(client)
    assert exc.value.response.headers["retry-after"] == "1"
    gw.clock.advance(1)
    await chat(client)
    events = await gw.events()
    assert [e.outcome for e in events] == [E.OK, E.OK, E.REJECTED_RATE, E.REJECTED_RATE, E.OK]
    assert all(e.cost_micro_usd == 0 for e in events if e.outcome == E.REJECTED_RATE)


async def test_an_anthropic_client_gets_its_own_error_shape_and_retries_after_the_wait(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "sam")
    limit(gw, "key:" + principal(gw, key).key_id, "rpm", 1)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    await client.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.RateLimitError) as exc:
        await client.messages.create(model="claude-haiku-4-5", max_tokens=10,
                                     messages=[{"role": "user", "content": "x"}])
    assert exc.value.body["error"]["type"] == "rate_limit_error"
    assert exc.value.response.headers["retry-after"] == "60"
    assert exc.value.response.headers["x-should-retry"] == "true"


async def test_tpm_is_charged_at_the_worst_case_and_corrected_at_settlement(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "tom")
    limit(gw, "user:tom", "tpm", 12_000)
    p = principal(gw, key)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    fake_provider.script(Reply(chunks=20, chunk_delay_s=0.01, usage=Usage(input=3_000, output=2_000)))
    async with client.messages.stream(model="claude-haiku-4-5", max_tokens=5_000,
                                      messages=[{"role": "user", "content": "go"}]) as s:
        async for _ in s.text_stream:
            break
        body_bytes = len(fake_provider.requests[-1].body)
        worst = body_bytes + 4_096 + 5_000                    # pricing.estimate: prompt bound + max_tokens
        assert gw.gw.policy.limiter.available(p, "tpm") == 12_000 - worst
        await s.get_final_message()
    assert gw.gw.policy.limiter.available(p, "tpm") == 12_000 - 5_000   # the real count, not the worst case
    with pytest.raises(anthropic.RateLimitError) as exc:      # 7,000 left: the next worst case does not fit
        await client.messages.create(model="claude-haiku-4-5", max_tokens=5_000,
                                     messages=[{"role": "user", "content": "go"}])
    assert exc.value.response.headers["retry-after"] == str(-(-(worst - 7_000) // 200))   # 200 tokens/s
    [ok, refused] = await gw.events()
    assert ok.tokens.input == 3_000 and refused.outcome == E.REJECTED_RATE


async def test_a_batch_caller_waits_for_the_window_in_order(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "bea")
    limit(gw, "user:bea", "rpm", 600, burst=1)                 # one call per 100 ms
    client = oai(gw, key)
    await chat(client)
    t0 = time.monotonic()

    async def batch() -> float:
        await chat(client, **{"x-llmgw-wait": "5"})
        return time.monotonic() - t0

    done = await asyncio.gather(*(batch() for _ in range(3)))
    assert sorted(done)[0] >= 0.09 and sorted(done)[2] >= 0.29   # slots at 100, 200 and 300 ms
    assert len(fake_provider.requests) == 4
    assert all(e.outcome == E.OK for e in await gw.events())


async def test_a_batch_caller_is_refused_when_the_wait_would_exceed_the_bound(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "bo")
    limit(gw, "user:bo", "rpm", 20, burst=1)                   # one call per 3 s; the gateway's bound is 1 s
    client = oai(gw, key)
    await chat(client)
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as exc:
        await chat(client, **{"x-llmgw-wait": "60"})
    assert time.monotonic() - t0 < 0.5                         # refused at once, not after waiting
    assert exc.value.response.headers["retry-after"] == "3"
    with pytest.raises(openai.RateLimitError):                 # the caller's own bound counts too
        await chat(client, **{"x-llmgw-wait": "0.5"})
    gw.clock.advance(2.5)
    await chat(client, **{"x-llmgw-wait": "0.9"})               # 0.5 s to go: within both bounds
    assert [e.outcome for e in await gw.events()] == [E.OK, E.REJECTED_RATE, E.REJECTED_RATE, E.OK]


async def test_budget_refusals_never_wait(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "bill")
    gw.budget("user:bill", "day", "0.000001")
    limit(gw, "user:bill", "rpm", 600, burst=1)
    t0 = time.monotonic()
    with pytest.raises(openai.RateLimitError) as exc:
        await chat(oai(gw, key), **{"x-llmgw-wait": "5"})
    assert time.monotonic() - t0 < 0.5
    assert "Budget exceeded" in exc.value.message
    assert gw.gw.policy.limiter.available(principal(gw, key), "rpm") == 1   # no rate slot was taken
