"""Budgets on the real gateway: concurrency, defaults, exceptions, explain."""
from __future__ import annotations

import asyncio

import anthropic
import pytest

from llmgw.core import events as E
from tests.fake_provider import Reply, Usage


async def test_200_concurrent_streams_never_overspend_a_1_dollar_budget(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "dave")
    gw.budget("user:dave", "day", "1")
    # claude-haiku-4-5: $1/M input, $5/M output. Worst case per call is bounded by the body
    # bytes and max_tokens=2000 (about $0.01); each call really costs 3000 in + 1500 out = $0.0105.
    fake_provider.script(*[Reply(chunks=5, chunk_delay_s=0.01, usage=Usage(input=3000, output=1500))
                           for _ in range(200)])
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)

    async def one() -> str:
        try:
            async with client.messages.stream(model="claude-haiku-4-5", max_tokens=2000,
                                              messages=[{"role": "user", "content": "go"}]) as s:
                await s.get_final_message()
            return "ok"
        except anthropic.RateLimitError:
            return "refused"

    results = await asyncio.gather(*(one() for _ in range(200)))
    events = await gw.events()
    served = [e for e in events if e.outcome == E.OK]
    refused = [e for e in events if e.outcome == E.REJECTED_BUDGET]
    spent = sum(e.cost_micro_usd for e in events)
    assert results.count("ok") == len(served) and results.count("refused") == len(refused)
    assert len(served) + len(refused) == 200
    assert spent <= 1_000_000, f"settled spend {spent} exceeds the $1 cap"
    assert len(served) >= 50                           # the cap was used, not refused wholesale
    assert len(fake_provider.requests) == len(served)  # refused calls never reached the provider
    assert all(e.cost_micro_usd == 0 for e in refused)


async def test_defaults_apply_to_users_created_later_and_explicit_wins(gw, fake_provider):
    gw.budget("user:*", "day", "0.001", kind="default")
    key, _ = gw.key("acme", "backend", "newcomer")            # created after the default
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as exc:
        await client.messages.create(model="claude-haiku-4-5", max_tokens=1000,
                                     messages=[{"role": "user", "content": "x"}])
    assert "every user daily budget $0.00" in exc.value.body["error"]["message"]
    gw.budget("user:newcomer", "day", "5")                     # an explicit budget replaces the default
    fake_provider.script(Reply(usage=Usage(input=10, output=10)))
    msg = await client.messages.create(model="claude-haiku-4-5", max_tokens=1000,
                                       messages=[{"role": "user", "content": "x"}])
    assert msg.usage.output_tokens == 10


async def test_an_exception_lifts_one_project_without_lifting_others(gw, fake_provider):
    payments, _ = gw.key("acme", "backend", "erin", tags=("project:payments",))   # the tag an admin gave the key
    plain, _ = gw.key("acme", "backend", "erin")
    gw.budget("user:erin", "day", "0.02")
    gw.budget("user:erin", "day", "5", tag="project:payments", kind="exception", until_ms=4_102_444_800_000)

    async def call(key: str, project: str | None) -> str:
        fake_provider.script(Reply(usage=Usage(input=1000, output=1000)))   # $0.006 on haiku
        client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
        try:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=1000,
                                         messages=[{"role": "user", "content": "x"}],
                                         extra_headers={"x-llmgw-tags": f"project:{project}"} if project else {})
            return "ok"
        except anthropic.RateLimitError:
            return "refused"
        finally:
            await client.close()

    assert [await call(payments, None) for _ in range(10)] == ["ok"] * 10   # $0.06, over the $0.02 user cap
    others = [await call(plain, "search") for _ in range(5)]
    assert others[0] == "ok" and others[-1] == "refused"      # the ordinary cap still holds elsewhere
    events = await gw.events()
    search_spend = sum(e.cost_micro_usd for e in events if e.project == "search")
    assert search_spend <= 20_000


async def test_a_client_sent_tag_cannot_unlock_an_exception(gw, fake_provider):
    """`x-llmgw-tags: project:payments` from the client attributes spend but lifts no cap: the
    exception matches only a tag the key carries (or one the budget declares client-settable)."""
    key, _ = gw.key("acme", "backend", "gil")
    gw.budget("user:gil", "day", "0.01")
    gw.budget("user:gil", "day", "5", tag="project:payments", kind="exception", until_ms=4_102_444_800_000)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)

    async def call() -> str:
        fake_provider.script(Reply(usage=Usage(input=1000, output=1000)))   # $0.006 on haiku
        try:
            await client.messages.create(model="claude-haiku-4-5", max_tokens=1000,
                                         messages=[{"role": "user", "content": "x"}],
                                         extra_headers={"x-llmgw-tags": "project:payments"})
            return "ok"
        except anthropic.RateLimitError as exc:
            assert "user gil daily budget $0.01" in exc.body["error"]["message"]
            return "refused"

    results = [await call() for _ in range(4)]
    assert results[0] == "ok" and results[-1] == "refused"
    events = await gw.events()
    served = [e for e in events if e.outcome == E.OK]
    assert sum(e.cost_micro_usd for e in served) <= 10_000 + 6_000      # the $0.01 cap (one call's settle past it)
    assert all(e.project == "payments" for e in served)                  # the client's tag still attributes spend
    # declared client-settable, the same header now lifts the cap
    gw.budget("user:gil", "day", "5", tag="project:payments", kind="exception", until_ms=4_102_444_800_000,
              client_tags=True)
    assert await call() == "ok"
    await client.close()


async def test_success_headers_show_the_tightest_budget(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "fay")
    gw.budget("user:fay", "month", "100")
    gw.budget("user:fay", "hour", "2")
    fake_provider.script(Reply(usage=Usage(input=10, output=10)))
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    raw = await client.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=100,
                                                         messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-llmgw-budget-window"] == "hour"
    assert 1.99 < float(raw.headers["x-llmgw-budget-remaining-usd"]) <= 2.0
