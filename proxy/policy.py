"""The check before the call: reserve the worst case against every budget and
take the call's share of every rate limit.

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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ledger.configlog import ConfigState
from ledger.events import NANO_PER_MICRO, micro_of_nano
from ledger.fold import ZERO, spend_key
from ledger.spend import SpendView
from ledger.windows import iso_utc, window_bounds

from .access import ModelAccess
from .budgets import Applied, BudgetBook, micro_to_usd
from .errors import BudgetExceeded
from .holds import OpenHolds
from .keys import Principal
from .queueing import WaitQueue
from .ratelimit import EMPTY, ProxyCount, RateBook, RateLimiter, Ticket

# Waiting for a window shorter than this to reset is worth an SDK retry.
_RETRY_WORTH_S = 60
# A refusal caused only by the cross-proxy margin clears as calls in flight settle and fold.
_MARGIN_RETRY_S = 2

Downgrade = Callable[[str], "int | None"]   # model -> worst-case micro-USD if it may serve this call


@dataclass(frozen=True, slots=True)
class Hold:
    key: str
    limit_micro_usd: int
    applied: Applied
    window_end_ms: int
    carve_keys: tuple[str, ...] = ()      # spend measured elsewhere and not counted here


@dataclass(slots=True)
class Reservation:
    amount_micro_usd: int
    holds: tuple[Hold, ...]
    open: bool = True
    model: str = ""                       # serve this model instead (a budget's downgrade at cap)
    rate: Ticket = field(default_factory=lambda: EMPTY)
    keys: tuple[str, ...] = ()
    downgraded_by: Hold | None = field(default=None)

    @property
    def wait_ms(self) -> int:
        return self.rate.wait_ms if self.rate.open else 0

    def tightest(self, policy: "Policy") -> tuple[Hold, int] | None:
        best: tuple[Hold, int] | None = None
        for h in self.holds:
            left = h.limit_micro_usd - policy.used(h)
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
        self._holds: dict[tuple[str, str, str, str, tuple[str, ...]], tuple[int, int, list[Hold]]] = {}
        self.book = book
        self.tz_of = tz_of
        self.increase_hint = increase_hint
        self.proxies = proxies or ProxyCount()
        self.limiter = RateLimiter(limits or RateBook([]), self.proxies, clock)
        self.access = access or ModelAccess([])
        self.waits = waits or WaitQueue()
        self._reserved: dict[str, int] = {}
        self.holds = OpenHolds()           # open reservations, for the sweeper and the gauges (holds.py)
        self._bounds: dict[tuple[str, str], tuple[int, int]] = {}

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
        self._holds.clear()

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
        """(used, folded): the whole view of the budget, and the part the snapshot confirms.

        Summed in nano-USD (spend is kept to the nano; holds are whole micro-USD) and
        rounded up to micro-USD once, so ``used + ... > limit`` is exact."""
        view, res = self.view, self._reserved
        folded = view.folded.get(h.key, ZERO).spend_nano_usd
        used = view.spent_nano(h.key) + res.get(h.key, 0) * NANO_PER_MICRO
        for k in h.carve_keys:
            folded -= view.folded.get(k, ZERO).spend_nano_usd
            used -= view.spent_nano(k) + res.get(k, 0) * NANO_PER_MICRO
        return micro_of_nano(used), micro_of_nano(folded)

    def used(self, h: Hold) -> int:
        return self.measure(h)[0]

    def holds_for(self, p: Principal, tags: tuple[str, ...], now_ms: int) -> list[Hold]:
        """The budgets of a call, as spend keys; cached per caller and tags until a window
        ends, an exception expires or the config changes (no scan over all budgets)."""
        ck = (p.key_id, p.org, p.workspace, p.user, tags)
        hit = self._holds.get(ck)
        if hit is not None and now_ms < hit[0] and now_ms >= hit[1]:
            return hit[2]
        tz = self.tz_of(p.org)
        out = []
        valid_from, valid_until = 0, self._book.next_expiry_ms(now_ms)
        for a in self._book.effective(p, tags, now_ms):
            w = a.budget.window
            start, end = self._window(w, now_ms, tz)
            valid_from, valid_until = max(valid_from, start), min(valid_until, end)
            carve = tuple(spend_key(dim, ent, w, start) for dim, ent in a.carve_out)
            out.append(Hold(spend_key(a.spend_dim, a.entity, w, start), a.budget.limit_micro_usd, a, end, carve))
        if len(self._holds) > 200_000:
            self._holds.clear()
        self._holds[ck] = (valid_until, valid_from, out)
        return out

    def _window(self, window: str, now_ms: int, tz: str) -> tuple[int, int]:
        b = self._bounds.get((window, tz))
        if b is None or not b[0] <= now_ms < b[1]:
            b = self._bounds[(window, tz)] = window_bounds(window, now_ms, tz)
        return b

    # -- reserve / settle -------------------------------------------------------
    def reserve(self, p: Principal, tags: tuple[str, ...], estimate_micro_usd: int, now_ms: int, *,
                tokens: int = 0, downgrade: Downgrade | None = None, max_wait_ms: int = 0) -> Reservation:
        """Hold the worst case on every budget and take the call's rate-limit share, or raise.

        A budget over its cap refuses (``BudgetExceeded``) unless its action is a
        downgrade and ``downgrade(model)`` gives a worst case that fits every budget:
        then that is held and ``Reservation.model`` names the model to serve. Rate
        limits refuse (``RateLimited``) or, within ``max_wait_ms``, book a wait.
        """
        holds = self.holds_for(p, tags, now_ms)
        n = max(1, self.proxies())
        amount, model, by = estimate_micro_usd, "", None
        over = [(h, *m) for h in holds if (m := self._over(h, amount, n)) is not None]
        if over:
            amount, model, by = self._downgrade(holds, over, estimate_micro_usd, downgrade, n, now_ms)
        ticket = self.limiter.acquire(p, tokens, max_wait_ms)      # raises before any hold is placed
        if not holds:
            return Reservation(amount, (), False, model, ticket)
        keys = tuple(dict.fromkeys(k for h in holds for k in (h.key, *h.carve_keys)))
        res = self._reserved
        for k in keys:                      # carved-out spend is reserved where it is measured
            res[k] = res.get(k, 0) + amount
        r = Reservation(amount, tuple(holds), True, model, ticket, keys, by)
        self.holds.add(r)
        return r

    def release(self, r: Reservation, tokens_used: int | None = None, *, forwarded: bool = True) -> None:
        """Drop the hold and settle the rate-limit charge to ``tokens_used`` (None keeps
        the worst case; ``forwarded=False`` gives the request back too). Call it right
        after the call's event went to the ledger (which counts the real cost at once):
        never a moment where neither counts."""
        if forwarded:
            self.limiter.settle(r.rate, tokens_used)
        else:
            self.limiter.cancel(r.rate)
        if not r.open:
            return
        r.open = False
        self.holds.discard(r)
        res = self._reserved
        for k in r.keys:
            left = res.get(k, 0) - r.amount_micro_usd
            if left > 0:
                res[k] = left
            else:
                res.pop(k, None)

    def _over(self, h: Hold, estimate: int, n: int) -> tuple[int, int] | None:
        used, folded = self.measure(h)
        margin = (n - 1) * max(used - folded, 0)
        return (used, margin) if used + margin + estimate > h.limit_micro_usd else None

    def _downgrade(self, holds: list[Hold], over: list[tuple[Hold, int, int]], estimate: int,
                   downgrade: Downgrade | None, n: int, now_ms: int) -> tuple[int, str, Hold]:
        """The cheaper model every over-cap budget names, if it fits them all; else the refusal."""
        stiff = [o for o in over if o[0].applied.budget.action != "downgrade" or not o[0].applied.budget.downgrade_to]
        if stiff or downgrade is None:
            raise self._refusal(*(stiff or over)[0], estimate, now_ms, n)
        tried = []
        for target in dict.fromkeys(o[0].applied.budget.downgrade_to for o in over):
            cheaper = downgrade(target)
            if cheaper is not None and all(self._over(h, cheaper, n) is None for h in holds):
                return cheaper, target, over[0][0]
            tried.append(target)
        raise self._refusal(*over[0], estimate, now_ms, n,
                            note=f" Serving {' or '.join(tried)} instead would not fit either.")

    def _refusal(self, h: Hold, used: int, margin: int, estimate: int, now_ms: int, n: int,
                 note: str = "") -> BudgetExceeded:
        b = h.applied.budget
        spent = (f"spent {micro_to_usd(max(used, 0))} of {micro_to_usd(h.limit_micro_usd)}; "
                 f"this call may cost up to {micro_to_usd(estimate)}")
        if used + estimate <= h.limit_micro_usd:          # only the margin refuses: it clears as calls settle
            wait_s = _MARGIN_RETRY_S
            msg = (f"Budget nearly exhausted: {b.describe()} ({spent}; {micro_to_usd(margin)} is held back "
                   f"for calls in flight at the other {n - 1} gateway proxies). Retry in a few seconds.{note}")
        else:
            wait_s = max(1, -(-(h.window_end_ms - now_ms) // 1000))
            msg = (f"Budget exceeded: {b.describe()} would be exceeded ({spent}). "
                   f"It resets at {iso_utc(h.window_end_ms)} (in {_human(wait_s)}).{note} "
                   f"To get more, {self.increase_hint}.")
        return BudgetExceeded(msg, retry_after_s=wait_s, retry_pointless=wait_s > _RETRY_WORTH_S,
                              headers={"x-llmgw-budget": b.origin or b.record_name})

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


def _human(seconds: int) -> str:
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{max(m, 1)}m" if seconds >= 60 else f"{seconds}s"
