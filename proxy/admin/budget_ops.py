"""Budgets, defaults and exceptions from admin JSON, and who may write which.

The budget model itself lives in ``core/budgets.py``; this module only turns
request bodies into ``Budget`` values, renders them, and answers "which
workspaces does this budget touch?" so that a workspace admin is kept to its own.
"""
from __future__ import annotations

from decimal import Decimal
from typing import Any, Mapping

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import WINDOWS
from llmgw.core.budgets import MAX_USD, Budget, parse_hold, usd_to_micro
from llmgw.core.scopes import parse_scope

from .entities import user_workspaces
from .errors import Forbidden, NotFound
from .roles import WORKSPACE_ADMIN, WRITE_BUDGETS, WRITE_DEFAULTS, AdminPrincipal
from llmgw.core.timeutil import iso_ms, parse_instant_ms

KINDS = ("budget", "default", "exception")


def money_micro(body: Mapping[str, Any], base: str, *, required: bool = True) -> int | None:
    """``<base>_micro_usd`` (an int, the wire unit) or ``<base>_usd`` (a decimal string or number)."""
    micro, usd = body.get(f"{base}_micro_usd"), body.get(f"{base}_usd")
    if micro is not None:
        if isinstance(micro, bool) or not isinstance(micro, int) or not 0 <= micro <= MAX_USD * 1_000_000:
            raise ValueError(f"{base}_micro_usd must be an integer from 0 to {MAX_USD * 1_000_000} "
                             "(1 USD = 1,000,000)")
        return micro
    if usd is not None:
        if isinstance(usd, bool) or not isinstance(usd, (int, float, str)):
            raise ValueError(f"{base}_usd must be a number or a decimal string")
        return usd_to_micro(str(usd))
    if required:
        raise ValueError(f"missing {base}_usd (e.g. \"50\") or {base}_micro_usd (e.g. 50000000)")
    return None


def budget_from_json(body: Mapping[str, Any], kind: str, now_ms: int) -> Budget:
    window = body.get("window")
    if window not in WINDOWS:
        raise ValueError(f"window {window!r}: expected one of {', '.join(WINDOWS)}")
    limit = money_micro(body, "limit")
    org, tag = str(body.get("org") or ""), str(body.get("tag") or "")
    if kind == "default":
        scope_kind = body.get("scope_kind")
        if scope_kind not in ("org", "workspace", "user", "key"):
            raise ValueError("scope_kind must be one of org, workspace, user, key")
        return Budget(scope_kind, "*", window, limit or 0, org=org, kind="default",
                      hold=parse_hold(str(body.get("hold") or "predicted")))
    sc = parse_scope(str(body.get("scope") or ""), org)
    scope_kind, name, org = sc.kind, sc.name, sc.org
    until_ms = 0
    if kind == "exception":
        if not tag:
            raise ValueError("an exception needs `tag` (the project it lifts, e.g. project:payments)")
        until = body.get("until")
        if not until and not body.get("until_ms"):
            raise ValueError("an exception needs `until` (ISO date/time) or `until_ms`")
        until_ms = int(body["until_ms"]) if body.get("until_ms") else parse_instant_ms(str(until), now_ms)
    extra = {k: str(body[k]) for k in ("action", "downgrade_to") if body.get(k)}
    return Budget(scope_kind, name, window, limit or 0, org=org, tag=tag, kind=kind, until_ms=until_ms,
                  hold=parse_hold(str(body.get("hold") or "predicted")), client_tags=body.get("client_tags") is True,
                  **extra)


def budget_view(rec: ConfigRecord) -> dict[str, Any]:
    b = Budget.from_record(rec)
    d = rec.data or {}
    return {"id": rec.id, "kind": b.kind, "scope": f"{b.scope_kind}:{b.name}", "org": b.org, "tag": b.tag,
            "window": b.window, "limit_micro_usd": b.limit_micro_usd,
            "limit_usd": str(Decimal(b.limit_micro_usd) / 1_000_000), "until_ms": b.until_ms,
            "until": iso_ms(b.until_ms), "action": b.action, "downgrade_to": b.downgrade_to,
            "hold": b.hold, "client_tags": b.client_tags,
            "raises": d.get("raises") or [], "description": b.describe()}


def scope_workspaces(state: ConfigState, kind: str, name: str, org: str) -> set[str] | None:
    """The ORG/WORKSPACEs a scope reaches; None when it reaches past workspaces (a default, org-wide,
    any org, a tag). Shared by budgets, rate limits and model lists."""
    if name == "*" or kind in ("org", "tag"):
        return None
    if kind == "key":
        rec = state.get("key", name)
        return {f"{rec.data['org']}/{rec.data['workspace']}"} if rec and rec.data else None
    if not org:                       # a name matched in every organization
        return None
    if kind == "workspace":
        return {f"{org}/{name}"}
    return user_workspaces(state, org, name) or None


def budget_workspaces(state: ConfigState, b: Budget) -> set[str] | None:
    return None if b.kind == "default" else scope_workspaces(state, b.scope_kind, b.name, b.org)


def authorize_scope(p: AdminPrincipal, state: ConfigState, what: str, kind: str, name: str, org: str,
                    permission: str) -> None:
    """Raise ``Forbidden`` unless ``p`` has ``permission`` over a scope (kind, name, org)."""
    p.require(permission)
    if p.role != WORKSPACE_ADMIN:
        return
    touched = scope_workspaces(state, kind, name, org)
    if touched is None:
        raise Forbidden(f"{what} reaches past a workspace (org-wide, any org, tag or default); "
                        "only an owner may change it — pin `org` and use a scope inside your workspace")
    outside = sorted(w for w in touched if w not in p.workspaces)
    if outside:
        raise Forbidden(f"{what} applies in {', '.join(outside)}, outside this admin's scope "
                        f"({', '.join(p.workspaces)})")


def authorize_budget(p: AdminPrincipal, state: ConfigState, b: Budget) -> None:
    """Raise ``Forbidden`` unless ``p`` may create, change or delete ``b``."""
    if b.kind == "default":
        p.require(WRITE_DEFAULTS)
        return
    authorize_scope(p, state, b.describe(), b.scope_kind, b.name, b.org, WRITE_BUDGETS)


def visible_to(p: AdminPrincipal, state: ConfigState, b: Budget) -> bool:
    if p.role != WORKSPACE_ADMIN or b.kind == "default":
        return True
    touched = budget_workspaces(state, b)
    return touched is not None and all(w in p.workspaces for w in touched)


def one_budget(state: ConfigState, rid: str, kind: str) -> ConfigRecord:
    rec = state.records.get(rid)
    if rec is None or rec.type != "budget" or rec.data is None or rec.data.get("kind", "budget") != kind:
        raise NotFound(f"no {kind} {rid}")
    return rec


def delete_budget(state: ConfigState, rid: str, kind: str, p: AdminPrincipal, reason: str,
                  now_ms: int) -> ConfigRecord:
    """The record that deletes budget ``rid`` (a budget, default or exception), if ``p`` may:
    ``DELETE /admin/budgets/{id}`` and ``llmgw budgets delete`` alike."""
    rec = one_budget(state, rid, kind)
    authorize_budget(p, state, Budget.from_record(rec))
    return ConfigRecord(rid, "budget", None, now_ms, p.actor, reason)


def budget_records(state: ConfigState, kind: str) -> list[ConfigRecord]:
    return sorted((r for r in state.of_type("budget") if (r.data or {}).get("kind", "budget") == kind),
                  key=lambda r: r.id)
