"""The rate limiter as the budget check drives it (``Policy.reserve``: the caller's limits kept in
its plan, buckets refilled in line) against a straightforward token-bucket model.

For random limits, callers, token counts, waits, clocks, proxy counts and config changes (a new
rate book while the callers' plans stay cached), each call must be admitted or refused as the
model says, with the same wait, and every bucket must hold what the model's does after each step.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core.budgets import BudgetBook
from llmgw.core.principal import Principal
from llmgw.ledger.spend import SpendView
from llmgw.proxy.errors import RateLimited
from llmgw.proxy.policy import Policy, Reservation
from llmgw.proxy.ratelimit import METRICS, AppliedLimit, ProxyCount, RateBook, RateLimit

CALLERS = [Principal("k1", "acme", "ws1", "u1"), Principal("k2", "acme", "ws1", "u2"),
           Principal("k3", "beta", "ws1", "u1")]
NAMES = {"org": ("acme", "beta"), "workspace": ("ws1",), "user": ("u1", "u2"), "key": ("k1", "k2", "k3")}
NEVER = 1 << 62


@st.composite
def limits(draw: st.DrawFn) -> RateLimit:
    kind = draw(st.sampled_from(tuple(NAMES)))
    return RateLimit(kind, draw(st.sampled_from(NAMES[kind] + ("*",))), draw(st.sampled_from(tuple(METRICS))),
                     draw(st.integers(0, 40)), draw(st.sampled_from((0, 0, 5, 60))),
                     org=draw(st.sampled_from(("", "", "acme"))))


op = st.one_of(
    st.tuples(st.just("reserve"), st.integers(0, len(CALLERS) - 1), st.integers(0, 30), st.sampled_from((0, 0, 5_000))),
    st.tuples(st.just("settle"), st.integers(0, 9), st.one_of(st.none(), st.integers(0, 30))),
    st.tuples(st.just("cancel"), st.integers(0, 9)),
    st.tuples(st.just("clock"), st.integers(0, 20_000)),
    st.tuples(st.just("proxies"), st.integers(1, 3)),
    st.tuples(st.just("book"), st.lists(limits(), max_size=6)),
)


class Model:
    """Each bucket as [level, t_ms, share] in scaled units, straight from the module docstring."""

    def __init__(self) -> None:
        self.buckets: dict[str, list[int]] = {}

    def refilled(self, a: AppliedLimit, now: int, share: int) -> list[int]:
        b = self.buckets.get(a.bucket_key)
        if b is None:
            b = self.buckets[a.bucket_key] = [a.cap, now, share]
            return b
        if b[2] != share:
            b[0], b[2] = b[0] * share // b[2], share
        if now > b[1]:
            b[0], b[1] = min(a.cap, b[0] + a.rate * (now - b[1])), now
        else:
            b[0] = min(b[0], a.cap)
        return b

    def acquire(self, applied: tuple[AppliedLimit, ...], tokens: int, max_wait_ms: int, now: int,
                share: int) -> int | None:
        """The wait, or None: refused (nothing charged)."""
        wait, charges = 0, []
        for a in applied:
            b = self.refilled(a, now, share)
            need = (tokens if a.tokens else 1) * a.period_ms * share
            short = min(need, a.cap) - b[0]
            if short > 0 or not a.rate:
                wait = max(wait, -(-short // a.rate) if a.rate else NEVER)
            charges.append((b, need))
        if wait > max_wait_ms:
            return None
        for b, need in charges:
            b[0] -= need
        return wait

    def give_back(self, a: AppliedLimit, units: int, now: int, share: int) -> None:
        """Refilled to now, then credited (or charged, when the call used more than its worst case)."""
        b = self.refilled(a, now, share)
        b[0] = min(a.cap, b[0] + units * a.period_ms * b[2])


def run(first: list[RateLimit], ops: list[tuple]) -> None:
    clock, count = [1_000_000], ProxyCount(1)
    current = first
    policy = Policy(SpendView(), BudgetBook([]), limits=RateBook(first), proxies=count, clock=lambda: clock[0])
    model = Model()
    tickets: list[tuple[Reservation, tuple[AppliedLimit, ...], int]] = []
    for o in ops:
        if o[0] == "clock":
            clock[0] += o[1]
        elif o[0] == "proxies":
            count.set(o[1])
        elif o[0] == "book":                    # the plans stay cached: their rate limits must not
            current = o[1]
            policy.limiter.book = RateBook(current)
        elif o[0] == "reserve":
            _, who, tokens, max_wait = o
            p = CALLERS[who]
            applied = RateBook(current).effective(p)          # resolved afresh, no cache
            expected = model.acquire(applied, tokens, max_wait, clock[0], count()) if applied else 0
            try:
                r = policy.reserve(p, (), 100, 0, tokens=tokens, max_wait_ms=max_wait)
            except RateLimited:
                assert expected is None, "refused although every limit had room"
            else:
                assert expected is not None, "admitted over a rate limit"
                assert r.wait_ms == expected
                if r.rate.open:
                    tickets.append((r, applied, tokens))
        elif o[0] in ("settle", "cancel") and tickets:
            r, applied, tokens = tickets.pop(o[1] % len(tickets))
            used = o[2] if o[0] == "settle" else 0
            policy.release(r, used, forwarded=o[0] == "settle")
            for a in applied:
                if o[0] == "cancel":
                    model.give_back(a, tokens if a.tokens else 1, clock[0], count())
                elif used is not None and a.tokens and tokens != used:
                    model.give_back(a, tokens - used, clock[0], count())
        got = {k: [b.level, b.t_ms, b.share] for k, b in policy.limiter._buckets.items()}
        assert got == model.buckets


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(limits(), max_size=6), st.lists(op, max_size=40))
def test_the_budget_check_charges_rate_limits_as_the_token_bucket_model(first, ops):
    run(first, ops)
