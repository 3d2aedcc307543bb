"""The optional OpenTelemetry hook: one span and two GenAI instruments per usage event, nothing secret."""
from __future__ import annotations

import openai

from llmgw.core import events as E
from llmgw.proxy.ops.otel import OtelHook, otel_hook
from llmgw.proxy.ops.state import OPS
from tests.gateway_harness import GatewayHarness


class Recorder:
    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.records: list[tuple[str, float, dict]] = []

    # tracer
    def start_span(self, name, start_time=None, attributes=None, **kw):
        span = {"name": name, "start": start_time, "attributes": dict(attributes or {})}
        self.spans.append(span)

        class Span:
            def end(self, end_time=None):
                span["end"] = end_time
        return Span()

    # meter
    def create_histogram(self, name, unit="", description=""):
        rec = self

        class Histogram:
            def record(self, value, attributes=None):
                rec.records.append((name, value, dict(attributes or {})))
        return Histogram()


def event(**kw) -> E.UsageEvent:
    base = dict(event_id=E.new_event_id(), ts_start_ms=1_000, ts_end_ms=3_500, org="acme", workspace="w",
                user="alice", key_id="k0123456789ab", provider="anthropic", api="messages",
                model_requested="claude-sonnet-4-5", model_served="claude-sonnet-4-5-20250929",
                tokens=E.Tokens(input=10, cache_read=5, output=7), cost_micro_usd=42, latency_ms=2500,
                request_id="req_x")
    return E.UsageEvent(**{**base, **kw})


def test_one_span_and_genai_instruments_per_event():
    rec = Recorder()
    hook = OtelHook(rec, rec)
    hook(event())
    [span] = rec.spans
    assert span["name"] == "chat claude-sonnet-4-5"
    assert (span["start"], span["end"]) == (1_000_000_000, 3_500_000_000)
    a = span["attributes"]
    assert a["gen_ai.provider.name"] == "anthropic" and a["gen_ai.usage.input_tokens"] == 15
    assert a["gen_ai.usage.output_tokens"] == 7 and a["llmgw.request_id"] == "req_x"
    assert not {"alice", "acme", "k0123456789ab"} & {str(v) for v in a.values()}
    names = [(n, v, attrs.get("gen_ai.token.type")) for n, v, attrs in rec.records]
    assert names == [("gen_ai.client.operation.duration", 2.5, None), ("gen_ai.client.token.usage", 15, "input"),
                     ("gen_ai.client.token.usage", 7, "output")]
    hook(event(kind=E.ADJUSTMENT))
    assert len(rec.spans) == 1                             # re-rating adjustments are not calls


async def test_enabled_without_an_sdk_is_a_harmless_no_op(fake_provider, tmp_path):
    assert otel_hook() is not None                         # opentelemetry-api is importable here
    h = GatewayHarness(fake_provider, tmp_path, otel=True)
    await h.start()
    try:
        assert len(h.app[OPS].hooks) == 1
        key, _ = h.key()
        await openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert len(await h.events()) == 1
    finally:
        await h.stop()
