"""Routes with several upstreams: order and weights, failover before the first byte, circuit breakers,
health in /metrics; a route survives its first upstream dying mid-run with no call lost or double-charged."""
from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from llmgw.core import events as E
from llmgw.proxy.routing import Member, Route, RoutingTable, Upstream
from tests.fake_provider import OPENAI_CHAT, FakeProvider, Reply, Usage
from tests.gateway_harness import GatewayHarness

SERVED = Usage(input=10, output=3)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FakeProvider, FakeProvider]]:
    a, b = FakeProvider(), FakeProvider()
    await a.start()
    await b.start()
    a.default_reply = b.default_reply = Reply(text="x y z", usage=SERVED)
    try:
        yield a, b
    finally:
        await a.stop()
        await b.stop()


def config(a: FakeProvider, b: FakeProvider, **routing: object) -> dict:
    ups = {n: {"kind": "openai_compatible", "base_url": f.openai_base_url, "api_key": f.openai_key}
           for n, f in (("a", a), ("b", b))}
    return {"upstreams": ups, "routes": [{"model": "gpt-*", "upstreams": ["a", "b"]}], "routing": routing}


@pytest.fixture
async def gw(fake_provider, pair, tmp_path: Path) -> AsyncIterator[GatewayHarness]:
    async with GatewayHarness(fake_provider, tmp_path, file_config=config(*pair, cooldown_s=600)) as h:
        yield h


def oai(gw: GatewayHarness, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


async def chat(client: openai.AsyncOpenAI, stream: bool) -> str:
    msgs = [{"role": "user", "content": "hi"}]
    if not stream:
        r = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs)
        return r.choices[0].message.content or ""
    s = await client.chat.completions.create(model="gpt-4o-mini", messages=msgs, stream=True)
    return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_refusal_before_any_byte_moves_to_the_next_upstream(gw, pair, status):
    a, b = pair
    a.script(Reply(status=status))
    key, _ = gw.key()
    client = oai(gw, key)
    try:
        assert await chat(client, stream=True) == "x y z"
    finally:
        await client.close()
    assert len(a.requests_for(OPENAI_CHAT)) == 1 and len(b.requests_for(OPENAI_CHAT)) == 1
    [ev] = await gw.events()                      # one call, one event, billed once, at the upstream that served
    assert ev.provider == "b" and ev.outcome == E.OK and ev.tokens == E.Tokens(input=10, output=3)


async def test_client_errors_and_broken_streams_are_never_retried(gw, pair):
    a, b = pair
    a.script(Reply(status=400), Reply(text="p q r s t u", usage=Usage(input=10, output=6), drop_mid_stream=True))
    key, _ = gw.key()
    client = oai(gw, key)
    try:
        with pytest.raises(openai.BadRequestError):
            await chat(client, stream=False)
        partial = await chat(client, stream=True)     # began on a, then a broke: b never sees it
        assert partial and "p q r s t u".startswith(partial) and partial != "p q r s t u"
    finally:
        await client.close()
    assert b.requests == [] and len(a.requests_for(OPENAI_CHAT)) == 2
    e1, e2 = sorted(await gw.events(), key=lambda e: e.ts_start_ms)
    assert e1.http_status == 400 and e1.cost_micro_usd == 0 and e1.provider == "a"
    assert e2.outcome == E.UPSTREAM_ERROR and e2.provider == "a"


async def test_first_upstream_killed_mid_run_loses_and_double_charges_nothing(gw, pair, http):
    a, b = pair
    key, _ = gw.key()
    client = oai(gw, key)
    done, results, errors = asyncio.Event(), [], []

    async def worker(n: int) -> None:
        for i in range(n):
            try:
                results.append(await chat(client, stream=bool(i % 2)))
            except openai.APIError as exc:        # counted, and asserted to be none
                errors.append(exc)
            if len(results) >= 15:
                done.set()

    workers = [asyncio.ensure_future(worker(20)) for _ in range(3)]
    await done.wait()
    await a.stop()                                # the first upstream dies while calls keep coming
    await asyncio.gather(*workers)
    await client.close()

    assert errors == [] and results == ["x y z"] * 60
    events = await gw.events()
    served = Counter({"a": len(a.requests_for(OPENAI_CHAT)), "b": len(b.requests_for(OPENAI_CHAT))})
    assert len(events) == 60 and all(e.outcome == E.OK for e in events)
    assert Counter(e.provider for e in events) == served            # each call billed where it was served
    assert served["a"] >= 15 and served["b"] >= 1
    assert all(e.tokens == E.Tokens(input=10, output=3) for e in events)
    assert sum(e.cost_micro_usd for e in events) == 60 * events[0].cost_micro_usd
    async with http.get(gw.url + "/metrics") as r:
        text = await r.text()
    assert 'llmgw_upstream_up{upstream="a"} 0.0' in text and 'llmgw_upstream_up{upstream="b"} 1.0' in text
    assert 'llmgw_upstream_failovers_total{upstream="a"}' in text


def test_order_weights_and_open_breakers():
    ups = {n: Upstream(n, "openai_compatible", f"http://{n}") for n in "abc"}
    route = Route("m*", "a", members=(Member("a", 3, 0), Member("b", 1, 0), Member("c", 1, 1)))
    table = RoutingTable(ups, [route], failure_threshold=2, cooldown_s=10)
    rng = random.Random(4)
    firsts = Counter(table.order(route, now=0, rng=rng)[0].name for _ in range(4000))
    assert set(firsts) == {"a", "b"} and 2.6 < firsts["a"] / firsts["b"] < 3.4      # 3:1 by weight
    assert all(table.order(route, now=0, rng=rng)[-1].name == "c" for _ in range(50))  # order 1 comes last
    table.breakers["a"].failure(0)
    table.breakers["a"].failure(0)                                                       # open until t=10
    assert [u.name for u in table.order(route, now=5, rng=rng)] == ["b", "c", "a"]
    assert table.order(route, now=11, rng=rng)[0].name in ("a", "b")                     # half-open: a trial
    table.breakers["a"].success()
    assert table.breakers["a"].healthy


def test_a_route_may_not_fail_over_to_another_wire_or_price():
    ups = {"o": Upstream("o", "openai", "http://o"), "n": Upstream("n", "anthropic", "http://n")}
    with pytest.raises(ValueError, match="one API family"):
        RoutingTable(ups, [Route("*", "o", members=(Member("o"), Member("n")))])
    with pytest.raises(ValueError, match="unknown upstream"):
        RoutingTable(ups, [Route("*", "o", members=(Member("o"), Member("zz")))])


def test_routes_explain_names_the_order_and_the_price(tmp_path, capsys):
    from llmgw.proxy.cli import main

    cfg = tmp_path / "llmgw.yaml"
    cfg.write_text("""
upstreams:
  a: {kind: openai_compatible, base_url: "http://a.example/v1"}
  b: {kind: openai_compatible, base_url: "http://b.example/v1"}
  bedrock: {kind: bedrock, region: us-east-1, aws_access_key_id: AK, aws_secret_access_key: SK}
routes:
  - model: "gpt-*"
    upstreams: [{upstream: b, weight: 1, order: 1}, {upstream: a, weight: 3, order: 0}]
""")
    assert main(["routes", "explain", "gpt-4o-mini", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:5] == ["openai: route 'gpt-*'", "  1. a (openai_compatible) http://a.example/v1  order 0, weight 3",
                        "  2. b (openai_compatible) http://b.example/v1  order 1, weight 1",
                        "  priced as openai/gpt-4o-mini [openai/gpt-4o-mini@2024-07-18]"]
    assert main(["routes", "explain", "us.anthropic.claude-opus-5-5", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "bedrock: no route matches" in out and "priced as anthropic/claude-opus-5-5" in out
    assert "openai:" not in out                 # families that cannot price it are left out
