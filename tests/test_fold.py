"""Windows and the pure fold: rollover instants, time zones, idempotent rebuild."""
from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from hypothesis import given, settings, strategies as st

from llmgw.core import events as E
from llmgw.ledger.fold import ZERO, Totals, contribution, entities, fold, fold_all, keys_in, keys_of
from llmgw.core.spend_keys import parse_spend_key, spend_key
from llmgw.core.windows import WINDOWS, window_bounds, window_start


def ms(*args, tz=timezone.utc) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


def test_windows_roll_over_at_the_right_instants_utc():
    t = ms(2026, 11, 30, 23, 59, 59)               # last second of November, a Monday
    assert window_bounds("hour", t) == (ms(2026, 11, 30, 23), ms(2026, 12, 1, 0))
    assert window_bounds("day", t) == (ms(2026, 11, 30), ms(2026, 12, 1))
    assert window_bounds("week", t) == (ms(2026, 11, 30), ms(2026, 12, 7))      # ISO week: Monday
    assert window_bounds("month", t) == (ms(2026, 11, 1), ms(2026, 12, 1))
    nxt = t + 1000
    assert window_bounds("month", nxt)[0] == ms(2026, 12, 1)
    assert window_bounds("month", ms(2026, 12, 31, 12)) == (ms(2026, 12, 1), ms(2027, 1, 1))
    assert window_bounds("month", ms(2028, 2, 29, 12)) == (ms(2028, 2, 1), ms(2028, 3, 1))   # leap year


def test_windows_in_an_org_time_zone():
    ny = ZoneInfo("America/New_York")
    t = ms(2026, 12, 1, 3, 0)                      # 22:00 on Nov 30 in New York
    assert window_bounds("day", t, "America/New_York") == (ms(2026, 11, 30, tz=ny), ms(2026, 12, 1, tz=ny))
    assert window_bounds("month", t, "America/New_York") == (ms(2026, 11, 1, tz=ny), ms(2026, 12, 1, tz=ny))
    # DST ends on 2026-11-01 in New York: that day lasts 25 hours
    start, end = window_bounds("day", ms(2026, 11, 1, 12, tz=ny), "America/New_York")
    assert end - start == 25 * 3_600_000


def ev(cost: int, ts: int, user: str = "alice", tags=(), outcome=E.OK, **kw) -> E.UsageEvent:
    return E.UsageEvent(event_id=E.new_event_id(ts), ts_start_ms=ts, ts_end_ms=ts, org="acme", workspace="be",
                        user=user, key_id="k1", provider="openai", api="chat", model_requested="m",
                        model_served="m", tokens=E.Tokens(input=10, output=5), cost_micro_usd=cost,
                        outcome=outcome, tags=tags, **kw)


def test_fold_counts_every_dimension_and_window():
    t = ms(2026, 11, 25, 10)
    changed = fold({}, ev(700, t, tags=("project:pay", "agent:x")))
    dims = {parse_spend_key(k)[0] for k in changed}
    assert dims == {"org", "workspace", "user", "key", "tag", "workspace.tag", "user.tag"}
    assert len(changed) == 7 * 4
    assert all(v == Totals(spend_nano_usd=700_000, requests=1, input_tokens=10, output_tokens=5) for v in changed.values())
    assert f"user|acme/alice|day|{ms(2026, 11, 25)}" in changed
    assert f"user.tag|acme/alice/project:pay|month|{ms(2026, 11, 1)}" in changed
    assert not any("agent:x" in k for k in changed)        # only budget tags become dimensions


@settings(max_examples=500, deadline=None)
@given(ts=st.integers(0, 4_000_000_000_000), zone=st.sampled_from(["UTC", "America/New_York", "Asia/Kolkata",
                                                                   "Australia/Lord_Howe", "Asia/Kathmandu"]),
       tags=st.lists(st.sampled_from(["project:pay", "team:x", "agent:y", "feature:a:b"]), unique=True))
def test_spend_keys_are_the_windows_of_the_call_start_spelled_by_spend_key(ts, zone, tags):
    """``keys_in`` spells the window part of a key once per zone and minute: each key is still
    exactly ``spend_key`` of the window holding the call's start, however the minutes go by."""
    event = ev(1, ts, tags=tuple(sorted(tags)))
    for at in (event, ev(1, ts + 59_999, tags=event.tags), ev(1, ts - 1, tags=event.tags)):
        assert keys_in(at, zone) == [spend_key(dim, ent, w, window_start(w, at.ts_start_ms, zone))
                                     for dim, ent in entities(at) for w in WINDOWS]


amounts = st.integers(0, 10**15)


@given(st.lists(st.tuples(amounts, amounts, amounts, amounts), min_size=1, max_size=8), amounts,
       st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from([(), ("project:pay",)]))
def test_fold_adds_the_contribution_to_every_key_as_plus_does(before, cost, inp, out, tags):
    """``fold`` adds field by field without calling ``Totals.plus``: the same totals, keys already
    held and keys new alike."""
    event = ev(0, ms(2026, 11, 25, 10), tags=tags, cost_nano_usd=cost).with_(tokens=E.Tokens(input=inp, output=out))
    keys = keys_of(event)
    totals = {k: Totals(spend_nano_usd=a, requests=b, input_tokens=c, output_tokens=d)
              for k, (a, b, c, d) in zip(keys[::2], before)}
    add = contribution(event)
    assert fold(totals, event) == {k: totals.get(k, ZERO).plus(add) for k in keys}


def test_rejections_cost_nothing_and_adjustments_add_money_only():
    t = ms(2026, 11, 25, 10)
    assert fold({}, ev(0, t, outcome=E.REJECTED_BUDGET)) == {}
    adj = ev(-150, t, kind=E.ADJUSTMENT, adjusts_event_id="x")
    state = fold_all([ev(1000, t), adj])
    assert state[f"user|acme/alice|day|{ms(2026, 11, 25)}"] == Totals(spend_nano_usd=850_000, requests=1, input_tokens=10, output_tokens=5)


def test_late_event_lands_in_the_window_it_started_in():
    late = ev(5, ms(2026, 11, 30, 23, 59, 59))
    keys = keys_of(late)
    assert f"org|acme|month|{ms(2026, 11, 1)}" in keys and not any(str(ms(2026, 12, 1)) in k for k in keys)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.integers(0, 10**9), st.sampled_from(["a", "b", "c"])),
                max_size=60), st.randoms())
def test_fold_is_order_insensitive_and_loses_nothing(items, rnd):
    base = ms(2026, 11, 1)
    events = [ev(c, base + dt, user=u) for c, dt, u in items]
    state = fold_all(events)
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert fold_all(shuffled) == state
    org_total = sum(v.spend_micro_usd for k, v in state.items() if k.startswith("org|") and "|month|" in k)
    assert org_total == sum(c for c, _, _ in items)
