"""The per-caller budget plan (``Policy._plan``) against the straightforward computation.

The hot path resolves a caller's budgets once and checks each call with a few dict lookups;
these tests rebuild, for every call, what the budgets are, what they have used and what the
call must hold, straight from a fresh ``BudgetBook`` and the spend view, and require the same
decision (admitted, or refused naming the same budget) and the same holds on the same keys,
over random configs, callers, tags, clocks and config changes, with one proxy or several (the
margin for what the others cannot see) and with this proxy's settled calls not in the snapshot yet.
"""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core.budgets import Applied, Budget, BudgetBook
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.principal import Principal
from llmgw.core.spend_keys import spend_key
from llmgw.core.windows import WINDOWS, window_bounds
from llmgw.ledger.fold import Totals
from llmgw.ledger.spend import SpendView
from llmgw.proxy.errors import BudgetExceeded
from llmgw.proxy.policy import Estimate, Hold, Policy, Reservation, _Plan

T0 = int(datetime(2026, 11, 30, 22, 30, tzinfo=timezone.utc).timestamp() * 1000)
HOUR_MS = 3_600_000
ORGS, WORKSPACES, USERS, KEYS = ("acme", "beta"), ("ws1", "ws2"), ("u1", "u2", "u3"), ("k1", "k2", "k3", "k4")
TAGS = ("project:a", "project:b", "llmgw:stale")
CALLERS = [Principal("k1", "acme", "ws1", "u1", tags=("project:a",)), Principal("k2", "acme", "ws1", "u2"),
           Principal("k3", "acme", "ws2", "u3"), Principal("k4", "beta", "ws1", "u1", tags=("project:b",))]
ZONES = {"acme": "UTC", "beta": "Asia/Kolkata"}


@st.composite
def budgets(draw: st.DrawFn) -> Budget:
    kind = draw(st.sampled_from(("budget", "budget", "default", "exception")))
    scope = draw(st.sampled_from(("org", "workspace", "user", "key", "tag")))
    if kind != "budget" and scope == "tag":
        scope = "user"
    names = {"org": ORGS, "workspace": WORKSPACES, "user": USERS, "key": KEYS, "tag": TAGS}[scope]
    name = "*" if kind == "default" else draw(st.sampled_from(names))
    tag = draw(st.sampled_from(TAGS[:2])) if kind == "exception" else draw(st.sampled_from(("",) + TAGS[:2]))
    if scope in ("key", "tag") or kind == "default":
        tag = ""
    return Budget(scope, name, draw(st.sampled_from(WINDOWS)), draw(st.integers(0, 3_000)),
                  org=draw(st.sampled_from(("", "acme", "beta"))), tag=tag, kind=kind,
                  until_ms=T0 + draw(st.integers(0, 3)) * HOUR_MS if kind == "exception" else 0,
                  hold=draw(st.sampled_from(("predicted", "strict"))), client_tags=draw(st.booleans()))


op = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, len(CALLERS) - 1), st.lists(st.sampled_from(TAGS), max_size=2,
              unique=True).map(tuple), st.integers(0, 400), st.integers(0, 400)),
    st.tuples(st.just("release"), st.integers(0, 20)),
    st.tuples(st.just("clock"), st.integers(1, 90 * 60_000)),
    st.tuples(st.just("config"), budgets()),
    st.tuples(st.just("spend"), st.integers(0, 20), st.integers(1, 500_000)),
    st.tuples(st.just("local"), st.integers(0, 20), st.integers(1, 500_000)),   # settled here, not folded
    st.tuples(st.just("proxies"), st.integers(1, 4)),
)


def reference_holds(book: BudgetBook, p: Principal, tags: tuple[str, ...], now_ms: int) -> list[Hold]:
    """What a call's budgets are, with no cache: ``BudgetBook.effective`` and the windows now."""
    tz = ZONES[p.org]
    trusted = tuple(t for t in tags if t in p.tags or t.startswith("llmgw"))
    out = []
    for a in book.effective(p, tags, now_ms, trusted):
        w = a.budget.window
        start, end = window_bounds(w, now_ms, tz)
        carve = tuple(spend_key(dim, ent, w, start) for dim, ent in a.carve_out)
        out.append(Hold(spend_key(a.spend_dim, a.entity, w, start), a.budget.limit_micro_usd, a, end, carve,
                        a.budget.hold == "strict"))
    return out


def reference_over(view: SpendView, reserved: dict[str, int], exposed: dict[str, int], h: Hold, amount: int,
                   n: int) -> bool:
    """Settled spend (nanos) plus open holds, minus carve-outs, rounded up once, plus the margin for
    the other ``n - 1`` proxies (this proxy's unconfirmed spend, open predicted holds at their worst
    case), against the cap."""
    nanos = view.spent_nano(h.key) + reserved.get(h.key, 0) * 1000
    confirmed = view.totals(h.key).spend_nano_usd
    exposure = exposed.get(h.key, 0)
    for k in h.carve_keys:
        nanos -= view.spent_nano(k) + reserved.get(k, 0) * 1000
        confirmed -= view.totals(k).spend_nano_usd
        exposure -= exposed.get(k, 0)
    used = -(-nanos // 1000)
    margin = (n - 1) * max(used - -(-confirmed // 1000) + exposure, 0)
    return used + margin + amount > h.limit_micro_usd


def run(config: list[Budget], ops: list[tuple]) -> None:
    state = ConfigState()
    for b in config:
        state.apply(b.record())
    view = SpendView()
    policy = Policy.from_config(view, state, lambda org: ZONES[org])
    now_ms, reserved, exposed, open_, n = T0, {}, {}, [], 1
    spend_keys: list[str] = []
    for o in ops:
        if o[0] == "clock":
            now_ms += o[1]
        elif o[0] == "config":
            state.apply(o[1].record())
            policy.reload(state)
        elif o[0] == "spend" and spend_keys:
            k = spend_keys[o[1] % len(spend_keys)]
            view.apply_snapshot(k, view.totals(k).plus(Totals(spend_nano_usd=o[2], requests=1)))
        elif o[0] == "local" and spend_keys:
            view.local.add([spend_keys[o[1] % len(spend_keys)]], o[2])
        elif o[0] == "proxies":
            n = o[1]
            policy.proxies.set(n)
        elif o[0] == "release" and open_:
            r = open_.pop(o[1] % len(open_))
            for k, a in zip(r.keys, r.amounts):
                reserved[k] -= a
                exposed[k] -= max(r.worst_micro_usd - a, 0)
            policy.release(r, 0)
        elif o[0] == "reserve":
            _, who, tags, worst, pred = o
            p, est = CALLERS[who], Estimate(worst, min(pred, worst))
            expected = reference_holds(BudgetBook.from_state(state), p, tags, now_ms)
            spend_keys.extend(h.key for h in expected)
            assert policy.holds_for(p, tags, now_ms) == expected
            over = [h for h in expected
                    if reference_over(view, reserved, exposed, h, est.hold(h.applied.budget.hold), n)]
            try:
                r = policy.reserve(p, tags, est, now_ms)
            except BudgetExceeded as e:
                assert over, "refused although every budget had room"
                assert e.headers["x-llmgw-budget"] == over[0].applied.budget.origin
                continue
            assert not over, f"admitted over {over[0].applied.budget.describe()}"
            held: dict[str, int] = {}
            for h in expected:
                held[h.key] = max(held.get(h.key, 0), est.hold(h.applied.budget.hold))
            assert (r.keys, r.amounts, r.holds) == (tuple(held), tuple(held.values()), tuple(expected))
            if held:
                assert r.extra == tuple(max(worst - a, 0) for a in held.values())
                assert r.amount_micro_usd == max(held.values())
                for k, a in held.items():
                    reserved[k] = reserved.get(k, 0) + a
                    exposed[k] = exposed.get(k, 0) + max(worst - a, 0)
                open_.append(r)
        assert {k: a for k, a in policy._reserved.items() if a} == {k: a for k, a in reserved.items() if a}
        assert {k: a for k, a in policy._exposed.items() if a} == {k: a for k, a in exposed.items() if a}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(budgets(), max_size=12), st.lists(op, max_size=40))
def test_the_cached_plan_decides_and_holds_as_the_straightforward_computation(config, ops):
    run(config, ops)


def test_with_three_proxies_open_predicted_holds_count_at_their_worst_case_in_the_margin():
    # held 100 + 100 of worst cases 400: the margin is 2 x (200 + 600), so the third call is refused
    # (counting only the holds, 2 x 200, it would fit)
    run([Budget("user", "u1", "day", 1_000)],
        [("proxies", 3), ("reserve", 0, (), 400, 100), ("reserve", 0, (), 400, 100), ("reserve", 0, (), 400, 100)])


def test_with_two_proxies_a_settled_call_the_snapshot_does_not_show_yet_is_in_the_margin():
    # nothing open, but 500 settled here and not folded: 500 + 1 x 500 + 100 > 1,000 is refused
    run([Budget("user", "u1", "day", 1_000)],
        [("reserve", 0, (), 100, 100), ("release", 0), ("local", 0, 500_000), ("proxies", 2),
         ("reserve", 0, (), 100, 100)])


def test_an_open_hold_of_nothing_keeps_its_worst_case_in_the_margin_after_the_other_hold_on_its_key_settles():
    # the first call holds 0 (worst case 300); once the second settles nothing is held on the key,
    # but the margin is still 2 x 300: 600 + 401 > 1,000 is refused
    run([Budget("user", "u1", "day", 1_000)],
        [("proxies", 3), ("reserve", 0, (), 300, 0), ("reserve", 0, (), 10, 10), ("release", 1),
         ("reserve", 0, (), 401, 401)])


def _reservation(policy: Policy, p: Principal, now_ms: int, amount: int = 100) -> Reservation:
    return policy.reserve(p, (), amount, now_ms)


def test_a_config_change_invalidates_the_plan_of_a_caller_already_checked():
    state = ConfigState()
    state.apply(Budget("user", "u1", "day", 1_000).record())
    policy = Policy.from_config(SpendView(), state, lambda org: "UTC")
    alice = CALLERS[0]
    policy.release(_reservation(policy, alice, T0), 0)        # her plan: one daily cap of $0.001
    state.apply(Budget("workspace", "ws1", "day", 50).record())
    policy.reload(state)
    with pytest.raises(BudgetExceeded):
        _reservation(policy, alice, T0)                      # the new workspace cap applies at once
    state.apply(ConfigRecord.put("budget", Budget("workspace", "ws1", "day", 50).record_name, None))
    policy.reload(state)
    r = _reservation(policy, alice, T0)                      # and its removal too
    assert [h.applied.budget.scope_kind for h in r.holds] == ["user"]


def test_a_plan_ends_with_its_window_and_with_an_exception():
    state = ConfigState()
    state.apply(Budget("user", "u1", "hour", 1_000).record())
    state.apply(Budget("user", "u1", "hour", 5_000, tag="project:a", kind="exception",
                       until_ms=T0 + 10 * 60_000).record())
    view = SpendView()
    policy = Policy.from_config(view, state, lambda org: "UTC")
    alice = CALLERS[0]
    first = policy.holds_for(alice, ("project:a",), T0)
    assert [h.applied.budget.kind for h in first] == ["exception"]
    assert [h.applied.budget.kind for h in policy.holds_for(alice, ("project:a",), T0 + 10 * 60_000)] == ["budget"]
    later = policy.holds_for(alice, (), T0 + HOUR_MS)          # next hour: a new spend key
    assert later[0].key != policy.holds_for(alice, (), T0)[0].key
    view.apply_snapshot(later[0].key, Totals(spend_nano_usd=1_000_000, requests=1))
    with pytest.raises(BudgetExceeded):
        _reservation(policy, alice, T0 + HOUR_MS, 1)
    policy.release(_reservation(policy, alice, T0, 900), 0)   # the old hour had room


_FIT_KEYS = ("a", "b", "c")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_FIT_KEYS), st.integers(0, 50) | st.just(10 ** 16), st.booleans()),
                min_size=1, max_size=5),
       st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 9_000), st.integers(0, 20), st.integers(0, 20)),
                min_size=3, max_size=3),
       st.integers(0, 30), st.integers(0, 30), st.integers(1, 3), st.integers(0, 3))
def test_the_quick_fit_check_agrees_with_the_full_one(holds, spends, worst, pred, n, absent):
    """``Policy._fits`` (per key, against its lowest limits, in nanos) says a call fits exactly when
    ``_over_all`` finds no budget it does not fit, where no margin is kept for other proxies; and never
    says it fits when ``_over_all`` finds one (small amounts, so spend lands on the limits often; and a
    limit too large for the 64-bit caps, checked the long way)."""
    pred = min(pred, worst)
    policy = Policy(SpendView(), BudgetBook([]))
    policy.proxies.set(n)
    for i, (k, (folded, local, held, exposed)) in enumerate(zip(_FIT_KEYS, spends)):
        if i < absent:                          # some keys spent nothing here at all
            continue
        policy.view.apply_snapshot(k, Totals(spend_nano_usd=folded, requests=1))
        if local:
            policy.view.local.add([k], local)
        if held:
            policy._reserved[k] = held
        if exposed:
            policy._exposed[k] = exposed
    plan_holds = [Hold(k, limit, Applied(Budget("user", "u1", "day", limit), "user", "acme/u1"), T0, (), strict)
                  for k, limit, strict in holds]
    plan = _Plan(0, T0, plan_holds, CALLERS[0])
    fits, over = policy._fits(plan, worst, pred, n), policy._over_all(plan, worst, pred, n)
    assert not (fits and over)
    if plan.caps is None:                       # a limit past 64 bits: always the full check
        assert not fits and any(limit == 10 ** 16 for _, limit, _ in holds)
    elif n == 1 or not (policy._reserved or policy.view.local.sums or policy._exposed):
        assert fits == (not over)
