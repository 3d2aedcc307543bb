"""/metrics after real traffic through the gateway: counts agree with the events the ledger recorded."""
from __future__ import annotations

import aiohttp
import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmgw.core import events as E
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness

ALLOWED_LABELS = {"api", "outcome", "reason", "direction", "upstream", "status_class", "le", "wire", "kind"}


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/metrics") as r:
            assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
            text = await r.text()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(m: dict, name: str, **labels: str) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_what_the_ledger_recorded(gw, fake_provider):
    key, key_id = gw.key("acme", "backend", "alice")
    oai = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    ant = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)

    fake_provider.script(Reply(text="a b c", usage=Usage(input=100, cache_read=20, output=3)))
    await oai.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    fake_provider.script(Reply(text="one two", usage=Usage(input=10, cache_write_5m=50, output=2)))
    async with ant.messages.stream(model="claude-sonnet-4-5", max_tokens=50,
                                   messages=[{"role": "user", "content": "x"}]) as s:
        await s.get_final_message()
    fake_provider.script(Reply(status=500))
    with pytest.raises(openai.InternalServerError):
        await oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-llmgw-kdeadbeef0000-nope",
                                       max_retries=0).messages.create(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    async with aiohttp.ClientSession() as http:
        r = await http.post(gw.url + "/v1/chat/completions", data=b"{nope", headers={"authorization": f"Bearer {key}"})
        assert r.status == 400
        await http.get(gw.url + "/healthz")                  # probes and scrapes are not requests
        await http.get(gw.url + "/readyz")
    await ant.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    gw.budget("user:alice", "day", "0.000001")
    with pytest.raises(anthropic.RateLimitError):
        await ant.messages.create(model="claude-opus-4-1", max_tokens=4000, messages=[{"role": "user", "content": "x"}])

    events = await gw.events()
    m = await scrape(gw.url)
    assert value(m, "llmgw_requests_total", api="chat", outcome="ok") == 1
    assert value(m, "llmgw_requests_total", api="messages", outcome="ok") == 1
    assert value(m, "llmgw_requests_total", api="chat", outcome="upstream_error") == 1
    assert value(m, "llmgw_requests_total", api="messages", outcome="rejected_auth") == 1
    assert value(m, "llmgw_requests_total", api="chat", outcome="rejected_invalid_request") == 1
    assert value(m, "llmgw_requests_total", api="count_tokens", outcome="ok") == 1
    assert value(m, "llmgw_requests_total", api="messages", outcome="rejected_budget") == 1
    assert sum(v for (n, _), v in m.items() if n == "llmgw_requests_total") == 7
    assert value(m, "llmgw_refusals_total", reason="budget") == 1
    assert value(m, "llmgw_refusals_total", reason="auth") == 1
    assert value(m, "llmgw_refusals_total", reason="invalid_request") == 1
    assert value(m, "llmgw_upstream_errors_total", upstream="openai", status_class="5xx") == 1

    assert value(m, "llmgw_spend_micro_usd_total") == sum(e.cost_micro_usd for e in events) > 0
    assert value(m, "llmgw_tokens_total", direction="input") == 110
    assert value(m, "llmgw_tokens_total", direction="cache_read") == 20
    assert value(m, "llmgw_tokens_total", direction="cache_write") == 50
    assert value(m, "llmgw_tokens_total", direction="output") == 5
    assert value(m, "llmgw_time_to_first_token_seconds_count", api="messages") == 1
    assert value(m, "llmgw_request_duration_seconds_count", api="chat") == 3
    assert value(m, "llmgw_requests_in_flight") == 0

    assert value(m, "llmgw_snapshot_age_seconds") == 0
    assert value(m, "llmgw_spool_depth_events") == 0
    assert value(m, "llmgw_ledger_backlog") == 0
    assert value(m, "llmgw_producer_errors_total") == 0
    assert value(m, "llmgw_ready") == 1

    for (name, labels), _ in m.items():                    # never a budget, key, user or model in a label
        if name.startswith("llmgw_"):
            assert {k for k, _ in labels} <= ALLOWED_LABELS, name
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(gw.url + "/metrics")).text()
    for secret in (key, key_id, "alice", "acme", "gpt-4o-mini", "claude-sonnet-4-5"):
        assert secret not in text


async def test_stream_cancelled_by_the_client_is_counted_once(gw, fake_provider):
    key, _ = gw.key()
    fake_provider.script(Reply(chunks=200, chunk_delay_s=0.01, usage=Usage(input=40, output=200)))
    ant = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    async with ant.messages.stream(model="claude-sonnet-4-5", max_tokens=500,
                                   messages=[{"role": "user", "content": "long"}]) as s:
        async for _ in s.text_stream:
            break
    await fake_provider.wait_for_abandoned(1)
    for _ in range(100):
        if await gw.events():
            break
    m = await scrape(gw.url)
    assert value(m, "llmgw_requests_total", api="messages", outcome=E.CANCELLED) == 1
    assert sum(v for (n, _), v in m.items() if n == "llmgw_requests_total") == 1


async def test_two_gateways_in_one_process_keep_separate_registries(fake_provider, tmp_path):
    a = GatewayHarness(fake_provider, tmp_path / "a")
    b = GatewayHarness(fake_provider, tmp_path / "b")
    await a.start()
    await b.start()
    try:
        key, _ = a.key()
        await openai.AsyncOpenAI(base_url=a.url + "/v1", api_key=key, max_retries=0).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
        assert value(await scrape(a.url), "llmgw_requests_total", api="chat", outcome="ok") == 1
        assert value(await scrape(b.url), "llmgw_requests_total", api="chat", outcome="ok") == 0
    finally:
        await a.stop()
        await b.stop()
