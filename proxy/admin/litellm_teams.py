"""LiteLLM-compatible teams, users, budgets, customers and organizations, beyond creation.

    GET  /team/info?team_id=, GET /team/list     -> a workspace with its members, keys, budget, limits, spend
    POST /team/update, /team/member_add, /team/delete
    GET  /user/info?user_id=, GET /user/list     -> a user with its keys and teams
    POST /user/update, /user/delete
    POST /budget/new       -> a named budget (max_budget, budget_duration, tpm/rpm) to attach by budget_id
    POST /organization/new -> an organization, with its own budget
    POST /customer/new     -> an end user: a user record in the default organization, with its budget

Mapping as in ``litellm.py``: a team is a workspace in an organization, a
LiteLLM user a user; spend is this month's in the org's time zone (or the
budget's window where one is set). Shapes are checked against LiteLLM's source
(litellm 1.110.2: management_endpoints/team_endpoints.py, internal_user_endpoints.py,
budget_management_endpoints.py, customer_endpoints.py, organization_endpoints.py, and the
``LiteLLM_TeamTable``, ``TeamListResponseObject``, ``TeamAddMemberResponse``, ``UserInfoResponse``,
``LiteLLM_EndUserTable``, ``NewOrganizationResponse`` models in proxy/_types.py). A LiteLLM "budget" is kept as a
``litellm_budget`` record and copied onto whatever names it by ``budget_id``.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from llmgw.core import spend_keys as F
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import window_bounds
from llmgw.proxy import keys as K
from llmgw.core.budgets import Budget

from . import entities as E
from .errors import BadRequest, NotFound
from .litellm import (budget_record, default_org, ignored, key_info_of, limits, member_records, members,
                      team_members)
from .roles import READ_CONFIG, WRITE_BUDGETS, WRITE_KEYS, WRITE_ORGS, WRITE_USERS
from .runtime import admin_of, change, gateway, json_body, reply
from llmgw.core.timeutil import iso_ms

routes = web.RouteTableDef()
BUDGET_TYPE = "litellm_budget"
_DURATION = {"hour": "1h", "day": "1d", "week": "7d", "month": "30d"}


def _scope_budget(state: ConfigState, scope_kind: str, name: str) -> Budget | None:
    return next((Budget.from_record(r) for r in state.of_type("budget")
                 if (r.data or {}).get("scope_kind") == scope_kind and r.data["name"] == name  # type: ignore[index]
                 and r.data["kind"] == "budget" and not r.data["tag"]), None)  # type: ignore[index]


def _rates(state: ConfigState, scope_kind: str, name: str) -> dict[str, int]:
    return {r.data["metric"]: r.data["limit"] for r in state.of_type("ratelimit")  # type: ignore[index]
            if (r.data or {}).get("scope_kind") == scope_kind and r.data["name"] == name}  # type: ignore[index]


def _spend(gw: Any, dim: str, entity: str, org: str, cap: Budget | None) -> int:
    window = cap.window if cap else "month"
    start, _ = window_bounds(window, int(time.time() * 1000), gw.tz_of(org))
    return int(gw.ledger.view.spent(F.spend_key(dim, entity, window, start)))


def _money(cap: Budget | None) -> dict[str, Any]:
    return {"max_budget": cap.limit_micro_usd / 1_000_000 if cap else None,
            "budget_duration": _DURATION[cap.window] if cap else None}


def with_budget_id(state: ConfigState, body: dict[str, Any]) -> dict[str, Any]:
    """``budget_id`` (from /budget/new) stands for its max_budget, budget_duration and limits."""
    if not body.get("budget_id"):
        return body
    rec = state.get(BUDGET_TYPE, str(body["budget_id"]))
    if rec is None or rec.data is None:
        raise NotFound(f"no budget {body['budget_id']!r} (create it with /budget/new)")
    return {**{k: v for k, v in rec.data.items() if v is not None and k != "budget_id"}, **body}


# -- teams -------------------------------------------------------------------------------------------
def _team(state: ConfigState, team: Any) -> ConfigRecord:
    if not isinstance(team, str) or not team:
        raise BadRequest("send team_id")
    found = [r for r in state.of_type("workspace") if r.data and r.data["name"] == team]
    if not found:
        raise NotFound(f"no team {team!r}")
    if len(found) > 1:
        raise BadRequest(f"team {team!r} is a workspace in several organizations; use /admin/workspaces")
    return found[0]


def team_info(gw: Any, rec: ConfigRecord) -> dict[str, Any]:
    d = rec.data or {}
    org, team, state = d["org"], d["name"], gw.config
    meta = dict(d.get("metadata") or {})
    cap = _scope_budget(state, "workspace", team)
    rates = _rates(state, "workspace", team)
    spent = _spend(gw, F.WORKSPACE, f"{org}/{team}", org, cap)
    roster = team_members(state, org, team)
    return {"team_id": team, "team_alias": meta.pop("team_alias", None), "organization_id": org,
            "models": meta.pop("models", []), **_money(cap), "tpm_limit": rates.get("tpm"),
            "rpm_limit": rates.get("rpm"), "members_with_roles": roster,
            "admins": [m["user_id"] for m in roster if m["role"] == "admin"],
            "members": [m["user_id"] for m in roster if m["role"] == "user"],
            "metadata": meta, "spend": spent / 1_000_000, "spend_micro_usd": spent, "blocked": False}


@routes.get("/team/info")
async def team_info_route(request: web.Request) -> web.Response:
    p, gw = admin_of(request), gateway(request)
    rec = _team(gw.config, request.query.get("team_id"))
    p.require(READ_CONFIG, rec.data["org"], rec.data["name"])  # type: ignore[index]
    info = team_info(gw, rec)
    return reply({"team_id": info["team_id"], "team_info": info, "keys": _team_keys(gw, info),
                  "team_memberships": []})


def _team_keys(gw: Any, info: dict[str, Any]) -> list[dict[str, Any]]:
    return [key_info_of(gw, k) for k in gw.config.of_type("key")
            if k.data and k.data["org"] == info["organization_id"] and k.data["workspace"] == info["team_id"]]


@routes.get("/team/list")
async def team_list(request: web.Request) -> web.Response:
    p, gw, q = admin_of(request), gateway(request), request.query
    p.require(READ_CONFIG)
    out = []
    for rec in sorted(gw.config.of_type("workspace"), key=lambda r: r.id):
        d = rec.data or {}
        if not p.covers(d["org"], d["name"]) or q.get("organization_id") not in (None, d["org"]):
            continue
        info = team_info(gw, rec)
        if q.get("user_id") and q["user_id"] not in {m["user_id"] for m in info["members_with_roles"]}:
            continue
        out.append({**info, "team_memberships": [], "keys": _team_keys(gw, info)})   # TeamListResponseObject
    return reply(out)


_TEAM_UPDATE = {"team_id", "team_alias", "models", "metadata", "max_budget", "budget_duration", "tpm_limit",
                "rpm_limit", "reason"}


@routes.post("/team/update")
async def team_update(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /team/update")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], ConfigRecord]:
        rec = _team(state, body.get("team_id"))
        d = rec.data or {}
        p.require(WRITE_ORGS)
        meta = {**(d.get("metadata") or {}), **(body.get("metadata") or {})}
        for ours, theirs in (("team_alias", "team_alias"), ("models", "models")):
            if theirs in body:
                meta[ours] = body[theirs]
        new = E.workspace_record(d["org"], d["name"], meta, p.actor, reason)
        records = [new, *limits("workspace", d["name"], d["org"], body, p, reason)]
        if (b := budget_record("workspace", d["name"], d["org"], body, p, reason)) is not None:
            records.append(b)
        return records, new
    new = await change(request, compute)
    return reply({"team_id": new.data["name"], "data": team_info(gateway(request), new),  # type: ignore[index]
                  "llmgw": {"ignored": ignored(body, _TEAM_UPDATE)}})


@routes.post("/team/member_add")
async def team_member_add(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /team/member_add")
    found = members(body, "member")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], ConfigRecord]:
        rec = _team(state, body.get("team_id"))
        return member_records(rec.data["org"], rec.data["name"], found, state, p, reason), rec  # type: ignore[index]
    rec = await change(request, compute)
    gw = gateway(request)
    info = team_info(gw, rec)
    org = rec.data["org"]  # type: ignore[index]
    # TeamAddMemberResponse: updated_users are user rows (LiteLLM_UserTable), not the member entries
    users = [gw.config.get("user", f"{org}/{m['user_id']}") for m in found]
    return reply({**info, "updated_users": [user_info(gw, u) for u in users if u is not None],
                  "updated_team_memberships": [],
                  "llmgw": {"ignored": ignored(body, {"team_id", "member", "reason"})}})


@routes.post("/team/delete")
async def team_delete(request: web.Request) -> web.Response:
    """Removes the teams and revokes their keys (as LiteLLM deletes a team's keys with it)."""
    p, body = admin_of(request), await json_body(request)
    ids = body.get("team_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(t, str) for t in ids):
        raise BadRequest("send {\"team_ids\": [...]}")
    reason = str(body.get("reason") or "LiteLLM /team/delete")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        p.require(WRITE_ORGS)
        records, revoked = [], []
        for team in dict.fromkeys(ids):
            d = _team(state, team).data or {}
            records.append(E.delete_record("workspace", f"{d['org']}/{d['name']}", p.actor, reason))
            for k in state.of_type("key"):
                if k.data and k.data["org"] == d["org"] and k.data["workspace"] == d["name"]:
                    p.require(WRITE_KEYS, d["org"], d["name"])
                    records.append(K.revoke(k.data["key_id"], actor=p.actor, reason=reason))
                    revoked.append(k.data["key_id"])
        return records, {"deleted_teams": ids, "llmgw": {"revoked_keys": revoked}}
    return reply(await change(request, compute))


# -- users -------------------------------------------------------------------------------------------
def _user(state: ConfigState, user: Any) -> ConfigRecord:
    if not isinstance(user, str) or not user:
        raise BadRequest("send user_id")
    found = [r for r in state.of_type("user") if r.data and r.data["name"] == user]
    if not found:
        raise NotFound(f"no user {user!r}")
    if len(found) > 1:
        raise BadRequest(f"user {user!r} exists in several organizations; use /admin/users")
    return found[0]


def user_info(gw: Any, rec: ConfigRecord) -> dict[str, Any]:
    d = rec.data or {}
    org, user, state = d["org"], d["name"], gw.config
    meta = dict(d.get("metadata") or {})
    cap = _scope_budget(state, "user", user)
    rates = _rates(state, "user", user)
    spent = _spend(gw, F.USER, f"{org}/{user}", org, cap)
    teams = sorted(w.partition("/")[2] for w in E.user_workspaces(state, org, user))
    return {"user_id": user, "user_email": d.get("email") or None, "user_role": meta.pop("litellm_user_role", None),
            "teams": teams, "organization_id": org, **_money(cap), "tpm_limit": rates.get("tpm"),
            "rpm_limit": rates.get("rpm"), "metadata": meta, "spend": spent / 1_000_000, "spend_micro_usd": spent}


@routes.get("/user/info")
async def user_info_route(request: web.Request) -> web.Response:
    p, gw = admin_of(request), gateway(request)
    rec = _user(gw.config, request.query.get("user_id"))
    d = rec.data or {}
    p.require(READ_CONFIG, d["org"], d.get("workspace") or None)
    info = user_info(gw, rec)
    keys = [key_info_of(gw, k) for k in gw.config.of_type("key")
            if k.data and k.data["org"] == d["org"] and k.data["user"] == d["name"]]
    # UserInfoResponse: user_info.teams holds team ids, the top-level teams the team rows
    teams = [team_info(gw, w) for w in sorted(gw.config.of_type("workspace"), key=lambda r: r.id)
             if w.data and w.data["org"] == d["org"] and w.data["name"] in info["teams"]]
    return reply({"user_id": d["name"], "user_info": info, "keys": keys, "teams": teams})


@routes.get("/user/list")
async def user_list(request: web.Request) -> web.Response:
    p, gw, q = admin_of(request), gateway(request), request.query
    p.require(READ_CONFIG)
    try:
        page, size = int(q.get("page", "1")), int(q.get("page_size", "25"))
    except ValueError:
        raise BadRequest("page and page_size must be integers") from None
    if page < 1 or not 1 <= size <= 100:
        raise BadRequest("page starts at 1; page_size is 1 to 100")
    wanted = {u for u in (q.get("user_ids") or "").split(",") if u}
    recs = [r for r in sorted(gw.config.of_type("user"), key=lambda r: r.id)
            if r.data and p.covers(r.data["org"], r.data.get("workspace") or "")
            and (not wanted or r.data["name"] in wanted)]
    users = [user_info(gw, r) for r in recs[(page - 1) * size: page * size]]
    return reply({"users": users, "total": len(recs), "page": page, "page_size": size,
                  "total_pages": (len(recs) + size - 1) // size})


_USER_UPDATE = {"user_id", "user_email", "user_role", "metadata", "max_budget", "budget_duration", "tpm_limit",
                "rpm_limit", "team_id", "reason"}


@routes.post("/user/update")
async def user_update(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /user/update")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], ConfigRecord]:
        d = _user(state, body.get("user_id")).data or {}
        p.require(WRITE_USERS, d["org"], d.get("workspace") or "")
        meta = {**(d.get("metadata") or {}), **(body.get("metadata") or {}),
                **({"litellm_user_role": body["user_role"]} if body.get("user_role") else {})}
        team = str(body.get("team_id") or d.get("workspace") or "")
        new = E.user_record(d["org"], d["name"], team, meta, p.actor, reason,
                            email=str(body.get("user_email") or d.get("email") or ""))
        records = [new, *limits("user", d["name"], d["org"], body, p, reason)]
        if (b := budget_record("user", d["name"], d["org"], body, p, reason)) is not None:
            records.append(b)
        return records, new
    new = await change(request, compute)
    return reply({"user_id": new.data["name"], "data": user_info(gateway(request), new),  # type: ignore[index]
                  "llmgw": {"ignored": ignored(body, _USER_UPDATE)}})


@routes.post("/user/delete")
async def user_delete(request: web.Request) -> web.Response:
    """Removes the users and revokes their keys (LiteLLM deletes a user's keys with it). LiteLLM answers
    with the number of users deleted, a bare JSON integer (bulk_user_deletion.py
    ``delete_users_from_current_teams -> int``); the revoked keys are in the audit log."""
    p, body = admin_of(request), await json_body(request)
    ids = body.get("user_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(u, str) for u in ids):
        raise BadRequest("send {\"user_ids\": [...]}")
    reason = str(body.get("reason") or "LiteLLM /user/delete")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], int]:
        records = []
        for user in dict.fromkeys(ids):
            d = _user(state, user).data or {}
            p.require(WRITE_USERS, d["org"], d.get("workspace") or "")
            records.append(E.delete_record("user", f"{d['org']}/{d['name']}", p.actor, reason))
            for k in state.of_type("key"):
                if k.data and k.data["org"] == d["org"] and k.data["user"] == d["name"]:
                    p.require(WRITE_KEYS, d["org"], k.data["workspace"])
                    records.append(K.revoke(k.data["key_id"], actor=p.actor, reason=reason))
        return records, len(dict.fromkeys(ids))
    return reply(await change(request, compute))


# -- budgets, organizations, customers ---------------------------------------------------------------
_BUDGET_FIELDS = {"budget_id", "max_budget", "budget_duration", "tpm_limit", "rpm_limit", "reason"}


@routes.post("/budget/new")
async def budget_new(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_BUDGETS)
    budget_id = E.check_name("budget", body.get("budget_id") or f"budget-{secrets.token_hex(4)}")
    kept = {k: body.get(k) for k in ("max_budget", "budget_duration", "tpm_limit", "rpm_limit")}
    if kept["max_budget"] is not None:
        budget_record("org", "check", "", kept, p, "")          # validates amount and duration before storing
    limits("org", "check", "", kept, p, "")
    rec = ConfigRecord.put(BUDGET_TYPE, budget_id, {"budget_id": budget_id, **kept}, p.actor,
                           str(body.get("reason") or "LiteLLM /budget/new"))
    await change(request, lambda _s: ([rec], None))
    return reply({"budget_id": budget_id, **kept, "llmgw": {"ignored": ignored(body, _BUDGET_FIELDS)}})


_ORG_FIELDS = {"organization_id", "organization_alias", "models", "metadata", "budget_id", "max_budget",
               "budget_duration", "tpm_limit", "rpm_limit", "reason"}


@routes.post("/organization/new")
async def organization_new(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)
    reason = str(body.get("reason") or "LiteLLM /organization/new")

    if not isinstance(body.get("organization_alias"), str) or not body["organization_alias"]:
        raise BadRequest("organization_alias is required (LiteLLM's NewOrganizationRequest)")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        full = with_budget_id(state, body)
        org = E.check_name("org", full.get("organization_id") or full.get("organization_alias"))
        meta = {**(full.get("metadata") or {}), "organization_alias": full.get("organization_alias"),
                "models": list(full.get("models") or [])}
        records = [E.org_record(org, meta, p.actor, reason), *limits("org", org, org, full, p, reason)]
        if (b := budget_record("org", org, org, full, p, reason)) is not None:
            records.append(b)
        now = iso_ms(int(time.time() * 1000))
        # NewOrganizationResponse: the money sits in litellm_budget_table; budget_id is always set
        return records, {"organization_id": org, "organization_alias": full.get("organization_alias"),
                         "models": meta["models"], "metadata": full.get("metadata") or {},
                         "budget_id": full.get("budget_id") or org, "spend": 0.0, "model_spend": {},
                         "created_by": p.actor, "updated_by": p.actor, "created_at": now, "updated_at": now,
                         "users": [], "litellm_budget_table": _budget_table({**full, "budget_id":
                                                                            full.get("budget_id") or org}),
                         "llmgw": {"org": org, "ignored": ignored(body, _ORG_FIELDS)}}
    return reply(await change(request, compute))


def _budget_table(full: dict[str, Any]) -> dict[str, Any] | None:
    """LiteLLM_BudgetTable as LiteLLM nests it under an end user or organization (None without money)."""
    if full.get("max_budget") is None and full.get("tpm_limit") is None and full.get("rpm_limit") is None:
        return None
    return {"budget_id": full.get("budget_id"), "max_budget": full.get("max_budget"),
            "budget_duration": full.get("budget_duration"), "tpm_limit": full.get("tpm_limit"),
            "rpm_limit": full.get("rpm_limit"), "soft_budget": None, "max_parallel_requests": None}


_CUSTOMER_FIELDS = {"user_id", "alias", "budget_id", "max_budget", "budget_duration", "tpm_limit", "rpm_limit",
                    "reason"}


@routes.post("/customer/new")
async def customer_new(request: web.Request) -> web.Response:
    """LiteLLM's end user, kept as a user in the default organization: its budget binds that user's keys.
    LiteLLM also meters the ``user`` field of each call as the customer; llmgw attributes a call to its key's
    user, so that part is listed in ``ignored`` as ``user_attribution``."""
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /customer/new")
    org = default_org(request)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        full = with_budget_id(state, body)
        user = E.check_name("user", full.get("user_id") or "")
        p.require(WRITE_USERS, org, "")
        meta = {"litellm_customer": True, "alias": full.get("alias")}
        records = [E.user_record(org, user, "", meta, p.actor, reason), *limits("user", user, org, full, p, reason)]
        if (b := budget_record("user", user, org, full, p, reason)) is not None:
            records.append(b)
        # LiteLLM_EndUserTable: the money sits in litellm_budget_table, not at the top level
        return records, {"user_id": user, "alias": full.get("alias"), "budget_id": full.get("budget_id"),
                         "blocked": False, "spend": 0.0, "allowed_model_region": None, "default_model": None,
                         "models": [], "litellm_budget_table": _budget_table(full),
                         "llmgw": {"org": org, "ignored": [*ignored(body, _CUSTOMER_FIELDS), "user_attribution"]}}
    return reply(await change(request, compute))


__all__ = ["BUDGET_TYPE", "routes", "team_info", "user_info", "with_budget_id"]
