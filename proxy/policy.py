"""The check before the call: reserve a hold against every budget and take the
call's share of every rate limit.

A budget holds either the call's worst case (``strict``) or what calls like
this one used lately (``predicted``, ``proxy/holds.py``); ``estimate`` gives
both, and each hold is settled to the real cost when the call ends.

The view checked for each budget is: settled spend from the snapshot, plus
this proxy's settled calls the snapshot does not show yet, plus this proxy's
open reservations. Everything is in memory and synchronous: no await between
reading the view and placing the hold, so concurrent requests on one event
loop cannot both squeeze under the same cap.

With N live proxies each one also keeps a safety margin for what the others
have in flight and it cannot see yet (docs/budgets.md has the bound)::

    folded + N x unconfirmed + estimate <= limit

where ``unconfirmed = used - folded`` is this proxy's own spend on the budget
that the snapshot does not show (open reservations, settled calls not folded
yet). The margin ``(N-1) x unconfirmed`` assumes each peer has as much that is
invisible here as this proxy has that is invisible to them; it grows with the
snapshot lag because settled calls stay unconfirmed until folded. N = 1 is
the plain check.

Order of refusals: model access (403) is checked by the caller first; then
budgets (never queued); then rate limits (may book a wait, see queueing.py).

A budget refusal says what is spent apart from what calls in flight reserve.
When the call would fit once those calls settle (settled spend + this call's
hold <= limit) it is retryable, with ``retry-after`` = their expected settle
time; otherwise no wait short of the window's reset helps and, past
``_RETRY_WORTH_S``, it says ``x-should-retry: false``.
"""
from __future__ import annotations

import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from llmgw.core.config import ConfigState
from llmgw.core.events import NANO_PER_MICRO, micro_of_nano
from llmgw.ledger.fold import ZERO
from llmgw.core.spend_keys import spend_key
from llmgw.ledger.spend import SpendView
from llmgw.core.events import Tokens
from llmgw.core.windows import iso_utc, window_bounds
from llmgw.pricing import Price, RequestShape, predicted, worst_case

from .access import ModelAccess
from llmgw.core.budgets import Applied, BudgetBook, micro_to_usd
from .errors import BudgetExceeded
from .holds import OpenHolds
from .prediction import Basis, HoldPredictor
from llmgw.core.principal import Principal
from .queueing import WaitQueue
from .ratelimit import EMPTY, AppliedLimit, ProxyCount, RateBook, RateLimiter, Ticket

# Waiting for a window shorter than this to reset is worth an SDK retry.
_RETRY_WORTH_S = 60
# Resolved plans kept per generation: at most twice this many callers x tag sets in memory.
_PLANS_PER_GENERATION = 250_000
_PlanKey = tuple[str, tuple[str, ...]]      # (key id, tags): the plan names the rest of its caller
# A refusal that calls in flight can lift: retry after their typical duration (the median of the
# last _DURATIONS calls on this proxy), within these bounds; _SETTLE_DEFAULT_S before any call ended.
_SETTLE_MIN_S, _SETTLE_MAX_S, _SETTLE_DEFAULT_S = 1, 30, 5
_DURATIONS = 256
# A key no hold of a kind caps (``_Plan.caps``): the largest 64-bit value (no limit in nanos is), and
# only ever compared as ``spent > _NO_CAP - hold`` together with ``cap != _NO_CAP``.
_NO_CAP = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a call may cost: the worst case (a strict budget's hold) and the predicted hold
    (a predicted budget's, never above the worst case), and what the prediction came from."""

    worst_micro_usd: int
    predicted_micro_usd: int
    basis: Basis | None = None
    learned: bool = False          # the prediction comes from observed calls, not the cold start

    @classmethod
    def of(cls, amount: "int | Estimate") -> "Estimate":
        return amount if isinstance(amount, Estimate) else cls(amount, amount)

    def hold(self, budget_hold: str) -> int:
        return self.worst_micro_usd if budget_hold == "strict" else self.predicted_micro_usd


Downgrade = Callable[[str], "int | Estimate | None"]   # model -> its estimate if it may serve this call


@dataclass(frozen=True, slots=True)
class Hold:
    key: str
    limit_micro_usd: int
    applied: Applied
    window_end_ms: int
    carve_keys: tuple[str, ...] = ()      # spend measured elsewhere and not counted here
    strict: bool = False                  # the budget holds the worst case (``applied.budget.hold``)


class _Plan:
    """One caller's budgets for one set of tags, resolved once (``BudgetBook.effective``, the
    windows, the spend keys) and reused by every check until ``valid_until`` (a window ends or an
    exception expires) or the config changes: a check then costs a few dict lookups per budget,
    whatever the number of budgets and keys configured.

    ``keys`` is each spend key once, in the order of its first hold (a key capped twice holds the
    larger amount once); ``modes`` says per key which holds cap it: 1 predicted, 2 strict, 3 both.
    ``plain``: no hold carves spend out (the common case, checked without the general path).
    ``caps``: per key, the lowest limit of its strict holds, then of its predicted holds, in nano-USD
    (``_NO_CAP`` where it has none), or None if one does not fit in 64 bits: what ``Policy._fits``
    compares a plain plan's spend with. One array, not a tuple per key: a check of a caller not seen
    lately finds each object it reads in memory, not in the CPU cache, and each is one more wait (with
    100,000 callers, a tuple of ints per key cost ~2 us a check, more than all the arithmetic).
    ``rate_book``, ``rate_limits``: the caller's rate limits as resolved by the rate book they came
    from (the plan's key names the caller as ``RateBook.effective`` does), so a check skips that
    lookup too."""

    __slots__ = ("valid_from", "valid_until", "holds", "held", "keys", "modes", "all_strict", "plain",
                 "zeros", "caps", "rate_book", "rate_limits", "org", "workspace", "user")

    def __init__(self, valid_from: int, valid_until: int, holds: list[Hold], p: Principal) -> None:
        self.valid_from, self.valid_until, self.holds = valid_from, valid_until, holds
        self.org, self.workspace, self.user = p.org, p.workspace, p.user
        self.held = tuple(holds)
        modes: dict[str, int] = {}
        for h in holds:
            modes[h.key] = modes.get(h.key, 0) | (2 if h.strict else 1)
        self.keys = tuple(modes)
        self.modes = tuple(modes.values())
        self.all_strict = all(h.strict for h in holds)
        self.plain = not any(h.carve_keys for h in holds)
        self.zeros = (0,) * len(self.keys)
        # built on every caller's first check after a config change: one list, no dict per kind
        at = {k: i for i, k in enumerate(self.keys)}
        pairs = [_NO_CAP] * (2 * len(self.keys))
        fits_64 = True
        for h in holds:
            i, limit_nano = 2 * at[h.key] + (not h.strict), h.limit_micro_usd * NANO_PER_MICRO
            if not -_NO_CAP <= limit_nano < _NO_CAP:
                fits_64 = False
            elif limit_nano < pairs[i]:
                pairs[i] = limit_nano
        self.caps = array("q", pairs) if fits_64 else None
        self.rate_book: RateBook | None = None
        self.rate_limits: tuple[AppliedLimit, ...] = ()

    def serves(self, p: Principal, now_ms: int) -> bool:
        """Valid now, for this caller (the cache key is its key id and tags: the rest is checked here)."""
        return (self.valid_from <= now_ms < self.valid_until and self.user == p.user
                and self.workspace == p.workspace and self.org == p.org)

    def amounts(self, worst: int, pred: int) -> tuple[int, ...]:
        """The hold on each of ``keys``: the largest any of its budgets asks for."""
        if worst == pred:
            return (worst,) * len(self.keys)
        both = max(worst, pred)
        return tuple(pred if m == 1 else worst if m == 2 else both for m in self.modes)


@dataclass(slots=True)
class Reservation:
    amount_micro_usd: int                 # the largest hold placed (each budget holds per its mode)
    holds: tuple[Hold, ...]
    open: bool = True
    model: str = ""                       # serve this model instead (a budget's downgrade at cap)
    rate: Ticket = field(default_factory=lambda: EMPTY)
    keys: tuple[str, ...] = ()
    downgraded_by: Hold | None = field(default=None)
    amounts: tuple[int, ...] = ()         # the hold on each of ``keys``
    basis: Basis | None = None
    placed_s: float = 0.0                 # monotonic time the holds were placed
    extra: tuple[int, ...] = ()           # worst case beyond the hold on each of ``keys`` (predicted)
    # The call's worst case, whatever was held: what a crash charges it (ledger/started.py), since a
    # predicted hold can be below what the provider bills for the whole reply.
    worst_micro_usd: int = 0

    @property
    def wait_ms(self) -> int:
        return self.rate.wait_ms if self.rate.open else 0

    def own(self, key: str) -> int:
        """What this call itself holds on a spend key (0 once released)."""
        if not self.open:
            return 0
        return sum(a for k, a in zip(self.keys, self.amounts) if k == key)

    def tightest(self, policy: "Policy") -> tuple[Hold, int] | None:
        """The budget with the least left for OTHER calls: this call's own hold is not subtracted."""
        best: tuple[Hold, int] | None = None
        for h in self.holds:
            left = h.limit_micro_usd - policy.used(h) + self.own(h.key)
            if best is None or left < best[1]:
                best = (h, left)
        return best


class Policy:
    def __init__(self, view: SpendView, book: BudgetBook, tz_of: Callable[[str], str] = lambda org: "UTC",
                 increase_hint: str = "ask an admin to run `llmgw budgets set` or `llmgw request-increase`",
                 *, limits: RateBook | None = None, access: ModelAccess | None = None,
                 proxies: ProxyCount | None = None, clock: Callable[[], int] | None = None,
                 waits: WaitQueue | None = None) -> None:
        self.view = view
        self._plans: dict[_PlanKey, _Plan] = {}
        self._plans_old: dict[_PlanKey, _Plan] = {}     # the previous generation (``_plan``)
        self._pool: dict[Hold, Hold] = {}               # one Hold object per distinct hold
        self.book = book
        self.tz_of = tz_of
        self.increase_hint = increase_hint
        self.proxies = proxies or ProxyCount()
        self.limiter = RateLimiter(limits or RateBook([]), self.proxies, clock)
        self.access = access or ModelAccess([])
        self.waits = waits or WaitQueue()
        self._reserved: dict[str, int] = {}
        self.holds = OpenHolds()           # open reservations, for the sweeper and the gauges (holds.py)
        self._exposed: dict[str, int] = {}       # open holds' worst case beyond the hold (predicted only)
        self._bounds: dict[tuple[str, str], tuple[int, int]] = {}
        self.predictor = HoldPredictor()
        self._durations: deque[float] = deque(maxlen=_DURATIONS)
        self._mono: Callable[[], float] = time.monotonic

    @classmethod
    def from_config(cls, view: SpendView, state: ConfigState, tz_of: Callable[[str], str],
                    options: Mapping[str, Any] | None = None) -> "Policy":
        """``options`` is the config file's ``policy:`` section: proxies, max_wait_s, max_waiters."""
        o = dict(options or {})
        p = cls(view, BudgetBook.from_state(state), tz_of, proxies=ProxyCount(int(o.get("proxies", 1))),
                waits=WaitQueue(float(o.get("max_wait_s", 60)), int(o.get("max_waiters", 1000))))
        p.reload(state)
        return p

    @property
    def book(self) -> BudgetBook:
        return self._book

    @book.setter
    def book(self, book: BudgetBook) -> None:
        self._book = book
        self._plans, self._plans_old = {}, {}
        self._pool.clear()

    def reload(self, state: ConfigState) -> None:
        """Rebuild every index derived from the config log."""
        self.book = BudgetBook.from_state(state)
        self.limiter.book = RateBook.from_state(state)
        self.access = ModelAccess.from_state(state)

    # -- model access ---------------------------------------------------------
    def check_model(self, p: Principal, model: str) -> None:
        self.access.check(p, model)

    # -- the view -----------------------------------------------------------
    def measure(self, h: Hold) -> tuple[int, int]:
        """(used, folded): the whole view of the budget, and the part the snapshot confirms."""
        used, folded, _ = self.measure3(h)
        return used, folded

    def measure3(self, h: Hold) -> tuple[int, int, int]:
        """(used, folded, reserved): ``reserved`` is the part of ``used`` that open holds make.

        Summed in nano-USD (spend is kept to the nano; holds are whole micro-USD) and
        rounded up to micro-USD once, so ``used + ... > limit`` is exact."""
        view, res = self.view, self._reserved
        folded = view.folded.get(h.key, ZERO).spend_nano_usd
        held = res.get(h.key, 0)
        used = view.spent_nano(h.key) + held * NANO_PER_MICRO
        for k in h.carve_keys:
            folded -= view.folded.get(k, ZERO).spend_nano_usd
            used -= view.spent_nano(k) + res.get(k, 0) * NANO_PER_MICRO
            held -= res.get(k, 0)
        return micro_of_nano(used), micro_of_nano(folded), held

    def used(self, h: Hold) -> int:
        return self.measure(h)[0]

    def _exposure(self, h: Hold) -> int:
        exp = self._exposed
        return exp.get(h.key, 0) - sum(exp.get(k, 0) for k in h.carve_keys)

    # -- the hold's size ---------------------------------------------------------
    def estimate(self, p: Principal, model: str, price: Price, shape: RequestShape,
                 tags: tuple[str, ...] = (), now_ms: int | None = None) -> Estimate:
        """Both holds of a call: the worst case, and the prediction from this key's (else its
        user's) recent calls on ``model``; ``release(..., observed=)`` feeds the prediction.
        Given the call's ``tags`` and ``now_ms``, a call no ``predicted`` budget holds skips the
        prediction (its hold is the worst case) but still teaches it."""
        basis = Basis((f"key:{p.key_id}", f"user:{p.org}/{p.user}"), model, shape.body_bytes, shape.n)
        worst = worst_case(price, shape)
        if now_ms is not None and self._plan(p, tags, now_ms).all_strict:
            return Estimate(worst, worst, basis)
        profile = self.predictor.profile(basis.who, model)
        return Estimate(worst, predicted(price, shape, profile), basis, profile is not None)

    def holds_for(self, p: Principal, tags: tuple[str, ...], now_ms: int) -> list[Hold]:
        """The budgets of a call, as spend keys; cached per caller and tags until a window
        ends, an exception expires or the config changes (no scan over all budgets).
        Only the key's own tags and the gateway's (``llmgw...``) are trusted to lift or
        narrow a cap (``BudgetBook.effective``)."""
        return self._plan(p, tags, now_ms).holds

    def _plan(self, p: Principal, tags: tuple[str, ...], now_ms: int) -> _Plan:
        """The cached plan, else the previous generation's (moved to this one), else resolved.
        Two generations instead of one bounded dict: when the cache fills, the callers seen
        since the last turn keep their plans, so 100,000 keys in use do not all miss at once."""
        ck = (p.key_id, tags)
        plan = self._plans.get(ck)
        if (plan is not None and plan.valid_from <= now_ms < plan.valid_until and plan.user == p.user
                and plan.workspace == p.workspace and plan.org == p.org):       # ``serves``, inlined
            return plan
        plan = self._plans_old.pop(ck, None)
        if plan is None or not plan.serves(p, now_ms):
            plan = self._resolve(p, tags, now_ms)
        if len(self._plans) >= _PLANS_PER_GENERATION:
            self._plans_old, self._plans = self._plans, {}
            self._pool.clear()
        self._plans[ck] = plan
        return plan

    def _resolve(self, p: Principal, tags: tuple[str, ...], now_ms: int) -> _Plan:
        """The straightforward computation the plan caches: every budget that applies, in its window."""
        tz = self.tz_of(p.org)
        out = []
        valid_from, valid_until = 0, self._book.next_expiry_ms(now_ms)
        trusted = tuple(t for t in tags if t in p.tags or t.startswith("llmgw"))
        pool = self._pool
        for a in self._book.effective(p, tags, now_ms, trusted):
            w = a.budget.window
            start, end = self._window(w, now_ms, tz)
            valid_from, valid_until = max(valid_from, start), min(valid_until, end)
            carve = tuple(spend_key(dim, ent, w, start) for dim, ent in a.carve_out)
            h = Hold(spend_key(a.spend_dim, a.entity, w, start), a.budget.limit_micro_usd, a, end, carve,
                     a.budget.hold == "strict")
            out.append(pool.setdefault(h, h))       # callers sharing a budget share its Hold
        return _Plan(valid_from, valid_until, out, p)

    def _window(self, window: str, now_ms: int, tz: str) -> tuple[int, int]:
        b = self._bounds.get((window, tz))
        if b is None or not b[0] <= now_ms < b[1]:
            b = self._bounds[(window, tz)] = window_bounds(window, now_ms, tz)
        return b

    # -- reserve / settle -------------------------------------------------------
    def reserve(self, p: Principal, tags: tuple[str, ...], estimate: "int | Estimate", now_ms: int, *,
                tokens: int = 0, downgrade: Downgrade | None = None, max_wait_ms: int = 0,
                force: bool = False, swept: bool = True) -> Reservation:
        """Hold on every budget (its worst case or its prediction, per the budget's ``hold``)
        and take the call's rate-limit share, or raise. An ``int`` estimate is both holds.

        A budget over its cap refuses (``BudgetExceeded``) unless its action is a
        downgrade and ``downgrade(model)`` gives an estimate that fits every budget:
        then that is held and ``Reservation.model`` names the model to serve. Rate
        limits refuse (``RateLimited``) or, within ``max_wait_ms``, book a wait. ``force``: place the
        hold whatever it leaves and take no rate-limit share (a batch admitted earlier, held again
        after a restart: proxy/batch_book.py). ``swept=False``: a hold that may rightly stay open
        longer than any stream (a batch's, for up to a day) is kept out of the open-hold sweeper.
        """
        if isinstance(estimate, Estimate):
            est: Estimate | None = estimate
            worst, pred = estimate.worst_micro_usd, estimate.predicted_micro_usd
        else:                               # an int is both holds; its Estimate only made if refused
            est, worst = None, estimate
            pred = worst
        plan = self._plan(p, tags, now_ms)
        keys = plan.keys                    # one per hold's key: none when no budget applies
        model, by = "", None
        if keys and not force:
            n = self.proxies.n
            over = None if self._fits(plan, worst, pred, n) else self._over_all(plan, worst, pred, n)
            if over:
                est, model, by = self._downgrade(plan.holds, over, est or Estimate(worst, pred), downgrade,
                                                 n, now_ms)
                worst, pred = est.worst_micro_usd, est.predicted_micro_usd
        if force:
            ticket = EMPTY
        else:                               # raises before any hold
            limiter = self.limiter
            if plan.rate_book is not limiter.book:
                plan.rate_book, plan.rate_limits = limiter.book, limiter.book.effective(p)
            ticket = limiter.acquire(p, tokens, max_wait_ms, plan.rate_limits) if plan.rate_limits else EMPTY
        basis = None if est is None else est.basis
        if not keys:
            return Reservation(pred, (), False, model, ticket, basis=basis, worst_micro_usd=worst)
        res = self._reserved
        if worst == pred:                   # one amount on every key, no worst case beyond it
            amounts = (worst,) * len(keys)
            for k in keys:
                res[k] = res.get(k, 0) + worst
            extra = plan.zeros
        else:
            amounts = plan.amounts(worst, pred)
            for k, a in zip(keys, amounts):
                res[k] = res.get(k, 0) + a
            if worst > min(amounts):        # predicted holds: their worst case beyond the hold
                extra = tuple(max(worst - a, 0) for a in amounts)
                exp = self._exposed
                for k, x in zip(keys, extra):
                    if x:
                        exp[k] = exp.get(k, 0) + x
            else:
                extra = plan.zeros
        placed = self._mono()
        r = Reservation(worst if worst == pred else max(amounts), plan.held, True, model, ticket, keys, by,
                        amounts, basis, placed, extra, worst)
        if swept:
            self.holds.add(r, placed)       # for the sweeper and the open-hold gauges (holds.py)
        return r

    def _fits(self, plan: _Plan, worst: int, pred: int, n: int) -> bool:
        """True when every hold fits, in the cases where no margin is kept for other proxies (one
        proxy, or nothing of this proxy's unconfirmed) and no hold carves spend out; False when one
        does not fit or the case is not one of those (``_over_all`` then says which, and why).

        ``_over_all``'s test ``ceil(spent / 1000) + held + hold > limit`` is, for integers,
        ``spent > (limit - hold - held) x 1000``: per spend key, one comparison against each of its
        lowest limits (``_Plan.caps``), with no rounding, no list and no object per hold. This runs
        on every call."""
        res, exp = self._reserved, self._exposed
        local = self.view.local.sums
        caps = plan.caps
        if caps is None or not plan.plain or (n > 1 and (res or local or exp)):
            return False
        folded = self.view.folded
        worst_n, pred_n = worst * NANO_PER_MICRO, pred * NANO_PER_MICRO
        pairs = iter(caps)
        for k, strict_cap, pred_cap in zip(plan.keys, pairs, pairs):    # (strict, predicted) per key
            spent = folded.get(k, ZERO).spend_nano_usd
            if local:
                spent += local.get(k, 0)
            if res:
                spent += res.get(k, 0) * NANO_PER_MICRO
            if ((spent > strict_cap - worst_n and strict_cap != _NO_CAP)
                    or (spent > pred_cap - pred_n and pred_cap != _NO_CAP)):
                return False
        return True

    def _over_all(self, plan: _Plan, worst: int, pred: int, n: int) -> list[tuple[Hold, int, int, int]]:
        """``_over`` of every hold (holding ``worst`` where strict, else ``pred``), as (hold, used,
        margin, reserved) for those it does not fit. Inlined (``measure3``, ``_exposure``,
        ``_over``): this runs on every call ``_fits`` leaves to it (a carve-out, a margin for other
        proxies, a budget over its cap). The plain cases (no carve-out) are shortest: one proxy,
        or nothing of this proxy's unconfirmed (no open hold nor its exposure, no settled call the
        snapshot does not show): the margin for the other proxies is 0 then."""
        view, res, exp = self.view, self._reserved, self._exposed
        folded, local = view.folded, view.local.sums
        over: list[tuple[Hold, int, int, int]] = []
        if plan.plain and not (res or local) and (n == 1 or not exp):   # idle: settled spend only
            for h in plan.holds:
                used = -(-folded.get(h.key, ZERO).spend_nano_usd // NANO_PER_MICRO)
                if used + (worst if h.strict else pred) > h.limit_micro_usd:
                    over.append((h, used, 0, 0))
            return over
        if plan.plain and n == 1:
            for h in plan.holds:
                k = h.key
                held = res.get(k, 0) if res else 0
                spent = folded.get(k, ZERO).spend_nano_usd
                if local:
                    spent += local.get(k, 0)
                used = -(-spent // NANO_PER_MICRO) + held
                if used + (worst if h.strict else pred) > h.limit_micro_usd:
                    over.append((h, used, 0, held))
            return over
        for h in plan.holds:
            k = h.key
            conf = folded.get(k, ZERO).spend_nano_usd          # what the snapshot confirms
            spent = conf + local.get(k, 0) if local else conf
            held = res.get(k, 0) if res else 0
            seen = exp.get(k, 0) if exp else 0
            for c in h.carve_keys:
                c_conf = folded.get(c, ZERO).spend_nano_usd
                conf -= c_conf
                spent -= c_conf + local.get(c, 0)
                held -= res.get(c, 0)
                seen -= exp.get(c, 0)
            used = -(-spent // NANO_PER_MICRO) + held
            margin = (n - 1) * max(used + (-conf // NANO_PER_MICRO) + seen, 0) if n > 1 else 0   # used - ceil(conf)
            if used + margin + (worst if h.strict else pred) > h.limit_micro_usd:
                over.append((h, used, margin, held))
        return over

    def release(self, r: Reservation, tokens_used: int | None = None, *, forwarded: bool = True,
                observed: Tokens | None = None) -> None:
        """Drop the hold and settle the rate-limit charge to ``tokens_used`` (None keeps
        the worst case; ``forwarded=False`` gives the request back too). Call it right
        after the call's event went to the ledger (which counts the real cost at once):
        never a moment where neither counts. ``observed``: the usage of a call that
        completed normally, which later predicted holds of this key and model learn from."""
        if r.rate.open:
            if forwarded:
                self.limiter.settle(r.rate, tokens_used)
            else:
                self.limiter.cancel(r.rate)
        if observed is not None and r.basis is not None:
            self.predictor.observe(r.basis, observed)
        if not r.open:
            return
        r.open = False
        self.holds.discard(r)
        if forwarded and r.placed_s:
            self._durations.append(self._mono() - r.placed_s)
        _take(self._reserved, r.keys, r.amounts)
        if self._exposed:                    # empty unless predicted holds are open
            _take(self._exposed, r.keys, r.extra)

    def settle_time_s(self) -> int:
        """How long a call in flight typically takes to settle here: a refusal it can lift says so."""
        if not self._durations:
            return _SETTLE_DEFAULT_S
        mid = sorted(self._durations)[len(self._durations) // 2]
        return min(_SETTLE_MAX_S, max(_SETTLE_MIN_S, -int(-mid // 1)))

    def _over(self, h: Hold, estimate: int, n: int) -> tuple[int, int, int] | None:
        """(used, margin, reserved) when ``estimate`` does not fit the budget. The margin for the
        other proxies counts this proxy's open predicted holds at their worst case: what peers
        cannot see of a call is what it may cost, not what it was predicted to."""
        used, folded, reserved = self.measure3(h)
        margin = (n - 1) * max(used - folded + self._exposure(h), 0) if n > 1 else 0
        return (used, margin, reserved) if used + margin + estimate > h.limit_micro_usd else None

    def _downgrade(self, holds: list[Hold], over: list[tuple[Hold, int, int, int]], est: Estimate,
                   downgrade: Downgrade | None, n: int, now_ms: int) -> tuple[Estimate, str, Hold]:
        """The cheaper model every over-cap budget names, if it fits them all; else the refusal."""
        stiff = [o for o in over if o[0].applied.budget.action != "downgrade" or not o[0].applied.budget.downgrade_to]
        if stiff or downgrade is None:
            o = (stiff or over)[0]
            raise self._refusal(*o, est, now_ms, n)
        tried = []
        for target in dict.fromkeys(o[0].applied.budget.downgrade_to for o in over):
            found = downgrade(target)
            cheaper = None if found is None else Estimate.of(found)
            if cheaper is not None and all(self._over(h, cheaper.hold(h.applied.budget.hold), n) is None
                                           for h in holds):
                return cheaper, target, over[0][0]
            tried.append(target)
        raise self._refusal(*over[0], est, now_ms, n,
                            note=f" Serving {' or '.join(tried)} instead would not fit either.")

    def _refusal(self, h: Hold, used: int, margin: int, reserved: int, est: Estimate, now_ms: int, n: int,
                 note: str = "") -> BudgetExceeded:
        """Spent apart from reserved; retryable (soon) exactly when settling the calls in flight
        could make room, final (until the reset) when the settled spend alone leaves none."""
        b = h.applied.budget
        hold = est.hold(b.hold)
        spent = max(used - reserved, 0)
        parts = [f"spent {micro_to_usd(spent)} of {micro_to_usd(h.limit_micro_usd)}"]
        if reserved > 0:
            parts.append(f"{micro_to_usd(reserved)} reserved by calls in flight")
        if margin > 0:
            parts.append(f"{micro_to_usd(margin)} held back for calls in flight at the other {n - 1} gateway proxies")
        if b.hold == "strict" or hold == est.worst_micro_usd:
            parts.append(f"this call may cost up to {micro_to_usd(hold)}")
        else:
            how = "what your recent calls used" if est.learned else "a first-call estimate"
            parts.append(f"this call holds {micro_to_usd(hold)}, {how} "
                         f"(it may cost up to {micro_to_usd(est.worst_micro_usd)})")
        view = "; ".join(parts)
        if spent + hold <= h.limit_micro_usd:            # the calls in flight hold the room: they settle soon
            wait_s = self.settle_time_s()
            msg = (f"Budget busy: {b.describe()} ({view}). It fits once calls in flight settle: "
                   f"retry in {wait_s}s.{note}")
        else:
            wait_s = max(1, -(-(h.window_end_ms - now_ms) // 1000))
            msg = (f"Budget exceeded: {b.describe()} would be exceeded ({view}). "
                   f"It resets at {iso_utc(h.window_end_ms)} (in {_human(wait_s)}).{note} "
                   f"To get more, {self.increase_hint}.")
        err = BudgetExceeded(msg, retry_after_s=wait_s, retry_pointless=wait_s > _RETRY_WORTH_S,
                             headers={"x-llmgw-budget": b.origin or b.record_name,
                                      "x-llmgw-budget-reset": iso_utc(h.window_end_ms)})
        err.resets_at_s = -(-h.window_end_ms // 1000)
        err.summary = (f"The {b.describe()} is used up ({micro_to_usd(spent)} spent). To get more, "
                       f"{self.increase_hint}")
        return err

    def remaining_headers(self, r: Reservation) -> dict[str, str]:
        t = r.tightest(self)
        if t is None:
            return {}
        h, left = t
        b = h.applied.budget
        out = {"x-llmgw-budget-remaining-usd": f"{max(left, 0) / 1_000_000:.6f}",
               "x-llmgw-budget-limit-usd": f"{b.limit_micro_usd / 1_000_000:.6f}",
               "x-llmgw-budget-window": b.window,
               "x-llmgw-budget-scope": f"{b.scope_kind}:{h.applied.entity}" + (f" {b.tag}" if b.tag else ""),
               "x-llmgw-budget-reset": iso_utc(h.window_end_ms)}
        if r.model:
            out["x-llmgw-model-downgraded-to"] = r.model
        return out


def _take(book: dict[str, int], keys: tuple[str, ...], amounts: tuple[int, ...]) -> None:
    """A released hold's amounts leave ``book`` (a key at zero leaves it: the books stay small)."""
    for k, a in zip(keys, amounts):
        left = book.get(k, 0) - a
        if left > 0:
            book[k] = left
        else:
            book.pop(k, None)


def _human(seconds: int) -> str:
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{max(m, 1)}m" if seconds >= 60 else f"{seconds}s"
