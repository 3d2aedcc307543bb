"""The rate limiter on its own, on a frozen clock: buckets, bursts, shares, settlement, booked waits."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core.config import ConfigState
from llmgw.proxy.errors import RateLimited
from llmgw.core.principal import Principal
from llmgw.proxy.queueing import WaitQueue
from llmgw.proxy.ratelimit import ProxyCount, RateBook, RateLimit, RateLimiter

ALICE = Principal("k1", "acme", "backend", "alice")
BOB = Principal("k2", "acme", "backend", "bob")


class Clock:
    def __init__(self, ms: int = 1_000_000) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


def limiter(*limits: RateLimit, proxies: int = 1) -> tuple[RateLimiter, Clock, ProxyCount]:
    clock, count = Clock(), ProxyCount(proxies)
    return RateLimiter(RateBook(list(limits)), count, clock), clock, count


def test_rpm_admits_the_burst_then_the_sustained_rate_with_a_short_retry_after():
    rl, clock, _ = limiter(RateLimit("user", "alice", "rpm", 60, burst=3))
    for _ in range(3):
        rl.acquire(ALICE, 0)
    with pytest.raises(RateLimited) as exc:
        rl.acquire(ALICE, 0)
    assert exc.value.retry_after_s == 1 and exc.value.should_retry is True
    assert exc.value.response_headers()["x-should-retry"] == "true"
    clock.advance(1.0)
    rl.acquire(ALICE, 0)                              # one per second, sustained
    with pytest.raises(RateLimited):
        rl.acquire(ALICE, 0)
    clock.advance(60)
    for _ in range(3):                                # refilled to the burst, not past it
        rl.acquire(ALICE, 0)
    with pytest.raises(RateLimited):
        rl.acquire(ALICE, 0)


def test_retry_after_is_the_time_until_enough_capacity_frees():
    rl, clock, _ = limiter(RateLimit("user", "alice", "rpm", 2))
    rl.acquire(ALICE, 0)
    rl.acquire(ALICE, 0)
    with pytest.raises(RateLimited) as exc:
        rl.acquire(ALICE, 0)
    assert exc.value.retry_after_s == 30             # 2 per minute: one slot every 30 s
    clock.advance(29.999)
    with pytest.raises(RateLimited) as exc:
        rl.acquire(ALICE, 0)
    assert exc.value.retry_after_s == 1
    clock.advance(0.001)
    rl.acquire(ALICE, 0)


def test_tokens_are_charged_at_the_worst_case_and_settled_to_the_real_count():
    rl, clock, _ = limiter(RateLimit("user", "alice", "tpm", 10_000))
    t = rl.acquire(ALICE, 8_000)
    assert rl.available(ALICE, "tpm") == 2_000
    with pytest.raises(RateLimited):
        rl.acquire(ALICE, 3_000)
    rl.settle(t, 1_500)
    assert rl.available(ALICE, "tpm") == 8_500
    rl.settle(t, 0)                                   # settling twice changes nothing
    assert rl.available(ALICE, "tpm") == 8_500
    rl.acquire(ALICE, 3_000)


def test_a_call_larger_than_the_bucket_waits_for_a_full_bucket_and_leaves_a_debt():
    rl, clock, _ = limiter(RateLimit("user", "alice", "tpm", 6_000))
    t = rl.acquire(ALICE, 9_000)                      # full bucket: admitted, 3,000 in debt
    assert rl.available(ALICE, "tpm") == -3_000
    with pytest.raises(RateLimited) as exc:
        rl.acquire(ALICE, 100)
    assert exc.value.retry_after_s == 31              # (3,000 + 100) tokens at 100 per second
    rl.settle(t, 9_000)
    clock.advance(60)
    assert rl.available(ALICE, "tpm") == 3_000        # the debt was paid back at the sustained rate


def test_a_request_refused_by_one_limit_charges_none():
    rl2, _, _ = limiter(RateLimit("user", "alice", "rpm", 100), RateLimit("workspace", "backend", "tpm", 1_000))
    rl2.acquire(ALICE, 600)
    with pytest.raises(RateLimited) as exc:
        rl2.acquire(ALICE, 600)
    assert "workspace backend" in exc.value.message
    assert rl2.available(ALICE, "rpm") == 99           # the refused call took no request


def test_explicit_replaces_the_default_per_metric_and_workspace_limits_are_shared():
    book = RateBook([RateLimit("user", "*", "rpm", 1), RateLimit("user", "*", "tpm", 50),
                     RateLimit("user", "alice", "rpm", 5), RateLimit("workspace", "backend", "rpd", 3, org="acme"),
                     RateLimit("workspace", "backend", "rpd", 1, org="other")])
    got = {(a.limit.metric, a.limit.scope_kind, a.limit.limit) for a in book.effective(ALICE)}
    assert got == {("rpm", "user", 5), ("tpm", "user", 50), ("rpd", "workspace", 3)}
    rl = RateLimiter(book, ProxyCount(), Clock())
    rl.acquire(ALICE, 1)
    rl.acquire(BOB, 1)                                # bob: the default rpm of 1
    with pytest.raises(RateLimited):
        rl.acquire(BOB, 1)
    rl.acquire(ALICE, 1)
    with pytest.raises(RateLimited) as exc:           # the workspace's 3 per day is shared by both
        rl.acquire(ALICE, 1)
    assert "3 requests per day" in exc.value.message


def test_each_proxy_enforces_its_share_and_follows_the_live_count():
    rl, clock, count = limiter(RateLimit("user", "alice", "rpm", 60), proxies=3)
    for _ in range(20):
        rl.acquire(ALICE, 0)
    with pytest.raises(RateLimited) as exc:
        rl.acquire(ALICE, 0)
    assert exc.value.retry_after_s == 3               # 20 per minute here: one every 3 s
    assert "1/3" in exc.value.message
    count.set(2)                                      # a peer left: the share grows, the units stay
    clock.advance(60)
    assert rl.available(ALICE, "rpm") == 30


def test_a_booked_wait_serves_waiters_in_order():
    rl, clock, _ = limiter(RateLimit("user", "alice", "rpm", 600, burst=1))   # one per 100 ms
    assert rl.acquire(ALICE, 0, max_wait_ms=1_000).wait_ms == 0
    waits = [rl.acquire(ALICE, 0, max_wait_ms=1_000).wait_ms for _ in range(3)]
    assert waits == [100, 200, 300]
    with pytest.raises(RateLimited) as exc:           # a caller that will not wait is behind the queue
        rl.acquire(ALICE, 0)
    assert exc.value.retry_after_s == 1
    with pytest.raises(RateLimited):                  # nor one whose wait would exceed its bound
        rl.acquire(ALICE, 0, max_wait_ms=350)
    t = rl.acquire(ALICE, 0, max_wait_ms=400)
    assert t.wait_ms == 400
    rl.cancel(t)                                      # a waiter that leaves gives its slot back
    assert rl.acquire(ALICE, 0, max_wait_ms=400).wait_ms == 400


def test_a_zero_limit_refuses_without_inviting_retries():
    rl, _, _ = limiter(RateLimit("user", "alice", "rpd", 0))
    with pytest.raises(RateLimited) as exc:
        rl.acquire(ALICE, 0, max_wait_ms=60_000)
    assert exc.value.should_retry is False and exc.value.retry_after_s is None


def test_idle_full_buckets_are_forgotten_a_few_per_call():
    """Full buckets are forgotten as new ones are made, one more looked at than were made: the dict
    stays near the buckets in use and no call pays for a sweep of every bucket (one such sweep held
    the loop ~160 ms at 100,000 callers)."""
    rl, clock, _ = limiter(RateLimit("user", "*", "rpm", 10))
    rl._sweep_above = 0
    idle = [Principal(f"k{i}", "acme", "backend", f"u{i}") for i in range(100)]
    for p in idle:
        rl.acquire(p, 0)
    old = set(rl._buckets)
    clock.advance(7)                                  # 1 request refills in 6 s: all 100 are full again
    sizes = [len(rl._buckets)]
    for i in range(100):                              # a hundred new callers, one call each
        rl.acquire(Principal(f"n{i}", "acme", "backend", f"new{i}"), 0)
        sizes.append(len(rl._buckets))
    assert all(b - a >= -1 for a, b in zip(sizes, sizes[1:]))     # at most 2 forgotten, 1 made per call
    assert sizes[-1] == 100 and len(old) == 100 and not old & set(rl._buckets)
    for i in range(100):                              # the new callers' buckets, in use, all kept
        rl.acquire(Principal(f"n{i}", "acme", "backend", f"new{i}"), 0)
    assert len(rl._buckets) == 100


_CALLERS = [Principal(f"k{i}", "acme", f"w{i % 2}", f"u{i}") for i in range(6)]
_OPS = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 3_000), st.integers(0, 40),
                          st.sampled_from(["acquire", "settle", "cancel"])), max_size=60)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_OPS)
def test_forgetting_full_buckets_never_changes_a_decision(ops):
    """A limiter that sweeps on every call and one that never does admit, refuse and book waits alike:
    a forgotten bucket is a full one, and a new bucket starts full."""
    limits = (RateLimit("user", "*", "rpm", 3), RateLimit("workspace", "*", "tpm", 500, burst=200),
              RateLimit("key", "k1", "rpd", 5))
    (sweeps, c1, _), (keeps, c2, _) = limiter(*limits), limiter(*limits)
    sweeps._sweep_above, keeps._sweep_above = 0, 1 << 30
    tickets = []
    for who, tokens, seconds, what in ops:
        c1.advance(seconds)
        c2.advance(seconds)
        if what == "acquire":
            outcome = []
            for rl in (sweeps, keeps):
                try:
                    t = rl.acquire(_CALLERS[who], tokens, max_wait_ms=2_000)
                    outcome.append((t.wait_ms, t))
                except RateLimited as exc:
                    outcome.append((exc.message, None))
            assert outcome[0][0] == outcome[1][0]
            if outcome[0][1] is not None:
                tickets.append((outcome[0][1], outcome[1][1]))
        elif tickets:
            t1, t2 = tickets.pop(tokens % len(tickets))
            if what == "settle":        # above what was charged too: a provider may bill past the bound
                sweeps.settle(t1, tokens * 3 // 2)
                keeps.settle(t2, tokens * 3 // 2)
            else:
                sweeps.cancel(t1)
                keeps.cancel(t2)


def test_a_bucket_in_use_is_never_forgotten():
    rl, clock, _ = limiter(RateLimit("user", "*", "rpm", 2))
    rl._sweep_above = 0
    for i in range(20):                                # twenty callers, each with one call left
        rl.acquire(Principal(f"k{i}", "acme", "backend", f"u{i}"), 0)
    for i in range(40):                                # sweeps run; nobody's bucket has refilled
        rl.acquire(Principal(f"n{i}", "acme", "backend", f"new{i}"), 0)
    for i in range(20):                                # each still has exactly one call left
        rl.acquire(Principal(f"k{i}", "acme", "backend", f"u{i}"), 0)
        with pytest.raises(RateLimited):
            rl.acquire(Principal(f"k{i}", "acme", "backend", f"u{i}"), 0)


def test_records_round_trip_through_the_config_log():
    lim = RateLimit("workspace", "backend", "tpd", 2_000_000, burst=500_000, org="acme")
    state = ConfigState()
    state.apply(lim.record())
    [back] = RateBook.from_state(state).effective(ALICE)
    assert back.limit.describe() == "workspace backend (org acme): 2,000,000 tokens per day, burst 500,000"
    assert back.entity == "acme/backend"
    with pytest.raises(ValueError):
        RateLimit("user", "alice", "rph", 5)


def test_wait_allowance_is_bounded():
    q = WaitQueue(max_wait_s=2, max_waiters=1)
    assert q.allowance_ms({}) == 0
    assert q.allowance_ms({"x-llmgw-wait": "0.5"}) == 500
    assert q.allowance_ms({"x-llmgw-wait": "30"}) == 2_000
    assert q.allowance_ms({"x-llmgw-wait": "-1"}) == 0
    q.waiting = 1
    assert q.allowance_ms({"x-llmgw-wait": "1"}) == 0  # the queue is full: refuse instead


def test_a_full_cache_of_resolved_callers_keeps_answering_the_same(monkeypatch):
    from llmgw.proxy import ratelimit as R

    monkeypatch.setattr(R, "_CACHED_CALLERS", 3)
    limits = [R.RateLimit("user", "*", "rpm", 60), R.RateLimit("user", "u2", "rpm", 5),
              R.RateLimit("key", "k4", "tpm", 1_000)]
    book = R.RateBook(limits)
    callers = [Principal(f"k{i}", "acme", "w", f"u{i}") for i in range(8)]
    fresh = [R.RateBook(limits).effective(p) for p in callers]     # a new book per caller: nothing cached
    for _ in range(3):                       # past several generation turns, in two orders
        assert [book.effective(p) for p in callers] == fresh
        assert [book.effective(p) for p in reversed(callers)] == fresh[::-1]
    assert [a.limit.limit for a in book.effective(callers[2])] == [5]
    assert [a.limit.metric for a in book.effective(callers[4])] == ["rpm", "tpm"]


def test_a_sweep_while_charging_never_drops_a_charge_of_the_same_call():
    """A new caller's bucket may start a sweep of full buckets mid-charge; the shared workspace bucket
    this very call just refilled to full must keep its charge (it used to be swept and the charge lost)."""
    rl, clock, _ = limiter(RateLimit("user", "*", "rpm", 5), RateLimit("workspace", "backend", "rpm", 2, org="acme"))
    rl.acquire(ALICE, 0)
    clock.advance(60)                                 # every bucket full again: all of them sweepable
    rl._sweep_above = 0
    rl.acquire(BOB, 0)                                # bob's bucket is new: a sweep runs during the call
    rl.acquire(Principal("k3", "acme", "backend", "carol"), 0)
    with pytest.raises(RateLimited) as exc:           # the workspace's 2 per minute: bob and carol
        rl.acquire(Principal("k4", "acme", "backend", "dave"), 0)
    assert "2 requests per minute" in exc.value.message
