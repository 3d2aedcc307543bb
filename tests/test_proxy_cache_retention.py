"""OpenAI 12-hour prompt-cache writes bill at their own rate, not the 30-minute one.

Usage reports every write in one ``cache_write_tokens``; the request's retention
(``prompt_cache_options.ttl``, or ``prompt_cache_retention`` on earlier models) says
which rate applies. GPT-6.2 Sol: input $2, 30-minute write $2.50, 12-hour write $5,
output $10 per MTok.
"""
from __future__ import annotations

import openai
import pytest

from llmgw.core import events as E
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness

SERVED = Usage(input=1_000, cache_write_5m=4_000, output=100)   # the fake reports 4,000 cache_write_tokens


def oai(gw: GatewayHarness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


async def call(gw: GatewayHarness, key: str, api: str, extra: dict) -> None:
    client = oai(gw, key)
    try:
        if api == "chat":
            await client.chat.completions.create(model="gpt-6.2-sol", messages=[{"role": "user", "content": "hi"}],
                                                 extra_body=extra)
        else:
            await client.responses.create(model="gpt-6.2-sol", input="hi", extra_body=extra)
    finally:
        await client.close()


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("extra", [{"prompt_cache_options": {"ttl": "12h"}}, {"prompt_cache_retention": "24h"}])
async def test_a_long_retention_write_bills_at_the_12_hour_rate(gw, fake_provider, api, extra):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=SERVED))
    await call(gw, key, api, extra)
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=1_000, cache_write_1h=4_000, output=100)
    # $2 x 1,000 + $5 x 4,000 + $10 x 100 = 23,000 micro-USD (the 30-minute rate would say 13,000)
    assert ev.cost_nano_usd == 23_000_000


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("extra", [{}, {"prompt_cache_options": {"ttl": "30m"}}, {"prompt_cache_retention": "in_memory"}])
async def test_a_default_retention_write_bills_at_the_30_minute_rate(gw, fake_provider, api, extra):
    key, _ = gw.key()
    fake_provider.script(Reply(usage=SERVED))
    await call(gw, key, api, extra)
    [ev] = await gw.events()
    assert ev.tokens == E.Tokens(input=1_000, cache_write_5m=4_000, output=100)
    assert ev.cost_nano_usd == 13_000_000      # $2 x 1,000 + $2.50 x 4,000 + $10 x 100
