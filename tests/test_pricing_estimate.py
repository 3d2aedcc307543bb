"""The worst-case estimate: golden numbers, and properties over thousands of random requests."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmgw.core.events import Tokens
from llmgw.pricing import Price, RequestShape, cost, load_catalog, worst_case
from llmgw.pricing.estimate import (DEFAULT_IMAGE_TOKENS, INJECTED_TOKENS_ALLOWANCE, WEB_SEARCH_DEFAULT_USES,
                                    WEB_SEARCH_TOKENS_PER_USE)
from llmgw.pricing.instant import parse_instant_ms

AT = parse_instant_ms("2025-12-01T00:00:00Z")
CATALOG = load_catalog()
# every version ever shipped, plus one with a reasoning rate above output, to exercise that path
THINKER = Price.from_entry({
    "provider": "test", "model": "thinker", "effective_from": "2025-01-01",
    "usd_per_mtok": {"input": "1", "output": "10", "cache_read": "0.1", "reasoning": "20"},
    "long_context": {"above_prompt_tokens": 100000, "usd_per_mtok": {"input": "2", "output": "15"}},
    "service_tiers": {"priority": {"usd_per_mtok": {"input": "2", "output": "20"}}, "flex": {"multiplier": "0.5"}},
    "usd_per_1k_requests": {"web_search": "25"}, "context_window": 300000, "max_output_tokens": 50000})
PRICES = [*CATALOG, THINKER]


def test_worst_case_golden_claude() -> None:
    sonnet = CATALOG.price_at("claude-sonnet-4-5", AT)
    shape = RequestShape(body_bytes=10_000, max_output_tokens=1_000)
    # prompt <= 10,000 bytes + 4,096 injected = 14,096 tokens, each at the dearest prompt rate:
    #   max(input 3, 5m write 3.75, 1h write 6, read 0.30) = $6 -> 84,576
    # output <= 1,000 at $15 -> 15,000; total 99,576
    assert worst_case(sonnet, shape) == 99_576


def test_worst_case_golden_long_context_and_images() -> None:
    sonnet = CATALOG.price_at("claude-sonnet-4-5", AT)
    shape = RequestShape(body_bytes=250_000, max_output_tokens=8_000, image_count=2)
    # prompt <= 250,000 + 4,096 + 2 x 1,800 (per-image maximum) = 257,696 > 200,000: long-context tier
    # dearest long-context prompt rate: 1h write $12 -> 3,092,352; output 8,000 x $22.50 = 180,000
    assert worst_case(sonnet, shape) == 3_092_352 + 180_000


def test_worst_case_golden_openai_unnamed_tier_is_bounded_by_priority() -> None:
    gpt5 = CATALOG.price_at("gpt-5", AT)
    shape = RequestShape(body_bytes=2_000, max_output_tokens=None)
    # prompt <= 2,000 + 4,096 = 6,096; output <= model limit 128,000.
    # No tier named: the project default may be priority ($2.50 in, $20 out):
    #   2.50 x 6,096 = 15,240; 20 x 128,000 = 2,560,000
    assert worst_case(gpt5, shape) == 15_240 + 2_560_000
    # explicit "default" is standard: 1.25 x 6,096 = 7,620; 10 x 128,000 = 1,280,000
    assert worst_case(gpt5, RequestShape(2_000, None, service_tier="default")) == 7_620 + 1_280_000
    # flex: half of standard: 3,810 + 640,000
    assert worst_case(gpt5, RequestShape(2_000, None, service_tier="flex")) == 3_810 + 640_000


def test_worst_case_caps_the_prompt_at_the_context_window_and_counts_n() -> None:
    mini = CATALOG.price_at("gpt-4o-mini", AT)
    shape = RequestShape(body_bytes=5_000_000, max_output_tokens=100, service_tier="default", n=3)
    # prompt <= min(5,004,096, 128,000) = 128,000 x $0.15 = 19,200; output 3 x 100 x $0.60 = 180
    assert worst_case(mini, shape) == 19_380


def test_worst_case_embedding_and_web_search() -> None:
    small = CATALOG.price_at("text-embedding-3-small", AT)
    # no output; prompt 1,000 + 4,096 = 5,096 x $0.02 = 101.92 -> rounded UP to 102
    assert worst_case(small, RequestShape(body_bytes=1_000, max_output_tokens=None)) == 102
    haiku = CATALOG.price_at("claude-haiku-4-5", AT)
    shape = RequestShape(body_bytes=1_000, max_output_tokens=1_000, web_search=True, web_search_max_uses=2)
    # prompt 1,000 + 4,096 + 2 x 25,000 = 55,096 x $2 (1h write) = 110,192; output 1,000 x $5 = 5,000;
    # 2 searches x $10/1k = 20,000
    assert worst_case(haiku, shape) == 110_192 + 5_000 + 20_000


# -- properties --------------------------------------------------------------------------

@st.composite
def calls(draw: st.DrawFn) -> tuple[Price, RequestShape, Tokens, str | None, int]:
    """A request shape and a real usage that respects it.

    A byte-level BPE token covers at least one byte, so however the N-byte body is
    tokenized it yields at most N tokens: the real prompt is drawn from [0, bound].
    """
    price = draw(st.sampled_from(PRICES))
    body = draw(st.integers(0, 1_500_000))
    images = draw(st.integers(0, 4))
    n = draw(st.integers(1, 3))
    max_out = draw(st.one_of(st.none(), st.integers(0, 200_000)))
    web = price.fee_usd_per_1k("web_search") is not None and draw(st.booleans())
    uses = draw(st.one_of(st.none(), st.integers(0, 8))) if web else None
    asked = draw(st.sampled_from([None, "auto", "default", "flex", "priority", "scale"]))
    shape = RequestShape(body, max_out, service_tier=asked, image_count=images, web_search=web,
                         web_search_max_uses=uses, n=n)

    uses_real = (WEB_SEARCH_DEFAULT_USES if uses is None else uses) if web else 0
    prompt_bound = (body + INJECTED_TOKENS_ALLOWANCE + images * (price.max_image_tokens or DEFAULT_IMAGE_TOKENS)
                    + uses_real * WEB_SEARCH_TOKENS_PER_USE)
    if not web and price.context_window and price.mode == "chat":
        prompt_bound = min(prompt_bound, price.context_window)
    # extremes are drawn often: the bound is tight only when everything sits at its limit
    prompt = draw(st.one_of(st.just(prompt_bound), st.integers(0, prompt_bound)))
    if draw(st.booleans()):                    # the whole prompt in one billing category
        parts = [0, 0, 0, 0]
        parts[draw(st.integers(0, 3))] = prompt
    else:
        cuts = sorted(draw(st.lists(st.integers(0, prompt), min_size=3, max_size=3)))
        parts = [cuts[0], cuts[1] - cuts[0], cuts[2] - cuts[1], prompt - cuts[2]]
    limit = 0 if price.mode == "embedding" else n * (max_out if max_out is not None else
                                                     (price.max_output_tokens or price.context_window or 0))
    output = draw(st.one_of(st.just(limit), st.integers(0, limit)))
    reasoning = draw(st.one_of(st.just(output), st.just(0), st.integers(0, output)))
    tokens = Tokens(input=parts[0], cache_write_5m=parts[1], cache_write_1h=parts[2], cache_read=parts[3],
                    output=output, reasoning=reasoning)

    if asked in (None, "auto", "scale"):       # the provider picks: standard or any tier it may choose itself
        served = draw(st.sampled_from([None, *(t.name for t in price.service_tiers if t.name not in ("flex", "batch", "ultrafast", "regional"))]))
    elif asked == "default":
        served = "default"
    else:
        served = asked if price.tier(asked) else None
    searches = draw(st.one_of(st.just(uses_real), st.integers(0, uses_real)))
    return price, shape, tokens, served, searches


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
def test_worst_case_is_never_below_the_real_cost(call: tuple[Price, RequestShape, Tokens, str | None, int]) -> None:
    price, shape, tokens, served, searches = call
    real = cost(tokens, price, service_tier=served, web_search_calls=searches).micro_usd
    assert worst_case(price, shape) >= real


GROWABLE = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")


@st.composite
def usages(draw: st.DrawFn) -> Tokens:
    output = draw(st.integers(0, 300_000))
    return Tokens(input=draw(st.integers(0, 400_000)), cache_write_5m=draw(st.integers(0, 200_000)),
                  cache_write_1h=draw(st.integers(0, 200_000)), cache_read=draw(st.integers(0, 400_000)),
                  output=output, reasoning=draw(st.integers(0, output)))


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(PRICES), usages(), st.sampled_from(GROWABLE), st.integers(1, 300_000),
       st.sampled_from([None, "flex", "priority", "batch"]), st.booleans())
def test_cost_is_a_non_negative_int_that_never_decreases_as_tokens_grow(
        price: Price, tokens: Tokens, field: str, more: int, tier: str | None, also_reasoning: bool) -> None:
    grown = {f: getattr(tokens, f) for f in (*GROWABLE, "reasoning")}
    grown[field] += more
    if field == "output" and also_reasoning:
        grown["reasoning"] += more                     # new reasoning tokens are new output tokens
    before = cost(tokens, price, service_tier=tier)
    after = cost(Tokens(**grown), price, service_tier=tier)
    assert isinstance(before.nano_usd, int) and not isinstance(before.nano_usd, bool)
    assert 0 <= before.nano_usd <= after.nano_usd
    assert 0 <= before.micro_usd <= after.micro_usd


def test_long_context_rates_are_never_cheaper_in_the_shipped_catalog() -> None:
    # the monotonicity above relies on it: crossing the threshold must not lower a price
    for p in CATALOG:
        if p.long_context:
            lc, base = p.long_context.rates, p.rates
            for f in ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read"):
                assert getattr(lc, f) >= getattr(base, f), (p.version, f)


@pytest.mark.parametrize("price", [p for p in CATALOG if p.mode == "chat"], ids=lambda p: p.version)
def test_every_shipped_chat_entry_has_a_worst_case(price: Price) -> None:
    assert worst_case(price, RequestShape(body_bytes=0, max_output_tokens=None)) > 0
    assert Decimal(worst_case(price, RequestShape(0, 1))) >= price.rates.prompt_max * INJECTED_TOKENS_ALLOWANCE


def test_request_shape_refuses_negative_values() -> None:
    with pytest.raises(ValueError):
        RequestShape(body_bytes=-1, max_output_tokens=10)
    with pytest.raises(ValueError):
        RequestShape(body_bytes=1, max_output_tokens=10, n=0)
