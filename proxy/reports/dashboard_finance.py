"""``/dashboard/finance``: spend over a date range for finance and team leads, and its CSV.

    GET /dashboard/finance?since=YYYY-MM-DD&until=YYYY-MM-DD&by=workspace|project|user|model[&org=ORG]
        (the page offers the orgs this admin may see, each with its time zone)
    GET /dashboard/finance.csv?... the same rows, exactly as shown (with exact micro-USD beside)

The range is whole days in the organization's time zone (``orgs: {NAME:
{timezone}}`` in the config file; UTC without ``org``), ``until`` included;
the default is month to date. Money is shown in dollars and cents with the
exact amount in a tooltip; calls whose usage or cost was estimated (a stream
cut before its usage block, a price without the served tier's rates) are
counted per row and flagged. Behind the same sign-in as ``/dashboard``.
"""
from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import urlencode


from aiohttp import web
from clickhouse_connect.driver.client import Client

from llmgw.core.windows import zone
from llmgw.analytics import dashboard_html
from llmgw.analytics.dashboard_html import dollars
from llmgw.analytics.queries import DIMENSIONS, format_usd
from llmgw.analytics.store import check_identifier

GROUPS = ("workspace", "project", "user", "model")
_TITLES = {"workspace": "Workspace", "project": "Project (tag project:)", "user": "User", "model": "Model"}


@dataclass(frozen=True, slots=True)
class FinanceRow:
    name: str
    requests: int
    cost_micro_usd: int
    estimated_calls: int          # calls whose usage or cost is an estimate


@dataclass(frozen=True, slots=True)
class Range:
    since: date
    until: date                   # included
    tz: str

    def bounds_ms(self) -> tuple[int, int]:
        local = zone(self.tz)
        start = datetime(self.since.year, self.since.month, self.since.day, tzinfo=local)
        end = datetime(self.until.year, self.until.month, self.until.day, tzinfo=local) + timedelta(days=1)
        return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def parse_range(query: Any, tz: str, now_ms: int) -> Range:
    """``since``/``until`` as local days; default month to date. ValueError on a bad date or order."""
    today = datetime.fromtimestamp(now_ms / 1000, zone(tz)).date()
    since = date.fromisoformat(query["since"]) if query.get("since") else today.replace(day=1)
    until = date.fromisoformat(query["until"]) if query.get("until") else today
    if until < since:
        raise ValueError("until is before since")
    if (until - since).days > 400:
        raise ValueError("a range is at most 400 days")
    return Range(since, until, tz)


def rows(client: Client, db: str, by: str, since_ms: int, until_ms: int, org: str | None,
         workspaces: Sequence[str] | None) -> list[FinanceRow]:
    """Spend per group in [since_ms, until_ms), most expensive first, with the estimated calls counted."""
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}")
    scope = " AND org = {org:String}" if org is not None else ""
    if workspaces is not None:
        scope += " AND concat(org, '/', workspace) IN {workspaces:Array(String)}"
    sql = (f"SELECT {DIMENSIONS[by]} AS name, countIf(kind = 'usage'), sum(cost_micro_usd),"
           f" countIf(kind = 'usage' AND (usage_estimated OR cost_estimated))"
           f" FROM {check_identifier(db)}.usage_events FINAL"
           f" WHERE ts_start >= fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC')"
           f" AND ts_start < fromUnixTimestamp64Milli({{until_ms:Int64}}, 'UTC'){scope}"
           f" GROUP BY name ORDER BY sum(cost_micro_usd) DESC, name")
    got = client.query(sql, parameters={"since_ms": since_ms, "until_ms": until_ms, "org": org or "",
                                        "workspaces": list(workspaces or ())}).result_rows
    return [FinanceRow(str(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in got]


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def budget_form(can_write: bool, role: str, notice: str = "") -> str:
    """For an admin whose role may change budgets: set one (scope, window, limit); others see why not."""
    done = f'<p class="flag" role="status">{_e(notice)}</p>' if notice else ""
    if not can_write:
        return (f'<section class="budget-form"><h2>Budgets</h2>{done}<p class="hint">The {_e(role)} role may not '
                "change budgets (owner or workspace admin).</p></section>")
    windows = "".join(f'<option value="{w}">{w}</option>' for w in ("day", "week", "month", "hour"))
    return ('<section class="budget-form"><h2>Set a budget</h2>' + done +
            '<form class="range" method="post" action="/dashboard/budgets">'
            '<label>Scope <input name="scope" required placeholder="workspace:backend" size="22"></label>'
            f'<label>per <select name="window">{windows}</select></label>'
            '<label>limit $ <input name="limit_usd" required inputmode="decimal" size="8" placeholder="500"></label>'
            '<label>org <input name="org" size="10" placeholder="(any)"></label>'
            '<label>why <input name="reason" size="24" placeholder="reason, for the audit log"></label>'
            f'<button type="submit">Set as {_e(role)}</button></form></section>')


def org_choices(gw: Any, admin: Any) -> list[tuple[str, str]]:
    """(org, its time zone) for the page's org picker: the orgs in the config (records, and ``orgs:`` in the
    config file, where time zones are set) that this admin may see."""
    from llmgw.proxy.reports.web import scope_of

    names = set(gw.org_timezones) | {r.data["name"] for r in gw.config.of_type("org") if r.data}
    if (seen := scope_of(admin)) is not None:                 # a workspace admin: its workspaces' orgs
        names &= {w.partition("/")[0] for w in seen}
    return [(n, gw.tz_of(n)) for n in sorted(names)]


def render(found: Sequence[FinanceRow], rng: Range, by: str, org: str | None, *, admin: str, role: str,
           error: str = "", budgets: str = "", orgs: Sequence[tuple[str, str]] = ()) -> str:
    total = sum(r.cost_micro_usd for r in found)
    requests = sum(r.requests for r in found)
    estimated = sum(r.estimated_calls for r in found)
    params = {"since": rng.since.isoformat(), "until": rng.until.isoformat(), "by": by, **({"org": org} if org else {})}
    options = "".join(f'<option value="{g}"{" selected" if g == by else ""}>{_e(_TITLES[g])}</option>' for g in GROUPS)
    form = ('<form class="range" method="get" action="/dashboard/finance">'
            f'<label>From <input type="date" name="since" value="{rng.since.isoformat()}"></label>'
            f'<label>to <input type="date" name="until" value="{rng.until.isoformat()}"></label>'
            f'<label>by <select name="by">{options}</select></label>'
            + _org_picker(org, orgs)
            + '<button type="submit">Show</button>'
            f'<a class="csv" href="/dashboard/finance.csv?{_e(urlencode(params))}" download>Download CSV</a></form>')
    flag = (f'<p class="flag" role="note">{estimated:,} of {requests:,} calls are estimated (usage cut off or a '
            "price without the served tier's rates): marked * below.</p>") if estimated else ""
    body_rows = "".join(
        f'<tr><td>{_e(r.name or "(none)")}{" *" if r.estimated_calls else ""}</td><td class="num">{r.requests:,}</td>'
        f'<td class="num" title="${_e(format_usd(r.cost_micro_usd))} exactly">{dollars(r.cost_micro_usd)}</td>'
        f'<td class="num">{r.estimated_calls:,}</td>'
        f'<td class="num">{(r.cost_micro_usd * 1000 // total if total else 0) / 10:.1f}%</td></tr>' for r in found)
    table = (f'<table class="finance"><thead><tr><th>{_e(_TITLES[by])}</th><th>Calls</th><th>Spend</th>'
             '<th>Estimated calls</th><th>Share</th></tr></thead>'
             f'<tbody>{body_rows or "<tr><td colspan=5>No spend in this range.</td></tr>"}</tbody>'
             f'<tfoot><tr><th>Total</th><th class="num">{requests:,}</th>'
             f'<th class="num" title="${_e(format_usd(total))} exactly">{dollars(total)}</th>'
             f'<th class="num">{estimated:,}</th><th></th></tr></tfoot></table>')
    header = ('<header><h1>llmgw <span>finance</span></h1>'
              f'<div class="asof">{_e(rng.since.isoformat())} to {_e(rng.until.isoformat())} ({_e(rng.tz)})'
              + (f", org {_e(org)}" if org else "") + '</div>'
              f'<div class="who">{_e(admin)} · {_e(role)} · <a href="/dashboard">live view</a></div></header>')
    err = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    kpi = (f'<section class="kpis"><div class="kpi"><b>{dollars(total)}</b><span>spend in range</span></div>'
           f'<div class="kpi"><b>{requests:,}</b><span>calls</span></div></section>')
    return dashboard_html._page("llmgw finance", f"{header}<main>{err}{form}{kpi}{flag}{table}{budgets}</main>")


def _org_picker(org: str | None, orgs: Sequence[tuple[str, str]]) -> str:
    """Days are the chosen org's days (its time zone); all orgs together are read in UTC."""
    if not orgs:
        return f'<input type="hidden" name="org" value="{_e(org)}">' if org else ""
    choices = [("", "all (UTC days)")] + [(n, f"{n} ({tz} days)") for n, tz in orgs]
    if org and org not in {n for n, _ in orgs}:
        choices.append((org, org))
    options = "".join(f'<option value="{_e(v)}"{" selected" if v == (org or "") else ""}>{_e(t)}</option>'
                      for v, t in choices)
    return f'<label>org <select name="org">{options}</select></label>'


def to_csv(found: Sequence[FinanceRow], rng: Range, by: str) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["since", "until", "timezone", by, "requests", "cost_usd", "cost_micro_usd", "estimated_calls"])
    for r in found:
        w.writerow([rng.since, rng.until, rng.tz, _cell(r.name), r.requests, format_usd(r.cost_micro_usd),
                    r.cost_micro_usd, r.estimated_calls])
    w.writerow([rng.since, rng.until, rng.tz, "TOTAL", sum(r.requests for r in found),
                format_usd(sum(r.cost_micro_usd for r in found)), sum(r.cost_micro_usd for r in found),
                sum(r.estimated_calls for r in found)])
    return out.getvalue()


def _cell(text: str) -> str:
    """A name a spreadsheet would run as a formula is kept as text."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


async def gather(request: web.Request, admin: Any) -> tuple[list[FinanceRow], Range, str, str | None]:
    """Parse the query and read the rows (the caller has checked the session)."""
    from llmgw.proxy.reports.web import analytics_client, scope_of, store_errors
    from llmgw.proxy.context import GATEWAY

    gw = request.app[GATEWAY]
    q = request.query
    org = q.get("org") or None
    by = q.get("by", "workspace")
    if by not in GROUPS:
        raise ValueError(f"by must be one of {', '.join(GROUPS)}")
    rng = parse_range(q, gw.tz_of(org) if org else "UTC", int(datetime.now().timestamp() * 1000))
    since_ms, until_ms = rng.bounds_ms()

    def run() -> list[FinanceRow]:
        client, db = analytics_client(request.app)
        return rows(client, db, by, since_ms, until_ms, org, scope_of(admin))

    with store_errors():
        found = await asyncio.to_thread(run)
    return found, rng, by, org


__all__ = ["FinanceRow", "GROUPS", "Range", "budget_form", "dollars", "gather", "org_choices", "parse_range", "render",
           "rows", "to_csv"]
