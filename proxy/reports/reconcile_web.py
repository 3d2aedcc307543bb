"""``/admin/reconcile/...``: provider bills against metered spend, through the gateway that holds the store.

    POST /admin/reconcile/import?provider=openai|anthropic&source=NAME   body: the report (JSON or CSV)
    GET  /admin/reconcile/report?since=YYYY-MM-DD&until=YYYY-MM-DD[&provider=...]

``llmgw reconcile`` calls these while a running embedded gateway holds the
chDB store (``ledger/local_gateway.py``). Importing changes what finance
reads, so it takes an owner or finance credential; reading, ``exports.read``.
"""
from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from llmgw.analytics import reconcile
from llmgw.proxy.reports.web import analytics_client, store_errors
from llmgw.proxy.admin.errors import BadRequest, Forbidden
from llmgw.proxy.admin.roles import FINANCE, OWNER, READ_EXPORTS
from llmgw.proxy.admin.runtime import admin_of, reply

MAX_REPORT_BYTES = 64 * 1024 * 1024


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/reconcile/import", import_handler)
    app.router.add_get("/admin/reconcile/report", report_handler, allow_head=False)


async def import_handler(request: web.Request) -> web.Response:
    admin = admin_of(request)
    if admin.role not in (OWNER, FINANCE):
        raise Forbidden(f"role {admin.role} may not import provider bills (owner or finance)")
    provider = request.query.get("provider", "")
    if provider not in reconcile.PROVIDERS:
        raise BadRequest(f"provider must be one of {', '.join(reconcile.PROVIDERS)}")
    data = await request.content.read(MAX_REPORT_BYTES + 1)
    if len(data) > MAX_REPORT_BYTES:
        raise BadRequest(f"the report is over {MAX_REPORT_BYTES} bytes")
    try:
        costs = reconcile.parse_report(data, provider)
    except ValueError as err:
        raise BadRequest(str(err)) from None
    source = request.query.get("source") or "upload"

    def run() -> int:
        client, db = analytics_client(request.app, role="export")
        return reconcile.import_costs(client, db, costs, source=source)

    with store_errors():
        rows = await asyncio.to_thread(run)
    days = sorted({c.day for c in costs})
    return reply({"rows": rows, "provider": provider, "first_day": days[0].isoformat() if days else None,
                  "last_day": days[-1].isoformat() if days else None,
                  "billed_micro_usd": sum(c.cost_micro_usd for c in costs)})


def _day(text: str | None, name: str, default: date) -> date:
    if not text:
        return default
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise BadRequest(f"{name}: expected YYYY-MM-DD, not {text!r}") from None


async def report_handler(request: web.Request) -> web.Response:
    admin = admin_of(request)
    admin.require(READ_EXPORTS)
    today = datetime.now(timezone.utc).date()
    since = _day(request.query.get("since"), "since", today - timedelta(days=30))
    until = _day(request.query.get("until"), "until", today + timedelta(days=1))
    providers = tuple(request.query.getall("provider", []))
    if any(p not in reconcile.PROVIDERS for p in providers):
        raise BadRequest(f"provider must be one of {', '.join(reconcile.PROVIDERS)}")

    def run() -> list[Any]:
        client, db = analytics_client(request.app)
        return reconcile.report(client, db, since, until, providers)

    with store_errors():
        rows = await asyncio.to_thread(run)
    return reply({"rows": [{"day": r.day.isoformat(), "provider": r.provider, "requests": r.requests,
                            "metered_micro_usd": r.metered_micro_usd, "billed_micro_usd": r.billed_micro_usd,
                            "delta_micro_usd": r.delta_micro_usd} for r in rows]})


__all__ = ["add_routes"]
