"""Budget policy as data: explicit budgets, defaults and time-boxed exceptions.

A budget caps the spend of one scope over one window. Scopes are
``org:NAME``, ``workspace:NAME``, ``user:NAME``, ``key:KEY_ID`` or
``tag:NAME:VALUE`` (read by ``core/scopes.py``), optionally narrowed to a
project tag (``--tag``), and optionally pinned to one organization (otherwise
the name matches in any org; ``workspace:ORG/NAME`` pins it too).

Resolution for one call (``effective``):
- for each scope of the caller and each window, an explicit budget wins over
  a default for that scope kind;
- an unexpired exception for (scope, tagged project) replaces that scope's
  cap for calls carrying the tag, measured on the scope's spend within the
  project; the project's spend is then carved out of the ordinary cap, so an
  exception lifts one project without lifting, or eating into, the others;
- tag-narrowed budgets add a cap on (scope, project) spend.

Tags that lift or narrow a cap are trusted tags only: the key's own (set
by an admin at ``keys create --tags``) or the gateway's. A tag the client sends
(``x-llmgw-tags``, body metadata) still attributes spend, but matches an
exception or a tag budget only when the budget says clients may set it
(``client_tags``). A call that claims an exception's tag it may not claim is
measured on the scope's whole spend (no carve-out): its spend lands on the
project's key, which the carve-out would otherwise hide from its own cap.

Each budget holds calls ``predicted`` (what calls like this one used lately,
``proxy/holds.py``; the default) or ``strict`` (the worst case).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from llmgw.core import spend_keys as F
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import WINDOWS

from llmgw.core.principal import Principal

HOLDS = ("predicted", "strict")
_PLAIN_DIM = {"org": F.ORG, "workspace": F.WORKSPACE, "user": F.USER, "key": F.KEY}
_TAG_DIM = {"org": F.TAG, "workspace": F.WORKSPACE_TAG, "user": F.USER_TAG}


# No budget, raise or limit is near this: anything above is a typo or an attack on the integer columns.
MAX_USD = 1_000_000_000


def usd_to_micro(usd: str | float | Decimal) -> int:
    try:
        d = Decimal(str(usd).strip())
    except InvalidOperation:
        raise ValueError(f"amount {str(usd)[:40]!r} is not a number of US dollars, e.g. 50 or 12.50") from None
    if not d.is_finite():
        raise ValueError(f"amount {str(usd)[:40]!r} is not a finite number of US dollars")
    if d < 0:
        raise ValueError("a budget limit cannot be negative")
    if d > MAX_USD:
        raise ValueError(f"amount {str(usd)[:40]!r} is over the ${MAX_USD:,} an amount may be")
    return int((d * 1_000_000).to_integral_value())


def micro_to_usd(micro: int) -> str:
    """Dollars with the precision the amount has: cents when it is whole cents ($2.00),
    else every significant micro-USD digit ($0.001, $0.0105), never a sub-cent amount as $0.00."""
    d = Decimal(micro) / 1_000_000
    if micro % 10_000 == 0:
        return f"${d:,.2f}"
    return "$" + f"{d:,.6f}".rstrip("0")


def parse_hold(text: str) -> str:
    if text not in HOLDS:
        raise ValueError(f"hold {text!r}: expected `predicted` (what calls like this one used lately; "
                         "the default) or `strict` (every call's worst case)")
    return text


def parse_action(text: str) -> tuple[str, str]:
    """``refuse`` or ``downgrade:MODEL`` as (action, downgrade_to)."""
    action, _, model = text.partition(":")
    if action == "refuse" and not model:
        return "refuse", ""
    if action == "downgrade" and model.strip():
        return "downgrade", model.strip()
    raise ValueError(f"action {text!r}: expected `refuse` or `downgrade:MODEL` (a cheaper model of the same API)")


@dataclass(frozen=True, slots=True)
class Budget:
    scope_kind: str              # org, workspace, user, key, tag
    name: str                    # entity name, or "*" for a default
    window: str
    limit_micro_usd: int
    org: str = ""                # "" matches any organization
    tag: str = ""                # "project:x" narrows to calls with that tag
    kind: str = "budget"         # budget, default, exception
    until_ms: int = 0            # exceptions end here
    action: str = "refuse"       # or "downgrade"
    downgrade_to: str = ""
    origin: str = ""             # config record id, for `budgets explain`
    hold: str = "predicted"      # or "strict": what a call reserves (module docstring)
    client_tags: bool = False    # a client-sent tag matches this exception / tag budget

    def record(self, actor: str = "cli", reason: str = "") -> ConfigRecord:
        data = {"scope_kind": self.scope_kind, "name": self.name, "window": self.window,
                "limit_micro_usd": self.limit_micro_usd, "org": self.org, "tag": self.tag,
                "kind": self.kind, "until_ms": self.until_ms, "action": self.action,
                "downgrade_to": self.downgrade_to, "hold": self.hold, "client_tags": self.client_tags}
        return ConfigRecord.put("budget", self.record_name, data, actor=actor, reason=reason)

    @property
    def record_name(self) -> str:
        return "|".join((self.kind, self.org, f"{self.scope_kind}:{self.name}", self.tag, self.window))

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> "Budget":
        d = rec.data or {}
        return cls(d["scope_kind"], d["name"], d["window"], int(d["limit_micro_usd"]), d.get("org", ""),
                   d.get("tag", ""), d.get("kind", "budget"), int(d.get("until_ms", 0)),
                   d.get("action", "refuse"), d.get("downgrade_to", ""), rec.id,
                   d.get("hold") or "predicted", bool(d.get("client_tags", False)))

    def describe(self) -> str:
        who = "every " + self.scope_kind if self.name == "*" else f"{self.scope_kind} {self.name}"
        if self.tag:
            who += f" on {self.tag}"
        if self.org:
            who += f" (org {self.org})"
        adj = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}[self.window]
        return f"{who} {adj} budget {micro_to_usd(self.limit_micro_usd)}"

    def at_cap(self) -> str:
        """What happens to a call that would go over: for listings and ``explain``."""
        return f"downgrade to {self.downgrade_to}" if self.action == "downgrade" else "refuse"


@dataclass(frozen=True, slots=True)
class Applied:
    """One budget as it applies to one call: which spend key it caps, minus carve-outs."""

    budget: Budget
    spend_dim: str
    entity: str
    carve_out: tuple[tuple[str, str], ...] = ()   # (dim, entity) whose spend is not counted here


_KINDS = ("org", "workspace", "user", "key")
_NONE: dict[str, list[Budget]] = {}


class BudgetBook:
    """All budgets from the config log, indexed for a per-call lookup in microseconds:
    per (scope kind, name) and per window, so a call touches only its own scopes' budgets."""

    def __init__(self, budgets: list[Budget]) -> None:
        self._by_scope: dict[tuple[str, str], dict[str, list[Budget]]] = {}
        self._defaults: dict[str, dict[str, list[Budget]]] = {}
        self._tags: dict[str, list[Budget]] = {}
        for b in budgets:
            if b.kind == "default":
                self._defaults.setdefault(b.scope_kind, {}).setdefault(b.window, []).append(b)
            elif b.scope_kind == "tag":
                self._tags.setdefault(b.name, []).append(b)
            else:
                self._by_scope.setdefault((b.scope_kind, b.name), {}).setdefault(b.window, []).append(b)
        self.count = len(budgets)
        self._expiries = sorted({b.until_ms for b in budgets if b.kind == "exception" and b.until_ms})

    def next_expiry_ms(self, now_ms: int) -> int:
        """When the next exception ends (after which ``effective`` may answer differently)."""
        i = bisect.bisect_right(self._expiries, now_ms)
        return self._expiries[i] if i < len(self._expiries) else 1 << 62

    @classmethod
    def from_state(cls, state: ConfigState) -> "BudgetBook":
        return cls([Budget.from_record(r) for r in state.of_type("budget")])

    def effective(self, p: Principal, tags: tuple[str, ...], now_ms: int,
                  trusted: tuple[str, ...] | None = None) -> list[Applied]:
        """``trusted``: the tags of ``tags`` the client did not set (None: all of them)."""
        sure = frozenset(tags if trusted is None else trusted)
        out: list[Applied] = []
        names = (p.org, p.workspace, p.user, p.key_id)
        for kind, name in zip(_KINDS, names):
            own = self._by_scope.get((kind, name), _NONE)
            defaults = self._defaults.get(kind, _NONE)
            if not own and not defaults:
                continue
            entity = p.entity(kind)
            for window in WINDOWS:
                mine = [b for b in own.get(window, ()) if b.org in ("", p.org)]
                base = [d for d in defaults.get(window, ()) if d.org in ("", p.org)]
                if mine or base:
                    out.extend(self._for_scope_window(kind, entity, mine, base, tags, sure, now_ms))
        for t in tags:
            for b in self._tags.get(t, ()):
                if b.org in ("", p.org) and b.kind == "budget" and (t in sure or b.client_tags):
                    out.append(Applied(b, F.TAG, f"{p.org}/{t}"))
        return out

    @staticmethod
    def _for_scope_window(kind: str, entity: str, mine: list[Budget], defaults: list[Budget],
                          tags: tuple[str, ...], sure: frozenset[str], now_ms: int) -> list[Applied]:
        plain = [b for b in mine if b.kind == "budget" and not b.tag]
        base = plain or defaults
        if kind not in _TAG_DIM or len(plain) == len(mine):      # the common case: no tag, no exception
            return [Applied(b, _PLAIN_DIM[kind], entity) for b in base]
        exceptions = [b for b in mine if b.kind == "exception" and b.tag and (not b.until_ms or now_ms < b.until_ms)]
        narrowed = [b for b in mine if b.kind == "budget" and b.tag and b.tag in tags
                    and (b.tag in sure or b.client_tags)]
        out = [Applied(b, _TAG_DIM[kind], f"{entity}/{b.tag}") for b in narrowed]
        covering = [e for e in exceptions if e.tag in sure or (e.client_tags and e.tag in tags)]
        if covering:
            out.extend(Applied(e, _TAG_DIM[kind], f"{entity}/{e.tag}") for e in covering)
            return out
        # an exception's tag this call carries untrusted: its spend lands on that project's key,
        # so carving the key out would hide the call from its own cap
        carve = tuple((_TAG_DIM[kind], f"{entity}/{e.tag}") for e in exceptions if e.tag not in tags)
        out.extend(Applied(b, _PLAIN_DIM[kind], entity, carve) for b in base)
        return out
