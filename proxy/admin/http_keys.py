"""``/admin/keys``: create (the key is returned once), list, rotate, revoke, expire, models and tags,
and the budgets that apply to a key with their spend in the current window."""
from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.proxy import keys as K
from llmgw.core.budgets import micro_to_usd
from llmgw.core.scopes import parse_workspace

from . import entities as E
from .errors import NotFound
from .increase import principal_of
from .roles import READ_KEYS, READ_SPEND, WRITE_KEYS, AdminPrincipal
from .runtime import admin_of, change, gateway, json_body, now_ms, reason_of, reply
from llmgw.core.timeutil import iso_ms, parse_instant_ms

routes = web.RouteTableDef()


def _key(state: ConfigState, key_id: str, p: AdminPrincipal, permission: str) -> ConfigRecord:
    rec = state.get("key", key_id)
    if rec is None or rec.data is None:
        raise NotFound(f"no key {key_id}")
    p.require(permission, rec.data["org"], rec.data["workspace"])
    return rec


def _expires(body: dict[str, Any]) -> int:
    if body.get("expires_ms") is not None:
        return int(body["expires_ms"])
    return parse_instant_ms(str(body["expires"]), now_ms()) if body.get("expires") else 0


@routes.get("/admin/keys")
async def list_keys(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_KEYS)
    q, now = dict(request.query), now_ms()
    if "/" in q.get("workspace", "") or q.get("workspace", "").startswith("workspace:"):
        q["org"], q["workspace"] = parse_workspace(q["workspace"], q.get("org", ""))
    out = [E.key_view(r, now) for r in sorted(gateway(request).config.of_type("key"), key=lambda r: r.ts_ms)
           if r.data and p.covers(r.data["org"], r.data["workspace"])
           and all(not q.get(f) or r.data[f] == q[f] for f in ("org", "workspace", "user"))]
    return reply({"data": out})


@routes.post("/admin/keys")
async def create_key(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    org, ws, user = (str(body.get(f) or "") for f in ("org", "workspace", "user"))
    if "/" in ws or ws.startswith("workspace:"):      # ORG/NAME, as the API prints a workspace
        org, ws = parse_workspace(ws, org)
    p.require(WRITE_KEYS, org, ws)
    expires = _expires(body)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        key, rec = E.create_key(org, ws, user, state=state, admin=p, tags=E.check_tags(body.get("tags")),
                                allowed_models=E.check_models(body.get("allowed_models")), expires_ms=expires,
                                alias=str(body.get("alias") or ""), metadata=body.get("metadata"),
                                actor=p.actor, reason=reason_of(request, body))
        return [rec], {**E.key_view(rec), "key": key}
    view = await change(request, compute)
    return reply(view, 201)


@routes.get("/admin/keys/{key_id}")
async def get_key(request: web.Request) -> web.Response:
    p = admin_of(request)
    return reply(E.key_view(_key(gateway(request).config, request.match_info["key_id"], p, READ_KEYS)))


@routes.patch("/admin/keys/{key_id}")
async def update_key(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    changes: dict[str, Any] = {f: body[f] for f in ("allowed_models", "tags", "alias", "metadata") if f in body}
    if "expires" in body or "expires_ms" in body:
        changes["expires_ms"] = _expires(body)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        rec = E.update_key(_key(state, request.match_info["key_id"], p, WRITE_KEYS), changes, p.actor,
                           reason_of(request, body))
        return [rec], E.key_view(rec)
    return reply(await change(request, compute))


@routes.post("/admin/keys/{key_id}/rotate")
async def rotate_key(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        key, rec = E.rotate_key(_key(state, request.match_info["key_id"], p, WRITE_KEYS), p.actor,
                                reason_of(request, body))
        return [rec], {**E.key_view(rec), "key": key}
    return reply(await change(request, compute))


@routes.post("/admin/keys/{key_id}/expire")
async def expire_key(request: web.Request) -> web.Response:
    """Expire now, or at ``expires``/``expires_ms``: the key stays listed, calls are refused after."""
    p, body = admin_of(request), await json_body(request)
    at = _expires(body) or now_ms()

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        rec = E.update_key(_key(state, request.match_info["key_id"], p, WRITE_KEYS), {"expires_ms": at},
                           p.actor, reason_of(request, body))
        return [rec], E.key_view(rec)
    return reply(await change(request, compute))


@routes.delete("/admin/keys/{key_id}")
async def revoke_key(request: web.Request) -> web.Response:
    p = admin_of(request)
    key_id = request.match_info["key_id"]

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        _key(state, key_id, p, WRITE_KEYS)
        return [K.revoke(key_id, actor=p.actor, reason=reason_of(request))], {"revoked": key_id}
    return reply(await change(request, compute))


@routes.get("/admin/keys/{key_id}/budgets")
async def key_budgets(request: web.Request) -> web.Response:
    """Every budget that applies now to a call carrying only the key's own tags, with spend and headroom."""
    p, gw = admin_of(request), gateway(request)
    _key(gw.config, request.match_info["key_id"], p, READ_SPEND)
    principal = principal_of(gw.config, request.match_info["key_id"])
    out = []
    for h in gw.policy.holds_for(principal, principal.tags, int(time.time() * 1000)):
        b, used = h.applied.budget, gw.policy.used(h)
        out.append({"budget": b.origin or b.record_name, "kind": b.kind, "description": b.describe(),
                    "window": b.window, "limit_micro_usd": h.limit_micro_usd, "spent_micro_usd": used,
                    "remaining_micro_usd": h.limit_micro_usd - used,
                    "remaining": micro_to_usd(max(0, h.limit_micro_usd - used)),
                    "resets": iso_ms(h.window_end_ms)})
    return reply({"data": out})
