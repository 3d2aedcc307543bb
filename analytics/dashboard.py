"""What the dashboard shows, gathered in one place: spend from the rollups, budgets from the gateway.

``gather`` runs the ClickHouse side (blocking: call it in a thread). Spend per
minute, hour and day comes from the rollup tables only; the two lists that need
single calls (recent refusals, top sessions) read ``usage_events`` bounded by
time (and org), never the whole table. ``budget_uses`` and ``recent_alerts``
read the gateway's in-memory state: the spend view the policy checks calls
against, and the alert evaluator's records.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from clickhouse_connect.driver.client import Client

from llmgw.analytics import queries
from llmgw.analytics.queries import UsageRow
from llmgw.analytics.store import check_identifier
from llmgw.core import spend_keys as F
from llmgw.core.config import ConfigState
from llmgw.core.events import micro_of_nano
from llmgw.ledger.spend import SpendView
from llmgw.core.windows import window_bounds
from llmgw.core.budgets import Budget, BudgetBook

MINUTES = 60
TOP = 10
BREAKDOWNS = ("org", "workspace", "user", "model")


@dataclass(frozen=True, slots=True)
class Refusal:
    ts_ms: int
    org: str
    workspace: str
    user: str
    key_id: str
    model: str
    outcome: str
    http_status: int


@dataclass(frozen=True, slots=True)
class SessionSpend:
    session_id: str
    org: str
    user: str
    calls: int
    cost_micro_usd: int
    first_ms: int
    last_ms: int
    models: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BudgetUse:
    scope: str                # "user acme/alice", "workspace acme/backend on project:x"
    text: str                 # Budget.describe()
    window: str
    kind: str                 # budget, default, exception
    limit_micro_usd: int
    spent_micro_usd: int
    resets_ms: int

    @property
    def used_permille(self) -> int:
        """Spend as thousandths of the limit (integers; 1000 is the cap)."""
        if self.limit_micro_usd <= 0:
            return 1000 if self.spent_micro_usd > 0 else 0
        return self.spent_micro_usd * 1000 // self.limit_micro_usd


@dataclass(frozen=True, slots=True)
class AlertView:
    fired_ms: int
    label: str                # "90%", "runway"
    scope: str
    message: str


@dataclass
class Spend:
    """The ClickHouse half of the dashboard."""

    now_ms: int
    day_start_ms: int
    minutes: list[str]                                       # bucket labels, oldest first
    per_minute: dict[str, dict[str, int]]                    # org -> minute -> micro-USD
    requests_last_hour: int
    cost_last_hour: int
    requests_today: int = 0
    cost_today: int = 0
    today: dict[str, list[UsageRow]] = field(default_factory=dict)       # breakdown -> rows
    last_hour: dict[str, dict[str, int]] = field(default_factory=dict)   # breakdown -> name -> micro-USD
    per_hour: dict[str, int] = field(default_factory=dict)               # "HH:00" -> micro-USD, today
    refusals: list[Refusal] = field(default_factory=list)
    sessions: list[SessionSpend] = field(default_factory=list)


def _minute_floor(ms: int) -> int:
    return ms - ms % 60_000


def _label(row: UsageRow, name: str) -> str:
    return row.dims.get(name, "")


def gather(client: Client, db: str, now_ms: int, org: str | None = None,
           workspaces: Sequence[str] | None = None) -> Spend:
    """Everything the dashboard reads from ClickHouse, as of ``now_ms`` (UTC days and minutes)."""
    now = datetime.fromtimestamp(now_ms / 1000, tz=timezone.utc)
    day_start = int(datetime(now.year, now.month, now.day, tzinfo=timezone.utc).timestamp() * 1000)
    end = _minute_floor(now_ms) + 60_000
    start = end - MINUTES * 60_000
    minutes = [datetime.fromtimestamp((start + i * 60_000) / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
               for i in range(MINUTES)]
    per_minute: dict[str, dict[str, int]] = {}
    requests = cost = 0
    for row in queries.rollup(client, db, "minute", start, end, by=["org"], org=org, workspaces=workspaces):
        per_minute.setdefault(_label(row, "org"), {})[_label(row, "minute")] = row.cost_micro_usd
        requests += row.requests
        cost += row.cost_nano_usd                       # summed in nanos, rounded up once
    spend = Spend(now_ms, day_start, minutes, per_minute, requests, micro_of_nano(cost))
    for name in BREAKDOWNS:
        rows = queries.rollup(client, db, "day", day_start, end, by=[name], org=org, workspaces=workspaces)
        spend.today[name] = sorted(rows, key=lambda r: (-r.cost_micro_usd, _label(r, name)))[:TOP]
        last_hour = queries.rollup(client, db, "minute", start, end, by=[name], org=org, workspaces=workspaces)
        spend.last_hour[name] = {}
        for r in last_hour:
            spend.last_hour[name][_label(r, name)] = spend.last_hour[name].get(_label(r, name), 0) + r.cost_micro_usd
    today_nano = 0
    for row in queries.rollup(client, db, "hour", day_start, end, org=org, workspaces=workspaces):
        spend.per_hour[_label(row, "hour")[11:16]] = row.cost_micro_usd
        spend.requests_today += row.requests
        today_nano += row.cost_nano_usd
    spend.cost_today = micro_of_nano(today_nano)
    spend.refusals = refusals(client, db, now_ms - 24 * 3_600_000, end, org, workspaces)
    spend.sessions = top_sessions(client, db, day_start, end, org, workspaces)
    return spend


def _scope_sql(org: str | None, workspaces: Sequence[str] | None) -> str:
    sql = " AND org = {org:String}" if org is not None else ""
    if workspaces is not None:
        sql += " AND concat(org, '/', workspace) IN {workspaces:Array(String)}"
    return sql


_WINDOW = ("ts_start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
           " AND ts_start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")


def refusals(client: Client, db: str, since_ms: int, until_ms: int, org: str | None = None,
             workspaces: Sequence[str] | None = None, limit: int = 20) -> list[Refusal]:
    """The latest refused calls (budget, rate, policy), newest first."""
    sql = (f"SELECT toUnixTimestamp64Milli(ts_start), org, workspace, user, key_id, model, outcome, http_status"
           f" FROM {check_identifier(db)}.usage_events FINAL WHERE {_WINDOW} AND startsWith(outcome, 'rejected_')"
           f"{_scope_sql(org, workspaces)} ORDER BY ts_start DESC, event_id LIMIT {{limit:UInt32}}")
    rows = client.query(sql, parameters={"since_ms": since_ms, "until_ms": until_ms, "org": org or "",
                                         "workspaces": list(workspaces or ()), "limit": limit}).result_rows
    return [Refusal(int(r[0]), r[1], r[2], r[3], r[4], r[5], r[6], int(r[7])) for r in rows]


def top_sessions(client: Client, db: str, since_ms: int, until_ms: int, org: str | None = None,
                 workspaces: Sequence[str] | None = None, limit: int = TOP) -> list[SessionSpend]:
    """Agent sessions by spend in the window, most expensive first."""
    sql = (f"SELECT session_id, any(org), any(user), countIf(kind = 'usage'), sum(cost_nano_usd),"
           f" toUnixTimestamp64Milli(min(ts_start)), toUnixTimestamp64Milli(max(ts_start)),"
           f" arraySort(groupUniqArray(5)(model))"
           f" FROM {check_identifier(db)}.usage_events FINAL WHERE {_WINDOW} AND session_id != ''"
           f"{_scope_sql(org, workspaces)} GROUP BY session_id"
           f" ORDER BY sum(cost_nano_usd) DESC, session_id LIMIT {{limit:UInt32}}")
    rows = client.query(sql, parameters={"since_ms": since_ms, "until_ms": until_ms, "org": org or "",
                                         "workspaces": list(workspaces or ()), "limit": limit}).result_rows
    return [SessionSpend(r[0], r[1], r[2], int(r[3]), micro_of_nano(int(r[4])), int(r[5]), int(r[6]), tuple(r[7]))
            for r in rows]


# ---- the gateway's own state -----------------------------------------------------------------


def budget_uses(view: SpendView, book: BudgetBook, config: ConfigState, now_ms: int, tz_of: Any,
                workspaces: Sequence[str] | None = None) -> list[BudgetUse]:
    """Every budget in force now with its spend so far, fullest first.

    Budgets are resolved against the spend keys of current windows exactly as
    the alert evaluator does (``ledger.alerts.subjects_of``: defaults apply to
    each entity that has spend, carve-outs subtracted); explicit budgets
    without spend yet are listed at zero.
    """
    from llmgw.ledger.alerts import scope_label, subjects_of

    key_orgs = {str(r.data["key_id"]): str(r.data["org"]) for r in config.of_type("key") if r.data}
    uses: dict[tuple[str, str], BudgetUse] = {}
    for s in subjects_of(list(view.folded), book, now_ms, tz_of, key_orgs):
        if workspaces is not None and not _in_scope(s.dim, s.entity, workspaces):
            continue
        scope = scope_label(s.dim, s.entity)
        uses[(s.budget_id, scope)] = BudgetUse(scope, s.budget.describe(), s.window, s.budget.kind,
                                               s.budget.limit_micro_usd, s.spent(view.spent), s.end_ms)
    seen = {use.text for use in uses.values()}
    for rec in config.of_type("budget"):
        b = Budget.from_record(rec)
        if b.kind != "budget" or b.name == "*" or b.describe() in seen:
            continue
        if workspaces is not None and not (b.scope_kind == "workspace" and any(
                w.endswith(f"/{b.name}") and (not b.org or w == f"{b.org}/{b.name}") for w in workspaces)):
            continue
        scope = f"{b.scope_kind} {b.org + '/' if b.org else ''}{b.name}" + (f" on {b.tag}" if b.tag else "")
        resets = window_bounds(b.window, now_ms, tz_of(b.org) if b.org else "UTC")[1]
        uses[(rec.id, scope)] = BudgetUse(scope, b.describe(), b.window, b.kind, b.limit_micro_usd, 0, resets)
    return sorted(uses.values(), key=lambda u: (-u.used_permille, -u.spent_micro_usd, u.scope))


def _in_scope(dim: str, entity: str, workspaces: Sequence[str]) -> bool:
    if dim in (F.WORKSPACE, F.WORKSPACE_TAG):
        return "/".join(entity.split("/", 2)[:2]) in workspaces
    return False


def recent_alerts(records: Iterable[Any], limit: int = TOP) -> list[AlertView]:
    """Fired alerts (not the superseded lower thresholds), newest first, from the evaluator's records."""
    fired = [r.alert for r in records if getattr(r, "status", "") == "fired"]
    fired.sort(key=lambda a: a.fired_ms, reverse=True)
    return [AlertView(a.fired_ms, a.label, a.scope, a.message) for a in fired[:limit]]


def as_json(spend: Spend, budgets: Sequence[BudgetUse], alerts: Sequence[AlertView]) -> dict[str, Any]:
    """The dashboard's numbers as JSON (exact integers), for scripts and the page's refresh."""
    def rows(items: Sequence[UsageRow], name: str) -> list[dict[str, Any]]:
        return [{name: _label(r, name), "requests": r.requests, "cost_micro_usd": r.cost_micro_usd} for r in items]

    return {
        "now_ms": spend.now_ms,
        "last_hour": {"requests": spend.requests_last_hour, "cost_micro_usd": spend.cost_last_hour},
        "today_total": {"requests": spend.requests_today, "cost_micro_usd": spend.cost_today},
        "per_minute": {org: [[m, series.get(m, 0)] for m in spend.minutes] for org, series in spend.per_minute.items()},
        "today": {name: rows(spend.today.get(name, []), name) for name in BREAKDOWNS},
        "budgets": [{"scope": b.scope, "budget": b.text, "window": b.window, "limit_micro_usd": b.limit_micro_usd,
                     "spent_micro_usd": b.spent_micro_usd, "used_permille": b.used_permille} for b in budgets],
        "alerts": [{"fired_ms": a.fired_ms, "label": a.label, "scope": a.scope, "message": a.message} for a in alerts],
        "refusals": [asdict(r) for r in spend.refusals],
        "sessions": [{**asdict(s), "models": list(s.models)} for s in spend.sessions],
    }


def utc_text(ms: int, fmt: str = "%Y-%m-%d %H:%M") -> str:
    return (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)).strftime(fmt)


__all__ = ["AlertView", "BREAKDOWNS", "BudgetUse", "Refusal", "SessionSpend", "Spend", "as_json", "budget_uses",
           "gather", "recent_alerts", "refusals", "top_sessions", "utc_text"]
