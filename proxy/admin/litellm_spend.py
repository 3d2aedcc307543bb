"""LiteLLM-compatible spend reads, health and model info.

    GET /spend/logs            -> calls (?api_key=, ?user_id=, ?request_id=), newest first; with start_date
                                  and end_date, spend per day with its keys, models and users (filters
                                  applied; ?summarize=false: the calls in that range)
    GET /global/spend/report   -> start_date..end_date per day and team (default) or customer, with spend per
                                  model and key; group_by=api_key: per key over the range
    GET /health/liveliness     -> "I'm alive!" (no credential, as on LiteLLM)
    GET /health/readiness      -> {"status": "healthy"|"unhealthy", "db": ...} (no credential)
    GET /model/info            -> every priced model in force, in LiteLLM's model-list shape

Money in LiteLLM's shape is float USD, as it sends it; every money field here
has its exact integer ``*_micro_usd`` beside it, which is what llmgw stores.
Dates are UTC days (``YYYY-MM-DD``), read as LiteLLM reads them
(litellm/proxy/spend_tracking/spend_management_endpoints.py, 1.110.2): ``/spend/logs`` runs from
start_date 00:00 to end_date 00:00, ``/global/spend/report`` through the end of end_date.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from llmgw.analytics import queries
from llmgw.proxy.reports.web import analytics_client, scope_of, store_errors
from llmgw.proxy.context import GATEWAY
from llmgw.proxy.ops.health import NOT_STARTED, ledger_state

from . import entities as E
from .errors import BadRequest, NotFound
from .roles import READ_CONFIG, READ_SPEND
from .runtime import admin_of, gateway, reply

routes = web.RouteTableDef()
_DAY_MS = 86_400_000
MAX_LOG_ROWS = 1000


def _day_ms(text: str | None, name: str, default_ms: int) -> int:
    if not text:
        return default_ms
    try:
        d = date.fromisoformat(text[:10])
    except ValueError:
        raise BadRequest(f"{name}: expected a date, YYYY-MM-DD, not {text!r}") from None
    return int(datetime(d.year, d.month, d.day, tzinfo=timezone.utc).timestamp() * 1000)


def _both_dates(q: Any) -> tuple[int, int] | None:
    """LiteLLM's /spend/logs window when both dates are given: ``startTime`` from start_date 00:00 UTC up to
    end_date 00:00 UTC inclusive (``gte``/``lte`` on the midnights, spend_management_endpoints.py), so
    ``start_date=2024-01-01&end_date=2024-01-02`` is the 1st; None when either is missing."""
    if not (q.get("start_date") and q.get("end_date")):
        return None
    since, end = _day_ms(q["start_date"], "start_date", 0), _day_ms(q["end_date"], "end_date", 0)
    if end < since:
        raise BadRequest("end_date must not be before start_date")
    return since, end + 1


def _report_range(q: Any) -> tuple[int, int]:
    """/global/spend/report needs both dates (LiteLLM: 400 without), end_date's whole day included."""
    if not (q.get("start_date") and q.get("end_date")):
        raise BadRequest("Please provide start_date and end_date")
    since, end = _day_ms(q["start_date"], "start_date", 0), _day_ms(q["end_date"], "end_date", 0)
    if end < since:
        raise BadRequest("end_date must not be before start_date")
    return since, end + _DAY_MS


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat()


def _log_row(r: dict[str, Any]) -> dict[str, Any]:
    prompt = sum(r[c] for c in ("input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
                                "cache_read_tokens"))
    return {"request_id": r["request_id"] or r["event_id"], "call_type": r["api"], "api_key": r["key_id"],
            "spend": r["cost_micro_usd"] / 1_000_000, "spend_micro_usd": r["cost_micro_usd"],
            "total_tokens": prompt + r["output_tokens"], "prompt_tokens": prompt,
            "completion_tokens": r["output_tokens"], "startTime": _iso(r["ts_start_ms"]),
            "endTime": _iso(r["ts_end_ms"]), "model": r["model"], "custom_llm_provider": r["provider"],
            "user": r["user"], "team_id": r["workspace"], "organization_id": r["org"],
            "session_id": r["session_id"] or None, "status": r["outcome"], "request_tags": list(r["tags"]),
            "metadata": {"usage_estimated": bool(r["usage_estimated"]), "cost_estimated": bool(r["cost_estimated"])}}


@routes.get("/spend/logs")
async def spend_logs(request: web.Request) -> web.Response:
    """LiteLLM's view_spend_logs: with both dates and ``summarize`` (default true), spend per day with its
    keys, users and models (filters included); otherwise the calls themselves, newest first."""
    admin, q = admin_of(request), request.query
    admin.require(READ_SPEND)
    key_id = None
    if q.get("api_key"):
        rec = E.find_key(gateway(request).config, q["api_key"])
        if rec is None or rec.data is None:
            raise NotFound(f"no key {q['api_key'][:16]}...")
        key_id = rec.data["key_id"]
    window = _both_dates(q)
    summarize = q.get("summarize", "true").lower() not in ("false", "0")
    filters: dict[str, str | None] = {"key_id": key_id, "user": q.get("user_id") or None,
                                      "request_id": q.get("request_id") or None}

    def run() -> Any:
        client, db = analytics_client(request.app)
        if window is None or not summarize:
            since, until = window or (0, 2**62)
            return [_log_row(r) for r in queries.spend_logs(client, db, since, until, workspaces=scope_of(admin),
                                                            limit=MAX_LOG_ROWS, **filters)]
        rows = queries.spend_log_days(client, db, window[0], window[1], workspaces=scope_of(admin), key_id=key_id,
                                      user=filters["user"], request_id=filters["request_id"])
        return _by_day(rows, window[1] - 1)

    with store_errors():
        return reply(await asyncio.to_thread(run))


def _by_day(rows: list[queries.UsageRow], end_ms: int) -> list[dict[str, Any]]:
    """LiteLLM's _daily_summary_item per day ({<api key>: spend, startTime, spend, users, models}), then a
    zero entry for each day after the last one with spend up to end_date, as LiteLLM pads."""
    days: dict[str, dict[str, Any]] = {}
    for r in rows:
        day, key, user, model = (v for _, v in r.group)
        e = days.setdefault(day, {"keys": defaultdict(int), "users": defaultdict(int), "models": defaultdict(int),
                                  "total": 0})
        for bucket, name in (("keys", key), ("users", user), ("models", model)):
            e[bucket][name] += r.cost_micro_usd
        e["total"] += r.cost_micro_usd
    out: list[dict[str, Any]] = []
    for day, e in sorted(days.items()):
        out.append({**{k: v / 1_000_000 for k, v in e["keys"].items()}, "startTime": day,
                    "spend": e["total"] / 1_000_000, "spend_micro_usd": e["total"],
                    "users": {k: v / 1_000_000 for k, v in e["users"].items()},
                    "models": {k: v / 1_000_000 for k, v in e["models"].items()}})
    if out:
        last, end = date.fromisoformat(out[-1]["startTime"]), datetime.fromtimestamp(end_ms / 1000, timezone.utc).date()
        out += [{"startTime": (last + timedelta(days=n)).isoformat(), "spend": 0, "spend_micro_usd": 0,
                 "users": {}, "models": {}} for n in range(1, (end - last).days + 1)]
    return out


_GROUPS = {"team": ("workspace", "teams", "team_name"), "customer": ("user", "customers", "customer")}


@routes.get("/global/spend/report")
async def global_spend_report(request: web.Request) -> web.Response:
    """LiteLLM's get_global_spend_report: per day and team (default) or customer, each with its spend per
    model and key; with ``group_by=api_key``, per key over the whole range, most expensive first."""
    admin, q = admin_of(request), request.query
    admin.require(READ_SPEND)
    group_by = q.get("group_by", "team")
    if group_by not in (*_GROUPS, "api_key"):
        raise BadRequest("group_by must be one of team, customer, api_key")
    since, until = _report_range(q)
    ignored = sorted(set(q) & {"api_key", "internal_user_id", "team_id", "customer_id"})
    if ignored:
        raise BadRequest(f"{', '.join(ignored)}: llmgw's report does not filter by these; use /spend/logs or "
                         "/admin/spend")

    def run() -> Any:
        client, db = analytics_client(request.app)
        if group_by == "api_key":
            return queries.spend(client, db, ["key", "model"], since, until, workspaces=scope_of(admin))
        return queries.rollup(client, db, "day", since, until, [_GROUPS[group_by][0], "model", "key"],
                              workspaces=scope_of(admin))

    with store_errors():
        rows = await asyncio.to_thread(run)
    if group_by == "api_key":
        return reply(_by_key(rows))
    aliases = _team_aliases(gateway(request)) if group_by == "team" else {}
    days: dict[str, dict[str, list[queries.UsageRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        days[r.group[0][1][:10]][r.group[1][1]].append(r)
    _, plural, label = _GROUPS[group_by]
    out = []
    for day in sorted(days):
        groups = []
        for name, parts in sorted(days[day].items()):
            total = sum(m.cost_micro_usd for m in parts)
            groups.append({label: aliases.get(name) or name, "total_spend": total / 1_000_000,
                           "total_spend_micro_usd": total,
                           "metadata": [{"model": m.group[2][1], "api_key": m.group[3][1],
                                         "spend": m.cost_micro_usd / 1_000_000, "spend_micro_usd": m.cost_micro_usd,
                                         "total_tokens": _total_tokens(m)} for m in parts]})
        out.append({"group_by_day": f"{day}T00:00:00+00:00", plural: groups})
    return reply(out)


def _team_aliases(gw: Any) -> dict[str, str]:
    """LiteLLM names a report's team by its team_alias (set by /team/new); a workspace without one by its name."""
    return {r.data["name"]: str((r.data.get("metadata") or {}).get("team_alias"))
            for r in gw.config.of_type("workspace") if r.data and (r.data.get("metadata") or {}).get("team_alias")}


def _by_key(rows: list[queries.UsageRow]) -> list[dict[str, Any]]:
    keys: dict[str, list[queries.UsageRow]] = defaultdict(list)
    for r in rows:
        keys[r.group[0][1]].append(r)

    def entry(parts: list[queries.UsageRow]) -> dict[str, Any]:
        cost = sum(m.cost_micro_usd for m in parts)
        return {"total_cost": cost / 1_000_000, "total_cost_micro_usd": cost,
                "total_input_tokens": sum(_prompt_tokens(m) for m in parts),
                "total_output_tokens": sum(m.tokens.output for m in parts)}
    out = [{"api_key": key, **entry(parts),
            "model_details": [{"model": m.group[1][1], **entry([m])} for m in parts]} for key, parts in keys.items()]
    return sorted(out, key=lambda e: (-e["total_cost_micro_usd"], e["api_key"]))


def _prompt_tokens(r: queries.UsageRow) -> int:
    t = r.tokens
    return t.input + t.cache_write_5m + t.cache_write_1h + t.cache_read


def _total_tokens(r: queries.UsageRow) -> int:
    return _prompt_tokens(r) + r.tokens.output


@routes.get("/health/liveliness")
async def liveliness(request: web.Request) -> web.Response:
    return reply("I'm alive!")


@routes.get("/health/readiness")
async def readiness(request: web.Request) -> web.Response:
    gw = request.app.get(GATEWAY)
    state = ledger_state(gw.ledger.health() if gw else NOT_STARTED, gw is not None,
                         gw.settings.snapshot_max_age_s if gw else 30.0)
    body = state.body()
    return reply({"status": "healthy" if state.ready else "unhealthy",
                  "db": "connected" if state.ready else "not connected", "cache": None, "litellm_version": None,
                  "success_callbacks": [], "llmgw": body}, 200 if state.ready else 503)


@routes.get("/model/info")
async def model_info(request: web.Request) -> web.Response:
    """What the catalog prices today (the models the gateway will serve), in LiteLLM's shape."""
    p, gw = admin_of(request), gateway(request)
    p.require(READ_CONFIG)
    out = []
    for price in sorted(gw.catalog.in_force(int(time.time() * 1000)), key=lambda x: (x.provider, x.model)):
        r = price.rates
        out.append({"model_name": price.model,
                    "litellm_params": {"model": f"{price.provider}/{price.model}"},
                    "model_info": {"id": price.version or price.key, "key": price.key, "mode": price.mode,
                                   "litellm_provider": price.provider, "max_tokens": price.max_output_tokens,
                                   "max_input_tokens": price.context_window,
                                   "max_output_tokens": price.max_output_tokens,
                                   # LiteLLM's float per token; the exact USD per million beside it
                                   "input_cost_per_token": float(r.input) / 1_000_000,
                                   "output_cost_per_token": float(r.output) / 1_000_000,
                                   "cache_read_input_token_cost": float(r.cache_read) / 1_000_000,
                                   "cache_creation_input_token_cost": float(r.cache_write_5m) / 1_000_000,
                                   "usd_per_million": {"input": str(r.input), "output": str(r.output),
                                                       "cache_read": str(r.cache_read),
                                                       "cache_write_5m": str(r.cache_write_5m),
                                                       "cache_write_1h": str(r.cache_write_1h)}}})
    return reply({"data": out})

