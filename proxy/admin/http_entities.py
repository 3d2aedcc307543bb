"""``/admin/whoami``, organizations, workspaces, users and admin credentials."""
from __future__ import annotations

from typing import Any, Callable

from aiohttp import web

from llmgw.core.config import ConfigRecord, ConfigState

from . import credentials as C
from . import entities as E
from .errors import Conflict, NotFound
from .roles import (MANAGE_ADMINS, READ_CONFIG, WORKSPACE_ADMIN, WRITE_ORGS, WRITE_USERS, AdminPrincipal,
                    check_role)
from .runtime import admin_of, change, gateway, json_body, now_ms, reason_of, reply
from llmgw.core.timeutil import parse_instant_ms

routes = web.RouteTableDef()


def _data(rec: ConfigRecord | None, what: str) -> dict[str, Any]:
    if rec is None or rec.data is None:
        raise NotFound(f"no {what}")
    return rec.data


@routes.get("/admin/whoami")
async def whoami(request: web.Request) -> web.Response:
    p = admin_of(request)
    return reply({"name": p.name, "role": p.role, "workspaces": list(p.workspaces), "via": p.via,
                  "actor": p.actor})


# -- organizations -----------------------------------------------------------------------------
def _orgs_visible(p: AdminPrincipal, state: ConfigState) -> list[dict[str, Any]]:
    out = [r.data for r in sorted(state.of_type("org"), key=lambda r: r.id) if r.data]
    if p.role == WORKSPACE_ADMIN:
        mine = {w.split("/", 1)[0] for w in p.workspaces}
        out = [o for o in out if o["name"] in mine]
    return out


@routes.get("/admin/orgs")
async def list_orgs(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_CONFIG)
    return reply({"data": _orgs_visible(p, gateway(request).config)})


@routes.post("/admin/orgs")
async def create_org(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        if state.get("org", str(body.get("name"))) is not None:
            raise Conflict(f"org {body.get('name')} already exists; PUT /admin/orgs/{body.get('name')} changes it")
        rec = E.org_record(body.get("name"), body.get("metadata"), p.actor, reason_of(request, body),  # type: ignore[arg-type]
                           body.get("timezone"))
        return [rec], rec.data  # type: ignore[return-value]
    return reply(await change(request, compute), 201)


@routes.get("/admin/orgs/{org}")
async def get_org(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_CONFIG)
    name = request.match_info["org"]
    for o in _orgs_visible(p, gateway(request).config):
        if o["name"] == name:
            return reply(o)
    raise NotFound(f"no org {name}")


@routes.put("/admin/orgs/{org}")
async def put_org(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)
    name = request.match_info["org"]

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        # a body without "timezone" keeps the org's zone: windows must not move as a side effect
        cur = (state.get("org", name) or ConfigRecord("", "", None, 0)).data or {}
        zone = body["timezone"] if "timezone" in body else cur.get("timezone")
        rec = E.org_record(name, body.get("metadata"), p.actor, reason_of(request, body), zone)
        return [rec], rec.data  # type: ignore[return-value]
    return reply(await change(request, compute))


@routes.delete("/admin/orgs/{org}")
async def delete_org(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(WRITE_ORGS)
    name = request.match_info["org"]

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        _data(state.get("org", name), f"org {name}")
        return [E.delete_record("org", name, p.actor, reason_of(request))], {"deleted": f"org:{name}"}
    return reply(await change(request, compute))


# -- workspaces --------------------------------------------------------------------------------
@routes.get("/admin/workspaces")
async def list_workspaces(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_CONFIG)
    org = request.query.get("org")
    out = [r.data for r in sorted(gateway(request).config.of_type("workspace"), key=lambda r: r.id)
           if r.data and (not org or r.data["org"] == org) and p.covers(r.data["org"], r.data["name"])]
    return reply({"data": out})


@routes.post("/admin/workspaces")
async def create_workspace(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)
    org, name = str(body.get("org") or ""), body.get("name")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        if state.get("workspace", f"{org}/{name}") is not None:
            raise Conflict(f"workspace {org}/{name} already exists")
        rec = E.workspace_record(org, name, body.get("metadata"), p.actor, reason_of(request, body))  # type: ignore[arg-type]
        return [rec], rec.data  # type: ignore[return-value]
    return reply(await change(request, compute), 201)


@routes.get("/admin/workspaces/{org}/{workspace}")
async def get_workspace(request: web.Request) -> web.Response:
    p = admin_of(request)
    org, ws = request.match_info["org"], request.match_info["workspace"]
    p.require(READ_CONFIG, org, ws)
    return reply(_data(gateway(request).config.get("workspace", f"{org}/{ws}"), f"workspace {org}/{ws}"))


@routes.put("/admin/workspaces/{org}/{workspace}")
async def put_workspace(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)
    rec = E.workspace_record(request.match_info["org"], request.match_info["workspace"], body.get("metadata"),
                             p.actor, reason_of(request, body))
    return reply(await change(request, lambda _s: ([rec], rec.data)))


@routes.delete("/admin/workspaces/{org}/{workspace}")
async def delete_workspace(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(WRITE_ORGS)
    rid = f"{request.match_info['org']}/{request.match_info['workspace']}"

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        _data(state.get("workspace", rid), f"workspace {rid}")
        return [E.delete_record("workspace", rid, p.actor, reason_of(request))], {"deleted": f"workspace:{rid}"}
    return reply(await change(request, compute))


# -- users -------------------------------------------------------------------------------------
@routes.get("/admin/users")
async def list_users(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(READ_CONFIG)
    q = request.query
    out = [r.data for r in sorted(gateway(request).config.of_type("user"), key=lambda r: r.id)
           if r.data and all(not q.get(f) or r.data[f] == q[f] for f in ("org", "workspace"))
           and (p.role != WORKSPACE_ADMIN or p.covers(r.data["org"], r.data["workspace"]))]
    return reply({"data": out})


def _user_change(request: web.Request, p: AdminPrincipal, body: dict[str, Any], org: str, name: str,
                 must_be_new: bool) -> Callable[[ConfigState], tuple[list[ConfigRecord], dict[str, Any]]]:
    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        cur = state.get("user", f"{org}/{name}")
        if must_be_new and cur is not None:
            raise Conflict(f"user {org}/{name} already exists")
        workspace = str(body.get("workspace") or "")
        p.require(WRITE_USERS, org, workspace)      # a workspace admin must name one of its workspaces
        if cur is not None and cur.data:
            p.require(WRITE_USERS, org, cur.data.get("workspace") or "")
        E.check_user_home(state, org, workspace, name, p)
        rec = E.user_record(org, name, workspace, body.get("metadata"), p.actor, reason_of(request, body),
                            email=str(body.get("email") or ""))
        return [rec], rec.data  # type: ignore[return-value]
    return compute


@routes.post("/admin/users")
async def create_user(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    compute = _user_change(request, p, body, str(body.get("org") or ""), str(body.get("name") or ""), True)
    return reply(await change(request, compute), 201)


@routes.get("/admin/users/{org}/{user}")
async def get_user(request: web.Request) -> web.Response:
    p = admin_of(request)
    org, name = request.match_info["org"], request.match_info["user"]
    d = _data(gateway(request).config.get("user", f"{org}/{name}"), f"user {org}/{name}")
    p.require(READ_CONFIG, org, d.get("workspace") or "")
    return reply(d)


@routes.put("/admin/users/{org}/{user}")
async def put_user(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    compute = _user_change(request, p, body, request.match_info["org"], request.match_info["user"], False)
    return reply(await change(request, compute))


@routes.delete("/admin/users/{org}/{user}")
async def delete_user(request: web.Request) -> web.Response:
    p = admin_of(request)
    rid = f"{request.match_info['org']}/{request.match_info['user']}"

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        d = _data(state.get("user", rid), f"user {rid}")
        p.require(WRITE_USERS, d["org"], d.get("workspace") or "")
        return [E.delete_record("user", rid, p.actor, reason_of(request))], {"deleted": f"user:{rid}"}
    return reply(await change(request, compute))


# -- admin credentials -------------------------------------------------------------------------
@routes.get("/admin/admins")
async def list_admins(request: web.Request) -> web.Response:
    admin_of(request).require(MANAGE_ADMINS)
    recs = sorted(gateway(request).config.of_type(C.ADMIN_TYPE), key=lambda r: r.ts_ms)
    return reply({"data": [C.admin_view(r) for r in recs]})


@routes.post("/admin/admins")
async def create_admin(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(MANAGE_ADMINS)
    expires = parse_instant_ms(str(body["expires"]), now_ms()) if body.get("expires") else 0
    key, rec = C.mint_admin(E.check_name("admin", body.get("name")), check_role(str(body.get("role"))),
                            tuple(body.get("workspaces") or ()), expires_ms=expires, actor=p.actor,
                            reason=reason_of(request, body))
    view = await change(request, lambda _s: ([rec], C.admin_view(rec)))
    return reply({**view, "key": key}, 201)


@routes.delete("/admin/admins/{admin_id}")
async def revoke_admin(request: web.Request) -> web.Response:
    p = admin_of(request)
    p.require(MANAGE_ADMINS)
    admin_id = request.match_info["admin_id"]

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        _data(state.get(C.ADMIN_TYPE, admin_id), f"admin credential {admin_id}")
        return [C.revoke_admin(admin_id, p.actor, reason_of(request))], {"revoked": admin_id}
    return reply(await change(request, compute))
