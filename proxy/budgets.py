"""Budget policy as data: explicit budgets, defaults and time-boxed exceptions.

A budget caps the spend of one scope over one window. Scopes are
``org:NAME``, ``workspace:NAME``, ``user:NAME``, ``key:KEY_ID`` or
``tag:NAME:VALUE``, optionally narrowed to a project tag (``--tag``), and
optionally pinned to one organization (otherwise the name matches in any org).

Resolution for one call (``effective``):
- for each scope of the caller and each window, an explicit budget wins over
  a default for that scope kind;
- an unexpired exception for (scope, tagged project) replaces that scope's
  cap for calls carrying the tag, measured on the scope's spend within the
  project; the project's spend is then carved out of the ordinary cap, so an
  exception lifts one project without lifting, or eating into, the others;
- tag-narrowed budgets add a cap on (scope, project) spend.
"""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from ledger import fold as F
from ledger.configlog import ConfigRecord, ConfigState
from ledger.windows import WINDOWS

from .keys import Principal

SCOPE_KINDS = ("org", "workspace", "user", "key", "tag")
_PLAIN_DIM = {"org": F.ORG, "workspace": F.WORKSPACE, "user": F.USER, "key": F.KEY}
_TAG_DIM = {"org": F.TAG, "workspace": F.WORKSPACE_TAG, "user": F.USER_TAG}


def usd_to_micro(usd: str | float | Decimal) -> int:
    d = Decimal(str(usd))
    if d < 0:
        raise ValueError("a budget limit cannot be negative")
    return int((d * 1_000_000).to_integral_value())


def micro_to_usd(micro: int) -> str:
    return f"${Decimal(micro) / 1_000_000:,.2f}"


def parse_scope(scope: str) -> tuple[str, str]:
    kind, sep, name = scope.partition(":")
    if not sep or kind not in SCOPE_KINDS or not name:
        raise ValueError(f"scope {scope!r}: expected one of "
                         + ", ".join(f"{k}:NAME" for k in SCOPE_KINDS))
    if kind == "tag" and ":" not in name:
        raise ValueError("a tag scope reads tag:NAME:VALUE, e.g. tag:project:payments")
    return kind, name


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

    def record(self, actor: str = "cli", reason: str = "") -> ConfigRecord:
        data = {"scope_kind": self.scope_kind, "name": self.name, "window": self.window,
                "limit_micro_usd": self.limit_micro_usd, "org": self.org, "tag": self.tag,
                "kind": self.kind, "until_ms": self.until_ms, "action": self.action,
                "downgrade_to": self.downgrade_to}
        return ConfigRecord.put("budget", self.record_name, data, actor=actor, reason=reason)

    @property
    def record_name(self) -> str:
        return "|".join((self.kind, self.org, f"{self.scope_kind}:{self.name}", self.tag, self.window))

    @classmethod
    def from_record(cls, rec: ConfigRecord) -> "Budget":
        d = rec.data or {}
        return cls(d["scope_kind"], d["name"], d["window"], int(d["limit_micro_usd"]), d.get("org", ""),
                   d.get("tag", ""), d.get("kind", "budget"), int(d.get("until_ms", 0)),
                   d.get("action", "refuse"), d.get("downgrade_to", ""), rec.id)

    def describe(self) -> str:
        who = "every " + self.scope_kind if self.name == "*" else f"{self.scope_kind} {self.name}"
        if self.tag:
            who += f" on {self.tag}"
        if self.org:
            who += f" (org {self.org})"
        adj = {"hour": "hourly", "day": "daily", "week": "weekly", "month": "monthly"}[self.window]
        return f"{who} {adj} budget {micro_to_usd(self.limit_micro_usd)}"


@dataclass(frozen=True, slots=True)
class Applied:
    """One budget as it applies to one call: which spend key it caps, minus carve-outs."""

    budget: Budget
    spend_dim: str
    entity: str
    carve_out: tuple[tuple[str, str], ...] = ()   # (dim, entity) whose spend is not counted here


def _entity(p: Principal, kind: str) -> str:
    return {"org": p.org, "workspace": f"{p.org}/{p.workspace}", "user": f"{p.org}/{p.user}",
            "key": p.key_id}[kind]


def _name(p: Principal, kind: str) -> str:
    return {"org": p.org, "workspace": p.workspace, "user": p.user, "key": p.key_id}[kind]


class BudgetBook:
    """All budgets from the config log, indexed for a per-call lookup in microseconds."""

    def __init__(self, budgets: list[Budget]) -> None:
        self._by_scope: dict[tuple[str, str], list[Budget]] = {}
        self._defaults: dict[str, list[Budget]] = {}
        for b in budgets:
            if b.kind == "default":
                self._defaults.setdefault(b.scope_kind, []).append(b)
            else:
                self._by_scope.setdefault((b.scope_kind, b.name), []).append(b)
        self.count = len(budgets)

    @classmethod
    def from_state(cls, state: ConfigState) -> "BudgetBook":
        return cls([Budget.from_record(r) for r in state.of_type("budget")])

    def effective(self, p: Principal, tags: tuple[str, ...], now_ms: int) -> list[Applied]:
        out: list[Applied] = []
        for kind in ("org", "workspace", "user", "key"):
            own = [b for b in self._by_scope.get((kind, _name(p, kind)), ()) if b.org in ("", p.org)]
            for window in WINDOWS:
                out.extend(self._for_scope_window(p, kind, window, own, tags, now_ms))
        for t in tags:
            for b in self._by_scope.get(("tag", t), ()):
                if b.org in ("", p.org) and b.kind == "budget":
                    out.append(Applied(b, F.TAG, f"{p.org}/{t}"))
        return out

    def _for_scope_window(self, p: Principal, kind: str, window: str, own: list[Budget],
                          tags: tuple[str, ...], now_ms: int) -> list[Applied]:
        entity = _entity(p, kind)
        mine = [b for b in own if b.window == window]
        exceptions = [b for b in mine if b.kind == "exception" and b.tag and (not b.until_ms or now_ms < b.until_ms)
                      and kind in _TAG_DIM]
        plain = [b for b in mine if b.kind == "budget" and not b.tag]
        narrowed = [b for b in mine if b.kind == "budget" and b.tag and b.tag in tags and kind in _TAG_DIM]
        base = plain or [d for d in self._defaults.get(kind, ()) if d.window == window and d.org in ("", p.org)]
        out = [Applied(b, _TAG_DIM[kind], f"{entity}/{b.tag}") for b in narrowed]
        covering = [e for e in exceptions if e.tag in tags]
        if covering:
            out.extend(Applied(e, _TAG_DIM[kind], f"{entity}/{e.tag}") for e in covering)
            return out
        carve = tuple((_TAG_DIM[kind], f"{entity}/{e.tag}") for e in exceptions)
        out.extend(Applied(b, _PLAIN_DIM[kind], entity, carve) for b in base)
        return out
