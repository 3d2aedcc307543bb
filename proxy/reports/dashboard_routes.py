"""``/dashboard``: the login form, the signed session cookie, the page, its JSON and its static files.

    GET  /dashboard             the page (303 to the login form without a valid session)
    GET  /dashboard/data.json   the page's numbers as JSON (exact integers)
    GET  /dashboard/login       the form: one password field for an admin credential
    POST /dashboard/login       checks it (the admin part's ``authenticate``) and sets the cookie
    POST /dashboard/logout      clears the cookie
    GET  /dashboard/static/NAME dashboard.css, dashboard.js, favicon.svg (no data, no login)

The credential travels once, in the POST body; the page and the cookie never
carry it (``proxy/reports/session.py``). Every page is sent with a strict Content
Security Policy: only this gateway's own script and stylesheet run.
"""
from __future__ import annotations

import asyncio
import time
from importlib import resources
from typing import Any
import orjson
from aiohttp import web

from llmgw.analytics import dashboard, dashboard_html
from llmgw.proxy.reports import dashboard_finance
from llmgw.proxy.reports.session import COOKIE, TTL_MS, Session, Sessions, secret_for
from llmgw.proxy.admin.roles import READ_SPEND, WRITE_BUDGETS
from llmgw.proxy.admin.runtime import ADMIN
from llmgw.proxy.context import GATEWAY
from llmgw.proxy.errors import GatewayError

class _Slot:
    """The gateway's ``Sessions``, made on first use (a secret file is only created if someone signs in)."""

    def __init__(self) -> None:
        self.sessions: Sessions | None = None
        self._lock = asyncio.Lock()

    async def get(self, app: web.Application) -> Sessions:
        async with self._lock:
            if self.sessions is None:
                self.sessions = Sessions(await asyncio.to_thread(secret_for, app[GATEWAY].settings))
            return self.sessions


SESSIONS = web.AppKey("dashboard_sessions", _Slot)
LOGIN = "/dashboard/login"
_STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript", "favicon.svg": "image/svg+xml"}
_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/dashboard", page, allow_head=False)
    r.add_get("/dashboard/data.json", data_json, allow_head=False)
    r.add_get("/dashboard/finance", finance_page, allow_head=False)
    r.add_get("/dashboard/finance.csv", finance_csv, allow_head=False)
    r.add_post("/dashboard/budgets", set_budget)
    r.add_get(LOGIN, login_form, allow_head=False)
    r.add_post(LOGIN, login)
    r.add_post("/dashboard/logout", logout)
    r.add_get("/dashboard/static/{name}", static, allow_head=False)
    app[SESSIONS] = _Slot()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS)


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**_HEADERS, "Location": location})


async def _session(request: web.Request) -> Session | None:
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    gw = request.app[GATEWAY]
    sessions = await request.app[SESSIONS].get(request.app)
    session = sessions.check(cookie, gw.config, gw.settings.admin_key, _now_ms())
    return session if session is not None and session.admin.can(READ_SPEND) else None


async def login_form(request: web.Request) -> web.Response:
    if await _session(request) is not None:
        return _see_other("/dashboard")
    return _html(dashboard_html.render_login())


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token = str(form.get("key") or "").strip()
    gw = request.app[GATEWAY]
    try:
        admin = request.app[ADMIN].authenticate(gw.config, token)
    except GatewayError:
        return _html(dashboard_html.render_login("That is not a valid admin credential."), status=401)
    if not admin.can(READ_SPEND):
        return _html(dashboard_html.render_login(f"The {admin.role} role may not read spend."), status=403)
    sessions = await request.app[SESSIONS].get(request.app)
    cookie = sessions.issue(admin, token, gw.config, gw.settings.admin_key, _now_ms())
    resp = _see_other("/dashboard")
    resp.set_cookie(COOKIE, cookie, max_age=TTL_MS // 1000, path="/dashboard", httponly=True,
                    samesite="Strict", secure=request.secure)
    return resp


async def logout(request: web.Request) -> web.Response:
    resp = _see_other(LOGIN)
    resp.del_cookie(COOKIE, path="/dashboard")
    return resp


async def _collect(request: web.Request, session: Session) -> tuple[
        dashboard.Spend, list[dashboard.BudgetUse], list[dashboard.AlertView], bool]:
    from llmgw.proxy.reports.web import analytics_client, scope_of, store_errors

    gw = request.app[GATEWAY]
    now = _now_ms()
    scope = scope_of(session.admin)

    def spend() -> dashboard.Spend:
        client, db = analytics_client(request.app)
        return dashboard.gather(client, db, now, workspaces=scope)

    with store_errors():
        numbers = await asyncio.to_thread(spend)
    budgets = dashboard.budget_uses(gw.ledger.view, gw.policy.book, gw.config, now, gw.tz_of, scope)
    alerts, here = _alerts(request.app)
    return numbers, budgets, alerts, here


def _alerts(app: web.Application) -> tuple[list[dashboard.AlertView], bool]:
    """Fired alerts from the in-process evaluator, and whether one runs here (embedded mode)."""
    from llmgw.proxy.parts import ALERTS     # the composition root's key; imported late (the root imports this module)
    slot = app.get(ALERTS)
    engine = slot.engine if slot is not None else None
    if engine is None:
        return [], bool(slot is not None and app[GATEWAY].settings.embedded)
    return dashboard.recent_alerts(engine.records.values()), True


async def page(request: web.Request) -> web.Response:
    session = await _session(request)
    if session is None:
        return _see_other(LOGIN)
    try:
        numbers, budgets, alerts, here = await _collect(request, session)
    except GatewayError as err:
        return _html(dashboard_html.render_error(str(err)), status=err.status)
    return _html(dashboard_html.render_dashboard(numbers, budgets, alerts, admin=session.admin.name,
                                                 role=session.admin.role, alerts_here=here))


async def data_json(request: web.Request) -> web.Response:
    session = await _session(request)
    if session is None:
        return web.Response(status=401, body=orjson.dumps({"error": "sign in at /dashboard/login"}),
                            content_type="application/json", headers=_HEADERS)
    try:
        numbers, budgets, alerts, _ = await _collect(request, session)
    except GatewayError as err:
        return web.Response(status=err.status, body=orjson.dumps({"error": str(err)}),
                            content_type="application/json", headers=_HEADERS)
    return web.Response(body=orjson.dumps(dashboard.as_json(numbers, budgets, alerts)),
                        content_type="application/json", headers=_HEADERS)


async def finance_page(request: web.Request) -> web.Response:
    """Spend over a date range by workspace, project, user or model (``proxy/reports/dashboard_finance.py``)."""
    session = await _session(request)
    if session is None:
        return _see_other(LOGIN)
    a = session.admin
    try:
        found, rng, by, org = await dashboard_finance.gather(request, a)
    except ValueError as err:
        rng = dashboard_finance.parse_range({}, "UTC", _now_ms())
        return _html(dashboard_finance.render([], rng, "workspace", None, admin=a.name, role=a.role,
                                              error=str(err)), status=400)
    except GatewayError as err:
        return _html(dashboard_html.render_error(str(err)), status=err.status)
    form = dashboard_finance.budget_form(a.can(WRITE_BUDGETS), a.role, request.query.get("notice", ""))
    return _html(dashboard_finance.render(found, rng, by, org, admin=a.name, role=a.role, budgets=form,
                                          orgs=dashboard_finance.org_choices(request.app[GATEWAY], a)))


async def set_budget(request: web.Request) -> web.Response:
    """The finance page's budget form: the signed-in admin's own role and scope decide, as on /admin/budgets."""
    from urllib.parse import urlencode

    from llmgw.proxy.admin.budget_ops import authorize_budget, budget_from_json

    session = await _session(request)
    if session is None:
        return _see_other(LOGIN)
    # The session cookie is SameSite=Strict, so another site's form arrives without it; a named foreign
    # Origin is refused too. Browsers send "null" here, as the page's Referrer-Policy is no-referrer.
    origin = request.headers.get("Origin")
    if origin not in (None, "null", f"{request.scheme}://{request.host}"):
        return _html(dashboard_html.render_error("a budget can only be set from this gateway's own page"), 403)
    p, form = session.admin, await request.post()
    body = {k: str(form.get(k) or "").strip() for k in ("scope", "window", "limit_usd", "org", "reason")}
    gw = request.app[GATEWAY]
    try:
        p.require(WRITE_BUDGETS)
        b = budget_from_json(body, "budget", _now_ms())

        def compute(state: Any) -> tuple[list[Any], str]:
            authorize_budget(p, state, b)
            return [b.record(actor=p.actor, reason=body["reason"] or "dashboard")], b.describe()
        said = await request.app[ADMIN].change(gw, compute)
        notice = f"set by {p.name} ({p.role}): {said}"
    except (ValueError, GatewayError) as err:
        notice = f"not set: {err}"
    return _see_other("/dashboard/finance?" + urlencode({"notice": notice}))


async def finance_csv(request: web.Request) -> web.Response:
    """Exactly the rows the finance page shows, as CSV (money exact, names kept as text)."""
    session = await _session(request)
    if session is None:
        return _see_other(LOGIN)
    try:
        found, rng, by, _ = await dashboard_finance.gather(request, session.admin)
    except ValueError as err:
        return web.Response(status=400, text=str(err), headers=_HEADERS)
    except GatewayError as err:
        return web.Response(status=err.status, text=str(err), headers=_HEADERS)
    name = f"llmgw-spend-{rng.since}-{rng.until}-by-{by}.csv"
    return web.Response(text=dashboard_finance.to_csv(found, rng, by), content_type="text/csv", charset="utf-8",
                        headers={**_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})


_static_cache: dict[str, bytes] = {}


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = _STATIC.get(name)
    if kind is None:
        raise web.HTTPNotFound()
    body = _static_cache.get(name)
    if body is None:                  # read once, off the loop: the package may sit on a slow disk
        body = _static_cache[name] = await asyncio.to_thread(
            resources.files("llmgw.analytics").joinpath("static", name).read_bytes)
    return web.Response(body=body, content_type=kind, charset="utf-8",
                        headers={"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"})


__all__ = ["SESSIONS"]
