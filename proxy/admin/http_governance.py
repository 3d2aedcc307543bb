"""The audit log, budget-increase requests (admins and, for their own key, engineers) and config as code."""
from __future__ import annotations

import time
from typing import Any, Callable

from aiohttp import web

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.proxy.context import Gateway

from . import apply as A
from . import audit
from . import increase as I
from .budget_ops import authorize_budget, money_micro
from .errors import BadRequest, NotFound
from .roles import APPLY, APPROVE_INCREASE, READ_AUDIT, READ_CONFIG, REQUEST_INCREASE, WORKSPACE_ADMIN
from .runtime import ADMIN, admin_of, change, gateway, json_body, now_ms, reason_of, reply
from llmgw.core.timeutil import parse_duration_s, parse_instant_ms
from llmgw.ledger.audit import audit_entries, read_history

routes = web.RouteTableDef()


def since_ms(text: str, now: int) -> int:
    """``--since``: an ISO date/time, or a duration ago (``24h``, ``7d``)."""
    try:
        return now - parse_duration_s(text) * 1000
    except ValueError:
        return parse_instant_ms(text, now)


# -- audit -------------------------------------------------------------------------------------
@routes.get("/admin/audit")
async def get_audit(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_AUDIT)
    q = request.query
    try:
        limit = int(q.get("limit", "1000"))
    except ValueError:
        raise BadRequest("limit must be an integer") from None
    entries = audit_entries(await read_history(request.app[ADMIN].log))
    if p.role == WORKSPACE_ADMIN:
        entries = [e for e in entries if audit.touches_workspaces(e, p.workspaces)]
    types = tuple(t for t in q.get("type", "").split(",") if t)
    picked = audit.select(entries, since_ms=since_ms(q["since"], now_ms()) if q.get("since") else 0,
                          types=types, actor=q.get("actor", ""), record_id=q.get("id", ""), limit=limit)
    return reply({"data": picked})


# -- increase requests -------------------------------------------------------------------------
def tightest_kind(gw: Gateway, key_id: str, window: str) -> str | None:
    """The scope kind of the budget with the least headroom for this key in this window (None: no cap)."""
    p = I.principal_of(gw.config, key_id)
    holds = [h for h in gw.policy.holds_for(p, (), int(time.time() * 1000))
             if h.applied.budget.window == window and not h.applied.budget.tag]
    if not holds:
        return None
    return min(holds, key=lambda h: h.limit_micro_usd - gw.policy.used(h)).applied.budget.scope_kind


def _file(request: web.Request, body: dict[str, Any], key_id: str,
          requested_by: str) -> Callable[[ConfigState], tuple[list[ConfigRecord], dict[str, Any]]]:
    gw = gateway(request)
    amount = money_micro(body, "amount") or 0
    now = now_ms()
    expires = parse_instant_ms(str(body["expires"]), now) if body.get("expires") else 0
    window = str(body.get("window") or "")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        scope = str(body.get("scope") or "")
        if not scope and state.get("key", key_id) is not None and window:
            kind = tightest_kind(gw, key_id, window)
            if kind:
                scope = f"{kind}:{I.scope_name(I.principal_of(state, key_id), kind)}"
        rec = I.file_request(state, key_id=key_id, window=window, amount_micro_usd=amount,
                             reason=str(body.get("reason") or ""), expires_ms=expires, scope=scope,
                             requested_by=requested_by, now_ms=now)
        return [rec], I.request_view(rec)
    return compute


@routes.post("/admin/increase-requests")
async def file_as_admin(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    key_id = str(body.get("key_id") or "")
    rec = gateway(request).config.get("key", key_id)
    if rec is None or rec.data is None:
        raise NotFound(f"no key {key_id}")
    p.require(REQUEST_INCREASE, rec.data["org"], rec.data["workspace"])
    return reply(await change(request, _file(request, body, key_id, p.actor)), 201)


@routes.post("/v1/llmgw/increase-requests")
async def file_as_client(request: web.Request) -> web.Response:
    """The one governance call a client key may make: ask for more on its own key."""
    principal = gateway(request).authenticate(request)
    body = await json_body(request)
    if body.get("key_id") not in (None, "", principal.key_id):
        raise BadRequest("a client key can only ask for more on itself; leave key_id out")
    return reply(await change(request, _file(request, body, principal.key_id, f"key:{principal.key_id}")), 201)


@routes.get("/v1/llmgw/increase-requests/{id}")
async def status_as_client(request: web.Request) -> web.Response:
    principal = gateway(request).authenticate(request)
    rec = I.get_request(gateway(request).config, request.match_info["id"])
    if (rec.data or {}).get("key_id") != principal.key_id:
        raise NotFound(f"no increase request {request.match_info['id']} for this key")
    return reply(I.request_view(rec))


@routes.get("/admin/increase-requests")
async def list_requests(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_CONFIG)
    status = request.query.get("status")
    recs = sorted(gateway(request).config.of_type(I.TYPE), key=lambda r: (r.data or {}).get("requested_ms", 0))
    return reply({"data": [I.request_view(r) for r in recs if r.data
                           and (not status or r.data["status"] == status)
                           and p.covers(r.data["org"], r.data["workspace"])]})


@routes.get("/admin/increase-requests/{id}")
async def get_request(request: web.Request) -> web.Response:
    p = admin_of(request)
    rec = I.get_request(gateway(request).config, request.match_info["id"])
    p.require(READ_CONFIG, rec.data["org"], rec.data["workspace"])  # type: ignore[index]
    return reply(I.request_view(rec))


@routes.post("/admin/increase-requests/{id}/approve")
async def approve(request: web.Request) -> web.Response:
    p, body, gw = admin_of(request), await json_body(request), gateway(request)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        rec = I.get_request(state, request.match_info["id"])
        d = rec.data or {}
        p.require(APPROVE_INCREASE, d["org"], d["workspace"])
        kind = None if d.get("scope") else tightest_kind(gw, d["key_id"], d["window"])
        records, budgets = I.approve(state, rec, p, now_ms=now_ms(), reason=reason_of(request, body),
                                     tz=gw.tz_of(d["org"]), tightest_kind=kind)
        for b in budgets:
            authorize_budget(p, state, b)
        return records, I.request_view(records[-1])
    return reply(await change(request, compute))


@routes.post("/admin/increase-requests/{id}/deny")
async def deny(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        rec = I.get_request(state, request.match_info["id"])
        p.require(APPROVE_INCREASE, rec.data["org"], rec.data["workspace"])  # type: ignore[index]
        out = I.deny(rec, p, now_ms=now_ms(), reason=reason_of(request, body))
        return [out], I.request_view(out)
    return reply(await change(request, compute))


# -- config as code ----------------------------------------------------------------------------
@routes.post("/admin/apply")
async def apply_config(request: web.Request) -> web.Response:
    """Body: the YAML (or JSON) document. ``?dry_run=true`` shows the diff and changes nothing."""
    p = admin_of(request)
    p.require(APPLY)
    doc = A.load(await request.text())
    dry = request.query.get("dry_run", "").lower() in ("1", "true", "yes")
    reason = reason_of(request)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], list[str]]:
        changes = A.plan(state, doc, actor=p.actor, reason=reason, now_ms=now_ms())
        return ([] if dry else [c.record for c in changes]), A.render(changes)
    lines = await change(request, compute)
    return reply({"dry_run": dry, "changes": lines, "applied": 0 if dry else len(lines)})
