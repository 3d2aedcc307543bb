"""A provider's usage is untrusted: hostile counts never give a 5xx, never leak a hold, are clamped
to the call's bound, flagged on the event, counted in a metric and logged; missing usage is
billed as a flagged estimate for every API."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest

from llmgw.core import events as E
from llmgw.proxy.usage import FAR_INPUT_SLACK, INJECTED_TOKENS, SANE_MAX_TOKENS
from tests.fake_provider import MISSING, Reply, Usage
from tests.gateway_harness import GatewayHarness

# (api, path, request body, usage keys of the wire: input, output)
CALLS: dict[str, tuple[str, dict[str, Any], str, str | None]] = {
    "messages": ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 100,
                                  "messages": [{"role": "user", "content": "hi"}]}, "input_tokens", "output_tokens"),
    "chat": ("/v1/chat/completions", {"model": "gpt-4o-mini", "max_tokens": 100,
                                      "messages": [{"role": "user", "content": "hi"}]},
             "prompt_tokens", "completion_tokens"),
    "responses": ("/v1/responses", {"model": "gpt-5-mini", "input": "hi", "max_output_tokens": 100},
                  "input_tokens", "output_tokens"),
    "embeddings": ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "hi"}, "prompt_tokens", None),
}
VARIANTS = [(api, stream) for api in CALLS for stream in ((False, True) if api != "embeddings" else (False,))]


async def call(gw: GatewayHarness, key: str, api: str, stream: bool) -> tuple[int, bytes]:
    path, body, _, _ = CALLS[api]
    headers = {"authorization": f"Bearer {key}", "anthropic-version": "2023-06-01"}
    async with aiohttp.ClientSession() as http:
        async with http.post(gw.url + path, json={**body, **({"stream": True} if stream else {})},
                             headers=headers) as r:
            return r.status, await r.read()


async def one_event(gw: GatewayHarness) -> E.UsageEvent:
    for _ in range(100):
        evs = await gw.events()
        if evs:
            [ev] = evs
            return ev
        await asyncio.sleep(0.02)
    raise AssertionError("no usage event")


def bounded(ev: E.UsageEvent) -> None:
    t = ev.tokens
    for name in ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output", "reasoning"):
        v = getattr(t, name)
        assert type(v) is int and 0 <= v <= SANE_MAX_TOKENS, (name, v)
    assert t.output <= 100 and t.reasoning <= t.output
    assert type(ev.cost_micro_usd) is int and ev.cost_micro_usd >= 0


@pytest.fixture
async def budgeted(gw: GatewayHarness) -> tuple[GatewayHarness, str]:
    """A key under a budget, so every call places a hold that must be released."""
    key, _ = gw.key("acme", "backend", "alice")
    gw.budget("user:alice", "day", "1000")
    return gw, key


HOSTILE = [-5, -1.5, 12.5, "12", "lots", None, True, 10**15, MISSING]


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
@pytest.mark.parametrize("api,stream,side", [(*v, side) for v in VARIANTS for side in ("input", "output")
                                             if CALLS[v[0]][3 if side == "output" else 2] is not None])
async def test_hostile_counts_are_clamped_and_flagged(budgeted, fake_provider, api, stream, value, side):
    gw, key = budgeted
    _, _, in_key, out_key = CALLS[api]
    field = in_key if side == "input" else out_key
    fake_provider.script(Reply(usage=Usage(input=7, output=5), usage_patch={field: value}))
    status, _ = await call(gw, key, api, stream)
    assert status == 200
    ev = await one_event(gw)
    assert ev.outcome == E.OK and ev.http_status == 200
    bounded(ev)
    assert ev.usage_anomalous
    assert gw.gw.policy._reserved == {}, "the call's hold was released"
    if value in (-5, -1.5, "lots", None, True, MISSING):       # the count is unknown: billed as an estimate
        assert ev.usage_estimated
        assert getattr(ev.tokens, "output" if side == "output" else "prompt") > 0
    elif value == "12" or value == 12.5:                        # recovered, rounded up
        got = ev.tokens.output if side == "output" else ev.tokens.prompt
        assert got == (13 if value == 12.5 else 12) and not ev.usage_estimated
    else:                                                       # 10**15: clamped to what the call allows
        got = ev.tokens.output if side == "output" else ev.tokens.prompt
        assert got <= (100 if side == "output" else len(str(CALLS[api][1])) * 2 + INJECTED_TOKENS + FAR_INPUT_SLACK)


@pytest.mark.parametrize("api,stream", VARIANTS)
async def test_missing_usage_is_billed_as_a_flagged_estimate(budgeted, fake_provider, api, stream):
    gw, key = budgeted
    fake_provider.script(Reply(usage=Usage(input=7, output=5), omit_usage=True))
    status, _ = await call(gw, key, api, stream)
    assert status == 200
    ev = await one_event(gw)
    bounded(ev)
    assert ev.usage_estimated and ev.tokens.input > 0
    # ~20 embedding tokens cost $0.0000004: under a micro-dollar until money has sub-micro precision
    assert ev.cost_micro_usd > 0 or api == "embeddings"
    assert gw.gw.policy._reserved == {}


@pytest.mark.parametrize("api,stream", [v for v in VARIANTS if v[0] != "embeddings"])
async def test_output_above_max_tokens_is_billed_at_max_tokens(budgeted, fake_provider, api, stream):
    gw, key = budgeted
    fake_provider.script(Reply(usage=Usage(input=7, output=5_000, reasoning=4_000)))
    assert (await call(gw, key, api, stream))[0] == 200
    ev = await one_event(gw)
    assert ev.tokens.output == 100 and ev.tokens.reasoning <= 100 and ev.tokens.input == 7
    assert ev.usage_anomalous and not ev.usage_estimated


async def test_a_billion_dollar_report_is_clamped_counted_and_logged(budgeted, fake_provider, caplog):
    gw, key = budgeted
    fake_provider.script(Reply(text="secret answer", usage=Usage(input=7, output=5),
                               usage_patch={"input_tokens": 10**15, "output_tokens": -3}))
    with caplog.at_level(logging.WARNING, logger="llmgw.usage"):
        assert (await call(gw, key, "messages", True))[0] == 200
        ev = await one_event(gw)
    assert ev.tokens.prompt <= 200 + INJECTED_TOKENS + FAR_INPUT_SLACK
    assert ev.cost_micro_usd < 10_000_000         # ~$6 at Sonnet's long-context rate, not $3 billion
    [rec] = [r for r in caplog.records if getattr(r, "event", "") == "usage_anomaly"]
    assert rec.wire == "messages" and "negative_output" in rec.anomalies and "above_sane_cap" in rec.anomalies
    assert "secret answer" not in caplog.text and key not in caplog.text
    async with aiohttp.ClientSession() as http:
        async with http.get(gw.url + "/metrics") as r:
            metrics = await r.text()
    assert 'llmgw_usage_anomalies_total{kind="negative_output",wire="messages"}' in metrics
    assert 'llmgw_usage_anomalies_total{kind="above_sane_cap",wire="messages"}' in metrics


async def test_websocket_hostile_and_missing_usage_never_shift_or_free_calls(budgeted, fake_provider):
    gw, key = budgeted
    fake_provider.style = "spaced"
    fake_provider.script(Reply(usage=Usage(input=7, output=5), usage_patch={"output_tokens": -9}),
                         Reply(usage=Usage(input=7, output=5), omit_usage=True),
                         Reply(text="a", usage=Usage(input=8, output=3)))
    body = {"type": "response.create", **CALLS["responses"][1]}
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
            for _ in range(3):
                await ws.send_json(body)
                while (await asyncio.wait_for(ws.receive_json(), 5))["type"] != "response.completed":
                    pass
    for _ in range(100):
        evs = await gw.events()
        if len(evs) == 3:
            break
        await asyncio.sleep(0.02)
    negative, missing, fine = evs
    for ev in (negative, missing):
        bounded(ev)
        assert ev.usage_estimated and ev.cost_micro_usd > 0
    assert negative.usage_anomalous
    assert fine.tokens == E.Tokens(input=8, output=3) and not fine.usage_anomalous and fine.outcome == E.OK
    assert gw.gw.policy._reserved == {}
