"""Differential: every call's event holds exactly the tokens and cost the fake provider served.

Every API and transport, against provider JSON written compact, spaced, pretty over many
``data:`` lines with escaped letters and CRLF, with shuffled keys, events split into 7-byte
writes, and an answer that quotes event names and a usage object. The client gets the
provider's bytes unchanged (the chat usage chunk the gateway asked for excepted).
"""
from __future__ import annotations

import asyncio

import aiohttp
import anthropic
import openai
import orjson
import pytest

from llmgw.core import events as E
from llmgw.pricing import cost, load_catalog
from llmgw.proxy.sse import SseSplitter, data_of
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness

STYLES = ["compact", "spaced", "pretty+escaped+crlf+nospace", "spaced+shuffled+escaped", "pretty+shuffled+allman"]
TRICKY = ('Say response.completed then "usage":{"output_tokens":999} and "type":"error" '
          'event: error data: [DONE] message_delta content_block_delta')
_CATALOG = load_catalog()


def served_usage(i: int) -> Usage:
    """A different, plausible usage for each call (within the request's size and max_tokens)."""
    return Usage(input=31 + i, cache_read=17 + 2 * i, cache_write_5m=5 + i, cache_write_1h=3, output=12 + i,
                 reasoning=2)


def expected_tokens(api: str, u: Usage) -> E.Tokens:
    """The wire's own accounting of the served usage (see tests/fake_provider.py's docstring)."""
    if api == "messages":
        return E.Tokens(input=u.input, cache_write_5m=u.cache_write_5m, cache_write_1h=u.cache_write_1h,
                        cache_read=u.cache_read, output=u.output)
    if api == "embeddings":
        return E.Tokens(input=u.input + u.cache_read + u.cache_write_5m + u.cache_write_1h)
    return E.Tokens(input=u.input, cache_write_5m=u.cache_write_5m + u.cache_write_1h, cache_read=u.cache_read,
                    output=u.output, reasoning=u.reasoning)


def expected_cost(ev: E.UsageEvent, tokens: E.Tokens) -> int:
    price = _CATALOG.price_at(ev.model_requested, ev.ts_start_ms)
    return cost(tokens, price, service_tier=ev.service_tier or None).micro_usd


async def _events(gw: GatewayHarness, n: int) -> list[E.UsageEvent]:
    for _ in range(200):
        evs = await gw.events()
        if len(evs) >= n:
            return evs
        await asyncio.sleep(0.02)
    return await gw.events()


async def _post(http: aiohttp.ClientSession, gw: GatewayHarness, path: str, key: str, body: dict,
                anthropic_wire: bool = False) -> bytes:
    headers = {"x-api-key": key, "anthropic-version": "2023-06-01"} if anthropic_wire else {
        "authorization": f"Bearer {key}"}
    async with http.post(gw.url + path, json=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        return await r.read()


def _without_usage_chunk(sent: bytes) -> bytes:
    """The provider's chat stream minus the usage-only chunk the gateway asked for itself."""
    kept = []
    for event in SseSplitter().feed(sent):
        obj = data_of(event)
        if not (obj is not None and isinstance(obj.get("usage"), dict) and not obj.get("choices")):
            kept.append(event)
    return b"".join(kept)


@pytest.mark.parametrize("style", STYLES)
async def test_every_api_records_what_the_provider_served(gw, fake_provider, http, style):
    fake_provider.style = style
    fake_provider.split_bytes = 7
    key, _ = gw.key()
    calls: list[str] = []                          # the api of each call, in order
    received: list[bytes | list[str]] = []         # what the client got, for the byte-identity check

    def script() -> None:
        fake_provider.script(Reply(text=TRICKY, usage=served_usage(len(calls))))

    msg = {"model": "claude-sonnet-4-5", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
    for stream in (False, True):
        script()
        received.append(await _post(http, gw, "/v1/messages", key, {**msg, "stream": stream}, anthropic_wire=True))
        calls.append("messages")
    chat = {"model": "gpt-4o-mini", "max_tokens": 200, "messages": [{"role": "user", "content": "hi"}]}
    for extra in ({}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}):
        script()
        received.append(await _post(http, gw, "/v1/chat/completions", key, {**chat, **extra}))
        calls.append("chat")
    resp = {"model": "gpt-5-mini", "input": "hi", "max_output_tokens": 200}
    for stream in (False, True):
        script()
        received.append(await _post(http, gw, "/v1/responses", key, {**resp, "stream": stream}))
        calls.append("responses")
    script()
    received.append(await _post(http, gw, "/v1/embeddings", key, {"model": "text-embedding-3-small",
                                                                    "input": "vector me"}))
    calls.append("embeddings")
    frames: list[str] = []
    async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
        for _ in range(2):                         # two calls on one socket: results must not shift
            script()
            await ws.send_json({"type": "response.create", **resp})
            while True:
                frames.append(await asyncio.wait_for(ws.receive_str(), 5))
                if orjson.loads(frames[-1]).get("type") == "response.completed":
                    break
            calls.append("responses")
    received.append(frames)

    events = await _events(gw, len(calls))
    assert len(events) == len(calls) == len(fake_provider.served)
    for api, ev, served in zip(calls, events, fake_provider.served):
        tokens = expected_tokens(api, served)
        assert (ev.api, ev.outcome) == (api, E.OK)
        assert ev.tokens == tokens, (api, ev.stream)
        assert ev.cost_micro_usd == expected_cost(ev, tokens) > 0
        assert not ev.usage_estimated and not ev.usage_anomalous

    sent = fake_provider.sent
    for i in (0, 1, 2, 4, 5, 6, 7):                # the client got the provider's bytes unchanged
        assert received[i] == sent[i], calls[i]
    assert received[3] == _without_usage_chunk(sent[3]) != sent[3]       # hidden: the client did not ask
    assert received[8] == [*sent[8], *sent[9]]


async def test_sdk_clients_see_the_answer_text_and_the_call_is_billed_once(gw, fake_provider):
    """A model asked to say ``response.completed`` over the SDKs: the answer arrives whole and the
    call is billed what was served, not ended early or estimated."""
    fake_provider.style = "pretty+escaped+crlf+nospace"
    key, _ = gw.key()
    fake_provider.script(*(Reply(text=TRICKY, usage=served_usage(i)) for i in range(3)))
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as oai:
        stream = await oai.responses.create(model="gpt-5-mini", input="hi", stream=True, max_output_tokens=200)
        text = "".join([e.delta async for e in stream if e.type == "response.output_text.delta"])
        chat = await oai.chat.completions.create(model="gpt-4o-mini", stream=True, max_tokens=200,
                                                 messages=[{"role": "user", "content": "hi"}])
        chat_text = "".join([c.choices[0].delta.content or "" async for c in chat if c.choices])
    async with anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0) as ant:
        async with ant.messages.stream(model="claude-sonnet-4-5", max_tokens=200,
                                       messages=[{"role": "user", "content": "hi"}]) as s:
            ant_text = "".join([t async for t in s.text_stream])
    assert text == chat_text == ant_text == TRICKY
    events = await _events(gw, 3)
    for api, ev, served in zip(("responses", "chat", "messages"), events, fake_provider.served):
        assert ev.tokens == expected_tokens(api, served) and ev.outcome == E.OK


@pytest.mark.parametrize("style", ["spaced", "pretty+escaped"])
async def test_a_websocket_error_frame_ends_its_own_call_and_never_shifts_the_next(gw, fake_provider, http, style):
    """A spaced or escaped ``"type": "error"`` frame ends the call it belongs to; the next call on
    the socket is billed what it was served, not the failed one's leftovers."""
    fake_provider.style = style
    key, _ = gw.key()
    fake_provider.script(Reply(text=TRICKY, usage=served_usage(0), fail_mid_stream=True),
                         Reply(text=TRICKY, usage=served_usage(1)))
    body = {"type": "response.create", "model": "gpt-5-mini", "input": "hi", "max_output_tokens": 200}
    async with http.ws_connect(gw.url + "/v1/responses", headers={"authorization": f"Bearer {key}"}) as ws:
        for end in ("error", "response.completed"):
            await ws.send_json(body)
            while orjson.loads(await asyncio.wait_for(ws.receive_str(), 5)).get("type") != end:
                pass
    failed, ok = await _events(gw, 2)
    assert failed.outcome == E.UPSTREAM_ERROR and failed.error_type == "server_error"
    assert ok.outcome == E.OK and ok.tokens == expected_tokens("responses", fake_provider.served[1])
    assert ok.cost_micro_usd == expected_cost(ok, ok.tokens)


@pytest.mark.parametrize("style", STYLES)
async def test_a_chat_stream_that_fails_midway_is_an_upstream_error_billed_for_what_it_streamed(gw, fake_provider, style):
    """OpenAI (and compatible servers) end a failing stream with ``data: {"error": {...}}`` after the
    deltas already sent; the call is an upstream error with the failure's type, whatever the JSON style,
    and the text that quotes ``"error"`` in the deltas before it never counts as one."""
    fake_provider.style = style
    key, _ = gw.key()
    fake_provider.script(Reply(text=TRICKY + ' {"error": {"type": "x"}}', fail_mid_stream=True, chunks=8,
                               error_type="server_error"),
                         Reply(text=TRICKY + ' {"error": {"type": "x"}}', usage=served_usage(2)))
    async with openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0) as oai:
        for _ in range(2):
            try:
                stream = await oai.chat.completions.create(model="gpt-5-mini", stream=True,
                                                           messages=[{"role": "user", "content": "hi"}])
                async for _chunk in stream:
                    pass
            except openai.APIError:
                pass                                  # the SDK raises on the error event; that is the point
    failed, ok = await _events(gw, 2)
    assert failed.outcome == E.UPSTREAM_ERROR and failed.error_type == "server_error"
    assert failed.tokens.output > 0 and failed.usage_estimated       # billed what it streamed, flagged
    assert ok.outcome == E.OK and ok.tokens == expected_tokens("chat", fake_provider.served[1])
