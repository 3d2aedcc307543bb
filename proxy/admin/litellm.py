"""LiteLLM-compatible management calls, for people migrating their scripts: keys, and team/user creation.

    POST /key/generate   -> a key (models, max_budget + budget_duration, duration, key_alias, metadata, tags,
                            tpm_limit, rpm_limit)
    POST /key/update     -> change those on an existing key ({"key": ...} or {"key_alias": ...})
    GET  /key/list       -> key ids, or key objects with ?return_full_object=true; paged
    POST /key/regenerate, /key/{key}/regenerate
                         -> a new secret for the same key (budgets and limits keep applying); the body's
                            settings (max_budget, models, ...) are applied as /key/update applies them
    POST /key/block, /key/unblock -> a blocked key is refused until unblocked
    GET  /key/info       -> the key's settings and spend (?key=<key, key id or alias>); a client key
                            may read its own (no ?key, or its own)
    POST /key/delete     -> revoke {"keys": [...]} and/or {"key_aliases": [...]}
    POST /team/new       -> a workspace (team_id, team_alias, organization_id, max_budget, members_with_roles,
                            tpm_limit, rpm_limit, ...)
    POST /user/new       -> a user record, its budget, and a key (as LiteLLM does, unless auto_create_key=false)

Shapes are checked against LiteLLM's source (litellm 1.110.2 wheel:
litellm/proxy/management_endpoints/key_management_endpoints.py, litellm/proxy/_types.py
``GenerateKeyResponse``, litellm/types/proxy/management_endpoints/key_requests.py).

Teams, users, budgets, customers and organizations beyond creation are in
``litellm_teams.py``; spend logs, reports, health and model info in
``litellm_spend.py``. Every response that drops a field the caller sent
lists it in ``llmgw.ignored`` (accepted, not enforced), so a migration script
can see what did not carry over.

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

from llmgw.core import spend_keys as F
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.windows import window_bounds
from llmgw.proxy import keys as K
from llmgw.proxy.keys import presented_key
from llmgw.core.budgets import Budget, usd_to_micro
from llmgw.proxy.ratelimit import RateLimit

from . import entities as E
from .errors import BadRequest, Forbidden, NotFound
from .roles import READ_KEYS, WRITE_BUDGETS, WRITE_KEYS, WRITE_ORGS, WRITE_USERS, AdminPrincipal
from .runtime import admin_of, change, gateway, json_body, reply
from llmgw.core.timeutil import iso_ms, parse_duration_s

routes = web.RouteTableDef()
# /key/generate fields we map; anything else (aliases, guardrails, ...) is accepted, not enforced,
# and named in the response's ``llmgw.ignored`` so a migration script can see it.
_KEY_FIELDS = {"models", "max_budget", "budget_duration", "user_id", "team_id", "organization_id", "metadata",
               "key_alias", "duration", "tags", "reason", "auto_create_key", "user_email", "user_role",
               "tpm_limit", "rpm_limit"}
_LIMIT_FIELDS = {"tpm_limit": "tpm", "rpm_limit": "rpm"}


def ignored(body: dict[str, Any], known: set[str]) -> list[str]:
    """The fields a caller sent that this call does not carry over (for ``llmgw.ignored``)."""
    return sorted(set(body) - known)


def limits(scope_kind: str, name: str, org: str, body: dict[str, Any], p: AdminPrincipal,
           reason: str) -> list[ConfigRecord]:
    """LiteLLM's tpm_limit / rpm_limit as llmgw rate limits on the same scope."""
    out = []
    for field_, metric in _LIMIT_FIELDS.items():
        value = body.get(field_)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise BadRequest(f"{field_} must be a positive integer, not {value!r}")
        p.require(WRITE_BUDGETS)
        out.append(RateLimit(scope_kind, name, metric, value, org=org).record(actor=p.actor, reason=reason))
    return out
_WINDOW_OF_S = {3600: "hour", 86400: "day", 7 * 86400: "week", 30 * 86400: "month", 31 * 86400: "month"}


def budget_window(duration: Any) -> str:
    if not duration:
        return "month"
    seconds = parse_duration_s(str(duration))
    if seconds not in _WINDOW_OF_S:
        raise ValueError(f"budget_duration {duration!r}: llmgw budgets reset hourly, daily, weekly or monthly "
                         "(1h, 1d, 7d or 30d)")
    return _WINDOW_OF_S[seconds]


def default_org(request: web.Request) -> str:
    section = (gateway(request).settings.file_config.get("admin") or {}).get("litellm") or {}
    return str(section.get("default_org") or "default")


def _org_of_team(state: ConfigState, team: str, default: str) -> str:
    orgs = {r.data["org"] for r in state.of_type("workspace") if r.data and r.data["name"] == team}
    return orgs.pop() if len(orgs) == 1 else default


def _usd(value: Any) -> str:
    return format(value, "f") if isinstance(value, float) else str(value)


def budget_record(scope_kind: str, name: str, org: str, body: dict[str, Any], p: AdminPrincipal,
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
    records = [rec, *limits("key", key_id, "", body, p, reason)]
    if (b := budget_record("key", key_id, "", body, p, reason)) is not None:
        records.append(b)
    # GenerateKeyResponse: ``token`` is the key's id (LiteLLM: its hash), as ``token_id``
    out = {"key": key, "key_name": f"sk-...{key[-4:]}", "token_id": key_id, "token": key_id,
           "organization_id": org, "expires": iso_ms(expires),
           "models": list(body.get("models") or []), "max_budget": body.get("max_budget"),
           "budget_duration": body.get("budget_duration"), "user_id": user, "team_id": team,
           "metadata": body.get("metadata") or {}, "key_alias": body.get("key_alias"), "duration": duration,
           "tags": list(body.get("tags") or []), "spend": 0.0,
           "llmgw": {"org": org, "workspace": team, "user": user, "key_id": key_id,
                     "budget_window": budget_window(body.get("budget_duration"))
                     if body.get("max_budget") is not None else None,
                     "ignored": ignored(body, _KEY_FIELDS)}}
    return key, records, out


@routes.post("/key/generate")
async def key_generate(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /key/generate")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        team = str(body.get("team_id") or "default")
        org = str(body.get("organization_id") or _org_of_team(state, team, default_org(request)))
        _, records, out = _mint(state, body, p, org, team, str(body.get("user_id") or "default"), reason)
        return records, out
    return reply(await change(request, compute))


def key_info_of(gw: Any, rec: ConfigRecord) -> dict[str, Any]:
    """LiteLLM's key info for one key record: settings, the key budget, spend in its window (else this month)."""
    d = rec.data or {}
    cap = next((Budget.from_record(r) for r in gw.config.of_type("budget")
                if (r.data or {}).get("scope_kind") == "key" and r.data["name"] == d["key_id"]
                and r.data["kind"] == "budget" and not r.data["tag"]), None)
    window = cap.window if cap else "month"
    start, _ = window_bounds(window, int(time.time() * 1000), gw.tz_of(d["org"]))
    spent = gw.ledger.view.spent(F.spend_key(F.KEY, d["key_id"], window, start))
    rates = {r.data["metric"]: r.data["limit"] for r in gw.config.of_type("ratelimit")
             if (r.data or {}).get("scope_kind") == "key" and r.data["name"] == d["key_id"]}
    return {"token": d["key_id"], "key_alias": d.get("alias") or None, "key_name": None,
            "spend": spent / 1_000_000,           # LiteLLM's wire format is float USD; ours stays int
            "spend_micro_usd": spent, "expires": iso_ms(int(d.get("expires_ms") or 0)),
            "models": d.get("allowed_models") or [], "user_id": d["user"], "team_id": d["workspace"],
            "organization_id": d["org"], "metadata": d.get("metadata") or {}, "tags": d.get("tags") or [],
            "max_budget": cap.limit_micro_usd / 1_000_000 if cap else None,
            "budget_duration": {"hour": "1h", "day": "1d", "week": "7d", "month": "30d"}[window] if cap else None,
            "tpm_limit": rates.get("tpm"), "rpm_limit": rates.get("rpm"), "blocked": bool(d.get("blocked")),
            "status": _status(d), "created_at": iso_ms(int(d.get("created_ms") or 0))}


def _status(d: dict[str, Any]) -> str:
    """LiteLLM's key status: ``revoked`` (blocked), ``expired``, else ``active``."""
    if d.get("blocked"):
        return "revoked"
    expires = int(d.get("expires_ms") or 0)
    return "expired" if expires and expires <= int(time.time() * 1000) else "active"


def _own_info(gw: Any, rec: ConfigRecord) -> dict[str, Any]:
    """/key/info's ``info``: LiteLLM removes the key's hash (``token``) from it."""
    info = key_info_of(gw, rec)
    del info["token"]
    return info


@routes.get("/key/info")
async def key_info(request: web.Request) -> web.Response:
    gw = gateway(request)
    ref = request.query.get("key") or ""
    token = presented_key(request.headers) or ""
    if token.startswith(K.PREFIX):                 # a client key reads its own info, as on LiteLLM
        own = gw.authenticate(request)
        if ref and ref != token and ref != own.key_id:
            raise Forbidden("a client key may read only its own /key/info")
        rec = gw.config.get("key", own.key_id)
        return reply({"key": ref or token, "info": _own_info(gw, rec)})  # type: ignore[arg-type]
    p = admin_of(request)
    rec = E.find_key(gw.config, ref)
    if rec is None or rec.data is None:
        raise NotFound(f"no key {ref[:16]}...")
    p.require(READ_KEYS, rec.data["org"], rec.data["workspace"])
    return reply({"key": ref, "info": _own_info(gw, rec)})


_UPDATE_FIELDS = {"key", "models", "max_budget", "budget_duration", "metadata", "key_alias", "duration", "tags",
                  "tpm_limit", "rpm_limit", "blocked", "reason"}


def _found(state: ConfigState, ref: Any, p: AdminPrincipal) -> ConfigRecord:
    if not isinstance(ref, str) or not ref:
        raise BadRequest("send the key as {\"key\": \"sk-...\"} (the key, its id or its alias) or {\"key_alias\": ...}")
    rec = E.find_key(state, ref)
    if rec is None or rec.data is None:
        raise NotFound(f"no key {ref[:16]}...")
    p.require(WRITE_KEYS, rec.data["org"], rec.data["workspace"])
    return rec


def _updated(rec: ConfigRecord, body: dict[str, Any], p: AdminPrincipal, reason: str) -> list[ConfigRecord]:
    """The records /key/update writes for ``body`` (also what /key/regenerate applies beside the new secret)."""
    changes: dict[str, Any] = {}
    if "models" in body:
        changes["allowed_models"] = body["models"] or []
    for ours, theirs in (("tags", "tags"), ("alias", "key_alias"), ("metadata", "metadata")):
        if theirs in body:
            changes[ours] = body[theirs]
    if "duration" in body:
        d = body["duration"]
        changes["expires_ms"] = 0 if d in (None, "", "permanent") else \
            int(time.time() * 1000) + parse_duration_s(str(d)) * 1000
    updated = E.update_key(rec, changes, p.actor, reason)
    if "blocked" in body:
        updated = _blocked(updated, bool(body["blocked"]), p, reason)
    key_id = rec.data["key_id"]  # type: ignore[index]
    records = [updated, *limits("key", key_id, "", body, p, reason)]
    if (b := budget_record("key", key_id, "", body, p, reason)) is not None:
        records.append(b)
    return records


@routes.post("/key/update")
async def key_update(request: web.Request) -> web.Response:
    """LiteLLM's UpdateKeyRequest names the key by ``key``, or by ``key_alias`` when ``key`` is absent."""
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /key/update")
    ref = body.get("key") if body.get("key") is not None else body.get("key_alias")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        rec = _found(state, ref, p)
        return _updated(rec, {k: v for k, v in body.items() if k != "key_alias" or body.get("key") is not None},
                        p, reason), {"key_id": rec.data["key_id"]}  # type: ignore[index]
    done = await change(request, compute)
    info = key_info_of(gateway(request), gateway(request).config.get("key", done["key_id"]))  # type: ignore[arg-type]
    return reply({"key": ref, **info, "llmgw": {"ignored": ignored(body, _UPDATE_FIELDS)}})


def _blocked(rec: ConfigRecord, blocked: bool, p: AdminPrincipal, reason: str) -> ConfigRecord:
    d = {**(rec.data or {}), "blocked": blocked}
    return ConfigRecord.put("key", d["key_id"], d, p.actor, reason)


def _block_route(blocked: bool) -> Any:
    async def handler(request: web.Request) -> web.Response:
        p, body = admin_of(request), await json_body(request)
        reason = str(body.get("reason") or f"LiteLLM /key/{'block' if blocked else 'unblock'}")

        def compute(state: ConfigState) -> tuple[list[ConfigRecord], str]:
            rec = _found(state, body.get("key"), p)
            return [_blocked(rec, blocked, p, reason)], rec.data["key_id"]  # type: ignore[index]
        key_id = await change(request, compute)
        gw = gateway(request)
        return reply({"key": body.get("key"), **key_info_of(gw, gw.config.get("key", key_id)),  # type: ignore[arg-type]
                      "llmgw": {"ignored": ignored(body, {"key", "reason"})}})
    return handler


routes.post("/key/block")(_block_route(True))
routes.post("/key/unblock")(_block_route(False))


_REGENERATE_FIELDS = _UPDATE_FIELDS - {"blocked"}


async def key_regenerate(request: web.Request) -> web.Response:
    """A new secret for the same key id (LiteLLM: a new key with the old one's settings); the old one stops.

    LiteLLM's documented form names the key in the path (``POST /key/sk-.../regenerate``), the older one
    in the body; the body's settings (``max_budget``, ``models``, ``metadata``, ...) are applied as
    ``/key/update`` applies them. ``new_key`` (a caller-chosen secret) and ``grace_period`` are not
    supported here and are listed in ``llmgw.ignored``.
    """
    p, body = admin_of(request), await json_body(request)
    ref = request.match_info.get("key") or body.get("key")
    reason = str(body.get("reason") or "LiteLLM /key/regenerate")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        found = _found(state, ref, p)
        settings = {k: v for k, v in body.items() if k in _REGENERATE_FIELDS and k != "key"}
        updated = _updated(found, settings, p, reason) if settings else [found]
        key, rec = E.rotate_key(updated[0], p.actor, reason)
        d = rec.data or {}
        return [rec, *updated[1:]], {"key": key, "key_name": f"sk-...{key[-4:]}", "token_id": d["key_id"],
                                     "token": d["key_id"]}
    out = await change(request, compute)
    info = key_info_of(gateway(request), gateway(request).config.get("key", out["token_id"]))  # type: ignore[arg-type]
    return reply({**info, **out, "llmgw": {"ignored": ignored(body, _REGENERATE_FIELDS)}})


routes.post("/key/regenerate")(key_regenerate)
routes.post("/key/{key}/regenerate")(key_regenerate)


@routes.get("/key/list")
async def key_list(request: web.Request) -> web.Response:
    p, gw, q = admin_of(request), gateway(request), request.query
    p.require(READ_KEYS)
    try:
        page, size = int(q.get("page", "1")), int(q.get("size", "10"))
    except ValueError:
        raise BadRequest("page and size must be integers") from None
    if page < 1 or not 1 <= size <= 100:
        raise BadRequest("page starts at 1; size is 1 to 100")
    filters = {"user": q.get("user_id"), "workspace": q.get("team_id"), "org": q.get("organization_id"),
               "alias": q.get("key_alias")}
    recs = [r for r in sorted(gw.config.of_type("key"), key=lambda r: r.ts_ms)
            if r.data and p.covers(r.data["org"], r.data["workspace"])
            and all(v is None or r.data.get(f) == v for f, v in filters.items())]
    chosen = recs[(page - 1) * size: page * size]
    full = q.get("return_full_object", "").lower() == "true"
    keys = [key_info_of(gw, r) if full else r.data["key_id"] for r in chosen]  # type: ignore[index]
    return reply({"keys": keys, "total_count": len(recs), "current_page": page,
                  "total_pages": (len(recs) + size - 1) // size})


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


_TEAM_FIELDS = {"team_id", "team_alias", "organization_id", "max_budget", "budget_duration", "metadata", "models",
                "members_with_roles", "tpm_limit", "rpm_limit", "reason"}


def members(body: dict[str, Any], key: str = "members_with_roles") -> list[dict[str, Any]]:
    """LiteLLM's ``[{"role": "admin"|"user", "user_id": ..., "user_email": ...}]`` (one or a list)."""
    raw = body.get(key) or []
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for m in items:
        if not isinstance(m, dict) or not (m.get("user_id") or m.get("user_email")):
            raise BadRequest(f"{key}: each member is {{\"role\": \"user\" or \"admin\", \"user_id\": ...}}")
        role = str(m.get("role") or "user")
        if role not in ("user", "admin"):
            raise BadRequest(f"{key}: role must be user or admin, not {role!r}")
        out.append({"user_id": str(m.get("user_id") or m.get("user_email")), "user_email": m.get("user_email"),
                    "role": role})
    return out


def member_records(org: str, team: str, found: list[dict[str, Any]], state: ConfigState, p: AdminPrincipal,
                   reason: str) -> list[ConfigRecord]:
    """Each member becomes a user record in the workspace; its team role is kept in the user's metadata
    (a team admin gets no admin credential: mint one with /admin/admins for that)."""
    p.require(WRITE_USERS, org, team)
    out = []
    for m in found:
        prev = (state.get("user", f"{org}/{m['user_id']}") or ConfigRecord("", "", {}, 0)).data or {}
        meta = {**(prev.get("metadata") or {}), "litellm_team_role": m["role"]}
        out.append(E.user_record(org, m["user_id"], team, meta, p.actor, reason,
                                 email=str(m.get("user_email") or prev.get("email") or "")))
    return out


def team_members(state: ConfigState, org: str, team: str) -> list[dict[str, Any]]:
    return [{"user_id": r.data["name"], "user_email": r.data.get("email") or None,
             "role": (r.data.get("metadata") or {}).get("litellm_team_role", "user")}
            for r in sorted(state.of_type("user"), key=lambda r: r.id)
            if r.data and r.data["org"] == org and r.data.get("workspace") == team]


@routes.post("/team/new")
async def team_new(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    p.require(WRITE_ORGS)
    team = str(body.get("team_id") or f"team-{secrets.token_hex(4)}")
    org = str(body.get("organization_id") or default_org(request))
    reason = str(body.get("reason") or "LiteLLM /team/new")
    meta = {**(body.get("metadata") or {}), "team_alias": body.get("team_alias"),
            "models": list(body.get("models") or [])}
    found = members(body)

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], None]:
        records = [E.workspace_record(org, team, meta, p.actor, reason),
                   *member_records(org, team, found, state, p, reason),
                   *limits("workspace", team, org, body, p, reason)]
        if (b := budget_record("workspace", team, org, body, p, reason)) is not None:
            records.append(b)
        return records, None
    await change(request, compute)
    roster = team_members(gateway(request).config, org, team)
    # LiteLLM_TeamTable: admins and members are the user ids by role, beside members_with_roles
    return reply({"team_id": team, "team_alias": body.get("team_alias"), "organization_id": org,
                  "admins": [m["user_id"] for m in roster if m["role"] == "admin"],
                  "members": [m["user_id"] for m in roster if m["role"] == "user"], "blocked": False,
                  "models": meta["models"], "max_budget": body.get("max_budget"),
                  "budget_duration": body.get("budget_duration"), "metadata": body.get("metadata") or {},
                  "tpm_limit": body.get("tpm_limit"), "rpm_limit": body.get("rpm_limit"),
                  "members_with_roles": roster, "spend": 0.0,
                  "llmgw": {"org": org, "workspace": team, "ignored": ignored(body, _TEAM_FIELDS)}})


@routes.post("/user/new")
async def user_new(request: web.Request) -> web.Response:
    p, body = admin_of(request), await json_body(request)
    reason = str(body.get("reason") or "LiteLLM /user/new")

    def compute(state: ConfigState) -> tuple[list[ConfigRecord], dict[str, Any]]:
        user = str(body.get("user_id") or f"user-{secrets.token_hex(4)}")
        team = str(body.get("team_id") or "")
        org = str(body.get("organization_id") or _org_of_team(state, team, default_org(request)))
        p.require(WRITE_USERS, org, team)
        E.check_user_home(state, org, team or "default", user, p)
        meta = {**(body.get("metadata") or {}), **({"litellm_user_role": body["user_role"]}
                                                     if body.get("user_role") else {})}
        records = [E.user_record(org, user, team, meta, p.actor, reason, email=str(body.get("user_email") or ""))]
        if (b := budget_record("user", user, org, body, p, reason)) is not None:
            records.append(b)
        out: dict[str, Any] = {"user_id": user, "user_email": body.get("user_email"),
                               "user_role": body.get("user_role"), "team_id": team or None,
                               "teams": [team] if team else [],
                               "max_budget": body.get("max_budget"), "budget_duration": body.get("budget_duration"),
                               "models": list(body.get("models") or []), "metadata": meta, "spend": 0.0,
                               "llmgw": {"org": org, "ignored": ignored(body, _KEY_FIELDS)}}
        if body.get("auto_create_key", True):
            key_body = {k: v for k, v in body.items() if k not in ("max_budget", "budget_duration")}
            _, key_records, key_out = _mint(state, key_body, p, org, team or "default", user, reason)
            records.extend(key_records)
            out.update({k: key_out[k] for k in ("key", "key_name", "token_id", "expires", "key_alias", "duration")})
        return records, out
    return reply(await change(request, compute))
