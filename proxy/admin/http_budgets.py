"""``/admin/budgets``, ``/admin/defaults``, ``/admin/exceptions``: the same records, three views.

A budget's id is its config record id (``budget:KIND|ORG|SCOPE|TAG|WINDOW``);
posting the same scope, org, tag and window again replaces it (200 instead of 201).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

from aiohttp import web

from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.budgets import Budget

from .budget_ops import (authorize_budget, budget_from_json, budget_records, budget_view, delete_budget, one_budget,
                         visible_to)
from .errors import NotFound
from .roles import READ_CONFIG
from .runtime import admin_of, change, gateway, json_body, now_ms, reason_of, reply

routes = web.RouteTableDef()
Handler = Callable[[web.Request], Awaitable[web.Response]]


def _list(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        p = admin_of(request)
        p.require(READ_CONFIG)
        state = gateway(request).config
        return reply({"data": [budget_view(r) for r in budget_records(state, kind)
                               if visible_to(p, state, Budget.from_record(r))]})
    return handler


def _put(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        p, body = admin_of(request), await json_body(request)
        b = budget_from_json(body, kind, now_ms())

        def compute(state: ConfigState) -> tuple[list[ConfigRecord], tuple[dict[str, Any], bool]]:
            authorize_budget(p, state, b)
            rec = b.record(actor=p.actor, reason=reason_of(request, body))
            return [rec], (budget_view(rec), state.records.get(rec.id) is None)
        view, created = await change(request, compute)
        return reply(view, 201 if created else 200)
    return handler


def _get(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        p = admin_of(request)
        p.require(READ_CONFIG)
        state = gateway(request).config
        rec = one_budget(state, request.match_info["id"], kind)
        if not visible_to(p, state, Budget.from_record(rec)):
            raise NotFound(f"no {kind} {rec.id}")
        return reply(budget_view(rec))
    return handler


def _delete(kind: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        p = admin_of(request)
        rid = request.match_info["id"]

        def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
            return [delete_budget(state, rid, kind, p, reason_of(request), now_ms())], {"deleted": rid}
        return reply(await change(request, compute))
    return handler


for _kind, _path in (("budget", "/admin/budgets"), ("default", "/admin/defaults"),
                     ("exception", "/admin/exceptions")):
    routes.get(_path)(_list(_kind))
    routes.post(_path)(_put(_kind))
    routes.get(_path + "/{id}")(_get(_kind))
    routes.delete(_path + "/{id}")(_delete(_kind))
