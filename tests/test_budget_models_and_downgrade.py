"""Model allow-lists per user and workspace, and the downgrade action at a budget's cap."""
from __future__ import annotations

import anthropic
import openai
import pytest

from llmgw.core import events as E
from llmgw.proxy.access import ModelList
from tests.fake_provider import OPENAI_CHAT, Reply, Usage
from tests.gateway_harness import GatewayHarness


def allow(h: GatewayHarness, scope: str, *patterns: str, org: str = "") -> None:
    kind, name = scope.split(":", 1)
    h._put(ModelList(kind, name, patterns, org=org).record())


def ant(h: GatewayHarness, key: str) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=h.url, api_key=key, max_retries=0)


async def ask(client: anthropic.AsyncAnthropic, model: str, **kw):
    return await client.messages.with_raw_response.create(
        model=model, max_tokens=1000, messages=[{"role": "user", "content": "hi"}], **kw)


# -- allow-lists ---------------------------------------------------------------------------
async def test_a_workspace_allow_list_refuses_before_anything_is_spent(gw, fake_provider):
    allow(gw, "workspace:interns", "claude-haiku-*", "gpt-4o-mini")
    key, _ = gw.key("acme", "interns", "ivy")
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        await ask(ant(gw, key), "claude-opus-4-1")
    msg = exc.value.body["error"]["message"]
    assert "'claude-opus-4-1' is not allowed" in msg and "workspace interns allows claude-haiku-*, gpt-4o-mini" in msg
    assert exc.value.response.headers["x-should-retry"] == "false"
    assert fake_provider.requests == []
    await ask(ant(gw, key), "claude-haiku-4-5")
    other, _ = gw.key("acme", "backend", "ivy2")                # other workspaces are not narrowed
    await ask(ant(gw, other), "claude-opus-4-1")
    assert [r.json["model"] for r in fake_provider.requests] == ["claude-haiku-4-5", "claude-opus-4-1"]


async def test_user_and_workspace_lists_both_apply_and_explicit_replaces_the_default(gw, fake_provider):
    allow(gw, "workspace:backend", "claude-*", "gpt-4o*")
    allow(gw, "user:*", "claude-haiku-*", "gpt-4o-mini")         # every user, unless stated
    allow(gw, "user:uma", "claude-sonnet-*", "gpt-4o")
    newcomer, _ = gw.key("acme", "backend", "nick")
    uma, _ = gw.key("acme", "backend", "uma")
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=newcomer, max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert "every user allows claude-haiku-*, gpt-4o-mini" in exc.value.message
    await openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=uma, max_retries=0).chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.PermissionDeniedError) as exc:   # uma's own list, and the key's, narrow further
        await ask(ant(gw, uma), "claude-haiku-4-5")
    assert "user uma allows claude-sonnet-*, gpt-4o" in exc.value.body["error"]["message"]
    keyed, _ = gw.key("acme", "backend", "uma", allowed_models=("claude-sonnet-4-5",))
    with pytest.raises(anthropic.PermissionDeniedError) as exc:
        await ask(ant(gw, keyed), "claude-sonnet-4-6")
    assert "this key allows claude-sonnet-4-5" in exc.value.body["error"]["message"]
    assert [r.json["model"] for r in fake_provider.requests] == ["gpt-4o"]


# -- downgrade at cap ------------------------------------------------------------------------
async def test_a_budget_at_cap_downgrades_to_the_named_model_and_the_event_shows_both(gw, fake_provider):
    # Worst cases for max_tokens=1000 and a ~100-byte body: sonnet ~$0.040, haiku ~$0.0134.
    key, _ = gw.key("acme", "backend", "dan")
    gw.budget("user:dan", "day", "0.045", action="downgrade", downgrade_to="claude-haiku-4-5", hold="strict")
    client = ant(gw, key)
    fake_provider.script(*[Reply(usage=Usage(input=4_000, output=1_000)) for _ in range(3)])
    raw = await ask(client, "claude-sonnet-4-5")                    # fits: served as asked, costs $0.027
    assert "x-llmgw-model-downgraded-to" not in raw.headers
    raw = await ask(client, "claude-sonnet-4-5", metadata={"user_id": "u-1"})   # sonnet no longer fits
    assert raw.headers["x-llmgw-model-downgraded-to"] == "claude-haiku-4-5"
    assert (await raw.parse()).model == "claude-haiku-4-5"
    up = fake_provider.requests[-1].json
    assert up == {"model": "claude-haiku-4-5", "max_tokens": 1000, "messages": [{"role": "user", "content": "hi"}],
                  "metadata": {"user_id": "u-1"}}                  # only the model changed
    with pytest.raises(anthropic.RateLimitError) as exc:            # $0.036: not even haiku fits now
        await ask(client, "claude-sonnet-4-5")
    assert "Serving claude-haiku-4-5 instead would not fit either" in exc.value.body["error"]["message"]
    first, second, refused = await gw.events()
    assert (first.model_requested, first.model_served) == ("claude-sonnet-4-5", "claude-sonnet-4-5")
    assert (second.model_requested, second.model_served) == ("claude-sonnet-4-5", "claude-haiku-4-5")
    assert second.cost_micro_usd == 9_000                           # priced as haiku: $1 + $5 per M
    assert refused.outcome == E.REJECTED_BUDGET and len(fake_provider.requests) == 2


async def test_a_downgrade_stays_within_the_allow_list_and_the_api(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "eve")
    allow(gw, "user:eve", "gpt-4o", "gpt-4o-mini", "claude-sonnet-*")
    gw.budget("user:eve", "day", "0.005", action="downgrade", downgrade_to="gpt-4o-mini")
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    stream = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                                  max_tokens=500, stream=True)
    chunks = [c async for c in stream]
    assert chunks and all(c.model == "gpt-4o-mini" for c in chunks)
    up = fake_provider.requests_for(OPENAI_CHAT)[-1].json
    assert up["model"] == "gpt-4o-mini" and up["stream_options"] == {"include_usage": True}
    gw.budget("user:eve", "day", "0.005", action="downgrade", downgrade_to="claude-haiku-4-5")
    with pytest.raises(openai.RateLimitError):                     # not allowed, and not the same API
        await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}],
                                             max_tokens=500)
    [ok, refused] = await gw.events()
    assert (ok.model_requested, ok.model_served) == ("gpt-4o", "gpt-4o-mini")
    assert refused.outcome == E.REJECTED_BUDGET
