"""Sub-micro money: a call's cost is kept to the nano-USD and summed exactly.

Before, each event was rounded to the micro-USD, so a 12-token embedding
($0.02/MTok: 0.24 micro-USD) cost $0 and a million of them summed to $0.
"""
from __future__ import annotations

from decimal import Decimal

from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core import events as E
from llmgw.ledger.fold import ZERO, Totals, contribution, fold_all
from llmgw.ledger.spend import SpendView
from llmgw.pricing import Price, cost, load_catalog
from llmgw.pricing.cost import MONEY_CONTEXT, WEB_SEARCH, fee_exact, token_cost_exact

CATALOG = load_catalog()
AT = 1_790_000_000_000
PRICES = sorted(CATALOG, key=lambda p: p.version)
SMALL = CATALOG.price_at("text-embedding-3-small", AT)


def event(nano: int, i: int = 0, **kw: object) -> E.UsageEvent:
    base: dict[str, object] = dict(
        event_id=f"e{i}", ts_start_ms=AT, ts_end_ms=AT, org="acme", workspace="ws", user="u", key_id="k",
        provider="openai", api="embeddings", model_requested="text-embedding-3-small",
        model_served="text-embedding-3-small", tokens=E.Tokens(input=12), cost_nano_usd=nano)
    base.update(kw)
    return E.UsageEvent(**base)  # type: ignore[arg-type]


def test_a_million_12_token_embeddings_sum_to_their_true_cost() -> None:
    one = cost(E.Tokens(input=12), SMALL)
    assert one.nano_usd == 240                    # 0.02 USD/MTok x 12 tokens = 0.24 micro-USD
    ev = event(one.nano_usd)
    add = contribution(ev)
    total = ZERO
    for _ in range(1_000_000):
        total = total.plus(add)
    assert total.requests == 1_000_000
    assert total.spend_nano_usd == 240_000_000    # $0.24, to the nano
    assert total.spend_micro_usd == 240_000       # the budget's micro-USD figure, $0.24 to the cent
    # the same through the reference fold and a proxy's spend view (fewer events: same arithmetic per key)
    events = [event(one.nano_usd, i) for i in range(10_000)]
    for key, t in fold_all(events).items():
        assert t.spend_nano_usd == 2_400_000 and t.spend_micro_usd == 2_400, key
    view = SpendView()
    for e in events:
        view.add_local(e)
    (key, *_) = fold_all(events)
    assert view.spent_nano(key) == 2_400_000 and view.spent(key) == 2_400


@st.composite
def calls(draw: st.DrawFn) -> tuple[Price, E.Tokens, str | None, int]:
    price = draw(st.sampled_from(PRICES))
    output = 0 if price.mode == "embedding" else draw(st.integers(0, 50_000))
    tokens = E.Tokens(input=draw(st.integers(0, 300)), cache_write_5m=draw(st.integers(0, 50)),
                      cache_write_1h=draw(st.integers(0, 50)), cache_read=draw(st.integers(0, 2_000)),
                      output=output, reasoning=draw(st.integers(0, output)))
    tier = draw(st.sampled_from([None, "flex", "priority", "batch"]))
    searches = draw(st.integers(0, 3)) if price.fee_usd_per_1k(WEB_SEARCH) is not None else 0
    return price, tokens, tier, searches


def exact_micro(price: Price, tokens: E.Tokens, tier: str | None, searches: int) -> Decimal:
    from decimal import localcontext
    with localcontext(MONEY_CONTEXT):
        rates = price.rates_for(tokens.prompt, tier)
        return token_cost_exact(tokens, rates) + fee_exact(price, WEB_SEARCH, searches)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(calls(), min_size=1, max_size=60))
def test_summed_event_costs_equal_the_exact_total_within_half_a_nano_per_event(
        items: list[tuple[Price, E.Tokens, str | None, int]]) -> None:
    """Each event is rounded once, to the nano; the fold sums those integers exactly. So the
    folded total is the exact Decimal total to within half a nano per event, whatever the mix."""
    events = []
    exact = Decimal(0)
    for i, (price, tokens, tier, searches) in enumerate(items):
        c = cost(tokens, price, service_tier=tier, web_search_calls=searches)
        assert isinstance(c.nano_usd, int) and c.nano_usd >= 0
        exact += exact_micro(price, tokens, tier, searches) * 1000
        events.append(event(c.nano_usd, i, tokens=tokens))
    folded = fold_all(events)
    for totals in folded.values():
        assert abs(Decimal(totals.spend_nano_usd) - exact) <= Decimal(len(items)) / 2
        assert totals.spend_micro_usd * 1000 >= totals.spend_nano_usd > (totals.spend_micro_usd - 1) * 1000


@given(st.lists(st.integers(-10**12, 10**12), max_size=40))
def test_a_v1_reader_summing_micro_usd_never_counts_less_than_the_nanos(nanos: list[int]) -> None:
    """A not-yet-upgraded reader folds ``cost_micro_usd`` only; it is the nanos rounded up, so
    a mixed fleet may over-count by under a micro-USD per event, never under-count."""
    events = [event(n, i) for i, n in enumerate(nanos)]
    v1_sum = sum(e.cost_micro_usd for e in events) * 1000
    assert sum(nanos) <= v1_sum < sum(nanos) + 1000 * max(len(nanos), 1)


@given(st.lists(st.integers(0, 10**12), max_size=8))
def test_snapshot_lists_round_trip_and_old_four_value_lists_read_as_micro(nanos: list[int]) -> None:
    for n in nanos:
        t = Totals(spend_nano_usd=n, requests=3, input_tokens=4, output_tokens=5)
        assert Totals.from_list(t.to_list()) == t
        assert t.to_list()[0] == t.spend_micro_usd
    assert Totals.from_list([7, 1, 2, 3]) == Totals(spend_nano_usd=7_000, requests=1, input_tokens=2,
                                                    output_tokens=3)


def test_a_budget_counts_sub_micro_calls_and_compares_exactly() -> None:
    """A 10 micro-USD budget: 41 embeddings (9.84 micro-USD) leave room for a call held at 0 but
    not at 1 micro-USD; the 42nd (10.08) exceeds it. Rounded per event to the micro, they were
    all free and the budget never closed."""
    import pytest

    from llmgw.core.budgets import Budget, BudgetBook
    from llmgw.proxy.errors import BudgetExceeded
    from llmgw.core.principal import Principal
    from llmgw.proxy.policy import Policy

    alice = Principal("k", "acme", "ws", "u")
    view = SpendView()
    policy = Policy(view, BudgetBook([Budget("user", "u", "day", 10)]))
    for i in range(41):
        view.add_local(event(cost(E.Tokens(input=12), SMALL).nano_usd, i))
    policy.release(policy.reserve(alice, (), 0, AT))
    with pytest.raises(BudgetExceeded):
        policy.reserve(alice, (), 1, AT)                 # 9.84 + 1 > 10
    view.add_local(event(240, 41))
    with pytest.raises(BudgetExceeded):
        policy.reserve(alice, (), 0, AT)                 # 10.08 > 10
