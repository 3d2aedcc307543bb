"""Rate limits: requests and tokens per minute and per day (RPM, TPM, RPD, TPD).

What a limit means
- ``N per period`` with burst ``B`` (``B = N`` unless ``--burst`` says otherwise)
  is a token bucket: it holds at most ``B`` units and refills continuously at
  ``N`` per period, which is how the providers meter their own limits. A full
  bucket admits ``B`` calls at once; after that, calls are admitted at the
  sustained rate ``N/period``.
- Requests cost 1. Tokens are charged at admission at the call's worst case
  (``worst_case_tokens``: the prompt bound plus the output bound from
  ``pricing.estimate``) and corrected to the provider's count when the call is
  settled (``settle``): the unused part goes back to the bucket, so a call
  that asked for ``max_tokens=8000`` and used 300 costs 300 in the end.
- A call larger than the whole bucket waits for a full bucket and is then
  admitted, driving the bucket below zero: later calls wait until the debt is
  paid back at the sustained rate, so the long-run rate still holds.
- Limits attach to an organization, workspace, user or key, explicitly or as a
  default for every one of a kind (``user:*``); an explicit limit replaces the
  default of its kind and metric, and every limit that applies must admit.

Across proxies: each proxy enforces ``1/P`` of every bucket (both its size
and its refill rate), where ``P`` is the live proxy count given by
``proxies()`` (``policy.proxies`` in the config file for now; the Kafka mode
feeds it through ``ProxyCount.set``). With traffic spread by a load balancer
the cluster admits ``N`` per period in total; a proxy that gets more than its
share refuses early. See docs/budgets.md.

State is in memory and every check is synchronous (a few dict lookups): no
await between reading a bucket and charging it.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.pricing import Price, RequestShape
from llmgw.pricing.estimate import output_bound, prompt_bound

from .errors import RateLimited
from llmgw.core.principal import Principal

TYPE = "ratelimit"
KINDS = ("org", "workspace", "user", "key")
REQUESTS, TOKENS = "requests", "tokens"
MINUTE_MS, DAY_MS = 60_000, 86_400_000
METRICS: dict[str, tuple[str, int]] = {"rpm": (REQUESTS, MINUTE_MS), "tpm": (TOKENS, MINUTE_MS),
                                       "rpd": (REQUESTS, DAY_MS), "tpd": (TOKENS, DAY_MS)}
_NEVER_MS = 1 << 62
# Callers whose limits are kept resolved, per generation (``RateBook.effective``).
_CACHED_CALLERS = 250_000
# A refusal whose capacity frees later than this says x-should-retry: false (as budgets do).
_RETRY_WORTH_S = 60


def worst_case_tokens(price: Price, shape: RequestShape) -> int:
    """The most tokens (prompt + output) a call can be billed for: its charge at admission."""
    return prompt_bound(price, shape) + output_bound(price, shape)


def name_of(p: Principal, kind: str) -> str:
    return {"org": p.org, "workspace": p.workspace, "user": p.user, "key": p.key_id}[kind]


@dataclass(frozen=True, slots=True)
class RateLimit:
    scope_kind: str            # org, workspace, user, key
    name: str                  # entity name, or "*" for the default of the kind
    metric: str                # rpm, tpm, rpd, tpd
    limit: int                 # units per period
    burst: int = 0             # bucket size; 0 means ``limit``
    org: str = ""              # "" matches the name in any organization
    origin: str = ""           # config record id

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        if self.limit < 0 or self.burst < 0:
            raise ValueError("a rate limit and its burst cannot be negative")

    @property
    def unit(self) -> str:
        return METRICS[self.metric][0]

    @property
    def period_ms(self) -> int:
        return METRICS[self.metric][1]

    @property
    def capacity(self) -> int:
        return self.burst or self.limit

    @property
    def record_name(self) -> str:
        return f"{self.org}|{self.scope_kind}:{self.name}|{self.metric}"

    def record(self, actor: str = "cli", reason: str = "") -> ConfigRecord:
        data = {"scope_kind": self.scope_kind, "name": self.name, "metric": self.metric,
                "limit": self.limit, "burst": self.burst, "org": self.org}
        return ConfigRecord.put(TYPE, self.record_name, data, actor=actor, reason=reason)

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> "RateLimit":
        d = rec.data or {}
        return cls(d["scope_kind"], d["name"], d["metric"], int(d["limit"]), int(d.get("burst") or 0),
                   d.get("org", ""), rec.id)

    def describe(self) -> str:
        who = "every " + self.scope_kind if self.name == "*" else f"{self.scope_kind} {self.name}"
        if self.org:
            who += f" (org {self.org})"
        per = "minute" if self.period_ms == MINUTE_MS else "day"
        burst = f", burst {self.burst:,}" if self.burst and self.burst != self.limit else ""
        return f"{who}: {self.limit:,} {self.unit} per {per}{burst}"


@dataclass(frozen=True, slots=True)
class AppliedLimit:
    """One limit as it applies to one caller, with what the hot path needs precomputed."""

    limit: RateLimit
    entity: str
    bucket_key: str                           # "metric|scope kind|entity": one bucket per key (a str
                                              # keeps its hash: one lookup reads one object, not four)
    tokens: bool                              # counts tokens (else requests)
    period_ms: int
    rate: int                                 # units per period = scaled units refilled per ms
    cap: int                                  # bucket size in scaled units: capacity x period_ms

    @classmethod
    def of(cls, limit: RateLimit, entity: str, cap: int | None = None) -> "AppliedLimit":
        """``cap``: ``capacity x period_ms``, if the caller has it (one int shared by every entity)."""
        return cls(limit, entity, f"{limit.metric}|{limit.scope_kind}|{entity}", limit.unit == TOKENS,
                   limit.period_ms, limit.limit, limit.capacity * limit.period_ms if cap is None else cap)


class RateBook:
    """Every rate limit from the config log, resolved per caller (cached until the next reload)."""

    def __init__(self, limits: list[RateLimit]) -> None:
        self._by_scope: dict[tuple[str, str], list[RateLimit]] = {}
        self._defaults: dict[str, list[RateLimit]] = {}
        for lim in limits:
            if lim.name == "*":
                self._defaults.setdefault(lim.scope_kind, []).append(lim)
            else:
                self._by_scope.setdefault((lim.scope_kind, lim.name), []).append(lim)
        self.count = len(limits)
        # Two generations (as Policy's plans): when the cache fills, the callers seen since the last
        # turn keep their resolution, so 100,000 keys in use do not all resolve again at once.
        self._cache: dict[tuple[str, str, str, str], tuple[AppliedLimit, ...]] = {}
        self._cache_old: dict[tuple[str, str, str, str], tuple[AppliedLimit, ...]] = {}
        # One AppliedLimit per (limit, entity) in this generation, and one cap per limit: the callers of
        # a workspace share its limits' objects and every caller of a default its cap, which a check
        # then finds in the CPU cache rather than in memory.
        self._pool: dict[tuple[RateLimit, str], AppliedLimit] = {}
        self._caps = {lim: lim.capacity * lim.period_ms for lim in limits}

    @classmethod
    def from_state(cls, state: ConfigState) -> "RateBook":
        return cls([RateLimit.from_record(r) for r in state.of_type(TYPE)])

    def effective(self, p: Principal) -> tuple[AppliedLimit, ...]:
        ck = (p.key_id, p.org, p.workspace, p.user)
        hit = self._cache.get(ck)
        if hit is not None:
            return hit
        hit = self._cache_old.pop(ck, None)
        if hit is not None:
            self._cache[ck] = hit
            return hit
        out: list[AppliedLimit] = []
        if len(self._cache) >= _CACHED_CALLERS:
            self._cache_old, self._cache = self._cache, {}
            self._pool = {}
        if self.count:
            pool = self._pool
            for kind in KINDS:
                own = [x for x in self._by_scope.get((kind, name_of(p, kind)), ()) if x.org in ("", p.org)]
                entity = p.entity(kind)
                for metric in METRICS:
                    chosen = [x for x in own if x.metric == metric] or [
                        d for d in self._defaults.get(kind, ()) if d.metric == metric and d.org in ("", p.org)]
                    for x in chosen:
                        a = pool.get((x, entity))
                        if a is None:
                            a = pool[(x, entity)] = AppliedLimit.of(x, entity, self._caps[x])
                        out.append(a)
        self._cache[ck] = res = tuple(out)
        return res


class ProxyCount:
    """N, the number of live proxies sharing every budget and rate limit.

    Fixed from the config file for now; the Kafka mode calls ``set`` with the
    live count it sees (e.g. members of the proxies' consumer group).
    """

    __slots__ = ("n",)

    def __init__(self, n: int = 1) -> None:
        self.n = max(1, int(n))

    def set(self, n: int) -> None:
        self.n = max(1, int(n))

    def __call__(self) -> int:
        return self.n


class _Bucket:
    """Level in scaled units: one unit is ``period_ms * share`` scaled units, so a bucket
    of ``capacity / share`` units is ``capacity * period_ms`` scaled and refills ``limit``
    scaled units per millisecond. Exact integer arithmetic, no float."""

    __slots__ = ("level", "t_ms", "share", "limit")

    def __init__(self, level: int, t_ms: int, share: int, limit: RateLimit) -> None:
        self.level, self.t_ms, self.share, self.limit = level, t_ms, share, limit

    def full_at_ms(self) -> int:
        """When it will be full again if nobody calls."""
        lim = self.limit
        missing = lim.capacity * lim.period_ms - self.level
        if missing <= 0:
            return self.t_ms
        return self.t_ms + -(-missing // lim.limit) if lim.limit else _NEVER_MS


@dataclass(slots=True)
class Ticket:
    """What one admitted call took from each bucket; settled or cancelled exactly once."""

    applied: tuple[AppliedLimit, ...]                 # the limits charged
    tokens: int = 0                                   # charged to each token limit (1 to the others)
    wait_ms: int = 0
    open: bool = True

    @property
    def charges(self) -> tuple[tuple[AppliedLimit, int], ...]:
        """(limit, units charged) of each limit."""
        return tuple((a, self.tokens if a.tokens else 1) for a in self.applied)


EMPTY = Ticket((), 0, 0, False)


class RateLimiter:
    def __init__(self, book: RateBook, proxies: Callable[[], int] | None = None,
                 clock: Callable[[], int] | None = None) -> None:
        self.book = book
        self.proxies = proxies or ProxyCount()
        self.clock = clock or (lambda: time.monotonic_ns() // 1_000_000)
        self._buckets: dict[str, _Bucket] = {}
        # Every bucket's key once, oldest first: where the sweep goes on from (``_sweep``).
        self._order: deque[str] = deque()
        self._sweep_above = 10_000
        self._made = 0                      # buckets made since the last sweep: what it owes

    # -- admission -----------------------------------------------------------------
    def acquire(self, p: Principal, tokens: int, max_wait_ms: int = 0,
                applied: tuple[AppliedLimit, ...] | None = None) -> Ticket:
        """Charge one request and ``tokens`` to every limit that applies, or raise ``RateLimited``.

        With ``max_wait_ms`` a call that would have to wait at most that long is
        charged now (its capacity is booked ahead, so callers are served in
        order) and the ticket says how long to wait before forwarding.
        ``applied``: ``book.effective(p)``, if the caller keeps it already.
        """
        if applied is None:
            applied = self.book.effective(p)
        if not applied:
            return EMPTY
        now, share = self.clock(), max(1, self.proxies())
        buckets = self._buckets
        if self._made and len(buckets) > self._sweep_above:
            # before any bucket of this call is refilled: a sweep mid-call could forget a bucket the
            # call just refilled to full and then charge a bucket nobody holds any more
            self._sweep(now)
        wait_ms, worst = 0, applied[0]
        charged: list[_Bucket] = []
        needs: list[int] = []
        for a in applied:
            b = buckets.get(a.bucket_key)
            if b is None:                         # ``_refilled`` inlined: this runs on every call
                b = buckets[a.bucket_key] = _Bucket(a.cap, now, share, a.limit)
                self._order.append(a.bucket_key)
                self._made += 1
            elif b.share != share:
                b = self._refilled(a, now, share)
            else:
                b.limit = a.limit
                if now > b.t_ms:
                    level = b.level + a.rate * (now - b.t_ms)
                    b.level = a.cap if level > a.cap else level
                    b.t_ms = now
                elif b.level > a.cap:
                    b.level = a.cap
            need = (tokens if a.tokens else 1) * a.period_ms * share
            short = (need if need < a.cap else a.cap) - b.level
            if short > 0 or not a.rate:           # a limit of 0 blocks every call
                w = -(-short // a.rate) if a.rate else _NEVER_MS
                if w > wait_ms:
                    wait_ms, worst = w, a
            charged.append(b)
            needs.append(need)
        if wait_ms > max_wait_ms:
            raise _refusal(worst, wait_ms, tokens, share)
        for b, need in zip(charged, needs):
            b.level -= need
        return Ticket(applied, tokens, wait_ms)

    def settle(self, t: Ticket, tokens_used: int | None) -> None:
        """The call is over: token charges become the real count (None keeps the worst case)."""
        if not t.open:
            return
        t.open = False
        if tokens_used is None:
            return
        units = t.tokens - tokens_used
        if units:
            now, share = self.clock(), max(1, self.proxies())
            for a in t.applied:
                if a.tokens:
                    self._give_back(a, units, now, share)

    def cancel(self, t: Ticket) -> None:
        """The call never went upstream: everything it took goes back."""
        if not t.open:
            return
        t.open = False
        now, share = self.clock(), max(1, self.proxies())
        for a, units in t.charges:
            self._give_back(a, units, now, share)

    def available(self, p: Principal, metric: str) -> int | None:
        """Units this proxy could admit now under the tightest ``metric`` limit (None: no limit)."""
        now, share = self.clock(), max(1, self.proxies())
        best: int | None = None
        for a in self.book.effective(p):
            if a.limit.metric == metric:
                b = self._refilled(a, now, share)
                units = b.level // (a.period_ms * share)
                best = units if best is None else min(best, units)
        return best

    # -- buckets -------------------------------------------------------------------
    def _refilled(self, a: AppliedLimit, now: int, share: int) -> _Bucket:
        b = self._buckets.get(a.bucket_key)
        if b is None:
            if self._made and len(self._buckets) > self._sweep_above:
                self._sweep(now)
            b = self._buckets[a.bucket_key] = _Bucket(a.cap, now, share, a.limit)
            self._order.append(a.bucket_key)
            self._made += 1
            return b
        b.limit = a.limit
        if b.share != share:                      # the proxy count changed: same units, new scale
            b.level = b.level * share // b.share
            b.share = share
        if now > b.t_ms:
            b.level = min(a.cap, b.level + a.rate * (now - b.t_ms))
            b.t_ms = now
        elif b.level > a.cap:                     # the limit was lowered
            b.level = a.cap
        return b

    def _give_back(self, a: AppliedLimit, units: int, now: int, share: int) -> None:
        """Return ``units`` to the bucket, or charge them when negative (a call that used more tokens
        than its admitted worst case).

        The bucket is refilled to now first: its level is as of its last look, and a charge taken from
        that older level would be paid out of refill that a full bucket throws away. A forgotten bucket
        is a full one, so a charge makes it again (before, the charge was dropped)."""
        if units >= 0 and a.bucket_key not in self._buckets:
            return                                # full: a give-back would overflow it anyway
        b = self._refilled(a, now, share)
        b.level = min(a.cap, b.level + units * a.period_ms * b.share)

    def _sweep(self, now: int) -> None:
        """Forget buckets that have refilled (a new bucket starts full), a few of the oldest at a time:
        one more than the buckets made since the last sweep (at most 33).

        So the dict stays near the buckets in use, a caller whose buckets all exist pays nothing, and no
        call pays for all of them: a sweep of every bucket at once, with 100,000 callers in use, held the
        event loop for up to ~160 ms every few thousand calls (bench/budget_check.py's slowest check)."""
        order, buckets = self._order, self._buckets
        steps, self._made = min(self._made, 32) + 1, 0      # a call makes at most 16
        for _ in range(min(steps, len(order))):
            key = order.popleft()
            b = buckets.get(key)
            if b is None:
                continue
            lim = b.limit                   # ``b.full_at_ms() <= now``, inlined: this runs on calls
            missing = (lim.burst or lim.limit) * lim.period_ms - b.level
            if missing <= 0 or (lim.limit and lim.limit * (now - b.t_ms) >= missing):
                del buckets[key]
            else:
                order.append(key)


def _refusal(a: AppliedLimit, wait_ms: int, tokens: int, share: int) -> RateLimited:
    lim = a.limit
    ask = "one more request" if lim.unit == REQUESTS else f"up to {tokens:,} tokens"
    shared = f" (each of the {share} gateway proxies enforces 1/{share} of it)" if share > 1 else ""
    if wait_ms >= _NEVER_MS:
        err = RateLimited(f"Rate limit: {lim.describe()}{shared}; no call is admitted under a limit of 0.",
                          headers={"x-llmgw-ratelimit": lim.origin or lim.record_name})
        err.should_retry = False
        return err
    wait_s = max(1, -(-wait_ms // 1000))
    err = RateLimited(f"Rate limit reached: {lim.describe()}{shared}; this call needs {ask}. "
                      f"Retry in {wait_s}s, or send `x-llmgw-wait: SECONDS` to queue for it.",
                      retry_after_s=wait_s, headers={"x-llmgw-ratelimit": lim.origin or lim.record_name})
    if wait_s > _RETRY_WORTH_S:       # an RPD/TPD window: SDKs must not retry silently for minutes
        err.should_retry = False
        err.resets_at_s = int(time.time()) + wait_s
        err.summary = f"The rate limit {lim.describe()} is reached"
    return err
