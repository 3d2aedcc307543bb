"""LiteLLM-compatible management calls, for people migrating their scripts.

    POST /key/generate   -> a key (models, max_budget + budget_duration, duration, key_alias, metadata, tags)
    GET  /key/info       -> the key's settings and spend (?key=<key, key id or alias>)
    POST /key/delete     -> revoke {"keys": [...]} and/or {"key_aliases": [...]}
    POST /team/new       -> a workspace (team_id, team_alias, organization_id, max_budget, ...)
    POST /user/new       -> a user record, its budget, and a key (as LiteLLM does, unless auto_create_key=false)

They authenticate like LiteLLM's master key: ``Authorization: Bearer <admin
credential>``, and check the same roles as ``/admin``. Mapping: a team is a
workspace; an unassigned key or team goes to the organization named by
``admin.litellm.default_org`` in the config file (default ``default``), the
key's user is ``user_id`` (default ``default``). ``budget_duration`` must be
one of our windows (``1h``, ``1d``/``24h``, ``7d``/``1w``, ``30d``/``1mo``);
a ``max_budget`` without it (LiteLLM: no reset) becomes a monthly budget.
"""
from __future__ import annotations

import secrets
import time
from typing import Any

from aiohttp import web

from ledger import fold as F
from ledger.configlog import ConfigRecord, ConfigState
from ledger.windows import window_bounds
from proxy import keys as K
from proxy.budgets import Budget, usd_to_micro

from . import entities as E
from .errors import BadRequest, NotFound
from .roles import READ_KEYS, WRITE_BUDGETS, WRITE_KEYS, WRITE_ORGS, WRITE_USERS, AdminPrincipal
from .runtime import admin_of, change, gateway, json_body, reply
from .timeutil import iso_ms, parse_duration_s

routes = web.RouteTableDef()
# /key/generate fields we map; anything else (tpm_limit, rpm_limit, aliases, ...) is accepted, not enforced,
# and named in the response's ``llmgw.ignored`` so a migration script can see it.
_KEY_FIELDS = {"models", "max_budget", "budget_duration", "user_id", "team_id", "organization_id", "metadata",
               "key_alias", "duration", "tags", "reason", "auto_create_key", "user_email", "user_role"}
_WINDOW_OF_S = {3600: "hour", 86400: "day", 7 * 86400: "week", 30 * 86400: "month", 31 * 86400: "month"}


def budget_window(duration: Any) -> str:
    if not duration:
        return "month"
    seconds = parse_duration_s(str(duration))
    if seconds not in _WINDOW_OF_S:
        raise ValueError(f"budget_duration {duration!r}: llmgw budgets reset hourly, daily, weekly or monthly "
                         "(1h, 1d, 7d or 30d)")
    return _WINDOW_OF_S[seconds]


def _default_org(request: web.Request) -> str:
    section = (gateway(request).settings.file_config.get("admin") or {}).get("litellm") or {}
    return str(section.get("default_org") or "default")


def _org_of_team(state: ConfigState, team: str, default: str) -> str:
    orgs = {r.data["org"] for r in state.of_type("workspace") if r.data and r.data["name"] == team}
    return orgs.pop() if len(orgs) == 1 else default


def _usd(value: Any) -> str:
    return format(value, "f") if isinstance(value, float) else str(value)


def _budget(scope_kind: str, name: str, org: str, body: dict[str, Any], p: AdminPrincipal,
            reason: str) -> ConfigRecord | None:
    if body.get("max_budget") is None:
        return None
    p.require(WRITE_BUDGETS)
    b = Budget(scope_kind, name, budget_window(body.get("budget_duration")),
               usd_to_micro(_usd(body["max_budget"])), org=org)
    return b.record(actor=p.actor, reason=reason)


def _mint(state: ConfigState, body: dict[str, Any], p: AdminPrincipal, org: str, team: str, user: str,
          reason: str) -> tuple[str, list[ConfigRecord], dict[str, Any]]:
    p.require(WRITE_KEYS, org, team)
    duration = body.get("duration")
    expires = 0 if duration in (None, "", "permanent") else int(time.time() * 1000) + parse_duration_s(duration) * 1000
    key, rec = E.create_key(org, team, user, state=state, admin=p, tags=E.check_tags(body.get("tags")),
                            allowed_models=E.check_models(body.get("models")), expires_ms=expires,
                            alias=str(body.get("key_alias") or ""), metadata=body.get("metadata"),
                            actor=p.actor, reason=reason)
    key_id = rec.data["key_id"]  # type: ignore[index]
    records = [rec]
    if (b := _budget("key", key_id, "", body, p, reason)) is not None:
        records.append(b)
    out = {"key": key, "key_name": f"sk-...{key[-4:]}", "token_id": key_id, "expires": iso_ms(expires),
           "models": list(body.get("models") or []), "max_budget": body.get("max_budget"),
           "budget_duration": body.get("budget_duration"), "user_id": user, "team_id": team,
           "metadata": body.get("metadata") or {}, "key_alias": body.get("key_alias"), "duration": duration,
           "tags": list(body.get("tags") or []), "spend": 0.0,
           "llmgw": {"org": org, "workspace": team, "user": user, "key_id": key_id,
                     "budget_window": budget_window(body.get("budget_duration"))
                     if body.get("max_budget") is not None else None,
                     "ignored": sorted(set(body) - _KEY_FIELDS)}}
    return key, records, out


@routes.post("/key/generate")
async def key_generate(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /key/generate")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        team = str(body.get("team_id") or "default")
        org = str(body.get("organization_id") or _org_of_team(state, team, _default_org(request)))
        _, records, out = _mint(state, body, p, org, team, str(body.get("user_id") or "default"), reason)
        return records, out
    return reply(await change(request, compute))


@routes.get("/key/info")
async def key_info(request: web.Request) -> web.Response:
    p, gw = admin_of(request), gateway(request)
    ref = request.query.get("key") or ""
    rec = E.find_key(gw.config, ref)
    if rec is None or rec.data is None:
        raise NotFound(f"no key {ref[:16]}...")
    d = rec.data
    p.require(READ_KEYS, d["org"], d["workspace"])
    cap = next((Budget.from_record(r) for r in gw.config.of_type("budget")
                if (r.data or {}).get("scope_kind") == "key" and r.data["name"] == d["key_id"]  # type: ignore[index]
                and r.data["kind"] == "budget" and not r.data["tag"]), None)  # type: ignore[index]
    window = cap.window if cap else "month"
    start, _ = window_bounds(window, int(time.time() * 1000), gw.tz_of(d["org"]))
    spent = gw.ledger.view.spent(F.spend_key(F.KEY, d["key_id"], window, start))
    info = {"token": d["key_id"], "key_alias": d.get("alias") or None, "key_name": None,
            "spend": spent / 1_000_000,           # LiteLLM's wire format is float USD; ours stays int
            "spend_micro_usd": spent, "expires": iso_ms(int(d.get("expires_ms") or 0)),
            "models": d.get("allowed_models") or [], "user_id": d["user"], "team_id": d["workspace"],
            "organization_id": d["org"], "metadata": d.get("metadata") or {}, "tags": d.get("tags") or [],
            "max_budget": cap.limit_micro_usd / 1_000_000 if cap else None,
            "budget_duration": {"hour": "1h", "day": "1d", "week": "7d", "month": "30d"}[window] if cap else None,
            "created_at": iso_ms(int(d.get("created_ms") or 0))}
    return reply({"key": ref, "info": info})


@routes.post("/key/delete")
async def key_delete(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    refs = [*(body.get("keys") or []), *(body.get("key_aliases") or [])]
    if not refs or not all(isinstance(r, str) for r in refs):
        raise BadRequest("send {\"keys\": [...]} and/or {\"key_aliases\": [...]}")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        found = []
        for ref in refs:
            rec = E.find_key(state, ref)
            if rec is None or rec.data is None:
                raise NotFound(f"no key {ref[:16]}... (nothing was deleted)")
            p.require(WRITE_KEYS, rec.data["org"], rec.data["workspace"])
            found.append(rec.data["key_id"])
        reason = str(body.get("reason") or "LiteLLM /key/delete")
        return [K.revoke(k, actor=p.actor, reason=reason) for k in dict.fromkeys(found)], {"deleted_keys": refs}
    return reply(await change(request, compute))


@routes.post("/team/new")
async def team_new(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)
    team = str(body.get("team_id") or f"team-{secrets.token_hex(4)}")
    org = str(body.get("organization_id") or _default_org(request))
    reason = str(body.get("reason") or "LiteLLM /team/new")
    meta = {**(body.get("metadata") or {}), "team_alias": body.get("team_alias"),
            "models": list(body.get("models") or [])}
    records = [E.workspace_record(org, team, meta, p.actor, reason)]
    if (b := _budget("workspace", team, org, body, p, reason)) is not None:
        records.append(b)
    await change(request, lambda _s: (records, None))
    return reply({"team_id": team, "team_alias": body.get("team_alias"), "organization_id": org,
                  "models": meta["models"], "max_budget": body.get("max_budget"),
                  "budget_duration": body.get("budget_duration"), "metadata": body.get("metadata") or {},
                  "members_with_roles": [], "spend": 0.0})


@routes.post("/user/new")
async def user_new(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /user/new")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        user = str(body.get("user_id") or f"user-{secrets.token_hex(4)}")
        team = str(body.get("team_id") or "")
        org = str(body.get("organization_id") or _org_of_team(state, team, _default_org(request)))
        p.require(WRITE_USERS, org, team)
        E.check_user_home(state, org, team or "default", user, p)
        meta = {**(body.get("metadata") or {}), **({"litellm_user_role": body["user_role"]}
                                                     if body.get("user_role") else {})}
        records = [E.user_record(org, user, team, meta, p.actor, reason, email=str(body.get("user_email") or ""))]
        if (b := _budget("user", user, org, body, p, reason)) is not None:
            records.append(b)
        out: dict[str, Any] = {"user_id": user, "user_email": body.get("user_email"),
                               "user_role": body.get("user_role"), "team_id": team or None,
                               "max_budget": body.get("max_budget"), "budget_duration": body.get("budget_duration"),
                               "models": list(body.get("models") or []), "metadata": meta, "spend": 0.0}
        if body.get("auto_create_key", True):
            key_body = {k: v for k, v in body.items() if k not in ("max_budget", "budget_duration")}
            _, key_records, key_out = _mint(state, key_body, p, org, team or "default", user, reason)
            records.extend(key_records)
            out.update({k: key_out[k] for k in ("key", "key_name", "token_id", "expires", "key_alias", "duration")})
        return records, out
    return reply(await change(request, compute))
