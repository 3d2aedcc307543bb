"""Holds that fit real calls (predicted vs strict), truthful refusals, and Codex's refusal shape."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import aiohttp
import anthropic
import openai
import orjson
from hypothesis import given, settings, strategies as st

from llmgw.core import events as E
from llmgw.core.events import Tokens
from llmgw.pricing import CallProfile, RequestShape, load_catalog, predicted, worst_case
from llmgw.pricing.estimate import COLD_OUTPUT_TOKENS
from llmgw.proxy.prediction import Basis, HoldPredictor
from llmgw.proxy.ratelimit import RateLimit
from tests.fake_provider import Reply, Usage

CATALOG = load_catalog()
AT = 1_800_000_000_000
OPUS = CATALOG.price_at("claude-opus-4-8", AT, "anthropic")
HAIKU = CATALOG.price_at("claude-haiku-4-5", AT, "anthropic")

# -- the predicted hold, as a pure function --------------------------------------------------------

profiles = st.builds(CallProfile, *(st.integers(0, 2_000_000) for _ in range(4)), st.integers(0, 300_000))
shapes = st.builds(RequestShape, st.integers(0, 400_000), st.one_of(st.none(), st.integers(1, 128_000)),
                   st.sampled_from([None, "auto", "fast", "batch"]), st.integers(0, 3), st.booleans(),
                   st.none(), st.integers(1, 3))


@settings(max_examples=300, deadline=None)
@given(shape=shapes, profile=st.one_of(st.none(), profiles), price=st.sampled_from([OPUS, HAIKU]))
def test_a_predicted_hold_is_never_above_the_worst_case(shape, profile, price):
    held = predicted(price, shape, profile)
    assert isinstance(held, int) and 0 <= held <= worst_case(price, shape)


def test_cold_start_and_a_learned_profile():
    claude_code = RequestShape(body_bytes=80_000, max_output_tokens=128_000, service_tier="standard")
    worst = worst_case(OPUS, claude_code)
    cold = predicted(OPUS, claude_code, None)
    # cold: the prompt bound at the $5/M input rate + 4,096 output tokens at $25/M
    assert cold == (80_000 + 4_096) * 5 + COLD_OUTPUT_TOKENS * 25
    assert worst > 3 * cold
    # an agent whose calls read ~20k tokens of cache per 80 KB and answer ~800 tokens
    learned = CallProfile(input_ppm=12_500, cache_write_5m_ppm=25_000, cache_write_1h_ppm=0,
                          cache_read_ppm=250_000, output_tokens=800)
    held = predicted(OPUS, claude_code, learned)
    tokens = Tokens(input=1_000, cache_write_5m=2_000, cache_read=20_000, output=800)
    assert held == round(1_000 * 5 + 2_000 * 6.25 + 20_000 * 0.5 + 800 * 25)
    assert held == predicted(OPUS, claude_code, learned) and tokens.total > 0
    # capped by the request's own output limit
    small = RequestShape(body_bytes=80_000, max_output_tokens=100, service_tier="standard")
    assert predicted(OPUS, small, learned) < held


def test_the_predictor_keeps_a_high_percentile_per_key_then_user():
    p = HoldPredictor()
    basis = Basis(("key:k1", "user:acme/dave"), "m", 1_000)
    for out in [100] * 18 + [5_000, 9_000]:                 # 20 calls, two long answers
        p.observe(basis, Tokens(input=500, output=out))
    prof = p.profile(("key:k1",), "m")
    assert prof is not None and prof.output_tokens == 5_000     # nearest rank: the 19th of 20 is the 95th %
    assert prof.input_ppm == 500_000
    assert p.profile(("key:k2", "user:acme/dave"), "m") == prof    # a new key borrows its user's history
    assert p.profile(("key:k2", "user:acme/erin"), "m") is None     # nobody else's
    assert p.profile(("key:k1",), "other-model") is None


def test_a_full_history_refreshes_its_profile_every_few_samples_and_a_filling_one_at_once():
    """The profile is kept between calls; a full history (32 samples) takes ``REFRESH`` new ones
    before it is recomputed, a history still filling up is recomputed on every new sample."""
    p = HoldPredictor(samples=8, refresh=3)
    basis = Basis(("key:k",), "m", 1_000)
    for out in (10, 20, 30):
        p.observe(basis, Tokens(output=out))
        assert p.profile(basis.who, "m").output_tokens == out          # filling: at once
    for _ in range(5):
        p.observe(basis, Tokens(output=40))
    assert p.profile(basis.who, "m").output_tokens == 40
    p.observe(basis, Tokens(output=900))
    p.observe(basis, Tokens(output=900))
    assert p.profile(basis.who, "m").output_tokens == 40                # full: two new samples, not yet
    p.observe(basis, Tokens(output=900))
    assert p.profile(basis.who, "m").output_tokens == 900               # the third refreshes it


# -- on the gateway -----------------------------------------------------------------------------

BIG_SYSTEM = "You are a coding agent. " * 3_000      # ~72 KB, like Claude Code's system prompt and tools


async def claude_code_call(client: anthropic.AsyncAnthropic) -> anthropic.types.Message:
    async with client.messages.stream(model="claude-opus-4-8", max_tokens=128_000, system=BIG_SYSTEM,
                                      messages=[{"role": "user", "content": "fix the bug"}]) as s:
        return await s.get_final_message()


async def test_an_agent_with_max_tokens_128000_works_through_a_2_dollar_budget(gw, fake_provider):
    """Claude Code's shape on Opus: a worst case over $2 per call, real calls about $0.05."""
    key, _ = gw.key("acme", "backend", "cody")
    gw.budget("user:cody", "day", "2")
    # one cache write (~$0.13), then cache reads: 1,000 in + 18,000 read + 1,200 out = $0.044
    replies = [Reply(usage=Usage(input=1_000, cache_write_5m=18_000, output=1_200))]
    replies += [Reply(usage=Usage(input=1_000, cache_read=18_000, output=1_200)) for _ in range(80)]
    fake_provider.script(*replies)
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    served = 0
    refusal = None
    for _ in range(80):
        try:
            await claude_code_call(client)
            served += 1
        except anthropic.RateLimitError as exc:
            refusal = exc
            break
    await client.close()
    events = await gw.events()
    spent = sum(e.cost_micro_usd for e in events if e.outcome == E.OK)
    assert served >= 40, served
    assert refusal is not None, "the budget never refused"
    assert 1_900_000 <= spent <= 2_000_000 + 50_000, spent      # filled to within 5% below, one call above
    msg = refusal.body["error"]["message"]
    assert "user cody daily budget $2.00" in msg and "It resets at" in msg
    assert refusal.response.headers["x-should-retry"] == "false"
    assert len(fake_provider.requests) == served


async def test_a_strict_budget_holds_the_worst_case_and_refuses_that_call(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "stu")
    gw.budget("user:stu", "day", "2", hold="strict")
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    try:
        await claude_code_call(client)
        raise AssertionError("a strict $2 budget admitted a call whose worst case is above $2")
    except anthropic.RateLimitError as exc:
        msg = exc.body["error"]["message"]
        assert "spent $0.00 of $2.00" in msg and "this call may cost up to $" in msg
        assert exc.response.headers["x-should-retry"] == "false"     # it can never fit: final
    finally:
        await client.close()
    assert fake_provider.requests == []


async def test_8_concurrent_calls_on_a_fresh_1_dollar_budget_get_no_final_refusal(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "ivy")
    gw.budget("user:ivy", "day", "1")
    # cold holds on Opus with an 80 KB body: ~$0.52 each, so only one fits at a time
    fake_provider.script(*[Reply(chunks=5, chunk_delay_s=0.05, usage=Usage(input=1_000, output=500))
                           for _ in range(8)])
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)

    async def one():
        try:
            await claude_code_call(client)
            return None
        except anthropic.RateLimitError as exc:
            return exc

    results = await asyncio.gather(*(one() for _ in range(8)))
    await client.close()
    refused = [r for r in results if r is not None]
    assert refused and len(refused) < 8
    for exc in refused:
        h = exc.response.headers
        assert h["x-should-retry"] == "true" and int(h["retry-after"]) <= 30
        msg = exc.body["error"]["message"]
        assert msg.startswith("Budget busy") and "spent $0.00 of $1.00" in msg and "reserved by calls in flight" in msg


async def test_the_remaining_header_leaves_out_the_calls_own_hold(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "rex")
    gw.budget("user:rex", "day", "1", hold="strict")
    fake_provider.script(Reply(usage=Usage(input=10, output=10)))
    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    raw = await client.messages.with_raw_response.create(model="claude-opus-4-8", max_tokens=20_000,
                                                         messages=[{"role": "user", "content": "x"}])
    await client.close()
    # the hold is about $0.52; nothing else is spent or held, so $1.00 is left for other calls
    assert raw.headers["x-llmgw-budget-remaining-usd"] == "1.000000"


async def test_a_day_rate_limit_refusal_says_do_not_retry(gw, fake_provider):
    key, _ = gw.key("acme", "backend", "ray")
    gw._put(RateLimit("user", "ray", "rpd", 1).record())
    fake_provider.script(Reply(usage=Usage(input=10, output=10)))
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    try:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        raise AssertionError("rpd 1 admitted a second call")
    except openai.RateLimitError as exc:
        assert int(exc.response.headers["retry-after"]) > 3_600
        assert exc.response.headers["x-should-retry"] == "false"
    finally:
        await client.close()


CODEX_HEADERS = {"originator": "codex_cli_rs", "user-agent": "codex_cli_rs/0.171.0 (Linux; x86_64) xterm"}


async def test_codex_gets_its_usage_limit_shape_and_sdks_the_standard_one(gw, fake_provider, http):
    key, _ = gw.key("acme", "backend", "cole")
    gw.budget("user:cole", "day", "0.000001")
    body = {"model": "gpt-5", "input": "hi", "stream": True, "max_output_tokens": 1000}
    async with http.post(gw.url + "/v1/responses", json=body,
                         headers={"authorization": f"Bearer {key}", **CODEX_HEADERS}) as r:
        assert r.status == 429
        err = orjson.loads(await r.read())["error"]
        promo = r.headers["x-codex-promo-message"]
        assert r.headers["x-should-retry"] == "false"
    assert err["type"] == "usage_limit_reached" and err["code"] == "budget_exceeded"
    reset = datetime.fromtimestamp(err["resets_at"], timezone.utc)
    assert reset.hour == 0 and reset.minute == 0 and err["resets_in_seconds"] > 0
    assert "user cole daily budget $0.000001" in promo and "llmgw request-increase" in promo
    assert "user cole daily budget" in err["message"]
    # an SDK client keeps the standard shape, message included
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    try:
        await client.responses.create(model="gpt-5", input="hi", max_output_tokens=1000)
        raise AssertionError("admitted over budget")
    except openai.RateLimitError as exc:
        assert exc.body["type"] == "insufficient_quota" and "user cole daily budget" in exc.body["message"]
        assert "x-codex-promo-message" not in exc.response.headers
    finally:
        await client.close()
    # and over WebSocket, Codex's error frame carries the same error and the header it reads
    async with http.ws_connect(gw.url.replace("http", "ws") + "/v1/responses",
                               headers={"authorization": f"Bearer {key}", **CODEX_HEADERS}) as ws:
        await ws.send_str(orjson.dumps({"type": "response.create", **body}).decode())
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT
        frame = orjson.loads(msg.data)
    assert frame["type"] == "error" and frame["status"] == 429
    assert frame["error"]["type"] == "usage_limit_reached" and frame["error"]["resets_at"] == err["resets_at"]
    assert "user cole daily budget" in frame["headers"]["x-codex-promo-message"]


def test_workspace_scopes_in_the_org_slash_name_form_and_money_with_its_precision():
    from llmgw.proxy.admin.budget_ops import budget_from_json
    from llmgw.core.budgets import micro_to_usd
    from llmgw.core.scopes import Scope, parse_scope
    b = budget_from_json({"scope": "workspace:acme/backend", "window": "day", "limit_usd": "5"}, "budget", AT)
    assert (b.scope_kind, b.name, b.org) == ("workspace", "backend", "acme")
    assert parse_scope("workspace:backend") == Scope("workspace", "backend", "")
    for bad in (("workspace:acme/", ""), ("workspace:acme/backend", "other")):
        try:
            parse_scope(*bad)
            raise AssertionError(bad)
        except ValueError:
            pass
    assert [micro_to_usd(m) for m in (2_000_000, 1_000, 10_500, 1, 123_456_789)] == [
        "$2.00", "$0.001", "$0.0105", "$0.000001", "$123.456789"]
