"""Named SQL over the analytics schema (README: tables, columns, example queries).

Money is summed in ClickHouse from ``cost_nano_usd`` (the events' precision) and
comes back as ``int`` nano-USD; ``cost_micro_usd`` is that sum rounded up (the
documented micro-USD unit), and ``cost_usd`` its exact 6-decimal string. Per-row
``cost_micro_usd`` columns are never summed: that would round every sub-micro
call up. ``spend``, ``trace`` and ``chargeback_rows`` read the raw
events ``FINAL``, so each event_id counts once even before parts merge;
``rollup`` reads the per-minute/hour/day tables for dashboards.

``by`` items: ``org``, ``workspace``, ``user``, ``key``, ``model``,
``provider``, ``project``, ``api``, ``outcome``, ``tier`` (the service tier the
provider served, ``""`` for standard) or ``tag:NAME`` (the tag's value, ``""``
when the event lacks it). ``model`` is the served model, or the
requested one when nothing was served (refusals).
"""
from __future__ import annotations

import re
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TextIO

from clickhouse_connect.driver.client import Client

from llmgw.analytics.csv_safe import csv_writer
from llmgw.analytics.store import check_identifier
from llmgw.core.events import Tokens, micro_of_nano

DIMENSIONS: dict[str, str] = {
    "org": "org", "workspace": "workspace", "user": "user", "key": "key_id", "model": "model",
    "provider": "provider", "project": "project", "api": "api", "outcome": "outcome",
    "tier": "service_tier",
}
ROLLUP_DIMENSIONS = ("org", "workspace", "user", "key", "model", "provider")
GRAINS = ("minute", "hour", "day")
TOKEN_COLUMNS = ("input_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens",
                 "cache_read_tokens", "output_tokens", "reasoning_tokens")
CSV_METRICS = ("requests", *TOKEN_COLUMNS, "cost_usd", "cost_micro_usd", "web_search_calls", "cost_nano_usd")

_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_RAW_METRICS = ", ".join(
    ["countIf(kind = 'usage') AS requests"]
    + [f"sum({c}) AS {c}" for c in TOKEN_COLUMNS]
    + ["sum(cost_nano_usd) AS cost_nano_usd", "sum(web_search_calls) AS web_search_calls"]
)
_ROLLUP_METRICS = ", ".join(f"sum({c}) AS {c}" for c in
                            ("requests", *TOKEN_COLUMNS, "cost_nano_usd", "web_search_calls"))
_WINDOW = ("ts_start >= fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC')"
           " AND ts_start < fromUnixTimestamp64Milli({until_ms:Int64}, 'UTC')")


def _scope(org: str | None, workspaces: Sequence[str] | None) -> tuple[str, dict[str, object]]:
    """Extra WHERE terms for an org and/or a set of "ORG/WORKSPACE"s (an admin's scope), and their parameters."""
    sql = ""
    if org is not None:
        sql += " AND org = {org:String}"
    if workspaces is not None:
        sql += " AND concat(org, '/', workspace) IN {workspaces:Array(String)}"
    return sql, {"org": org or "", "workspaces": list(workspaces or ())}


def format_usd(micro_usd: int) -> str:
    """Exact decimal string with 6 places: 1234567 -> "1.234567", -5 -> "-0.000005"."""
    sign = "-" if micro_usd < 0 else ""
    whole, frac = divmod(abs(micro_usd), 1_000_000)
    return f"{sign}{whole}.{frac:06d}"


def format_usd_nano(nano_usd: int) -> str:
    """Exact dollars with the precision the amount has: 6 places for whole micro-USD, else all 9
    (400 nano-USD -> "0.000000400", never rounded to a micro, a cent, or $0.00)."""
    if nano_usd % 1000 == 0:
        return format_usd(nano_usd // 1000)
    sign = "-" if nano_usd < 0 else ""
    whole, frac = divmod(abs(nano_usd), 1_000_000_000)
    return f"{sign}{whole}.{frac:09d}"


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One group of a spend, chargeback or rollup query."""

    group: tuple[tuple[str, str], ...]   # (("workspace", "ws-1"), ("tag:project", "apollo")), in `by` order
    requests: int                        # calls (adjustments are not requests)
    tokens: Tokens
    cost_nano_usd: int
    web_search_calls: int = 0

    @classmethod
    def from_row(cls, names: Sequence[str], row: Sequence[Any]) -> "UsageRow":
        """``row`` is the group values in ``names`` order, then requests, the 6 token kinds,
        cost (nano-USD), web-search calls."""
        n = len(names)
        counts = [int(v) for v in row[n + 1:n + 7]]
        return cls(
            group=tuple((name, str(value)) for name, value in zip(names, row[:n])),
            requests=int(row[n]),
            tokens=Tokens(*counts),
            cost_nano_usd=int(row[n + 7]),
            web_search_calls=int(row[n + 8]),
        )

    @property
    def cost_micro_usd(self) -> int:
        """The group's exact nano-USD sum, rounded up to the micro once."""
        return micro_of_nano(self.cost_nano_usd)

    @property
    def dims(self) -> dict[str, str]:
        return dict(self.group)

    @property
    def cost_usd(self) -> str:
        return format_usd(self.cost_micro_usd)


@dataclass(frozen=True, slots=True)
class TraceCall:
    """One call of a session, with the session's spend up to and including it."""

    event_id: str
    ts_start_ms: int
    ts_end_ms: int
    kind: str
    model: str
    provider: str
    api: str
    outcome: str
    latency_ms: int
    tokens: Tokens
    cost_nano_usd: int
    running_cost_nano_usd: int

    @property
    def cost_micro_usd(self) -> int:
        return micro_of_nano(self.cost_nano_usd)

    @property
    def running_cost_micro_usd(self) -> int:
        return micro_of_nano(self.running_cost_nano_usd)


def _dimensions(by: Sequence[str], allowed: Sequence[str] = tuple(DIMENSIONS),
                tags: bool = True) -> tuple[list[str], list[str], dict[str, str]]:
    """``by`` -> (output names, SQL expressions, bound parameters). Tag names are bound, never spliced."""
    names: list[str] = []
    exprs: list[str] = []
    params: dict[str, str] = {}
    for raw in by:
        item = raw.strip()
        if item in names:
            raise ValueError(f"{item!r} appears twice in by")
        if tags and item.startswith("tag:") and len(item) > 4:
            param = f"tag{len(params)}"
            params[param] = item[4:]
            exprs.append(f"tag_map[{{{param}:String}}]")
        elif item in allowed:
            exprs.append(DIMENSIONS[item])
        else:
            valid = ", ".join([*allowed, *(["tag:NAME"] if tags else [])])
            raise ValueError(f"cannot group by {item!r}; use {valid}")
        names.append(item)
    return names, exprs, params


def check_by(by: Sequence[str]) -> list[str]:
    """Validate ``by`` items for spend and chargeback; return them stripped."""
    return _dimensions(by)[0]


def _grouped_sql(table: str, exprs: Sequence[str], metrics: str, where: str, order: str) -> str:
    select = [f"{expr} AS g{i}" for i, expr in enumerate(exprs)]
    keys = [f"g{i}" for i in range(len(exprs))]
    sql = f"SELECT {', '.join([*select, metrics])} FROM {table} WHERE {where}"
    if keys:
        sql += f" GROUP BY {', '.join(keys)}"
    ordering = [order, *keys] if order else keys
    if ordering:
        sql += f" ORDER BY {', '.join(ordering)}"
    return sql


def spend(client: Client, db: str, by: Sequence[str], since_ms: int, until_ms: int,
          org: str | None = None, workspaces: Sequence[str] | None = None) -> list[UsageRow]:
    """Spend in [since_ms, until_ms) by call start, grouped by ``by``, most expensive first.

    ``workspaces`` ("ORG/WORKSPACE" strings) limits it to those workspaces.
    """
    names, exprs, params = _dimensions(by)
    scope, scope_params = _scope(org, workspaces)
    sql = _grouped_sql(f"{check_identifier(db)}.usage_events FINAL", exprs, _RAW_METRICS, _WINDOW + scope,
                       "cost_nano_usd DESC")
    rows = client.query(sql, parameters={**params, **scope_params, "since_ms": since_ms,
                                         "until_ms": until_ms}).result_rows
    return [UsageRow.from_row(names, row) for row in rows]


def month_bounds_ms(month: str) -> tuple[int, int]:
    """'2026-11' -> [2026-11-01T00:00Z, 2026-12-01T00:00Z) in epoch milliseconds."""
    match = _MONTH.match(month)
    if not match:
        raise ValueError(f"month must look like 2026-11, not {month!r}")
    year, mon = int(match[1]), int(match[2])
    start = datetime(year, mon, 1, tzinfo=timezone.utc)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=timezone.utc)
    return int(start.timestamp()) * 1000, int(end.timestamp()) * 1000


def chargeback_rows(client: Client, db: str, month: str, by: Sequence[str] = ("workspace",),
                    org: str | None = None, workspaces: Sequence[str] | None = None,
                    ) -> Generator[UsageRow, None, None]:
    """Stream a month's spend grouped by ``by``, in group order; each row's group starts with ("month", month).

    The result streams from ClickHouse while it is iterated: finish (or close)
    the iterator before running another query on the same client.
    """
    since_ms, until_ms = month_bounds_ms(month)
    names, exprs, params = _dimensions(by)
    scope, scope_params = _scope(org, workspaces)
    sql = _grouped_sql(f"{check_identifier(db)}.usage_events FINAL", exprs, _RAW_METRICS, _WINDOW + scope, "")
    parameters = {**params, **scope_params, "since_ms": since_ms, "until_ms": until_ms}
    with client.query_rows_stream(sql, parameters=parameters) as stream:
        for row in stream:
            yield UsageRow.from_row(["month", *names], [month, *row])


def write_chargeback_csv(rows: Iterable[UsageRow], file: TextIO, *, by: Sequence[str] | None = None) -> UsageRow:
    """Write rows and a final TOTAL row (their exact sum) as CSV; return the total.

    Columns: the group names (``month``, then ``by``), then ``requests``, the
    six ``*_tokens`` columns, ``cost_usd`` (6 decimals) and ``cost_micro_usd``
    (each row's exact nanos rounded up to the micro), ``web_search_calls`` and
    ``cost_nano_usd`` (exact: the rows' nanos sum to the TOTAL's; their rounded-up
    micros may exceed the TOTAL's by under a micro-USD per row). The TOTAL row has ``TOTAL`` in the first column and the rest of the group
    empty. ``by`` is needed only to write the header when there are no rows.
    """
    writer = csv_writer(file)                   # formula-leading cells neutralized (analytics/csv_safe.py)
    names: list[str] | None = None if by is None else ["month", *by]
    if names is not None:
        writer.writerow([*names, *CSV_METRICS])
    requests, cost, searches, counts = 0, 0, 0, [0] * 6
    for row in rows:
        if names is None:
            names = [name for name, _ in row.group] or ["group"]
            writer.writerow([*names, *CSV_METRICS])
        writer.writerow([*([value for _, value in row.group] or [""]), *_metrics(row)])
        requests += row.requests
        counts = [a + b for a, b in zip(counts, _token_counts(row.tokens))]
        cost += row.cost_nano_usd
        searches += row.web_search_calls
    if names is None:
        names = ["month"]
        writer.writerow([*names, *CSV_METRICS])
    total = UsageRow(group=tuple((name, "TOTAL" if i == 0 else "") for i, name in enumerate(names)),
                     requests=requests, tokens=Tokens(*counts), cost_nano_usd=cost, web_search_calls=searches)
    writer.writerow([value for _, value in total.group] + _metrics(total))
    return total


def _token_counts(tokens: Tokens) -> list[int]:
    return [tokens.input, tokens.cache_write_5m, tokens.cache_write_1h, tokens.cache_read,
            tokens.output, tokens.reasoning]


def _metrics(row: UsageRow) -> list[object]:
    return [row.requests, *_token_counts(row.tokens), row.cost_usd, row.cost_micro_usd, row.web_search_calls,
            row.cost_nano_usd]


def trace(client: Client, db: str, session_id: str) -> list[TraceCall]:
    """A session's calls in start order, each with the session's running cost."""
    sql = f"""
        SELECT event_id, toUnixTimestamp64Milli(ts_start), toUnixTimestamp64Milli(ts_end), kind,
               model, provider, api, outcome, latency_ms, {", ".join(TOKEN_COLUMNS)}, cost_nano_usd,
               sum(cost_nano_usd) OVER (ORDER BY ts_start, event_id
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running
        FROM {check_identifier(db)}.usage_events FINAL
        WHERE session_id = {{session_id:String}}
        ORDER BY ts_start, event_id
    """
    rows = client.query(sql, parameters={"session_id": session_id}).result_rows
    return [
        TraceCall(
            event_id=r[0], ts_start_ms=int(r[1]), ts_end_ms=int(r[2]), kind=r[3], model=r[4],
            provider=r[5], api=r[6], outcome=r[7], latency_ms=int(r[8]),
            tokens=Tokens(*(int(v) for v in r[9:15])), cost_nano_usd=int(r[15]),
            running_cost_nano_usd=int(r[16]),
        )
        for r in rows
    ]



def trace_ref(client: Client, db: str, ref: str) -> list[TraceCall]:
    """``trace`` by a session id, else by a request id (``x-llmgw-request-id``): that call's session,
    or the call alone when it had no session."""
    calls = trace(client, db, ref)
    if calls:
        return calls
    sql = f"SELECT session_id FROM {check_identifier(db)}.usage_events FINAL WHERE request_id = {{ref:String}} LIMIT 1"
    rows = client.query(sql, parameters={"ref": ref}).result_rows
    if not rows:
        return []
    if rows[0][0]:
        return trace(client, db, str(rows[0][0]))
    sql = f"""
        SELECT event_id, toUnixTimestamp64Milli(ts_start), toUnixTimestamp64Milli(ts_end), kind,
               model, provider, api, outcome, latency_ms, {", ".join(TOKEN_COLUMNS)}, cost_nano_usd
        FROM {check_identifier(db)}.usage_events FINAL
        WHERE request_id = {{ref:String}}
        ORDER BY ts_start, event_id
    """
    out, running = [], 0
    for r in client.query(sql, parameters={"ref": ref}).result_rows:
        running += int(r[15])
        out.append(TraceCall(event_id=r[0], ts_start_ms=int(r[1]), ts_end_ms=int(r[2]), kind=r[3], model=r[4],
                             provider=r[5], api=r[6], outcome=r[7], latency_ms=int(r[8]),
                             tokens=Tokens(*(int(v) for v in r[9:15])), cost_nano_usd=int(r[15]),
                             running_cost_nano_usd=running))
    return out



def spend_logs(client: Client, db: str, since_ms: int, until_ms: int, *, key_id: str | None = None,
               user: str | None = None, request_id: str | None = None,
               workspaces: Sequence[str] | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Calls in [since_ms, until_ms), newest first, one dict each (LiteLLM's ``/spend/logs`` rows)."""
    where = _WINDOW
    params: dict[str, Any] = {"since_ms": since_ms, "until_ms": until_ms, "limit": limit}
    for column, value in (("key_id", key_id), ("user", user), ("request_id", request_id)):
        if value is not None:
            where += f" AND {column} = {{{column}:String}}"
            params[column] = value
    scope, scope_params = _scope(None, workspaces)
    sql = f"""
        SELECT request_id, event_id, api, key_id, cost_micro_usd, {", ".join(TOKEN_COLUMNS)},
               toUnixTimestamp64Milli(ts_start), toUnixTimestamp64Milli(ts_end), model, provider, org, workspace,
               user, session_id, outcome, tags, usage_estimated, cost_estimated
        FROM {check_identifier(db)}.usage_events FINAL
        WHERE kind = 'usage' AND {where}{scope}
        ORDER BY ts_start DESC, event_id
        LIMIT {{limit:UInt32}}
    """
    names = ("request_id", "event_id", "api", "key_id", "cost_micro_usd", *TOKEN_COLUMNS, "ts_start_ms",
             "ts_end_ms", "model", "provider", "org", "workspace", "user", "session_id", "outcome", "tags",
             "usage_estimated", "cost_estimated")
    rows = client.query(sql, parameters={**params, **scope_params}).result_rows
    return [dict(zip(names, row)) for row in rows]

def spend_log_days(client: Client, db: str, since_ms: int, until_ms: int, *, key_id: str | None = None,
                   user: str | None = None, request_id: str | None = None,
                   workspaces: Sequence[str] | None = None) -> list[UsageRow]:
    """Calls in [since_ms, until_ms) summed per UTC day, key, user and model, with the same filters as
    ``spend_logs`` (LiteLLM's summarized ``/spend/logs``); in day order."""
    where = _WINDOW
    params: dict[str, object] = {"since_ms": since_ms, "until_ms": until_ms}
    for column, value in (("key_id", key_id), ("user", user), ("request_id", request_id)):
        if value is not None:
            where += f" AND {column} = {{{column}:String}}"
            params[column] = value
    scope, scope_params = _scope(None, workspaces)
    exprs = ["toString(toDate(ts_start, 'UTC'))", "key_id", "user", "model"]
    sql = _grouped_sql(f"{check_identifier(db)}.usage_events FINAL", exprs, _RAW_METRICS, where + scope, "g0")
    rows = client.query(sql, parameters={**params, **scope_params}).result_rows
    return [UsageRow.from_row(("day", "key", "user", "model"), row) for row in rows]


def rollup(client: Client, db: str, grain: str, since_ms: int, until_ms: int,
           by: Sequence[str] = (), org: str | None = None,
           workspaces: Sequence[str] | None = None) -> list[UsageRow]:
    """Dashboard series from ``usage_by_{grain}``: one row per bucket and group, in time order.

    Each row's group starts with (grain, bucket start as 'YYYY-MM-DD[ hh:mm:ss]' UTC).
    Buckets overlapping [since_ms, until_ms) by their start are included.
    """
    if grain not in GRAINS:
        raise ValueError(f"grain must be one of {GRAINS}, not {grain!r}")
    names, exprs, params = _dimensions(by, ROLLUP_DIMENSIONS, tags=False)
    exprs = [f"toString({grain})", *exprs]
    bucket = f"toStartOf{grain.capitalize()}(fromUnixTimestamp64Milli({{since_ms:Int64}}, 'UTC'))"
    if grain == "day":
        bucket = "toDate(fromUnixTimestamp64Milli({since_ms:Int64}, 'UTC'))"
    scope, scope_params = _scope(org, workspaces)
    where = f"{grain} >= {bucket} AND {grain} < fromUnixTimestamp64Milli({{until_ms:Int64}}, 'UTC')" + scope
    sql = _grouped_sql(f"{check_identifier(db)}.usage_by_{grain}", exprs, _ROLLUP_METRICS, where, "")
    rows = client.query(sql, parameters={**params, **scope_params, "since_ms": since_ms,
                                         "until_ms": until_ms}).result_rows
    return [UsageRow.from_row([grain, *names], row) for row in rows]


__all__ = [
    "CSV_METRICS", "DIMENSIONS", "GRAINS", "ROLLUP_DIMENSIONS", "TOKEN_COLUMNS", "TraceCall", "UsageRow",
    "chargeback_rows", "check_by", "format_usd", "format_usd_nano", "month_bounds_ms", "rollup", "spend",
    "spend_log_days", "spend_logs", "trace",
    "trace_ref",
    "write_chargeback_csv",
]
