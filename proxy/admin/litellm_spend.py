"""LiteLLM-compatible spend reads, health and model info.

    GET /spend/logs            -> calls (?api_key=, ?user_id=, ?request_id=, dates), newest first; with only
                                  start_date/end_date, spend per day with its models and users (as LiteLLM)
    GET /global/spend/report   -> per day, per team (default), api_key or customer, with per-model spend
    GET /health/liveliness     -> "I'm alive!" (no credential, as on LiteLLM)
    GET /health/readiness      -> {"status": "healthy"|"unhealthy", "db": ...} (no credential)
    GET /model/info            -> every priced model in force, in LiteLLM's model-list shape

Money in LiteLLM's shape is float USD, as it sends it; every money field here
has its exact integer ``*_micro_usd`` beside it, which is what llmgw stores.
Dates are UTC days (``YYYY-MM-DD``), ``end_date`` included, as on LiteLLM.
"""
from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from datetime import date, datetime, timezone
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


def _range(q: Any, default_since_ms: int) -> tuple[int, int]:
    now = int(time.time() * 1000)
    since = _day_ms(q.get("start_date"), "start_date", default_since_ms)
    until = _day_ms(q.get("end_date"), "end_date", now - now % _DAY_MS) + _DAY_MS   # end_date included
    if until <= since:
        raise BadRequest("end_date must not be before start_date")
    return since, until


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
    admin, q = admin_of(request), request.query
    admin.require(READ_SPEND)
    key_id = None
    if q.get("api_key"):
        rec = E.find_key(gateway(request).config, q["api_key"])
        if rec is None or rec.data is None:
            raise NotFound(f"no key {q['api_key'][:16]}...")
        key_id = rec.data["key_id"]
    filtered = key_id is not None or bool(q.get("user_id")) or bool(q.get("request_id"))
    since, until = _range(q, 0)

    def run() -> Any:
        client, db = analytics_client(request.app)
        if filtered or not (q.get("start_date") and q.get("end_date")):
            return [_log_row(r) for r in queries.spend_logs(
                client, db, since, until, key_id=key_id, user=q.get("user_id") or None,
                request_id=q.get("request_id") or None, workspaces=scope_of(admin), limit=MAX_LOG_ROWS)]
        return _by_day(queries.rollup(client, db, "day", since, until, ["model"], workspaces=scope_of(admin)),
                       queries.rollup(client, db, "day", since, until, ["user"], workspaces=scope_of(admin)))

    with store_errors():
        return reply(await asyncio.to_thread(run))


def _by_day(by_model: list[queries.UsageRow], by_user: list[queries.UsageRow]) -> list[dict[str, Any]]:
    days: dict[str, dict[str, Any]] = {}
    for rows, field_ in ((by_model, "models"), (by_user, "users")):
        for r in rows:
            day, name = r.group[0][1][:10], r.group[1][1]
            entry = days.setdefault(day, {"startTime": day, "spend_micro_usd": 0, "models": {}, "users": {}})
            entry[field_][name] = r.cost_micro_usd / 1_000_000
            if field_ == "models":
                entry["spend_micro_usd"] += r.cost_micro_usd
    return [{**e, "spend": e["spend_micro_usd"] / 1_000_000} for _, e in sorted(days.items())]


_GROUPS = {"team": ("workspace", "teams", "team_name"), "api_key": ("key", "api_keys", "api_key"),
           "customer": ("user", "customers", "customer")}


@routes.get("/global/spend/report")
async def global_spend_report(request: web.Request) -> web.Response:
    admin, q = admin_of(request), request.query
    admin.require(READ_SPEND)
    group_by = q.get("group_by", "team")
    if group_by not in _GROUPS:
        raise BadRequest(f"group_by must be one of {', '.join(_GROUPS)}")
    dim, plural, label = _GROUPS[group_by]
    now = int(time.time() * 1000)
    since, until = _range(q, now - now % _DAY_MS - 30 * _DAY_MS)

    def run() -> list[queries.UsageRow]:
        client, db = analytics_client(request.app)
        return queries.rollup(client, db, "day", since, until, [dim, "model"], workspaces=scope_of(admin))

    with store_errors():
        rows = await asyncio.to_thread(run)
    days: dict[str, dict[str, list[queries.UsageRow]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        days[r.group[0][1][:10]][r.group[1][1]].append(r)
    out = []
    for day in sorted(days):
        groups = []
        for name, models in sorted(days[day].items()):
            total = sum(m.cost_micro_usd for m in models)
            groups.append({label: name, "total_spend": total / 1_000_000, "total_spend_micro_usd": total,
                           "metadata": [{"model": m.group[2][1], "spend": m.cost_micro_usd / 1_000_000,
                                         "spend_micro_usd": m.cost_micro_usd,
                                         "total_tokens": _total_tokens(m)} for m in models]})
        out.append({"group_by_day": f"{day}T00:00:00+00:00", plural: groups})
    return reply(out)


def _total_tokens(r: queries.UsageRow) -> int:
    t = r.tokens
    return t.input + t.cache_write_5m + t.cache_write_1h + t.cache_read + t.output


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

