"""Budget-increase requests: file, approve (a time-boxed raise, at once), deny, and end raises on time.

A request (record ``increase_request:ID``) names a key, a window, an amount, a
reason and optionally an expiry and the scope to raise. Approval writes the
raise as budget records right away, so every proxy following the config log
lifts the refusal within its follow interval:

- an explicit budget on that scope and window gets ``limit + amount`` and a
  ``raises`` entry ``{request, amount_micro_usd, until_ms}``;
- a scope capped only by a default gets an explicit budget of ``default +
  amount`` marked ``created_by_raise`` (so the default applies again after).

``expired_raises`` gives the records that undo raises whose time is up; the
gateway runs it every second (``routes.py``), and ``llmgw apply`` keeps active
raises on top of the declared limits. A later ``llmgw budgets set`` on the same
budget replaces it outright, raises included.

Which scope: the request's ``scope`` if given (``user:alice``); else the
scope of the budget with the least headroom in that window (the one that
refused; the gateway knows spend), else, offline, the narrowest capped scope
(key, then user, workspace, org).
"""
from __future__ import annotations

import secrets
from typing import Any

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import WINDOWS, window_bounds
from llmgw.core.budgets import Applied, Budget, BudgetBook, micro_to_usd
from llmgw.core.scopes import ENTITY_KINDS, parse_scope
from llmgw.core.principal import Principal

from .errors import Conflict, NotFound
from .roles import AdminPrincipal
from llmgw.core.timeutil import iso_ms

TYPE = "increase_request"
PENDING, APPROVED, DENIED, EXPIRED = "pending", "approved", "denied", "expired"
MAX_PENDING_PER_KEY = 5
_ORDER = ("key", "user", "workspace", "org")


def principal_of(state: ConfigState, key_id: str) -> Principal:
    rec = state.get("key", key_id)
    if rec is None or rec.data is None:
        raise NotFound(f"no key {key_id}")
    d = rec.data
    return Principal(d["key_id"], d["org"], d["workspace"], d["user"], tuple(d.get("tags") or ()))


def scope_name(p: Principal, kind: str) -> str:
    return {"org": p.org, "workspace": p.workspace, "user": p.user, "key": p.key_id}[kind]


def file_request(state: ConfigState, *, key_id: str, window: str, amount_micro_usd: int, reason: str,
                 expires_ms: int, scope: str, requested_by: str, now_ms: int) -> ConfigRecord:
    p = principal_of(state, key_id)
    if window not in WINDOWS:
        raise ValueError(f"window {window!r}: expected one of {', '.join(WINDOWS)}")
    if amount_micro_usd <= 0:
        raise ValueError("the amount must be more than zero")
    if not reason.strip():
        raise ValueError("a reason is required: approvers and the audit log need it")
    if expires_ms and expires_ms <= now_ms:
        raise ValueError("the expiry is in the past")
    if scope:
        sc = parse_scope(scope, "", ENTITY_KINDS)
        if sc.name != scope_name(p, sc.kind) or (sc.org and sc.org != p.org):
            raise ValueError(f"scope {scope!r} is not one of this key's scopes: "
                             + ", ".join(f"{k}:{scope_name(p, k)}" for k in _ORDER))
    pending = [r for r in state.of_type(TYPE) if (r.data or {}).get("key_id") == key_id
               and (r.data or {}).get("status") == PENDING]
    if len(pending) >= MAX_PENDING_PER_KEY:
        raise Conflict(f"key {key_id} already has {len(pending)} pending increase requests")
    req_id = "ir" + secrets.token_hex(5)
    data = {"id": req_id, "key_id": key_id, "org": p.org, "workspace": p.workspace, "user": p.user,
            "window": window, "amount_micro_usd": amount_micro_usd, "reason": reason, "scope": scope,
            "expires_ms": expires_ms, "status": PENDING, "requested_by": requested_by,
            "requested_ms": now_ms}
    return ConfigRecord.put(TYPE, req_id, data, actor=requested_by, reason=reason)


def get_request(state: ConfigState, req_id: str) -> ConfigRecord:
    rec = state.get(TYPE, req_id)
    if rec is None or rec.data is None:
        raise NotFound(f"no increase request {req_id}")
    return rec


def request_view(rec: ConfigRecord) -> dict[str, Any]:
    d = dict(rec.data or {})
    d["amount_usd"] = micro_to_usd(int(d.get("amount_micro_usd", 0))).lstrip("$").replace(",", "")
    d["expires"] = iso_ms(int(d.get("expires_ms") or 0))
    d["until"] = iso_ms(int(d.get("until_ms") or 0))
    return d


# -- approval -----------------------------------------------------------------------------------
def raise_targets(state: ConfigState, req: dict[str, Any], now_ms: int,
                  tightest_kind: str | None = None) -> tuple[Principal, str, list[Applied]]:
    """The budgets an approval raises: (principal, scope kind, applied budgets of that kind)."""
    p = principal_of(state, req["key_id"])
    applied = [a for a in BudgetBook.from_state(state).effective(p, (), now_ms)
               if a.budget.window == req["window"] and not a.budget.tag and a.budget.scope_kind in _ORDER]
    if req.get("scope"):
        kind = parse_scope(req["scope"], "", ENTITY_KINDS).kind
    elif tightest_kind:
        kind = tightest_kind
    else:
        kind = next((k for k in _ORDER if any(a.budget.scope_kind == k for a in applied)), "")
    targets = [a for a in applied if a.budget.scope_kind == kind]
    if not targets:
        raise Conflict(f"no {req['window']} budget caps key {p.key_id}"
                       + (f" on {req['scope']}" if req.get("scope") else "") + "; there is nothing to raise")
    return p, kind, targets


def approve(state: ConfigState, rec: ConfigRecord, approver: AdminPrincipal, *, now_ms: int, reason: str,
            tz: str = "UTC", tightest_kind: str | None = None) -> tuple[list[ConfigRecord], list[Budget]]:
    """The records that raise the budget(s) and mark the request approved, and the raised budgets
    (so the caller can check the approver's scope over each with ``authorize_budget``)."""
    req = dict(rec.data or {})
    if req.get("status") != PENDING:
        raise Conflict(f"increase request {req.get('id')} is already {req.get('status')}")
    until_ms = int(req.get("expires_ms") or 0) or window_bounds(req["window"], now_ms, tz)[1]
    if until_ms <= now_ms:
        raise Conflict("the requested expiry has already passed; file a new request")
    p, kind, targets = raise_targets(state, req, now_ms, tightest_kind)
    amount = int(req["amount_micro_usd"])
    entry = {"request": req["id"], "amount_micro_usd": amount, "until_ms": until_ms}
    out: list[ConfigRecord] = []
    budgets: list[Budget] = []
    explicit = [a.budget for a in targets if a.budget.kind == "budget"]
    for b in explicit:
        cur = state.records[b.origin]
        data = dict(cur.data or {})
        data["limit_micro_usd"] = int(data["limit_micro_usd"]) + amount
        data["raises"] = [*(data.get("raises") or []), entry]
        out.append(ConfigRecord(cur.id, "budget", data, now_ms, approver.actor, reason or req["reason"]))
        budgets.append(b)
    if not explicit:                         # only defaults cap this scope: pin an explicit budget
        base = min(a.budget.limit_micro_usd for a in targets)
        b = Budget(kind, scope_name(p, kind), req["window"], base + amount, org="" if kind == "key" else p.org)
        r = b.record(actor=approver.actor, reason=reason or req["reason"])
        data = {**(r.data or {}), "raises": [entry], "created_by_raise": True}
        out.append(ConfigRecord(r.id, r.type, data, now_ms, r.actor, r.reason))
        budgets.append(b)
    req.update(status=APPROVED, decided_by=approver.actor, decided_ms=now_ms, decision_reason=reason,
               until_ms=until_ms, raised=[r.id for r in out])
    out.append(ConfigRecord(rec.id, TYPE, req, now_ms, approver.actor, reason or "approved"))
    return out, budgets


def deny(rec: ConfigRecord, approver: AdminPrincipal, *, now_ms: int, reason: str) -> ConfigRecord:
    req = dict(rec.data or {})
    if req.get("status") != PENDING:
        raise Conflict(f"increase request {req.get('id')} is already {req.get('status')}")
    req.update(status=DENIED, decided_by=approver.actor, decided_ms=now_ms, decision_reason=reason)
    return ConfigRecord(rec.id, TYPE, req, now_ms, approver.actor, reason or "denied")


# -- expiry -------------------------------------------------------------------------------------
def expired_raises(state: ConfigState, now_ms: int, actor: str = "increase-expiry") -> list[ConfigRecord]:
    """Records that take back every raise whose ``until_ms`` has passed, and mark its request expired."""
    out: list[ConfigRecord] = []
    ended: list[str] = []
    for rec in state.of_type("budget"):
        data = rec.data or {}
        raises = data.get("raises") or []
        gone = [r for r in raises if int(r["until_ms"]) <= now_ms]
        if not gone:
            continue
        keep = [r for r in raises if int(r["until_ms"]) > now_ms]
        ids = [r["request"] for r in gone]
        ended.extend(ids)
        why = f"raise from increase request {', '.join(ids)} ended"
        if not keep and data.get("created_by_raise"):
            out.append(ConfigRecord(rec.id, "budget", None, now_ms, actor, why))
            continue
        new = dict(data)
        new["limit_micro_usd"] = max(0, int(data["limit_micro_usd"]) - sum(int(r["amount_micro_usd"]) for r in gone))
        new["raises"] = keep
        out.append(ConfigRecord(rec.id, "budget", new, now_ms, actor, why))
    for req_id in dict.fromkeys(ended):
        req = state.get(TYPE, req_id)
        if req is not None and req.data and req.data.get("status") == APPROVED:
            out.append(ConfigRecord(req.id, TYPE, {**req.data, "status": EXPIRED}, now_ms, actor, "raise ended"))
    return out


def active_raise_micro(data: dict[str, Any], now_ms: int) -> int:
    return sum(int(r["amount_micro_usd"]) for r in data.get("raises") or () if int(r["until_ms"]) > now_ms)
