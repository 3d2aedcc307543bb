"""Property tests of the meters over wire variants (Hypothesis).

The fake provider's own builders make each stream; it is then re-serialized with random
whitespace, key order, escapes, pretty-printing, CRLF/LF and ``data:`` spacing, and cut at
random byte boundaries (every single byte included). The recorded tokens must always be the
served ones, the forwarded bytes the provider's, and answer text quoting event names or a
usage object must change nothing. Hostile usage values never raise and always give
non-negative, clamped, flagged counts; cost over sane usage never decreases as tokens grow.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from llmgw.core.events import Tokens
from llmgw.pricing import cost, load_catalog
from llmgw.proxy.adapters.anthropic_messages import AnthropicMeter
from llmgw.proxy.adapters.openai_chat import ChatMeter
from llmgw.proxy.adapters.openai_responses import ResponsesMeter
from llmgw.proxy.sse import SseSplitter, data_of
from llmgw.proxy.types import Call, Usage as MeteredUsage
from llmgw.proxy.usage import SANE_MAX_TOKENS, sane
from tests.fake_provider import (MISSING, Reply, Usage, _Anthropic, _Chat, _dumps, _numbered, _Responses, _Turn,
                                 _ws_payload, sse_event)

MAX_OUT = 1_000
CALL = Call(model="m", stream=True, body=b'{"model":"m"}', max_output_tokens=MAX_OUT)
CATALOG = load_catalog()
PROFILE = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TRICKY_WORDS = ["response.completed", "response.failed", "response.incomplete", "error", '"type":"error"',
                '"type": "error"', '"usage":{"output_tokens":999}', '"usage": {"input_tokens": 10}', "message_delta",
                "message_start", "content_block_delta", "event: error", "data: [DONE]", "\n\n", "\r\n\r\n",
                "\\u0075sage", "é", "😀", "usage", "delta", " "]
texts = st.one_of(st.lists(st.sampled_from(TRICKY_WORDS), min_size=1, max_size=8).map("".join),
                  st.text(min_size=1, max_size=40))
styles = st.sets(st.sampled_from(["spaced", "pretty", "shuffled", "escaped", "crlf", "nospace", "allman"])).map(
    lambda s: "+".join(sorted(s)) or "compact")
usages = st.builds(lambda i, r, w5, w1, o, frac: Usage(input=i, cache_read=r, cache_write_5m=w5, cache_write_1h=w1,
                                                      output=o, reasoning=int(o * frac)),
                   st.integers(0, 2_000), st.integers(0, 2_000), st.integers(0, 1_000), st.integers(0, 1_000),
                   st.integers(0, MAX_OUT), st.floats(0, 1))


@st.composite
def cuts(draw: st.DrawFn) -> list[int] | None:
    """None: one byte at a time; else chunk sizes cycled over the stream."""
    if draw(st.booleans()):
        return None
    return draw(st.lists(st.integers(1, 64), min_size=1, max_size=12))


def chunked(data: bytes, sizes: list[int] | None) -> list[bytes]:
    if sizes is None:
        return [data[i:i + 1] for i in range(len(data))]
    out, at, k = [], 0, 0
    while at < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[at:at + n])
        at, k = at + n, k + 1
    return out


def stream(wire: str, reply: Reply, style: str, seed: int) -> tuple[list[bytes], list[Any]]:
    """(the SSE events as bytes, their payloads) the fake would write for ``reply``."""
    body: dict[str, Any] = {"model": "m", "stream": True}
    if wire == "chat":
        body["stream_options"] = {"include_usage": True}
    t = _Turn.build(reply, b"{}", body)
    builder = {"messages": _Anthropic, "chat": _Chat, "responses": _Responses}[wire](t)
    frames, _ = builder.frames()
    if wire == "responses":
        frames = _numbered(frames)
    rng = random.Random(seed)
    named = wire != "chat"
    events = [sse_event(name if named else None, _dumps(p, style, rng), style) for name, p in frames]
    return events, [p for _, p in frames]


def expected(wire: str, u: Usage) -> Tokens:
    if wire == "messages":
        return Tokens(input=u.input, cache_write_5m=u.cache_write_5m, cache_write_1h=u.cache_write_1h,
                      cache_read=u.cache_read, output=u.output)
    return Tokens(input=u.input, cache_write_5m=u.cache_write_5m + u.cache_write_1h, cache_read=u.cache_read,
                  output=u.output, reasoning=u.reasoning)


def meter(wire: str, hide: bool = False) -> Any:
    if wire == "messages":
        return AnthropicMeter(CALL)
    if wire == "chat":
        return ChatMeter(hide_usage_chunk=hide, call=replace(CALL, hide_usage_chunk=hide))
    return ResponsesMeter(CALL)


def run(m: Any, data: bytes, sizes: list[int] | None) -> bytes:
    out = b"".join(m.feed(c) for c in chunked(data, sizes))
    return out + m.tail()


@pytest.mark.parametrize("wire", ["messages", "chat", "responses"])
@PROFILE
@given(u=usages, text=texts, style=styles, seed=st.integers(0, 2**32), sizes=cuts())
def test_any_serialization_and_chunking_records_the_served_tokens(wire, u, text, style, seed, sizes):
    events, _ = stream(wire, Reply(text=text, usage=u), style, seed)
    data = b"".join(events)
    m = meter(wire)
    assert run(m, data, sizes) == data                     # forwarded byte for byte
    got = m.result()
    assert got.tokens == expected(wire, u)
    assert got.complete and not got.anomalies and not got.error_type
    assert m.saw_output()


@PROFILE
@given(u=usages, text=texts, style=styles, seed=st.integers(0, 2**32), sizes=cuts())
def test_chat_hides_exactly_the_usage_chunk_it_asked_for(u, text, style, seed, sizes):
    events, payloads = stream("chat", Reply(text=text, usage=u), style, seed)
    data = b"".join(events)
    m = meter("chat", hide=True)
    out = run(m, data, sizes)
    kept = [e for e, p in zip(events, payloads) if not (isinstance(p, dict) and p.get("usage") and not p["choices"])]
    assert len(kept) == len(events) - 1
    assert out == b"".join(kept)
    assert m.result().tokens == expected("chat", u)


@PROFILE
@given(u=usages, text=texts, style=styles, seed=st.integers(0, 2**32), calls=st.integers(1, 3))
def test_websocket_frames_end_each_call_at_its_own_terminal_event(u, text, style, seed, calls):
    """Frames carry no SSE name: every call ends exactly at its terminal frame, whatever its text."""
    for _ in range(calls):
        t = _Turn.build(Reply(text=text, usage=u), b"{}", {"model": "m"})
        frames, _ = _Responses(t).frames()
        rng = random.Random(seed)
        wire = [_dumps(_ws_payload(p), style, rng).decode()        # crlf and nospace are SSE-only
                for _, p in _numbered(frames)]
        m = ResponsesMeter(CALL)
        for i, f in enumerate(wire):
            assert not m.finished, f"ended early at frame {i} of {len(wire)}"
            m.observe_frame(f if i % 2 else f.encode())
        assert m.finished and m.saw_output()
        got = m.result()
        assert got.tokens == expected("responses", u) and got.complete and not got.anomalies


@PROFILE
@given(style=styles, seed=st.integers(0, 2**32))
def test_a_websocket_error_frame_ends_the_call_however_it_is_written(style, seed):
    err = {"type": "error", "status": 500, "error": {"type": "server_error", "code": "server_error",
                                                      "message": "boom", "param": None}}
    m = ResponsesMeter(CALL)
    m.observe_frame(_dumps(err, style, random.Random(seed)))
    assert m.finished and m.result().error_type == "server_error"


HOSTILE = st.one_of(st.integers(max_value=-1), st.integers(min_value=SANE_MAX_TOKENS + 1, max_value=10**30),
                    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f) or f < 0),
                    st.text(max_size=8).filter(lambda s: not s.strip().isdigit()), st.none(), st.booleans(),
                    st.just(MISSING), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                    st.lists(st.integers(), max_size=2))
REQUIRED_KEYS = {"input_tokens", "output_tokens", "prompt_tokens", "completion_tokens"}
USAGE_KEYS = {"messages": ["input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"],
              "chat": ["prompt_tokens", "completion_tokens"],
              "responses": ["input_tokens", "output_tokens"]}


@pytest.mark.parametrize("wire", ["messages", "chat", "responses"])
@PROFILE
@given(data=st.data(), u=usages, style=styles, seed=st.integers(0, 2**32), stream_it=st.booleans())
def test_hostile_usage_never_raises_and_is_clamped_and_flagged(wire, data, u, style, seed, stream_it):
    patch = {k: data.draw(HOSTILE, label=k) for k in data.draw(
        st.lists(st.sampled_from(USAGE_KEYS[wire]), min_size=1, max_size=3, unique=True), label="keys")}
    reply = Reply(text="hi", usage=u, usage_patch=patch)
    m = meter(wire)
    if stream_it:
        events, _ = stream(wire, reply, style, seed)
        run(m, b"".join(events), [17])
    else:
        t = _Turn.build(reply, b"{}", {"model": "m"})
        body = {"messages": lambda: _Anthropic(t).message(streaming=False), "chat": lambda: _Chat(t).body(),
                "responses": lambda: _Responses(t).body()}[wire]()
        m.finish_json(_dumps(body, style, random.Random(seed)))
    got = m.result()
    for name in ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output", "reasoning"):
        v = getattr(got.tokens, name)
        assert type(v) is int and 0 <= v <= SANE_MAX_TOKENS
    assert got.tokens.output <= MAX_OUT and got.tokens.reasoning <= got.tokens.output
    # a cache count may be absent (older API versions); any other hostile value is flagged
    if any(v is not MISSING or k in REQUIRED_KEYS for k, v in patch.items()):
        assert got.anomalies, patch
    assert cost(got.tokens, CATALOG.price_at("gpt-4o-mini", 1_790_000_000_000)).micro_usd >= 0


token_counts = st.builds(Tokens, input=st.integers(0, 10**16), cache_write_5m=st.integers(0, 10**7),
                         cache_write_1h=st.integers(0, 10**7), cache_read=st.integers(0, 10**16),
                         output=st.integers(0, 10**16), reasoning=st.just(0))


@settings(max_examples=200, deadline=None)
@given(a=token_counts, more=token_counts, model=st.sampled_from(["claude-sonnet-4-5", "gpt-4o-mini", "gpt-5-mini"]),
       limit=st.one_of(st.none(), st.integers(0, 100_000)), body=st.binary(max_size=64))
def test_cost_of_sane_usage_is_a_non_negative_int_that_never_decreases_as_tokens_grow(a, more, model, limit, body):
    b = Tokens(**{f: getattr(a, f) + getattr(more, f) for f in ("input", "cache_write_5m", "cache_write_1h",
                                                                "cache_read", "output", "reasoning")})
    call = Call(model=model, stream=False, body=body, max_output_tokens=limit)
    price = CATALOG.price_at(model, 1_790_000_000_000)
    ca = cost(sane(MeteredUsage(tokens=a), call).tokens, price).micro_usd
    cb = cost(sane(MeteredUsage(tokens=b), call).tokens, price).micro_usd
    assert type(ca) is int and 0 <= ca <= cb


def test_the_property_streams_really_vary_the_wire():
    """Guard: the variants above are what they claim (a pretty, escaped, CRLF, space-less stream)."""
    events, _ = stream("responses", Reply(text="x", usage=Usage(input=1, output=1)), "crlf+escaped+nospace+pretty", 1)
    last = events[-1]
    assert last.startswith(b"event:response.completed\r\ndata:{\r\n") and b"\\u0075\\u0073\\u0061g\\u0065" in last
    assert b'"usage":{' not in b"".join(events)
    assert data_of(last) is not None and SseSplitter().feed(last)
