"""The shipped catalog as of 2026-11-25: the models clients send today resolve, and golden costs
worked by hand from the providers' published rates (USD per million tokens x tokens = micro-USD)."""
from __future__ import annotations

import pytest

from llmgw.core.events import Tokens
from llmgw.pricing import RequestShape, cost, load_catalog, worst_case
from llmgw.pricing.instant import parse_instant_ms

NOW = parse_instant_ms("2026-11-25T00:00:00Z")
CATALOG = load_catalog()


def at(day: str) -> int:
    return parse_instant_ms(f"{day}T12:00:00Z")


CURRENT = [
    # Anthropic: the models overview and the legacy models it still serves
    "claude-fable-5-2", "claude-fable-5-1", "claude-fable-5", "claude-mythos-5-2", "claude-mythos-5-1",
    "claude-mythos-5", "claude-opus-5-5", "claude-opus-5", "claude-opus-4-8", "claude-opus-4-7", "claude-opus-4-6",
    "claude-sonnet-5-5", "claude-sonnet-5", "claude-sonnet-4-6", "claude-haiku-5-5", "claude-haiku-4-5",
    # OpenAI: GPT-6.x, GPT-5.x and the Codex models
    "gpt-6.2-astra", "gpt-6.2-sol", "gpt-6.1-sol", "gpt-6.1-terra", "gpt-6-astra", "gpt-6-sol", "gpt-6-luna",
    "gpt-5.6-sol", "gpt-5.6-terra", "gpt-5.6-luna", "gpt-5.5", "gpt-5.5-pro", "gpt-5.4", "gpt-5.4-pro",
    "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.3-codex", "gpt-5.2", "gpt-5.2-codex", "gpt-5.2-pro", "gpt-5.1",
    "gpt-5.1-codex", "gpt-5.1-codex-mini", "gpt-5.1-codex-max", "gpt-5-codex", "o3-pro", "o3-mini",
    "text-embedding-ada-002",
]


@pytest.mark.parametrize("model", CURRENT)
def test_current_models_are_priced_with_a_source(model: str) -> None:
    p = CATALOG.price_at(model, NOW)
    assert p.model == model
    if model != "gpt-5-codex":                                # Responses-only, no Batch price
        assert p.tier("batch") is not None
    if p.mode == "chat":
        assert p.rates.output > p.rates.input > 0
        assert p.context_window and p.max_output_tokens
        assert p.fee_usd_per_1k("web_search") is not None
    entry = p.to_entry()
    assert str(entry["source"]).startswith("https://")


def test_claude_code_default_model_resolves_as_claude_code_sends_it() -> None:
    # Claude Code 2.1.x shows "claude-opus-4-8[1m]" but the body's model is "claude-opus-4-8";
    # the 1M window is asked for with an anthropic-beta context-1m header, not a name.
    p = CATALOG.price_at("claude-opus-4-8", NOW)
    assert p.version == "anthropic/claude-opus-4-8@2026-05-28"
    assert p.context_window == 1_000_000 and p.long_context is None      # 1M at standard rates
    # other clients do put the UI notation in the body: it must not be refused (or priced elsewhere)
    for name in ("claude-opus-4-8[1m]", "anthropic/claude-opus-4-8"):
        assert CATALOG.price_at(name, NOW).version == p.version
    assert CATALOG.price_at("claude-opus-5-5[1m]", NOW).key == "anthropic/claude-opus-5-5"


def test_codex_default_model_resolves() -> None:
    # Codex CLI's bundled catalog defaults to gpt-6.1-sol since 0.159.1
    p = CATALOG.price_at("gpt-6.1-sol", NOW)
    assert p.version == "openai/gpt-6.1-sol@2026-09-29"
    assert CATALOG.price_at("openai/gpt-6.1-sol", NOW).version == p.version
    assert CATALOG.price_at("gpt-6.1-sol-2026-09-29", NOW).key == "openai/gpt-6.1-sol"


@pytest.mark.parametrize("name, key", [
    ("claude-opus-5", "anthropic/claude-opus-5"),            # not swallowed by claude-opus-5-5
    ("claude-opus-5-5", "anthropic/claude-opus-5-5"),
    ("claude-opus-5@20260724", "anthropic/claude-opus-5"),   # Vertex-style
    ("claude-sonnet-5[1m]", "anthropic/claude-sonnet-5"),
    ("claude-sonnet-5-5[1m]", "anthropic/claude-sonnet-5-5"),
    ("claude-fable-5", "anthropic/claude-fable-5"),
    ("claude-fable-5-2", "anthropic/claude-fable-5-2"),
    ("gpt-5.6", "openai/gpt-5.6-sol"),
    ("gpt-6-sol", "openai/gpt-6-sol"),                       # not gpt-6.1-sol
    ("gpt-5.1-codex-mini", "openai/gpt-5.1-codex-mini"),      # not gpt-5.1-codex
    ("gpt-5.4-mini-2026-03-17", "openai/gpt-5.4-mini"),       # not gpt-5.4
    ("gpt-5.2-chat-latest", "openai/gpt-5.2"),
])
def test_new_names_resolve_to_the_right_entry(name: str, key: str) -> None:
    assert CATALOG.price_at(name, NOW).key == key


def test_golden_claude_opus_4_8() -> None:
    # $5 in, $6.25 5m write, $10 1h write, $0.50 read, $25 out
    p = CATALOG.price_at("claude-opus-4-8", NOW)
    t = Tokens(input=10_000, cache_write_5m=2_000, cache_write_1h=1_000, cache_read=50_000, output=3_000)
    # 10,000x5 + 2,000x6.25 + 1,000x10 + 50,000x0.5 + 3,000x25 = 50,000 + 12,500 + 10,000 + 25,000 + 75,000
    assert cost(t, p).micro_usd == 172_500
    assert cost(t, p, batch=True).micro_usd == 86_250
    # a 500k-token prompt is not surcharged: 500,000x5 + 1,000x25
    assert cost(Tokens(input=500_000, output=1_000), p).micro_usd == 2_525_000


def test_golden_opus_4_6_long_context_premium_ended_at_ga() -> None:
    t = Tokens(input=250_000, output=2_000)
    beta = CATALOG.price_at("claude-opus-4-6", at("2026-03-01"))
    ga = CATALOG.price_at("claude-opus-4-6", at("2026-03-20"))
    assert cost(t, beta).micro_usd == 250_000 * 10 + 2_000 * 75 // 2    # $10 / $37.50 above 200k
    assert cost(t, ga).micro_usd == 250_000 * 5 + 2_000 * 25            # 1,300,000
    assert cost(Tokens(input=200_000, output=2_000), beta).micro_usd == 1_050_000   # 200k is not above 200k


def test_golden_haiku_5_5_prompt_length_tier() -> None:
    p = CATALOG.price_at("claude-haiku-5-5", NOW)
    # prompt 90,000 + 10,000 read = 100,000: not above the threshold -> $0.10 / $0.01 / $0.50
    assert cost(Tokens(input=90_000, cache_read=10_000, output=1_000), p).micro_usd == 9_000 + 100 + 500
    # one more token: the whole request at 5x -> 90,001x0.5 + 10,000x0.05 + 1,000x2.5 = 48,000.5 micro-USD, exactly
    assert cost(Tokens(input=90_001, cache_read=10_000, output=1_000), p).nano_usd == 48_000_500
    # writes in the long tier: 1,000 x $0.625 (5m) + 1,000 x $1 (1h)
    assert cost(Tokens(input=100_000, cache_write_5m=1_000, cache_write_1h=1_000), p).micro_usd == \
        50_000 + 625 + 1_000


def test_golden_sonnet_5_5_cache_read_cut() -> None:
    t = Tokens(cache_read=1_000_000, output=100)
    assert cost(t, CATALOG.price_at("claude-sonnet-5-5", at("2026-10-01"))).micro_usd == 200_000 + 1_000
    assert cost(t, CATALOG.price_at("claude-sonnet-5-5", at("2026-10-10"))).micro_usd == 100_000 + 1_000


def test_golden_fable_5_2_and_opus_5_5() -> None:
    t = Tokens(input=1_000, cache_read=100_000, cache_write_1h=1_000, output=1_000)
    # Fable 5.2: 1,000x8 + 100,000x0.2 + 1,000x16 + 1,000x40
    assert cost(t, CATALOG.price_at("claude-fable-5-2", NOW)).micro_usd == 8_000 + 20_000 + 16_000 + 40_000
    # Opus 5.5: 1,000x4 + 100,000x0.2 + 1,000x8 + 1,000x20
    assert cost(t, CATALOG.price_at("claude-opus-5-5", NOW)).micro_usd == 4_000 + 20_000 + 8_000 + 20_000


def test_golden_gpt_6_1_sol() -> None:
    p = CATALOG.price_at("gpt-6.1-sol", NOW)
    # $2 in, $0.10 cached, $10 out; reasoning is part of output and billed once
    t = Tokens(input=100_000, cache_read=50_000, output=10_000, reasoning=4_000)
    base = 100_000 * 2 + 50_000 // 10 + 10_000 * 10          # 305,000
    assert cost(t, p).micro_usd == base
    assert cost(t, p, service_tier="fast").micro_usd == 2 * base
    assert cost(t, p, service_tier="priority").micro_usd == 2 * base
    assert cost(t, p, service_tier="flex").micro_usd == base // 2
    assert cost(t, p, batch=True).micro_usd == base // 2
    assert cost(t, p, service_tier="ultrafast").micro_usd == 6 * base
    # over 272K input tokens the whole request: input and cache x2, output x1.5 -> $4 / $0.20 / $15
    assert cost(Tokens(input=300_000, cache_read=10_000, output=1_000), p).micro_usd == 1_200_000 + 2_000 + 15_000
    # 30-minute cache writes at 1.25x input
    assert cost(Tokens(cache_write_5m=1_000), p).micro_usd == 2_500


def test_golden_gpt_6_2_sol_ultrafast_doubles_on_2027_03_01() -> None:
    t = Tokens(input=1_000, output=1_000)                     # 1,000x2 + 1,000x10 = 12,000
    assert cost(t, CATALOG.price_at("gpt-6.2-sol", NOW), service_tier="ultrafast").micro_usd == 36_000
    later = CATALOG.price_at("gpt-6.2-sol", at("2027-03-02"))
    assert cost(t, later, service_tier="ultrafast").micro_usd == 72_000
    assert cost(t, later).micro_usd == 12_000
    # the 12-hour cache write ($5) is carried as cache_write_1h
    assert cost(Tokens(cache_write_1h=1_000), later).micro_usd == 5_000


def test_golden_gpt_5_6_price_history() -> None:
    t = Tokens(input=200_000, output=100_000)                # under the 272K long-context line
    assert cost(t, CATALOG.price_at("gpt-5.6-sol", at("2026-08-01"))).micro_usd == 1_000_000 + 3_000_000
    assert cost(t, CATALOG.price_at("gpt-5.6-sol", at("2026-09-01"))).micro_usd == 800_000 + 2_000_000
    assert cost(t, CATALOG.price_at("gpt-5.6-luna", at("2026-07-20"))).micro_usd == 200_000 + 600_000
    assert cost(t, CATALOG.price_at("gpt-5.6-luna", at("2026-08-01"))).micro_usd == 40_000 + 120_000
    # over 272K on the promotional price: 300,000 x $8 + 100,000 x $30
    assert cost(Tokens(input=300_000, output=100_000),
                CATALOG.price_at("gpt-5.6-sol", at("2026-09-01"))).micro_usd == 2_400_000 + 3_000_000


def test_new_models_did_not_exist_before_their_release() -> None:
    with pytest.raises(LookupError):
        CATALOG.price_at("claude-fable-5-2", at("2026-11-08"))
    with pytest.raises(LookupError):
        CATALOG.price_at("gpt-6.2-astra", at("2026-11-16"))


@pytest.mark.parametrize("model", ["claude-opus-4-8", "claude-haiku-5-5", "gpt-6.1-sol", "gpt-6.2-astra", "gpt-5.4"])
def test_worst_case_covers_the_dearest_call_of_that_shape(model: str) -> None:
    p = CATALOG.price_at(model, NOW)
    shape = RequestShape(body_bytes=300_000, max_output_tokens=8_000)
    # the prompt can be at most 304,096 tokens (bytes + allowance), all of them at the dearest rate
    dearest = Tokens(cache_write_1h=304_096, output=8_000)
    # tiers a request must name (flex, batch, ultrafast, regional) are not held for a request that names none
    tiers = [t.name for t in p.service_tiers if t.name not in ("batch", "flex", "ultrafast", "regional")]
    assert worst_case(p, shape) >= max(cost(dearest, p, service_tier=t).micro_usd for t in [None, *tiers])
    for named in (t.name for t in p.service_tiers):
        held = worst_case(p, RequestShape(body_bytes=300_000, max_output_tokens=8_000, service_tier=named))
        assert held >= cost(dearest, p, service_tier=named).micro_usd
