"""Golden costs, each worked out by hand from the published USD-per-million-token prices.

Arithmetic rule used throughout: (USD per 1M tokens) x tokens = micro-USD, exactly.
So "$3/MTok x 1,000 tokens" is 3,000 micro-USD ($0.003). A cost is kept in nano-USD
(``Cost.nano_usd``, micro x 1,000); ``Cost.micro_usd`` is that rounded up.
"""
from __future__ import annotations

import pytest

from llmgw.core.events import Tokens
from llmgw.pricing import Cost, Price, cost, load_catalog
from llmgw.pricing.instant import parse_instant_ms

AT = parse_instant_ms("2025-12-01T00:00:00Z")   # after every shipped effective_from
CATALOG = load_catalog()


def price(model: str) -> Price:
    return CATALOG.price_at(model, AT)


# -- Anthropic ---------------------------------------------------------------------

def test_claude_sonnet_4_5_with_5m_and_1h_cache_writes_and_cache_reads() -> None:
    # Sonnet 4.5: input $3, 5m write $3.75, 1h write $6, cache read $0.30, output $15 per MTok.
    tokens = Tokens(input=1_000, cache_write_5m=10_000, cache_write_1h=20_000, cache_read=50_000, output=2_000)
    # prompt = 1,000 + 10,000 + 20,000 + 50,000 = 81,000 <= 200,000: base rates
    expected = (3_000        # $3    x 1,000
                + 37_500     # $3.75 x 10,000
                + 120_000    # $6    x 20,000
                + 15_000     # $0.30 x 50,000
                + 30_000)    # $15   x 2,000  = 205,500 micro-USD, $0.2055
    assert cost(tokens, price("claude-sonnet-4-5-20250929")) == Cost(expected * 1_000, "anthropic/claude-sonnet-4-5@2025-09-29")


def test_claude_haiku_4_5_rounds_once_half_even() -> None:
    # Haiku 4.5: input $1, 1h write $2, cache read $0.10, output $5.
    tokens = Tokens(input=1_234, cache_write_1h=333, cache_read=777, output=55)
    # 1 x 1,234 = 1,234; 2 x 333 = 666; 0.10 x 777 = 77.7; 5 x 55 = 275
    # total 2,252.7 micro-USD -> 2,253
    assert cost(tokens, price("claude-haiku-4-5")).micro_usd == 2_253


def test_claude_opus_4_1_and_4_5_and_3_5_haiku() -> None:
    tokens = Tokens(input=2_000, cache_write_5m=4_000, cache_read=10_000, output=1_000)
    # Opus 4.1: 15 x 2,000 + 18.75 x 4,000 + 1.50 x 10,000 + 75 x 1,000 = 30,000 + 75,000 + 15,000 + 75,000
    assert cost(tokens, price("claude-opus-4-1-20250805")).micro_usd == 195_000
    # Opus 4.5: 5 x 2,000 + 6.25 x 4,000 + 0.50 x 10,000 + 25 x 1,000 = 10,000 + 25,000 + 5,000 + 25,000
    assert cost(tokens, price("claude-opus-4-5")).micro_usd == 65_000
    # Haiku 3.5: 0.80 x 2,000 + 1 x 4,000 + 0.08 x 10,000 + 4 x 1,000 = 1,600 + 4,000 + 800 + 4,000
    assert cost(tokens, price("claude-3-5-haiku-20241022")).micro_usd == 10_400


def test_claude_long_context_over_200k_prices_the_whole_request_at_the_higher_rates() -> None:
    sonnet = price("claude-sonnet-4-5")
    # prompt = 150,000 input + 60,000 cache read = 210,000 > 200,000: long-context rates for EVERYTHING
    # input $6, cache read $0.60, output $22.50
    tokens = Tokens(input=150_000, cache_read=60_000, output=4_000)
    # 6 x 150,000 = 900,000; 0.60 x 60,000 = 36,000; 22.50 x 4,000 = 90,000 -> 1,026,000 ($1.026)
    assert cost(tokens, sonnet).micro_usd == 1_026_000
    # batch halves it: 0.5 x 1,026,000
    assert cost(tokens, sonnet, batch=True).micro_usd == 513_000


def test_claude_long_context_threshold_is_strictly_greater_and_counts_cache_tokens() -> None:
    sonnet = price("claude-sonnet-4")
    # exactly 200,000 prompt tokens: base rates. 3 x 140,000 + 0.30 x 60,000 + 15 x 4,000
    at_threshold = Tokens(input=140_000, cache_read=60_000, output=4_000)
    assert cost(at_threshold, sonnet).micro_usd == 420_000 + 18_000 + 60_000
    # 200,001: long context. 6 x 140,001 + 0.60 x 60,000 + 22.50 x 4,000 = 840,006 + 36,000 + 90,000
    over = Tokens(input=140_001, cache_read=60_000, output=4_000)
    assert cost(over, sonnet).micro_usd == 966_006


def test_claude_long_context_cache_writes() -> None:
    # long-context 5m write $7.50, 1h write $12, input $6, output $22.50; prompt 210,000
    tokens = Tokens(input=60_000, cache_write_5m=100_000, cache_write_1h=50_000, output=1_000)
    # 6 x 60,000 = 360,000; 7.50 x 100,000 = 750,000; 12 x 50,000 = 600,000; 22.50 x 1,000 = 22,500
    assert cost(tokens, price("claude-sonnet-4-5")).micro_usd == 1_732_500


def test_claude_web_search_fee() -> None:
    # $10 per 1,000 searches: 3 searches = $10 x 3 / 1,000 = $0.03 = 30,000 micro-USD
    tokens = Tokens(input=1_000, output=100)   # 1 x 1,000 + 5 x 100 = 1,500 on Haiku 4.5
    assert cost(tokens, price("claude-haiku-4-5"), web_search_calls=3).micro_usd == 1_500 + 30_000


# -- OpenAI ------------------------------------------------------------------------

def test_openai_chat_with_cached_input_and_reasoning_tokens() -> None:
    # API usage: prompt_tokens 12,000 (cached_tokens 8,000), completion_tokens 3,000 (reasoning 2,200).
    # The adapter normalises: input = 12,000 - 8,000 = 4,000; reasoning stays INSIDE output.
    tokens = Tokens(input=4_000, cache_read=8_000, output=3_000, reasoning=2_200)
    # gpt-5: input $1.25, cached $0.125, output $10 (reasoning billed as output, once)
    # 1.25 x 4,000 = 5,000; 0.125 x 8,000 = 1,000; 10 x 3,000 = 30,000 -> 36,000
    assert cost(tokens, price("gpt-5")) == Cost(36_000_000, "openai/gpt-5@2025-08-07")
    # priority: $2.50 / $0.25 / $20 -> 10,000 + 2,000 + 60,000
    assert cost(tokens, price("gpt-5"), service_tier="priority").micro_usd == 72_000
    # flex: half of standard
    assert cost(tokens, price("gpt-5"), service_tier="flex").micro_usd == 18_000
    # "default" (and a tier this model does not list, flagged as a guess) bill at standard
    assert cost(tokens, price("gpt-5"), service_tier="default").micro_usd == 36_000
    nano_priority = cost(tokens, price("gpt-5-nano"), service_tier="priority")
    assert nano_priority.micro_usd == cost(tokens, price("gpt-5-nano")).micro_usd and nano_priority.tier_unpriced


def test_openai_gpt_4o_mini_cached() -> None:
    # prompt_tokens 2,000 with 1,024 cached -> input 976; completion 300
    tokens = Tokens(input=976, cache_read=1_024, output=300)
    # 0.15 x 976 = 146.4; 0.075 x 1,024 = 76.8; 0.60 x 300 = 180 -> 403.2 micro-USD, exactly
    assert cost(tokens, price("gpt-4o-mini-2024-07-18")).nano_usd == 403_200


def test_o4_mini_flex_and_gpt_4_1_batch() -> None:
    tokens = Tokens(input=10_000, output=5_000)
    # o4-mini flex = 0.5 x (1.10 x 10,000 + 4.40 x 5,000) = 0.5 x (11,000 + 22,000)
    assert cost(tokens, price("o4-mini"), service_tier="flex").micro_usd == 16_500
    # gpt-4.1 batch = 0.5 x (2 x 10,000 + 8 x 5,000) = 0.5 x 60,000
    assert cost(tokens, price("gpt-4.1-2025-04-14"), batch=True).micro_usd == 30_000


def test_openai_responses_call_with_web_search() -> None:
    # Responses usage: input_tokens 3,000 (input_tokens_details.cached_tokens 1,000),
    # output_tokens 1,500 (output_tokens_details.reasoning_tokens 1,000), two web_search_call items.
    tokens = Tokens(input=2_000, cache_read=1_000, output=1_500, reasoning=1_000)
    # gpt-5: 1.25 x 2,000 = 2,500; 0.125 x 1,000 = 125; 10 x 1,500 = 15,000
    # web search $10 per 1k calls: 2 calls = $0.02 = 20,000 -> 37,625
    assert cost(tokens, price("gpt-5-2025-08-07"), web_search_calls=2).micro_usd == 37_625


def test_embeddings_are_input_only() -> None:
    tokens = Tokens(input=123_457)
    # text-embedding-3-small $0.02: 0.02 x 123,457 = 2,469.14 micro-USD, exactly
    assert cost(tokens, price("text-embedding-3-small")).nano_usd == 2_469_140
    # batch $0.01: 1,234.57 -> 1,235
    assert cost(tokens, price("text-embedding-3-small"), batch=True).micro_usd == 1_235
    # text-embedding-3-large $0.13: 0.13 x 10,000 = 1,300
    assert cost(Tokens(input=10_000), price("text-embedding-3-large")).micro_usd == 1_300


def test_a_served_tier_the_entry_has_no_rates_for_is_billed_at_base_and_flagged() -> None:
    """Sonnet 4.5 lists no fast or priority rates: base rates are a guess there, and the event must say
    so; standard tiers, ``auto`` and tiers the entry lists are exact."""
    tokens = Tokens(input=1_000, output=1_000)
    sonnet, mini = price("claude-sonnet-4-5-20250929"), price("o4-mini")
    base = cost(tokens, sonnet).nano_usd
    assert base == 18_000_000                                   # $3 x 1,000 + $15 x 1,000 = 18,000 micro-USD
    for tier in ("fast", "priority", "flex"):
        assert cost(tokens, sonnet, service_tier=tier) == Cost(base, sonnet.version, tier_unpriced=True)
    for tier in (None, "", "auto", "default", "standard"):
        assert not cost(tokens, sonnet, service_tier=tier).tier_unpriced
    assert not cost(tokens, sonnet, batch=True).tier_unpriced   # Sonnet lists batch rates
    assert not cost(tokens, mini, service_tier="flex").tier_unpriced


def test_rounded_once_to_the_nano_not_per_part_and_half_to_even() -> None:
    # $0.0005/MTok is 0.5 nano-USD per token
    p = Price.from_entry({"provider": "test", "model": "tiny", "effective_from": "2025-01-01",
                          "usd_per_mtok": {"input": "0.0005", "output": "0", "cache_read": "0.0005"}})
    # 0.5 + 0.5: once -> 1.0 -> 1 (per part, half-even, would give 0 + 0)
    assert cost(Tokens(input=1, cache_read=1), p).nano_usd == 1
    assert cost(Tokens(input=1), p).nano_usd == 0       # 0.5 -> 0 (even)
    assert cost(Tokens(input=3), p).nano_usd == 2       # 1.5 -> 2 (even)
    assert cost(Tokens(input=5), p).nano_usd == 2       # 2.5 -> 2 (even)


def test_sub_micro_costs_are_kept_and_micro_usd_rounds_up() -> None:
    nano = price("gpt-4.1-nano")   # input $0.10, cached $0.025
    assert cost(Tokens(input=5), nano).nano_usd == 500             # 0.5 micro-USD: no longer $0
    assert cost(Tokens(input=5), nano).micro_usd == 1              # up, never down to 0
    assert cost(Tokens(input=5, cache_read=20), nano).micro_usd == 1
    assert cost(Tokens(input=15), nano).micro_usd == 2             # 1.5 -> 2
    assert cost(Tokens(input=30), nano).micro_usd == 3             # exact stays exact
    small = price("text-embedding-3-small")                        # $0.02/MTok
    assert cost(Tokens(input=12), small) == Cost(240, small.version)


def test_reasoning_with_its_own_rate_is_not_charged_twice() -> None:
    p = Price.from_entry({
        "provider": "test", "model": "thinker", "effective_from": "2025-01-01",
        "usd_per_mtok": {"input": "1", "output": "10", "reasoning": "20"},
        "max_output_tokens": 1000})
    # output 3,000 of which 2,200 reasoning: 10 x 800 + 20 x 2,200 = 8,000 + 44,000
    assert cost(Tokens(output=3_000, reasoning=2_200), p).micro_usd == 52_000


def test_bad_usage_is_refused_not_priced() -> None:
    with pytest.raises(ValueError):
        cost(Tokens(output=10, reasoning=11), price("gpt-5"))
    with pytest.raises(ValueError):
        cost(Tokens(input=-1), price("gpt-5"))
    with pytest.raises(ValueError):
        cost(Tokens(input=1), price("gpt-5"), batch=True, service_tier="priority")
    with pytest.raises(ValueError, match="web_search"):   # no fee known: never silently zero
        cost(Tokens(input=1), price("text-embedding-3-small"), web_search_calls=1)


# -- the integer hot path (cost.IntRates) against the Decimal arithmetic, every entry and tier ---------

import importlib  # noqa: E402
from decimal import Decimal  # noqa: E402

from hypothesis import given, settings, strategies as st  # noqa: E402

from llmgw.pricing import RequestShape, worst_case  # noqa: E402
from llmgw.pricing.estimate import worst_case_exact  # noqa: E402
from llmgw.pricing.catalog import shipped_entries  # noqa: E402
from llmgw.pricing.price import Rates, ServiceTier  # noqa: E402

ENTRIES = shipped_entries()
# A rate with more places than any catalog figure (7 and 12), and a long-context tier stacked on a
# tier of its own rates (a divided ratio), so the rounding of the integer path is exercised too.
_ODD = Rates(Decimal("0.1234567"), Decimal("1.000000000001"), Decimal("0.5"), Decimal("2"), Decimal("0.0000001"),
             Decimal("3.3333333"))
ENTRIES.append(ENTRIES[0].__class__(
    provider="test", model="odd", effective_from_ms=0, rates=_ODD, version="test/odd@1",
    long_context=None, service_tiers=(ServiceTier("priority", multiplier=Decimal("1.75")),
                                      ServiceTier("flex", rates=_ODD.scaled(Decimal("0.3333333333")))),
    context_window=1_000_000, max_output_tokens=64_000))


def _tiers(p: Price) -> list[str | None]:
    return [None, "auto", "default", "unlisted", *(t.name for t in p.service_tiers)]


def _decimal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # the package exports the function ``cost``, so its module is reached by name
    monkeypatch.setattr(importlib.import_module("llmgw.pricing.cost"), "int_rates", lambda *a: None)


counts = st.integers(0, 3_000_000)


@settings(max_examples=300, deadline=None)
@given(i=st.integers(0, len(ENTRIES) - 1), tier=st.integers(0, 8), inp=counts, w5=counts, w1=counts,
       read=counts, out=counts, reasoning=st.integers(0, 100), body=st.integers(0, 2_000_000),
       max_out=st.none() | st.integers(0, 200_000), images=st.integers(0, 3), n=st.integers(1, 3))
def test_integer_rates_charge_and_bound_exactly_what_decimal_does(
        i: int, tier: int, inp: int, w5: int, w1: int, read: int, out: int, reasoning: int, body: int,
        max_out: int | None, images: int, n: int) -> None:
    p = ENTRIES[i]
    tiers = _tiers(p)
    t = tiers[tier % len(tiers)]
    tokens = Tokens(input=inp, cache_write_5m=w5, cache_write_1h=w1, cache_read=read, output=out,
                    reasoning=out * reasoning // 100)
    shape = RequestShape(body, max_out, t, images, n=n)
    fast_cost = cost(tokens, p, service_tier=t)
    try:
        fast_worst: int | None = worst_case(p, shape)
    except ValueError:                       # an entry with no output limit and a request without one
        fast_worst = None
    if fast_worst is not None:                # the Decimal reference, straight from the catalog's rates
        assert worst_case_exact(p, shape) == fast_worst
    with pytest.MonkeyPatch.context() as mp:
        _decimal_only(mp)
        assert cost(tokens, p, service_tier=t) == fast_cost
