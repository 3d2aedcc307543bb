"""Re-rating: a correction loaded later yields ADJUSTMENT events; history is never rewritten."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import orjson

from llmgw.core.events import ADJUSTMENT, REJECTED_BUDGET, USAGE, Tokens, UsageEvent, new_event_id
from llmgw.pricing import CallOptions, Catalog, cost, load_catalog, rerate
from llmgw.pricing.instant import parse_instant_ms

SHIPPED = load_catalog()
TOKENS = Tokens(input=10_000, output=2_000)


def call(ts: str, catalog: Catalog = SHIPPED, tokens: Tokens = TOKENS, model: str = "claude-haiku-4-5",
         **opts: object) -> UsageEvent:
    """A usage event priced the way the proxy prices it: at ts_start_ms, with the catalog of the day."""
    ts_ms = parse_instant_ms(ts)
    price = catalog.price_at(model, ts_ms, "anthropic")
    charged = cost(tokens, price, **opts)  # type: ignore[arg-type]
    return UsageEvent(
        event_id=new_event_id(ts_ms), ts_start_ms=ts_ms, ts_end_ms=ts_ms + 900, org="acme", workspace="ws",
        user="ana", key_id="k1", provider="anthropic", api="messages", model_requested=model,
        model_served=f"{model}-20251001", tokens=tokens, cost_nano_usd=charged.nano_usd,
        price_version=charged.price_version, latency_ms=900, ttft_ms=120, project="p", tags=("team:x",),
        request_id="r1")


def corrected(tmp_path: Path, *entries: Mapping[str, object]) -> Catalog:
    path = tmp_path / "prices.json"
    path.write_bytes(orjson.dumps({"format": "llmgw.prices/1", "entries": list(entries)}))
    return load_catalog(path)


HAIKU_FIX: dict[str, object] = {"provider": "anthropic", "model": "claude-haiku-4-5", "effective_from": "2026-01-01",
             "usd_per_mtok": {"input": "0.8", "output": "4"}}


def test_a_correction_adjusts_calls_in_its_range_only(tmp_path: Path) -> None:
    early = call("2025-12-20")          # before the correction's instant: keeps its price
    late = call("2026-01-10")           # charged at $1/$5 because the correction was not loaded yet
    # charged: $1 x 10,000 + $5 x 2,000 = 20,000
    assert (late.cost_micro_usd, late.price_version) == (20_000, "anthropic/claude-haiku-4-5@2025-10-15")
    catalog = corrected(tmp_path, HAIKU_FIX)

    [adj] = rerate([early, late], catalog, now_ms=parse_instant_ms("2026-02-01"))
    # corrected: $0.80 x 10,000 + $4 x 2,000 = 16,000 -> adjustment 16,000 - 20,000 = -4,000
    assert adj.cost_micro_usd == -4_000
    assert (adj.kind, adj.adjusts_event_id, adj.price_version) == (
        ADJUSTMENT, late.event_id, "anthropic/claude-haiku-4-5@2026-01-01")
    assert adj.tokens == Tokens()                           # token totals are not doubled
    assert adj.event_id != late.event_id
    for field in ("org", "workspace", "user", "key_id", "project", "tags", "provider", "api",
                  "model_requested", "model_served", "request_id", "ts_start_ms", "ts_end_ms"):
        assert getattr(adj, field) == getattr(late, field), field
    assert late.kind == USAGE and late.cost_micro_usd == 20_000   # the original is untouched


def test_rerating_is_idempotent(tmp_path: Path) -> None:
    late = call("2026-01-10")
    catalog = corrected(tmp_path, HAIKU_FIX)
    first = rerate([late], catalog)
    assert len(first) == 1
    # run again over the ledger that now holds the adjustment: nothing more
    assert rerate([late, *first], catalog) == []
    # or told which ids were already adjusted
    assert rerate([late], catalog, already_adjusted={late.event_id}) == []
    # the same event delivered twice is adjusted once
    assert len(rerate([late, late], catalog)) == 1


def test_a_second_correction_adjusts_only_the_difference(tmp_path: Path) -> None:
    late = call("2026-01-10")
    first = rerate([late], corrected(tmp_path, HAIKU_FIX))       # -4,000 (to 16,000)
    second_fix = {**HAIKU_FIX, "effective_from": "2026-01-05", "usd_per_mtok": {"input": "0.9", "output": "4"}}
    catalog = corrected(tmp_path, HAIKU_FIX, second_fix)
    [adj] = rerate([late, *first], catalog)
    # now $0.90 x 10,000 + $4 x 2,000 = 17,000; already at 20,000 - 4,000 = 16,000 -> +1,000
    assert adj.cost_micro_usd == 1_000
    assert adj.price_version == "anthropic/claude-haiku-4-5@2026-01-05"
    assert sum(e.cost_micro_usd for e in (late, *first, adj)) == 17_000


def test_a_same_instant_correction_is_detected(tmp_path: Path) -> None:
    ev = call("2025-11-01")
    catalog = corrected(tmp_path, {**HAIKU_FIX, "effective_from": "2025-10-15"})   # "wrong since day one"
    [adj] = rerate([ev], catalog)
    assert adj.cost_micro_usd == -4_000
    assert adj.price_version.startswith("anthropic/claude-haiku-4-5@2025-10-15~")


def test_options_are_applied_and_unreproducible_charges_are_left_alone(tmp_path: Path) -> None:
    catalog = corrected(tmp_path, HAIKU_FIX)
    batch = call("2026-01-10", batch=True)              # charged 0.5 x 20,000 = 10,000
    assert batch.cost_micro_usd == 10_000
    # without being told it was a batch call, the charge cannot be reproduced: no guess
    assert rerate([batch], catalog) == []
    [adj] = rerate([batch], catalog, call_options=lambda e: CallOptions(batch=True))
    assert adj.cost_micro_usd == 8_000 - 10_000         # 0.5 x 16,000 - 10,000


def test_adjustments_refusals_and_unpriced_events_are_skipped(tmp_path: Path) -> None:
    catalog = corrected(tmp_path, HAIKU_FIX)
    late = call("2026-01-10")
    refused = late.with_(event_id=new_event_id(), outcome=REJECTED_BUDGET, tokens=Tokens(), cost_micro_usd=0,
                         price_version="")
    unknown = late.with_(event_id=new_event_id(), model_served="claude-mystery", model_requested="claude-mystery")
    adjustment = late.with_(event_id=new_event_id(), kind=ADJUSTMENT, adjusts_event_id="someone-else")
    assert rerate([refused, unknown, adjustment], catalog) == []


def test_the_tier_and_searches_recorded_on_the_event_are_used(tmp_path: Path) -> None:
    """A batch call and a call with web searches re-rate without ``call_options``: the event says."""
    batch = call("2026-01-10", model="claude-haiku-4-5", service_tier="batch").with_(service_tier="batch")
    searched = call("2026-01-10", web_search_calls=2).with_(web_search_calls=2)
    # charged at 0.5 x ($1 x 10,000 + $5 x 2,000) = 10,000 and 20,000 + 2 x $10/1k = 40,000 micro-USD
    assert (batch.cost_micro_usd, searched.cost_micro_usd) == (10_000, 40_000)
    adj = {a.adjusts_event_id: a.cost_nano_usd for a in rerate([batch, searched], corrected(tmp_path, HAIKU_FIX))}
    assert adj == {batch.event_id: -2_000_000, searched.event_id: -4_000_000}


def test_a_schema_1_event_is_reproduced_at_its_micro_and_adjusted_to_exact_nanos(tmp_path: Path) -> None:
    """v1 charged 1.5 micro-USD as 2 (half to even); the correction is taken from those 2,000
    nanos to today's exact figure."""
    fix = {"provider": "openai", "model": "gpt-4.1-nano", "effective_from": "2026-01-01",
           "usd_per_mtok": {"input": "0.2", "output": "0.4"}}
    ts = parse_instant_ms("2026-01-10")
    old = UsageEvent(event_id="v1-event", ts_start_ms=ts, ts_end_ms=ts, org="acme", workspace="ws", user="ana",
                     key_id="k1", provider="openai", api="chat", model_requested="gpt-4.1-nano",
                     model_served="gpt-4.1-nano", tokens=Tokens(input=15), cost_micro_usd=2,
                     price_version=SHIPPED.price_at("gpt-4.1-nano", ts).version, schema_version=1)
    assert old.cost_nano_usd == 2_000
    [adj] = rerate([old], corrected(tmp_path, fix))
    assert adj.cost_nano_usd == 3_000 - 2_000 and adj.schema_version == 2    # $0.20 x 15 = 3 micro-USD
    assert rerate([old, adj], corrected(tmp_path, fix)) == []                # and once only
