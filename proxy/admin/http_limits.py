"""``/admin/rate-limits`` and ``/admin/model-lists``: the policy records of ``proxy/ratelimit.py`` and
``proxy/access.py``, written with the same role and workspace checks as budgets.

A scope name ``*`` sets the default for every scope of its kind (owner only, like budget defaults).
"""
from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.proxy.access import TYPE as MODELS, ModelList
from llmgw.proxy.ratelimit import TYPE as LIMITS, RateLimit
from llmgw.core.scopes import ENTITY_KINDS, parse_scope

from .budget_ops import authorize_scope, scope_workspaces
from .entities import check_models
from .errors import BadRequest, NotFound
from .roles import READ_CONFIG, WORKSPACE_ADMIN, WRITE_BUDGETS, WRITE_DEFAULTS, AdminPrincipal
from .runtime import admin_of, change, gateway, json_body, now_ms, reason_of, reply

routes = web.RouteTableDef()


def limit_view(rec: ConfigRecord) -> dict[str, Any]:
    r = RateLimit.from_record(rec)
    return {"id": rec.id, "scope": f"{r.scope_kind}:{r.name}", "org": r.org, "metric": r.metric, "limit": r.limit,
            "burst": r.burst, "description": r.describe()}


def models_view(rec: ConfigRecord) -> dict[str, Any]:
    m = ModelList.from_record(rec)
    return {"id": rec.id, "scope": f"{m.scope_kind}:{m.name}", "org": m.org, "patterns": list(m.patterns),
            "description": m.who()}


def _limit_from(body: dict[str, Any]) -> RateLimit:
    sc = parse_scope(str(body.get("scope") or ""), str(body.get("org") or ""), ENTITY_KINDS)
    limit, burst = body.get("limit"), body.get("burst") or 0
    if isinstance(limit, bool) or not isinstance(limit, int) or isinstance(burst, bool) or not isinstance(burst, int):
        raise BadRequest("limit (and burst) must be integers: requests or tokens per minute or per day")
    return RateLimit(sc.kind, sc.name, str(body.get("metric") or ""), limit, burst, sc.org)


def _models_from(body: dict[str, Any]) -> ModelList:
    sc = parse_scope(str(body.get("scope") or ""), str(body.get("org") or ""), ENTITY_KINDS)
    patterns = check_models(body.get("patterns"))
    if not patterns:
        raise BadRequest("patterns: give at least one model name or glob pattern")
    return ModelList(sc.kind, sc.name, patterns, sc.org)


def _authorize(p: AdminPrincipal, state: ConfigState, what: str, kind: str, name: str, org: str) -> None:
    if name == "*":
        p.require(WRITE_DEFAULTS)
    else:
        authorize_scope(p, state, what, kind, name, org, WRITE_BUDGETS)


def _visible(p: AdminPrincipal, state: ConfigState, kind: str, name: str, org: str) -> bool:
    if p.role != WORKSPACE_ADMIN or name == "*":
        return True
    touched = scope_workspaces(state, kind, name, org)
    return touched is not None and all(w in p.workspaces for w in touched)


def _family(path: str, type_: str, view: Callable[[ConfigRecord], dict[str, Any]],
            parse: Callable[[dict[str, Any]], Any], what: str) -> None:
    async def list_(request: web.Request) -> web.Response:
        p = admin_of(request)
        p.require(READ_CONFIG)
        state = gateway(request).config
        out = [view(r) for r in sorted(state.of_type(type_), key=lambda r: r.id) if r.data
               and _visible(p, state, r.data["scope_kind"], r.data["name"], r.data.get("org", ""))]
        return reply({"data": out})

    async def put(request: web.Request) -> web.Response:
        p, body = admin_of(request), await json_body(request)
        item = parse(body)

        def compute(state: ConfigState) -> tuple[list[ConfigRecord], tuple[dict[str, Any], bool]]:
            _authorize(p, state, f"{what} on {item.scope_kind}:{item.name}", item.scope_kind, item.name, item.org)
            rec = item.record(actor=p.actor, reason=reason_of(request, body))
            return [rec], (view(rec), state.records.get(rec.id) is None)
        out, created = await change(request, compute)
        return reply(out, 201 if created else 200)

    async def delete(request: web.Request) -> web.Response:
        p, rid = admin_of(request), request.match_info["id"]

        def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
            rec = state.records.get(rid)
            if rec is None or rec.type != type_ or rec.data is None:
                raise NotFound(f"no {what} {rid}")
            d = rec.data
            _authorize(p, state, f"{what} {rid}", d["scope_kind"], d["name"], d.get("org", ""))
            return [ConfigRecord(rid, type_, None, now_ms(), p.actor, reason_of(request))], {"deleted": rid}
        return reply(await change(request, compute))

    routes.get(path)(list_)
    routes.post(path)(put)
    routes.delete(path + "/{id}")(delete)


_family("/admin/rate-limits", LIMITS, limit_view, _limit_from, "rate limit")
_family("/admin/model-lists", MODELS, models_view, _models_from, "model allow-list")
