"""The fake provider speaks each wire faithfully: driven here directly by the official SDKs and raw aiohttp."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import openai
import orjson
import pytest

from tests.fake_provider import (
    ANTHROPIC_COUNT_TOKENS,
    ANTHROPIC_KEY,
    ANTHROPIC_MESSAGES,
    OPENAI_CHAT,
    OPENAI_EMBEDDINGS,
    OPENAI_KEY,
    OPENAI_RESPONSES,
    FakeProvider,
    Reply,
    Usage,
)

MESSAGES = [{"role": "user", "content": "Say hi"}]
CACHED = Usage(input=12, output=7, cache_read=300, cache_write_5m=40, cache_write_1h=9, reasoning=3)
ANTHROPIC_HEADERS = {"x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"Authorization": f"Bearer {OPENAI_KEY}"}


@pytest.fixture
async def claude(fake_provider: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key=ANTHROPIC_KEY,
                                        max_retries=0) as client:
        yield client


@pytest.fixture
async def oai(fake_provider: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key=OPENAI_KEY, max_retries=0) as client:
        yield client


async def sse_events(resp: aiohttp.ClientResponse) -> list[tuple[str | None, str]]:
    """(event, data) pairs exactly as framed on the wire."""
    text = (await resp.read()).decode()
    assert text.endswith("\n\n")
    events = []
    for block in text.strip("\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((fields.get("event"), fields["data"]))
    return events


# ---------------------------------------------------------------- Anthropic Messages

async def test_messages_non_stream_usage_matches_script(fake_provider: FakeProvider,
                                                        claude: anthropic.AsyncAnthropic) -> None:
    fake_provider.script(Reply(text="Hi there", usage=CACHED, model_served="claude-haiku-4-5-20251001"))
    message = await claude.messages.create(model="claude-sonnet-4-6", max_tokens=50, messages=MESSAGES)

    assert message.id.startswith("msg_01") and message.model == "claude-haiku-4-5-20251001"
    assert [b.type for b in message.content] == ["thinking", "text"] and message.content[1].text == "Hi there"
    assert message.stop_reason == "end_turn"
    u = message.usage
    assert (u.input_tokens, u.output_tokens) == (12, 7)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (300, 49)
    assert u.cache_creation is not None
    assert (u.cache_creation.ephemeral_5m_input_tokens, u.cache_creation.ephemeral_1h_input_tokens) == (40, 9)
    assert u.output_tokens_details is not None and u.output_tokens_details.thinking_tokens == 3


async def test_messages_stream_final_message_usage_matches_script(fake_provider: FakeProvider,
                                                                  claude: anthropic.AsyncAnthropic) -> None:
    fake_provider.script(Reply(text="abcdef", chunks=3, usage=CACHED, finish="max_tokens"))
    async with claude.messages.stream(model="claude-sonnet-4-6", max_tokens=50, messages=MESSAGES) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert deltas == ["ab", "cd", "ef"] and final.content[-1].text == "abcdef"
    assert final.stop_reason == "max_tokens"
    u = final.usage
    assert (u.input_tokens, u.output_tokens) == (12, 7)
    assert (u.cache_read_input_tokens, u.cache_creation_input_tokens) == (300, 49)
    assert u.cache_creation is not None and u.cache_creation.ephemeral_1h_input_tokens == 9


async def test_messages_stream_wire_framing_and_default_usage(fake_provider: FakeProvider,
                                                              http: aiohttp.ClientSession) -> None:
    body = {"model": "claude-haiku-4-5", "max_tokens": 20, "stream": True, "messages": MESSAGES}
    url = f"{fake_provider.anthropic_base_url}/v1/messages?beta=true"
    async with http.post(url, json=body, headers=ANTHROPIC_HEADERS) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        assert resp.headers["request-id"].startswith("req_")
        events = await sse_events(resp)

    names = [e for e, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[3:8] == ["content_block_delta"] * 5  # default: one delta per word of DEFAULT_TEXT
    assert names[8:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events[2][1] == '{"type": "ping"}'
    assert all(orjson.loads(data)["type"] == name for name, data in events)

    recorded = fake_provider.requests_for(ANTHROPIC_MESSAGES)[0]
    assert recorded.query == {"beta": "true"} and recorded.json == body
    start, delta = orjson.loads(events[0][1]), orjson.loads(events[9][1])
    assert start["message"]["usage"]["input_tokens"] == len(recorded.body) // 4
    assert start["message"]["usage"]["output_tokens"] == 1
    assert delta["usage"]["output_tokens"] == 5 and delta["usage"]["input_tokens"] == len(recorded.body) // 4


async def test_count_tokens_default_and_scripted(fake_provider: FakeProvider, claude: anthropic.AsyncAnthropic) -> None:
    counted = await claude.messages.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)
    assert counted.input_tokens == len(fake_provider.requests_for(ANTHROPIC_COUNT_TOKENS)[0].body) // 4

    fake_provider.script(Reply(usage=Usage(input=4242)), api=ANTHROPIC_COUNT_TOKENS)
    fake_provider.script(Reply(text="not for count_tokens"))  # global queue: only generating APIs take it
    counted = await claude.messages.count_tokens(model="claude-sonnet-4-6", messages=MESSAGES)
    assert counted.input_tokens == 4242 and fake_provider.pending() == 1


async def test_anthropic_models_list(claude: anthropic.AsyncAnthropic) -> None:
    ids = [m.id async for m in claude.models.list()]
    assert "claude-sonnet-4-6" in ids


async def test_anthropic_rate_limit_is_sdk_rate_limit_error(fake_provider: FakeProvider,
                                                            claude: anthropic.AsyncAnthropic) -> None:
    fake_provider.script(Reply(status=429, retry_after_s=7, headers={"x-should-retry": "false"}))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)

    err = caught.value
    assert err.response.headers["retry-after"] == "7" and err.response.headers["x-should-retry"] == "false"
    assert err.body["type"] == "error" and err.body["error"]["type"] == "rate_limit_error"
    assert err.body["request_id"] == err.request_id == err.response.headers["request-id"]


async def test_anthropic_overloaded_and_mid_stream_error(fake_provider: FakeProvider,
                                                         claude: anthropic.AsyncAnthropic) -> None:
    fake_provider.script(Reply(status=529), Reply(fail_mid_stream=True, chunks=4))
    with pytest.raises(anthropic.OverloadedError):
        await claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)

    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        stream = await claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES, stream=True)
        async for event in stream:
            seen.append(event.type)
    assert seen.count("content_block_delta") == 2 and "message_delta" not in seen
    assert caught.value.body["error"]["type"] == "overloaded_error"


async def test_anthropic_refusals(fake_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    async with anthropic.AsyncAnthropic(base_url=fake_provider.anthropic_base_url, api_key="sk-ant-gateway-key",
                                        max_retries=0) as wrong:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await wrong.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    assert caught.value.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}

    url = f"{fake_provider.anthropic_base_url}/v1/messages"
    async with http.post(url, json={}, headers={"x-api-key": ANTHROPIC_KEY}) as resp:
        assert resp.status == 400 and (await resp.json())["error"]["type"] == "invalid_request_error"
    other_key = {"x-api-key": "sk-ant-other", "anthropic-version": "2023-06-01"}
    async with http.post(url, json={}, headers=other_key) as resp:
        assert resp.status == 401 and resp.headers["request-id"].startswith("req_")
    body = {"model": "m", "max_tokens": 1, "messages": MESSAGES}
    async with http.post(url, json=body, headers=ANTHROPIC_HEADERS) as resp:
        assert resp.status == 200

    sent = [(r.headers.get("authorization"), r.headers.get("x-api-key")) for r in fake_provider.requests]
    assert sent == [("Bearer sk-ant-gateway-key", None), (None, ANTHROPIC_KEY), (None, "sk-ant-other"),
                    (None, ANTHROPIC_KEY)]


# ---------------------------------------------------------------- OpenAI Chat Completions

async def test_chat_stream_include_usage_sends_usage_chunk(fake_provider: FakeProvider,
                                                           oai: openai.AsyncOpenAI) -> None:
    fake_provider.script(Reply(text="one two three", usage=CACHED, model_served="gpt-4o-2024-08-06"))
    stream = await oai.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]

    assert chunks[0].id.startswith("chatcmpl-") and chunks[0].model == "gpt-4o-2024-08-06"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (361, 7, 368)
    assert last.usage.prompt_tokens_details.cached_tokens == 300
    assert last.usage.completion_tokens_details.reasoning_tokens == 3
    assert all(c.usage is None for c in chunks[:-1])


async def test_chat_stream_without_include_usage_has_no_usage(fake_provider: FakeProvider,
                                                              http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-4o", "stream": True, "messages": MESSAGES}
    url = f"{fake_provider.openai_base_url}/chat/completions"
    async with http.post(url, json=body, headers=OPENAI_HEADERS) as resp:
        assert resp.content_type == "text/event-stream" and resp.headers["x-request-id"].startswith("req_")
        events = await sse_events(resp)

    assert all(name is None for name, _ in events) and events[-1][1] == "[DONE]"
    chunks = [orjson.loads(data) for _, data in events[:-1]]
    assert all("usage" not in c and c["object"] == "chat.completion.chunk" and c["choices"] for c in chunks)
    assert len(chunks) == 1 + 5 + 1  # role chunk, one per word, finish chunk


async def test_chat_non_stream_and_mid_stream_error(fake_provider: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake_provider.script(Reply(usage=Usage(input=10, output=2)), Reply(fail_mid_stream=True, chunks=6))
    completion = await oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert completion.object == "chat.completion" and completion.choices[0].message.content
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (10, 2)

    received = []
    with pytest.raises(openai.APIError):
        stream = await oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 1 + 3


async def test_openai_server_error_is_sdk_internal_server_error(fake_provider: FakeProvider,
                                                                oai: openai.AsyncOpenAI) -> None:
    fake_provider.script(Reply(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        await oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["type"] == "server_error"
    assert set(caught.value.body) == {"message", "type", "param", "code"}

    fake_provider.script(Reply(status=429), api=OPENAI_CHAT)
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert rate_limited.value.code == "rate_limit_exceeded"
    assert rate_limited.value.response.headers["retry-after"] == "1"


async def test_openai_wrong_key_is_authentication_error(fake_provider: FakeProvider) -> None:
    async with openai.AsyncOpenAI(base_url=fake_provider.openai_base_url, api_key="sk-gateway-client-key",
                                  max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as caught:
            await wrong.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key" and "sk-gateway-client-key" not in caught.value.message
    assert fake_provider.requests[0].headers["authorization"] == "Bearer sk-gateway-client-key"


# ---------------------------------------------------------------- OpenAI Responses

async def test_responses_stream_final_usage(fake_provider: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake_provider.script(Reply(text="streamed answer", usage=CACHED))
    async with oai.responses.stream(model="gpt-5.5", input="Say hi") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert final.id.startswith("resp_") and final.status == "completed"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == "streamed answer"
    u = final.usage
    assert u is not None and (u.input_tokens, u.output_tokens, u.total_tokens) == (361, 7, 368)
    assert u.input_tokens_details.cached_tokens == 300 and u.output_tokens_details.reasoning_tokens == 3


async def test_responses_non_stream_and_incomplete(fake_provider: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake_provider.script(Reply(usage=Usage(input=3, output=5)), Reply(finish="max_tokens"))
    response = await oai.responses.create(model="gpt-5-mini", input="hi")
    assert response.output_text == "Hello from the fake provider." and response.usage.output_tokens == 5

    stream = await oai.responses.create(model="gpt-5-mini", input="hi", stream=True)
    types = [event.type async for event in stream]
    assert types[-1] == "response.incomplete" and types.count("response.output_text.delta") == 5


async def test_responses_sse_framing(fake_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-5", "input": "hi", "stream": True}
    async with http.post(f"{fake_provider.openai_base_url}/responses", json=body, headers=OPENAI_HEADERS) as resp:
        events = await sse_events(resp)
    payloads = [orjson.loads(data) for _, data in events]
    assert all(name == p["type"] for (name, _), p in zip(events, payloads))
    assert [p["type"] for p in payloads[:4]] == ["response.created", "response.in_progress",
                                                 "response.output_item.added", "response.content_part.added"]
    assert [p["type"] for p in payloads[-4:]] == ["response.output_text.done", "response.content_part.done",
                                                  "response.output_item.done", "response.completed"]
    assert payloads[0]["response"]["usage"] is None


async def test_responses_websocket_exchange(fake_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    url = f"{fake_provider.openai_base_url}/responses"
    fake_provider.script(Reply(text="over the socket", chunks=3, usage=Usage(input=20, output=3)))
    async with http.ws_connect(url, headers=OPENAI_HEADERS) as ws:
        await ws.send_json({"type": "response.create", "model": "gpt-5", "store": False, "generate": False,
                            "input": "warm up", "instructions": "be brief"})
        warm = await receive_until_done(ws)
        assert [e["type"] for e in warm] == ["response.created", "response.in_progress", "response.completed"]
        warm_response = warm[-1]["response"]
        assert warm_response["output"] == [] and warm_response["usage"]["output_tokens"] == 0

        await ws.send_json({"type": "response.create", "model": "gpt-5", "store": False,
                            "previous_response_id": warm_response["id"], "input": "hello"})
        events = await receive_until_done(ws)
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "over the socket"
        assert events[-1]["response"]["usage"]["input_tokens"] == 20

        await ws.send_json({"type": "response.create", "model": "gpt-5", "previous_response_id": "resp_gone",
                            "input": "hello"})
        error = await ws.receive_json()
        assert error["type"] == "error" and error["status"] == 400
        assert error["error"]["code"] == "previous_response_not_found"

    frames = [r for r in fake_provider.requests_for(OPENAI_RESPONSES) if r.method == "WS"]
    assert len(frames) == 3 and frames[0].json["generate"] is False
    assert fake_provider.pending() == 0  # the warm-up frame did not take the scripted reply


async def receive_until_done(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    events = []
    while not events or events[-1]["type"] not in ("response.completed", "response.incomplete", "response.failed"):
        events.append(await asyncio.wait_for(ws.receive_json(), 5))
    return events


async def test_responses_websocket_errors_keep_the_socket(fake_provider: FakeProvider,
                                                          http: aiohttp.ClientSession) -> None:
    fake_provider.script(Reply(status=429, error_message="slow down"), Reply(fail_mid_stream=True, chunks=4), Reply())
    frame = {"type": "response.create", "model": "gpt-5", "input": "hi"}
    async with http.ws_connect(f"{fake_provider.openai_base_url}/responses", headers=OPENAI_HEADERS) as ws:
        await ws.send_json(frame)
        refused = await ws.receive_json()
        assert refused == {"type": "error", "status": 429,
                           "error": {"message": "slow down", "type": "requests", "param": None,
                                     "code": "rate_limit_exceeded"}}
        await ws.send_json(frame)
        events = [await ws.receive_json() for _ in range(2 + 2 + 2 + 1)]
        assert [e["type"] for e in events[-3:]] == ["response.output_text.delta"] * 2 + ["error"]
        assert events[-1]["sequence_number"] == 6 and events[-1]["error"]["code"] == "server_error"
        await ws.send_json(frame)
        assert (await receive_until_done(ws))[-1]["type"] == "response.completed"


async def test_responses_websocket_refuses_wrong_key(fake_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await http.ws_connect(f"{fake_provider.openai_base_url}/responses",
                              headers={"Authorization": "Bearer sk-wrong-key-000"})
    assert caught.value.status == 401


# ---------------------------------------------------------------- embeddings, models

async def test_embeddings_float_and_base64(fake_provider: FakeProvider, oai: openai.AsyncOpenAI) -> None:
    fake_provider.script(Reply(usage=Usage(input=6)), api=OPENAI_EMBEDDINGS)
    floats = await oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"], encoding_format="float")
    packed = await oai.embeddings.create(model="text-embedding-3-small", input=["a", "b"], encoding_format="base64")
    assert [d.index for d in floats.data] == [0, 1] and len(floats.data[0].embedding) == 8
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (6, 6)
    assert packed.usage.prompt_tokens == len(fake_provider.requests_for(OPENAI_EMBEDDINGS)[1].body) // 4
    assert floats.data[0].embedding != floats.data[1].embedding
    vector = packed.data[0].embedding
    if isinstance(vector, str):  # the SDK hands base64 back as sent
        vector = list(struct.unpack("<8f", base64.b64decode(vector)))
    assert vector == pytest.approx(floats.data[0].embedding, abs=1e-6)

    sized = await oai.embeddings.create(model="text-embedding-3-small", input="a", dimensions=16)
    assert len(sized.data[0].embedding) == 16


async def test_openai_models_list(oai: openai.AsyncOpenAI) -> None:
    ids = [m.id async for m in oai.models.list()]
    assert "gpt-5" in ids and "text-embedding-3-small" in ids


# ---------------------------------------------------------------- timing, disconnects, scripting order

async def test_delays(fake_provider: FakeProvider, claude: anthropic.AsyncAnthropic) -> None:
    fake_provider.script(Reply(delay_s=0.2, chunk_delay_s=0.05, chunks=4))
    started = time.monotonic()
    stream = await claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES, stream=True)
    headers_s = time.monotonic() - started
    _ = [event async for event in stream]
    # the 4 text deltas are paced like generation; the frames around them are not
    assert headers_s >= 0.2 and 0.2 + 4 * 0.05 <= time.monotonic() - started < 0.2 + 8 * 0.05


async def test_client_abandoning_a_stream_is_counted(fake_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake_provider.script(Reply(chunks=50, chunk_delay_s=0.02))
    body = {"model": "gpt-4o", "stream": True, "messages": MESSAGES}
    url = f"{fake_provider.openai_base_url}/chat/completions"
    async with http.post(url, json=body, headers=OPENAI_HEADERS) as resp:
        await resp.content.readline()
        resp.close()
    assert await fake_provider.wait_for_abandoned(1) == 1


async def test_drop_mid_stream_cuts_the_connection(fake_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    fake_provider.script(Reply(drop_mid_stream=True, chunks=4), Reply(drop_mid_stream=True))
    body = {"model": "claude-sonnet-4-6", "max_tokens": 5, "stream": True, "messages": MESSAGES}
    url = f"{fake_provider.anthropic_base_url}/v1/messages"
    async with http.post(url, json=body, headers=ANTHROPIC_HEADERS) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    async with http.post(url, json={**body, "stream": False}, headers=ANTHROPIC_HEADERS) as resp:
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


async def test_per_api_queue_is_served_before_the_global_one(fake_provider: FakeProvider,
                                                             oai: openai.AsyncOpenAI,
                                                             claude: anthropic.AsyncAnthropic) -> None:
    fake_provider.script(Reply(text="global one"), Reply(text="global two"))
    fake_provider.script(Reply(text="chat only"), api=OPENAI_CHAT)
    first = await claude.messages.create(model="claude-sonnet-4-6", max_tokens=5, messages=MESSAGES)
    second = await oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    third = await oai.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert first.content[0].text == "global one"
    assert [second.choices[0].message.content, third.choices[0].message.content] == ["chat only", "global two"]
