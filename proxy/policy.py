"""The check before the call: reserve the worst case against every budget.

The view checked for each budget is: settled spend from the snapshot, plus
this proxy's settled calls the snapshot does not show yet, plus this proxy's
open reservations. Everything is in memory and synchronous: no await between
reading the view and placing the hold, so concurrent requests on one event
loop cannot both squeeze under the same cap.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from ledger.fold import spend_key
from ledger.spend import SpendView
from ledger.windows import iso_utc, window_bounds

from .budgets import Applied, BudgetBook, micro_to_usd
from .errors import BudgetExceeded, PolicyDenied
from .keys import Principal

# Waiting for a window shorter than this to reset is worth an SDK retry.
_RETRY_WORTH_S = 60


@dataclass(frozen=True, slots=True)
class Hold:
    key: str
    limit_micro_usd: int
    applied: Applied
    window_end_ms: int


@dataclass(slots=True)
class Reservation:
    amount_micro_usd: int
    holds: tuple[Hold, ...]
    open: bool = True

    def tightest(self, policy: "Policy") -> tuple[Hold, int] | None:
        best: tuple[Hold, int] | None = None
        for h in self.holds:
            left = h.limit_micro_usd - policy.used(h)
            if best is None or left < best[1]:
                best = (h, left)
        return best


class Policy:
    def __init__(self, view: SpendView, book: BudgetBook, tz_of=lambda org: "UTC",
                 increase_hint: str = "ask an admin to run `llmgw budgets set` or `llmgw request-increase`") -> None:
        self.view = view
        self.book = book
        self.tz_of = tz_of
        self.increase_hint = increase_hint
        self._reserved: dict[str, int] = {}

    # -- model access ---------------------------------------------------------
    @staticmethod
    def check_model(p: Principal, model: str) -> None:
        if p.allowed_models and not any(fnmatch.fnmatchcase(model, pat) for pat in p.allowed_models):
            raise PolicyDenied(f"model {model!r} is not allowed for this key; allowed: "
                               + ", ".join(p.allowed_models))

    # -- the view -----------------------------------------------------------
    def used(self, h: Hold) -> int:
        a = h.applied
        start = h.key.rsplit("|", 1)[1]
        total = self.view.spent(h.key) + self._reserved.get(h.key, 0)
        for dim, ent in a.carve_out:
            k = spend_key(dim, ent, a.budget.window, int(start))
            total -= self.view.spent(k) + self._reserved.get(k, 0)
        return total

    def holds_for(self, p: Principal, tags: tuple[str, ...], now_ms: int) -> list[Hold]:
        tz = self.tz_of(p.org)
        out = []
        for a in self.book.effective(p, tags, now_ms):
            start, end = window_bounds(a.budget.window, now_ms, tz)
            out.append(Hold(spend_key(a.spend_dim, a.entity, a.budget.window, start),
                            a.budget.limit_micro_usd, a, end))
        return out

    # -- reserve / settle -------------------------------------------------------
    def reserve(self, p: Principal, tags: tuple[str, ...], estimate_micro_usd: int, now_ms: int) -> Reservation:
        holds = self.holds_for(p, tags, now_ms)
        for h in holds:
            used = self.used(h)
            if used + estimate_micro_usd > h.limit_micro_usd:
                raise self._refusal(h, used, estimate_micro_usd, now_ms)
        keys = {h.key for h in holds}
        for h in holds:
            for dim, ent in h.applied.carve_out:   # carved-out spend is reserved where it is measured
                keys.add(spend_key(dim, ent, h.applied.budget.window, int(h.key.rsplit("|", 1)[1])))
        for k in keys:
            self._reserved[k] = self._reserved.get(k, 0) + estimate_micro_usd
        return Reservation(estimate_micro_usd, tuple(holds), open=True) if holds else Reservation(
            estimate_micro_usd, (), open=False)

    def release(self, r: Reservation) -> None:
        """Drop the hold. Call it right after the call's event went to the ledger
        (which counts the real cost at once): never a moment where neither counts."""
        if not r.open:
            return
        r.open = False
        keys = {h.key for h in r.holds}
        for h in r.holds:
            for dim, ent in h.applied.carve_out:
                keys.add(spend_key(dim, ent, h.applied.budget.window, int(h.key.rsplit("|", 1)[1])))
        for k in keys:
            left = self._reserved.get(k, 0) - r.amount_micro_usd
            if left > 0:
                self._reserved[k] = left
            else:
                self._reserved.pop(k, None)

    def _refusal(self, h: Hold, used: int, estimate: int, now_ms: int) -> BudgetExceeded:
        b = h.applied.budget
        wait_s = max(1, -(-(h.window_end_ms - now_ms) // 1000))
        msg = (f"Budget exceeded: {b.describe()} would be exceeded "
               f"(spent {micro_to_usd(max(used, 0))} of {micro_to_usd(h.limit_micro_usd)}; "
               f"this call may cost up to {micro_to_usd(estimate)}). "
               f"It resets at {iso_utc(h.window_end_ms)} (in {_human(wait_s)}). "
               f"To get more, {self.increase_hint}.")
        return BudgetExceeded(msg, retry_after_s=wait_s, retry_pointless=wait_s > _RETRY_WORTH_S,
                              headers={"x-llmgw-budget": b.origin or b.record_name})

    def remaining_headers(self, r: Reservation) -> dict[str, str]:
        t = r.tightest(self)
        if t is None:
            return {}
        h, left = t
        b = h.applied.budget
        return {"x-llmgw-budget-remaining-usd": f"{max(left, 0) / 1_000_000:.6f}",
                "x-llmgw-budget-limit-usd": f"{b.limit_micro_usd / 1_000_000:.6f}",
                "x-llmgw-budget-window": b.window,
                "x-llmgw-budget-scope": f"{b.scope_kind}:{h.applied.entity}" + (f" {b.tag}" if b.tag else ""),
                "x-llmgw-budget-reset": iso_utc(h.window_end_ms)}


def _human(seconds: int) -> str:
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m = rem // 60
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{max(m, 1)}m" if seconds >= 60 else f"{seconds}s"
