"""Holds never leak: every call releases its own, and the sweeper frees any that nobody settled.

The gateway here has a hold bound of 0.5 s (``first_byte_timeout_s`` 0.3 + ``stream_max_s`` 0.2),
so the sweeper's work is visible within a test.
"""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import openai
import pytest
from aiohttp.test_utils import make_mocked_request

from llmgw.core import events as E
from llmgw.proxy.adapters.openai_chat import OpenAIChat
from llmgw.proxy.call import LiveCall, route
from llmgw.proxy.holds import sweep
from llmgw.proxy.keys import authenticate
from llmgw.proxy.types import Usage
from tests.fake_provider import FakeProvider, Reply
from tests.fake_provider import Usage as Served
from tests.gateway_harness import GatewayHarness
from tests.waits import until
from tests.test_ops_metrics import scrape, value


@pytest.fixture
async def gw(fake_provider: FakeProvider, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    async with GatewayHarness(fake_provider, tmp_path, first_byte_timeout_s=0.3, stream_max_s=0.2) as h:
        yield h


def hold_for(gw: GatewayHarness, key: str, micro_usd: int):
    """A hold placed as admission places one, which no call will ever settle."""
    now_ms = int(time.time() * 1000)
    return gw.gw.policy.reserve(authenticate(gw.gw.config, key, now_ms), (), micro_usd, now_ms)


async def test_a_hold_nobody_settles_is_swept_logged_and_counted(gw, caplog):
    key, _ = gw.key("acme", "backend", "alice")
    gw.budget("user:alice", "day", "1")
    caplog.set_level(logging.WARNING, logger="llmgw.proxy")
    r = hold_for(gw, key, 330_000)
    m = await scrape(gw.url)
    assert value(m, "llmgw_holds_open") == 1 and value(m, "llmgw_holds_open_usd") == 0.33
    assert gw.gw.policy.used(r.holds[0]) == 330_000
    await until(lambda: not r.open, 5.0, 0.02, "the sweep")
    assert gw.gw.policy.used(r.holds[0]) == 0                 # the budget has its $0.33 back
    m = await scrape(gw.url)
    assert value(m, "llmgw_holds_open") == 0 and value(m, "llmgw_holds_open_usd") == 0
    assert value(m, "llmgw_holds_swept_total") == 1
    [swept] = [rec for rec in caplog.records if getattr(rec, "event", "") == "hold_swept"]
    assert swept.amount_micro_usd == 330_000 and swept.age_s >= 0.5


async def test_a_call_that_outlives_the_bound_is_swept_and_still_pays_once(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "bob")
    gw.budget("user:bob", "day", "1")
    policy = gw.gw.policy
    fake_provider.script(Reply(chunks=10, chunk_delay_s=0.1, usage=Served(input=20, output=10)))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True, max_tokens=100,
                                                      messages=[{"role": "user", "content": "slow"}])
        swept_mid_stream = False
        async for _ in stream:
            swept_mid_stream = swept_mid_stream or policy.holds.swept == 1
    finally:
        await client.close()
    assert swept_mid_stream
    [ev] = await gw.events()
    assert ev.outcome == E.OK and ev.tokens.output == 10 and not ev.usage_estimated and ev.cost_micro_usd > 0
    assert len(policy.holds) == 0 and policy.holds.swept == 1


async def test_a_late_settle_of_a_swept_hold_releases_nothing_twice(gw):
    """The sweeper frees a hold; another call then holds on the same budget; the first call's own
    release, arriving late, must not take the second call's money off the books."""
    key, _ = gw.key("acme", "backend", "dave")
    gw.budget("user:dave", "day", "1")
    policy = gw.gw.policy
    first = hold_for(gw, key, 200_000)
    assert sweep(policy, max_age_s=0.5, now_s=time.monotonic() + 1) == 1
    second = hold_for(gw, key, 70_000)
    policy.release(first, 123)                                   # the first call settles, late
    assert policy.used(second.holds[0]) == 70_000 and len(policy.holds) == 1
    assert sweep(policy, max_age_s=0.5, now_s=time.monotonic()) == 0   # young holds stay
    policy.release(second, 0)
    assert policy.used(second.holds[0]) == 0 and len(policy.holds) == 0 and policy.holds.swept == 1


async def test_calls_that_settle_leave_no_hold_behind(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "carol")
    gw.budget("user:carol", "day", "1")
    fake_provider.script(Reply(usage=Served(input=5, output=3)), Reply(status=500), Reply(drop_mid_stream=True),
                         Reply(usage=Served(input=-1000, output=3)))     # usage no price can be put on
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    ant = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    try:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a"}])
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "b"}])
        stream = await client.chat.completions.create(model="gpt-4o-mini", stream=True,
                                                      messages=[{"role": "user", "content": "c"}])
        async for _ in stream:
            pass
        await ant.messages.create(model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "d"}])
    finally:
        await client.close()
        await ant.close()
    events = await gw.events()
    assert [e.outcome for e in events] == [E.OK, E.UPSTREAM_ERROR, E.UPSTREAM_ERROR, E.OK]
    assert events[-1].cost_micro_usd > 0                                # never free, never a 500
    assert len(gw.gw.policy.holds) == 0 and gw.gw.policy.holds.swept == 0


async def test_settle_is_synchronous_and_a_second_settle_is_a_no_op(gw):
    key, _ = gw.key("acme", "backend", "erin")
    gw.budget("user:erin", "day", "1")
    request = make_mocked_request("POST", "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                  app=gw.app)
    adapter = OpenAIChat()
    principal = gw.gw.authenticate(request)
    call, target = route(gw.gw, request, principal, adapter,
                         adapter.parse(b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}'), ())
    live = await LiveCall.admit(gw.gw, request, principal, adapter, call, target, int(time.time() * 1000),
                                time.monotonic())
    assert len(gw.gw.policy.holds) == 1 and not inspect.iscoroutinefunction(LiveCall.settle)
    done = Usage()
    done.tokens, done.complete = E.Tokens(input=7, output=3), True
    first = live.settle(done, E.OK, 200)
    assert first is not None and first.tokens.output == 3
    assert live.settle(done, E.CANCELLED, 499) is None and live.settle(Usage(), E.UPSTREAM_ERROR, 502) is None
    assert [e.event_id for e in await gw.events()] == [first.event_id]
    assert len(gw.gw.policy.holds) == 0
