"""The Gemini meter over wire variants (Hypothesis): cumulative usage repeated on chunks (the last wins,
never the sum), key order and whitespace, CRLF or LF framing, chunks cut at any byte; the JSON-array
stream (no ``alt=sse``) and the plain JSON body."""
from __future__ import annotations

import random

from hypothesis import given, settings, strategies as st

from llmgw.core.events import Tokens
from llmgw.proxy.adapters.gemini import GeminiMeter, gemini_tokens
from llmgw.proxy.types import Call
from tests.fakes.bedrock import _dumps

counts = st.integers(0, 10**6)


def stream(pieces: int, u: dict, every_chunk: bool, rng: random.Random, nl: bytes) -> tuple[list[dict], bytes]:
    chunks = []
    for i in range(pieces):
        final = i == pieces - 1
        cand = {"content": {"parts": [{"text": f"w{i} "}], "role": "model"}, "index": 0}
        if final:
            cand["finishReason"] = "STOP"
        c = {"candidates": [cand], "modelVersion": "gemini-2.5-flash"}
        if final:
            c["usageMetadata"] = u
        elif every_chunk:   # a running count: the prompt, and the output so far
            c["usageMetadata"] = {"promptTokenCount": u["promptTokenCount"], "candidatesTokenCount": i}
        chunks.append(c)
    return chunks, b"".join(b"data: " + _dumps(c, rng) + nl + nl for c in chunks)


@settings(max_examples=150, deadline=None)
@given(inp=counts, cached=counts, cand=counts, thoughts=counts, tool=counts, pieces=st.integers(1, 12),
       every=st.booleans(), crlf=st.booleans(), seed=st.integers(0, 2**32 - 1),
       points=st.lists(st.integers(0, 10**5), max_size=10))
def test_stream_meter_takes_the_last_cumulative_usage(inp, cached, cand, thoughts, tool, pieces, every, crlf, seed, points):
    u = {"promptTokenCount": inp + cached, "cachedContentTokenCount": cached, "candidatesTokenCount": cand,
         "thoughtsTokenCount": thoughts, "toolUsePromptTokenCount": tool,
         "totalTokenCount": inp + cached + cand + thoughts + tool}
    rng = random.Random(seed)
    _, data = stream(pieces, u, every, rng, b"\r\n" if crlf else b"\n")
    m = GeminiMeter()
    ps = sorted({p % (len(data) + 1) for p in points})
    out = b"".join(m.feed(data[a:b]) for a, b in zip([0, *ps], [*ps, len(data)]))
    assert out == data
    r = m.result()
    assert r.complete and m.saw_output() and r.model_served == "gemini-2.5-flash"
    assert r.tokens == Tokens(input=inp + tool, cache_read=cached, output=cand + thoughts, reasoning=thoughts)


@given(inp=counts, cached=counts, cand=counts, pieces=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_json_array_stream_and_plain_body(inp, cached, cand, pieces, seed):
    u = {"promptTokenCount": inp + cached, "cachedContentTokenCount": cached, "candidatesTokenCount": cand}
    rng = random.Random(seed)
    chunks, _ = stream(pieces, u, True, rng, b"\n")
    want = Tokens(input=inp, cache_read=cached, output=cand)
    arr = GeminiMeter()
    arr.finish_json(b"[" + b",\r\n".join(_dumps(c, rng) for c in chunks) + b"]")
    one = GeminiMeter()
    one.finish_json(_dumps(chunks[-1], rng))
    assert arr.result().tokens == want == one.result().tokens


def test_a_stream_cut_before_the_final_chunk_is_billed_from_what_was_seen():
    u = {"promptTokenCount": 100, "candidatesTokenCount": 40}
    _, data = stream(8, u, True, random.Random(1), b"\r\n")
    m = GeminiMeter(Call(model="gemini-2.5-pro", stream=True, body=b"{}", max_output_tokens=30))
    m.feed(data[: len(data) // 2])
    r = m.result()
    assert not r.complete and r.tokens.input == 100 and 1 <= r.tokens.output <= 30


def test_cached_count_never_makes_input_negative():
    assert gemini_tokens({"promptTokenCount": 5, "cachedContentTokenCount": 9}).input == 0


def test_impossible_usage_is_clamped_and_flagged_not_billed_as_reported():
    """A negative count reads as 0 and makes the usage an estimate; output above maxOutputTokens is cut
    to it; both leave anomaly codes (``usage_anomalous`` on the event), like every other meter."""
    call = Call(model="gemini-2.5-pro", stream=False, body=b"{}", max_output_tokens=50)
    neg = GeminiMeter(call)
    neg.finish_json(b'{"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": -5, '
                    b'"candidatesTokenCount": 7}}')
    r = neg.result()
    assert r.tokens.input == 0 and r.tokens.output == 7 and "negative_input" in r.anomalies and not r.complete
    big = GeminiMeter(call)
    big.finish_json(b'{"candidates": [{"finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 3, '
                    b'"candidatesTokenCount": 1000000}}')
    r = big.result()
    assert r.tokens.output == 50 and "output_above_max_tokens" in r.anomalies
