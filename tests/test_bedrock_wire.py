"""The event-stream codec and the Bedrock meters over wire variants (Hypothesis): frames cut at any byte,
JSON key order and whitespace inside the base64'd events, padding; differential against what the fake
served and against botocore's own event-stream parser."""
from __future__ import annotations

import base64

import orjson
from botocore.eventstream import EventStreamBuffer
from hypothesis import given, settings, strategies as st

from llmgw.core.events import Tokens
from llmgw.proxy.adapters.bedrock import ConverseMeter, InvokeMeter, catalog_model
from llmgw.proxy.eventstream import EventStreamSplitter, encode
from llmgw.proxy.types import Call
from tests.fakes.bedrock import BedrockReply, BedrockUsage, _Turn

usages = st.builds(BedrockUsage, input=st.integers(0, 10**6), output=st.integers(1, 10**5),
                   cache_read=st.integers(0, 10**6), cache_write=st.integers(0, 10**6))
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)


def cut(data: bytes, points: list[int]) -> list[bytes]:
    ps = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *ps], [*ps, len(data)])]


def feed(meter, data: bytes, points: list[int]) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(meter.feed(piece) for piece in cut(data, points))


@settings(max_examples=150, deadline=None)
@given(headers=st.dictionaries(st.text(min_size=1, max_size=20).filter(lambda s: len(s.encode()) < 256),
                               st.text(max_size=50), max_size=5),
       payload=st.binary(max_size=300), points=st.lists(st.integers(0, 10**4), max_size=8))
def test_codec_round_trips_and_botocore_agrees(headers, payload, points):
    data = encode(headers, payload) * 2
    buf = EventStreamBuffer()
    buf.add_data(data)
    assert [(m.headers, m.payload) for m in buf] == [(headers, payload)] * 2
    s = EventStreamSplitter()
    got = [m for piece in cut(data, points) for m in s.feed(piece)]
    assert [(dict(m.headers), m.payload) for m in got] == [(headers, payload)] * 2 and not s.broken


def test_a_corrupt_crc_stops_metering_not_the_bytes():
    good = encode({":event-type": "chunk"}, b"{}")
    bad = bytearray(good)
    bad[-1] ^= 1
    s = EventStreamSplitter()
    assert list(s.feed(bytes(bad) + good)) == [] and s.broken
    m = InvokeMeter(None)
    assert m.feed(bytes(bad)) == bytes(bad)          # the relay still forwards what came


@settings(max_examples=120, deadline=None)
@given(usage=usages, text=texts, seed=st.integers(0, 2**32 - 1), metrics=st.booleans(),
       delta_input=st.booleans(), points=st.lists(st.integers(0, 10**5), max_size=10))
def test_invoke_stream_meter_reads_exactly_what_was_served(usage, text, seed, metrics, delta_input, points):
    t = _Turn(BedrockReply(text=text, usage=usage, seed=seed, metrics=metrics, delta_usage_input=delta_input),
              b"{}", {}, "us.anthropic.claude-opus-5-5")
    data = b"".join(t.invoke_frames())
    m = InvokeMeter(None)
    assert feed(m, data, points) == data
    u = m.result()
    assert u.complete and m.saw_output()
    assert u.tokens == Tokens(input=usage.input, output=usage.output, cache_read=usage.cache_read,
                              cache_write_5m=usage.cache_write)


@settings(max_examples=60, deadline=None)
@given(usage=usages, seed=st.integers(0, 2**32 - 1), points=st.lists(st.integers(0, 10**5), max_size=10))
def test_invocation_metrics_are_the_fallback_when_anthropic_usage_never_completed(usage, seed, points):
    t = _Turn(BedrockReply(text="a b", usage=usage, seed=seed), b"{}", {}, "m")
    frames = []
    for e in t.anthropic_events():
        if e["type"] == "message_delta":
            continue                                  # no message_delta: only the metrics say the output
        frames.append(encode({":event-type": "chunk", ":message-type": "event"},
                             orjson.dumps({"bytes": base64.b64encode(orjson.dumps(e)).decode()})))
    m = InvokeMeter(None)
    feed(m, b"".join(frames), points)
    assert m.result().tokens == Tokens(input=usage.input, output=usage.output, cache_read=usage.cache_read,
                                       cache_write_5m=usage.cache_write)


@settings(max_examples=120, deadline=None)
@given(usage=usages, text=texts, seed=st.integers(0, 2**32 - 1), points=st.lists(st.integers(0, 10**5), max_size=10))
def test_converse_stream_meter_reads_exactly_what_was_served(usage, text, seed, points):
    t = _Turn(BedrockReply(text=text, usage=usage, seed=seed), b"{}", {}, "m")
    data = b"".join(t.converse_frames())
    m = ConverseMeter(None)
    assert feed(m, data, points) == data
    assert m.result().complete and m.saw_output()
    assert m.result().tokens == Tokens(input=usage.input, output=usage.output, cache_read=usage.cache_read,
                                       cache_write_5m=usage.cache_write)


@given(usage=usages, seed=st.integers(0, 2**32 - 1))
def test_json_meters_read_usage_in_any_key_order(usage, seed):
    t = _Turn(BedrockReply(text="x y", usage=usage, seed=seed), b"{}", {}, "m")
    from tests.fakes.bedrock import _dumps
    inv, conv = InvokeMeter(None), ConverseMeter(None)
    inv.finish_json(_dumps(t.message(), t.rng))
    conv.finish_json(_dumps(t.converse_body(), t.rng))
    want = Tokens(input=usage.input, output=usage.output, cache_read=usage.cache_read, cache_write_5m=usage.cache_write)
    assert inv.result().tokens == want == conv.result().tokens


def test_catalog_names_of_bedrock_ids():
    assert catalog_model("us.anthropic.claude-sonnet-4-5-20250929-v1:0") == "claude-sonnet-4-5-20250929"
    assert catalog_model("anthropic.claude-haiku-4-5-20251001-v1:0") == "claude-haiku-4-5-20251001"
    assert catalog_model("global.anthropic.claude-opus-5-5") == "claude-opus-5-5"
    assert catalog_model("arn:aws:bedrock:us-east-1:123456789012:inference-profile/eu.anthropic.claude-opus-5-5") \
        == "claude-opus-5-5"
    assert catalog_model("meta.llama3-70b-instruct-v1:0") == "meta.llama3-70b-instruct"


def test_text_that_spells_event_names_does_not_fool_the_meter():
    text = 'quote "content_block_delta" "message_delta" "usage": {"output_tokens": 999} amazon-bedrock-invocationMetrics'
    usage = BedrockUsage(input=5, output=7, cache_read=1, cache_write=2)
    t = _Turn(BedrockReply(text=text, usage=usage, seed=3), b"{}", {}, "m")
    m = InvokeMeter(None)
    for frame in t.invoke_frames():
        m.feed(frame)
    assert m.result().tokens == Tokens(input=5, output=7, cache_read=1, cache_write_5m=2)


def test_converse_usage_that_cannot_be_true_is_clamped_and_flagged():
    call = Call(model="anthropic.claude-sonnet-4-5", stream=False, body=b"{}", max_output_tokens=20)
    m = ConverseMeter(call)
    m.finish_json(b'{"output": {}, "usage": {"inputTokens": 4, "outputTokens": -3}}')
    r = m.result()
    assert r.tokens.output == 0 and "negative_output" in r.anomalies and not r.complete
    m = ConverseMeter(call)
    m.finish_json(b'{"usage": {"inputTokens": 4, "outputTokens": 900}}')
    r = m.result()
    assert r.tokens.output == 20 and "output_above_max_tokens" in r.anomalies
