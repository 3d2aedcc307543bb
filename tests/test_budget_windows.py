"""Budget windows roll over at the right instants: the policy on a frozen clock, with settled spend
folded exactly as the ledger folds it, in UTC and in an organization's time zone."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from llmgw.core import events as E
from llmgw.ledger.fold import fold
from llmgw.ledger.spend import SpendView
from llmgw.core.budgets import Budget, BudgetBook
from llmgw.proxy.errors import BudgetExceeded
from llmgw.core.principal import Principal
from llmgw.proxy.policy import Policy

ALICE = Principal("k1", "acme", "backend", "alice")


def ms(*args, tz=timezone.utc) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def spend(view: SpendView, at_ms: int, micro_usd: int, tz: str) -> None:
    ev = E.UsageEvent(event_id=E.new_event_id(at_ms), ts_start_ms=at_ms, ts_end_ms=at_ms, org="acme",
                      workspace="backend", user="alice", key_id="k1", provider="anthropic", api="messages",
                      model_requested="m", model_served="m", cost_micro_usd=micro_usd)
    for k, t in fold(view.folded, ev, lambda org: tz).items():
        view.apply_snapshot(k, t)


@pytest.mark.parametrize("window, spent_at, last_refused, first_allowed", [
    ("hour", ms(2026, 11, 30, 22, 10), ms(2026, 11, 30, 22, 59, 59), ms(2026, 11, 30, 23)),
    ("day", ms(2026, 11, 30, 9), ms(2026, 11, 30, 23, 59, 59), ms(2026, 12, 1)),
    ("week", ms(2026, 11, 30, 9), ms(2026, 12, 6, 23, 59, 59), ms(2026, 12, 7)),         # ISO weeks start Monday
    ("month", ms(2026, 11, 3), ms(2026, 11, 30, 23, 59, 59), ms(2026, 12, 1)),           # month end
    ("month", ms(2026, 12, 15), ms(2026, 12, 31, 23, 59, 59), ms(2027, 1, 1)),           # year end
    ("month", ms(2028, 2, 10), ms(2028, 2, 29, 23, 59, 59), ms(2028, 3, 1)),             # leap February
])
def test_a_spent_budget_refuses_until_its_window_ends_then_allows(window, spent_at, last_refused, first_allowed):
    view = SpendView()
    policy = Policy(view, BudgetBook([Budget("user", "alice", window, 1_000_000)]))
    spend(view, spent_at, 999_000, "UTC")
    with pytest.raises(BudgetExceeded) as exc:
        policy.reserve(ALICE, (), 5_000, last_refused)
    assert exc.value.retry_after_s == 1                  # one second before the reset
    r = policy.reserve(ALICE, (), 5_000, first_allowed)  # a new window starts at zero
    assert r.open
    policy.release(r)


def test_an_org_time_zone_moves_the_day_boundary():
    ny = ZoneInfo("America/New_York")
    view = SpendView(tz_of=lambda org: "America/New_York")
    policy = Policy(view, BudgetBook([Budget("user", "alice", "day", 1_000_000)]), tz_of=lambda org: "America/New_York")
    spend(view, ms(2026, 11, 30, 20, tz=ny), 999_000, "America/New_York")     # 01:00 UTC on Dec 1
    with pytest.raises(BudgetExceeded):
        policy.reserve(ALICE, (), 5_000, ms(2026, 11, 30, 23, 59, tz=ny))         # still Nov 30 in New York
    assert policy.reserve(ALICE, (), 5_000, ms(2026, 12, 1, 0, 0, tz=ny)).open  # 05:00 UTC: a new NY day
