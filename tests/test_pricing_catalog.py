"""The dated catalog: shipped coverage, effective dates, overrides, names, the unknown-model policy."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from llmgw import pricing
from llmgw.core.events import Tokens
from llmgw.pricing import Catalog, CatalogError, UnknownModel, cost, load_catalog
from llmgw.pricing.instant import format_instant, parse_instant_ms

AT = parse_instant_ms("2025-12-01T00:00:00Z")
CATALOG = load_catalog()

REQUIRED = [
    "claude-opus-4-1", "claude-opus-4-5", "claude-sonnet-4", "claude-sonnet-4-5", "claude-haiku-4-5",
    "claude-3-5-haiku", "gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-5",
    "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini", "text-embedding-3-small", "text-embedding-3-large",
]


def write_overrides(path: Path, *entries: dict[str, object]) -> Path:
    path.write_bytes(orjson.dumps({"format": "llmgw.prices/1", "entries": list(entries)}))
    return path


def test_public_names_are_pinned() -> None:
    assert sorted(pricing.__all__) == sorted([
        "CallOptions", "CallProfile", "Catalog", "CatalogError", "Cost", "Price", "RequestShape", "UnknownModel",
        "cost", "load_catalog", "predicted", "rerate", "worst_case"])
    for name in pricing.__all__:
        assert hasattr(pricing, name)


@pytest.mark.parametrize("model", REQUIRED)
def test_shipped_catalog_prices_every_required_model(model: str) -> None:
    p = CATALOG.price_at(model, AT)
    assert p.model == model
    assert p.version == f"{p.provider}/{p.model}@{format_instant(p.effective_from_ms)[:10]}"
    if p.mode == "chat":
        assert p.max_output_tokens and p.context_window
        assert p.fee_usd_per_1k("web_search") is not None
        assert p.rates.output > p.rates.input > 0
    assert p.tier("batch") is not None


def test_shipped_version_ids_are_unique_and_entries_round_trip() -> None:
    versions = [p.version for p in CATALOG]
    assert len(versions) == len(set(versions))
    for p in CATALOG:
        again = pricing.Price.from_entry(p.to_entry())
        assert again == p


@pytest.mark.parametrize("name, key", [
    ("claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4-5"),    # dated snapshot alias
    ("claude-sonnet-4-5@20250929", "anthropic/claude-sonnet-4-5"),    # glob pattern (Vertex style)
    ("claude-sonnet-4-20250514", "anthropic/claude-sonnet-4"),        # not 4-5
    ("claude-sonnet-4-0", "anthropic/claude-sonnet-4"),
    ("claude-opus-4-5-20251101", "anthropic/claude-opus-4-5"),
    ("claude-3-5-haiku-latest", "anthropic/claude-3-5-haiku"),
    ("gpt-4o-2024-08-06", "openai/gpt-4o"),
    ("gpt-4o-2024-05-13", "openai/gpt-4o-2024-05-13"),                # its own older price
    ("gpt-4o-mini", "openai/gpt-4o-mini"),                            # not gpt-4o
    ("gpt-4.1-mini-2025-04-14", "openai/gpt-4.1-mini"),               # not gpt-4.1
    ("gpt-5-mini-2025-08-07", "openai/gpt-5-mini"),
    ("openai/gpt-5", "openai/gpt-5"),                                 # provider/model form
    ("o3-2025-04-16", "openai/o3"),
])
def test_names_resolve_to_the_right_entry(name: str, key: str) -> None:
    assert CATALOG.price_at(name, AT).key == key


def test_a_price_change_applies_from_its_instant_and_old_calls_keep_their_price() -> None:
    cut = parse_instant_ms("2025-06-10T00:00:00Z")          # o3's price cut
    tokens = Tokens(input=1_000, output=1_000)
    before = CATALOG.price_at("o3", cut - 1)
    after = CATALOG.price_at("o3", cut)
    # before: $10 x 1,000 + $40 x 1,000 = 50,000; after: $2 x 1,000 + $8 x 1,000 = 10,000
    assert cost(tokens, before) == pricing.Cost(50_000_000, "openai/o3@2025-04-16")
    assert cost(tokens, after) == pricing.Cost(10_000_000, "openai/o3@2025-06-10")


def test_override_file_adds_a_version_at_an_instant(tmp_path: Path) -> None:
    path = write_overrides(tmp_path / "prices.json", {
        "provider": "anthropic", "model": "claude-haiku-4-5", "effective_from": "2026-01-01T12:00:00Z",
        "usd_per_mtok": {"input": "1.5", "output": "7"}})
    catalog = load_catalog(path)
    instant = parse_instant_ms("2026-01-01T12:00:00Z")
    tokens = Tokens(input=1_000, output=1_000)
    old, new = catalog.price_at("claude-haiku-4-5-20251001", instant - 1), catalog.price_at("claude-haiku-4-5", instant)
    # old: $1 x 1,000 + $5 x 1,000 = 6,000; new: $1.50 x 1,000 + $7 x 1,000 = 8,500
    assert cost(tokens, old) == pricing.Cost(6_000_000, "anthropic/claude-haiku-4-5@2025-10-15")
    assert cost(tokens, new) == pricing.Cost(8_500_000, "anthropic/claude-haiku-4-5@2026-01-01T12:00:00Z")
    assert [p.version for p in catalog.history("claude-haiku-4-5")] == [
        "anthropic/claude-haiku-4-5@2025-10-15", "anthropic/claude-haiku-4-5@2026-01-01T12:00:00Z"]
    # what the override does not state is inherited from the version it supersedes
    assert catalog.price_at("claude-haiku-4-5-20251001", instant) == new
    assert (new.max_output_tokens, new.context_window) == (64000, 200000)
    assert new.fee_usd_per_1k("web_search") == Decimal("10")
    assert new.tier("batch") is not None
    # ... including the explicit cache rates: $1.25 5m write stays unless restated
    assert str(new.rates.cache_write_5m) == "1.25"


def test_same_instant_override_corrects_and_gets_a_distinct_version(tmp_path: Path) -> None:
    path = write_overrides(tmp_path / "prices.json", {
        "provider": "openai", "model": "gpt-5-nano", "effective_from": "2025-08-07",
        "aliases": [], "usd_per_mtok": {"input": "0.06", "output": "0.4"},
        "max_output_tokens": 128000, "context_window": 400000})
    catalog = load_catalog(path)
    p = catalog.price_at("gpt-5-nano", AT)
    assert str(p.rates.input) == "0.06"
    assert p.version.startswith("openai/gpt-5-nano@2025-08-07~")
    assert catalog.by_version("openai/gpt-5-nano@2025-08-07") is not None   # the old one stays reachable


def test_unknown_model_is_rejected_with_a_clear_message() -> None:
    with pytest.raises(UnknownModel) as info:
        CATALOG.price_at("gpt-9-ultra", AT)
    assert info.value.model == "gpt-9-ultra"
    assert "gpt-9-ultra" in str(info.value) and "overrides" in str(info.value)
    with pytest.raises(UnknownModel):
        CATALOG.resolve("gpt-9-ultra", AT)                     # reject is the default
    with pytest.raises(UnknownModel):
        CATALOG.price_at("gpt-5", parse_instant_ms("2025-08-06"))  # before its first version
    with pytest.raises(UnknownModel):
        CATALOG.price_at("gpt-5", AT, provider="anthropic")


def test_unknown_model_fallback_uses_a_named_entry_and_flags_it() -> None:
    price, estimated = CATALOG.resolve("claude-mystery-9", AT, provider="anthropic",
                                       policy="fallback", fallback_entry="anthropic/claude-opus-4-1")
    assert estimated is True
    assert price.version == "anthropic/claude-opus-4-1@2025-08-05"
    assert cost(Tokens(input=1_000), price).micro_usd == 15_000        # never zero: $15 x 1,000
    price, estimated = CATALOG.resolve("gpt-5", AT, policy="fallback", fallback_entry="claude-opus-4-1")
    assert (price.key, estimated) == ("openai/gpt-5", False)           # known models are not estimated
    with pytest.raises(ValueError):
        CATALOG.resolve("claude-mystery-9", AT, policy="fallback")      # the fallback must be named
    with pytest.raises(UnknownModel, match="fallback entry"):
        CATALOG.resolve("claude-mystery-9", AT, policy="fallback", fallback_entry="no-such-model")
    with pytest.raises(ValueError):
        CATALOG.resolve("gpt-5", AT, policy="zero")  # type: ignore[arg-type]


def test_ambiguous_names_need_a_provider(tmp_path: Path) -> None:
    path = write_overrides(tmp_path / "prices.json", {
        "provider": "azure", "model": "gpt-4o", "effective_from": "2025-01-01",
        "usd_per_mtok": {"input": "2.75", "output": "11"}, "max_output_tokens": 16384})
    catalog = load_catalog(path)
    with pytest.raises(UnknownModel, match="ambiguous"):
        catalog.price_at("gpt-4o", AT)
    assert catalog.price_at("gpt-4o", AT, provider="azure").key == "azure/gpt-4o"
    assert catalog.price_at("azure/gpt-4o", AT).key == "azure/gpt-4o"


@pytest.mark.parametrize("bad, match", [
    ({"usd_per_mtok": {"input": 3.0, "output": "15"}}, "decimal string"),      # floats refused
    ({"usd_per_mtok": {"input": "-1", "output": "15"}}, ">= 0"),
    ({"usd_per_mtok": {"input": "3"}}, "'output' is required"),
    ({"usd_per_mtok": {"input": "3", "output": "15", "cached": "1"}}, "unknown rate"),
    ({"usd_per_mtok": {"input": "3", "output": "15"}, "input_cost": "3"}, "unknown field"),
    ({"usd_per_mtok": {"input": "3", "output": "15"}, "effective_from": "yesterday"}, "effective_from"),
])
def test_bad_entries_are_refused_with_the_field_named(tmp_path: Path, bad: dict[str, object], match: str) -> None:
    entry = {"provider": "x", "model": "m", "effective_from": "2025-01-01", **bad}
    with pytest.raises(CatalogError, match=match):
        load_catalog(write_overrides(tmp_path / "prices.json", entry))


def test_missing_overrides_file_is_an_error_not_an_empty_catalog(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_catalog(tmp_path / "nope.json")


def test_catalog_built_in_code() -> None:
    p = pricing.Price.from_entry({"provider": "p", "model": "m", "effective_from": "2025-01-01",
                                  "usd_per_mtok": {"input": "1", "output": "2"}})
    catalog = Catalog([p])
    assert catalog.price_at("m", AT) is p
    assert len(catalog) == 1 and catalog.keys() == ["p/m"]


def test_lookups_answer_the_same_when_repeated_in_any_order_across_price_changes(tmp_path: Path) -> None:
    """The proxy asks the same name millions of times: repeated answers come from a memo, which
    must never hand out a version outside its effective dates, whatever order instants come in."""
    path = write_overrides(tmp_path / "prices.json", {
        "provider": "anthropic", "model": "claude-haiku-4-5", "effective_from": "2026-01-01T12:00:00Z",
        "usd_per_mtok": {"input": "1.5", "output": "7"}})
    cut = parse_instant_ms("2026-01-01T12:00:00Z")
    o3_cut = parse_instant_ms("2025-06-10T00:00:00Z")
    names = ["claude-haiku-4-5", "claude-haiku-4-5-20251001", "o3", "anthropic/claude-haiku-4-5", "gpt-4o-mini"]
    instants = [o3_cut - 1, cut, o3_cut, cut - 1, AT, cut + 1, o3_cut + 1, cut - 1, cut]
    def answer(catalog: Catalog, name: str, ts: int) -> str:
        try:
            return catalog.price_at(name, ts).version
        except UnknownModel:                               # haiku 4.5 was not out before Oct 2025
            return "unknown"

    memoized = load_catalog(path)
    for ts in instants + instants[::-1]:
        for name in names:
            fresh = load_catalog(path)                     # a new catalog has nothing memoized
            assert answer(memoized, name, ts) == answer(fresh, name, ts), (name, ts)
    assert answer(memoized, "claude-haiku-4-5", o3_cut) == "unknown"
    assert memoized.price_at("claude-haiku-4-5", cut - 1).version == "anthropic/claude-haiku-4-5@2025-10-15"
    assert memoized.price_at("claude-haiku-4-5", cut).version == "anthropic/claude-haiku-4-5@2026-01-01T12:00:00Z"


def test_unknown_names_from_clients_cannot_grow_the_lookup_memo_without_bound() -> None:
    catalog = load_catalog()
    for i in range(10_000):
        with pytest.raises(UnknownModel):
            catalog.price_at(f"no-such-model-{i}", AT)
    assert len(catalog._memo) <= 4096
    with pytest.raises(UnknownModel):                      # and a remembered miss still raises
        catalog.price_at("no-such-model-9999", AT)
    assert catalog.price_at("gpt-4o-mini", AT).key == "openai/gpt-4o-mini"
