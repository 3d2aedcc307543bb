"""`llmgw spend`, `llmgw trace` and `llmgw chargeback`: thin shells over analytics.queries.

The ``llmgw`` CLI calls ``register(subparsers)`` and then ``args.func(args)``,
which returns the exit status. The ClickHouse DSN comes from ``--dsn``, else
the gateway's ``Settings``: ``LLMGW_CLICKHOUSE_DSN``, else
``chdb://$LLMGW_DATA_DIR/clickhouse`` (the embedded store; ``LLMGW_DATA_DIR``
defaults to ``./llmgw-data``). The embedded store can be opened by one process
at a time, so while ``llmgw serve`` holds it these commands ask that gateway
(its admin API, found through ``<data_dir>/gateway.json``) instead.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, TextIO

import orjson
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from llmgw.analytics import queries, store
from llmgw.analytics.queries import TraceCall, UsageRow
from llmgw.core.files import atomic_write
from llmgw.core.events import Tokens
from llmgw.ledger.local_gateway import GatewayRefused, LocalGateway, find as find_gateway
from llmgw.core.scopes import parse_workspace
from llmgw.core.settings import Settings

PROGRESS_EVERY_ROWS = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def resolve_dsn(dsn: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``--dsn``, else the gateway's own setting (LLMGW_CLICKHOUSE_DSN, config file, data dir)."""
    return dsn or Settings.load(environ).analytics_dsn


def register(subparsers: Any, environ: Mapping[str, str] | None = None) -> None:
    """Add ``spend``, ``trace`` and ``chargeback`` to an argparse subparsers object.

    ``environ`` (default: the process environment) is read through ``Settings``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="ClickHouse DSN (default: $LLMGW_CLICKHOUSE_DSN, else the embedded "
                                      "chdb://$LLMGW_DATA_DIR/clickhouse)")
    common.add_argument("--database", help=f"database (default: the DSN's, else {store.DEFAULT_DATABASE})")

    p = subparsers.add_parser("spend", parents=[common], help="spend per group over a time range")
    p.add_argument("--by", type=_by_list, default=["workspace"],
                   help="comma list of org,workspace,user,key,model,provider,project,api,outcome,tier,tag:NAME "
                        "(default: workspace)")
    p.add_argument("--since", type=_utc_ms, help="UTC date or ISO datetime (default: start of this month)")
    p.add_argument("--until", type=_utc_ms, help="UTC date or ISO datetime, exclusive (default: now)")
    p.add_argument("--org", help="only this organization")
    p.add_argument("--workspace", help="only this workspace: ORG/NAME (or NAME with --org)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=partial(_guarded, _spend, environ))

    t = subparsers.add_parser("trace", parents=[common], help="a session's calls in order, with running cost")
    t.add_argument("session_id", metavar="SESSION_ID")
    t.add_argument("--json", action="store_true", help="one JSON object per line")
    t.set_defaults(func=partial(_guarded, _trace, environ))

    c = subparsers.add_parser("chargeback", parents=[common], help="a month's spend as CSV for finance")
    c.add_argument("--month", required=True, help="YYYY-MM (UTC)")
    c.add_argument("--by", type=_by_list, default=["workspace"],
                   help="comma list, as for spend (default: workspace)")
    c.add_argument("--org", help="only this organization")
    c.add_argument("--workspace", help="only this workspace: ORG/NAME (or NAME with --org)")
    c.add_argument("--out", default="-", help="CSV file to write (default: stdout)")
    c.set_defaults(func=partial(_guarded, _chargeback, environ))


def _guarded(command: Callable[[argparse.Namespace, Mapping[str, str] | None], int],
             environ: Mapping[str, str] | None, args: argparse.Namespace) -> int:
    """The CLI edge: report expected failures in one line, not a traceback."""
    try:
        return command(args, environ)
    except ValueError as err:
        print(f"llmgw: {err}", file=sys.stderr)
        return 2
    except (store.StoreError, ClickHouseError) as err:
        print(f"llmgw: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    except (GatewayRefused, ConnectionError) as err:
        print(f"llmgw: {err}", file=sys.stderr)
        return 1


def holder(args: argparse.Namespace, environ: Mapping[str, str] | None) -> LocalGateway | None:
    """The running gateway that holds the embedded store this command would open, if any."""
    if args.dsn or args.database:
        return None
    s = Settings.load(environ)
    if store.Target.from_dsn(s.analytics_dsn).kind != "chdb":
        return None                        # a ClickHouse server: anyone may connect
    gw = find_gateway(s)
    return gw if gw is not None and gw.analytics_dsn == s.analytics_dsn else None


def _open(args: argparse.Namespace, environ: Mapping[str, str] | None) -> tuple[Client, str]:
    dsn = resolve_dsn(args.dsn, environ)
    client = store.connect(dsn, database=args.database)
    database = str(client.database)
    if store.Target.from_dsn(dsn).kind == "chdb":
        store.migrate(client, database)   # the embedded store is ours: a fresh one reads as empty
    return client, database


def _workspaces(args: argparse.Namespace) -> list[str] | None:
    """``--workspace`` as the one ORG/NAME to keep (core/scopes.py reads it as the admin API does)."""
    return ["/".join(parse_workspace(args.workspace, args.org or ""))] if args.workspace else None


def _spend(args: argparse.Namespace, environ: Mapping[str, str] | None) -> int:
    now_ms = time.time_ns() // 1_000_000
    since_ms = args.since if args.since is not None else _month_start_ms(now_ms)
    until_ms = args.until if args.until is not None else now_ms
    if (gw := holder(args, environ)) is not None:
        got = gw.json("GET", "/admin/spend", {"by": ",".join(args.by), "since": str(since_ms),
                                              "until": str(until_ms), "org": args.org, "workspace": args.workspace})
        rows = [_row_from_json(r, args.by) for r in got["rows"]]
    else:
        client, database = _open(args, environ)
        rows = queries.spend(client, database, args.by, since_ms, until_ms, org=args.org,
                             workspaces=_workspaces(args))
    if args.json:
        _print_json_lines(_row_json(r) for r in rows)
    else:
        _print_table(_usage_table(rows, args.by))
    return 0


def _trace(args: argparse.Namespace, environ: Mapping[str, str] | None) -> int:
    if (gw := holder(args, environ)) is not None:
        try:
            got = gw.json("GET", "/admin/trace/" + urllib.parse.quote(args.session_id, safe=""))
        except GatewayRefused as err:
            if err.status != 404:
                raise
            got = {"calls": []}
        calls = [_call_from_json(c) for c in got["calls"]]
    else:
        client, database = _open(args, environ)
        calls = queries.trace_ref(client, database, args.session_id)
    if not calls:
        print(f"llmgw: no calls recorded for session {args.session_id!r}", file=sys.stderr)
        return 1
    if args.json:
        _print_json_lines(_call_json(c) for c in calls)
    else:
        _print_table(_trace_table(calls))
    return 0


def _chargeback(args: argparse.Namespace, environ: Mapping[str, str] | None) -> int:
    queries.month_bounds_ms(args.month)    # validate before connecting
    gw = holder(args, environ)
    target = "stdout" if args.out == "-" else args.out
    print(f"chargeback {args.month} by {','.join(args.by) or '-'} -> {target}", file=sys.stderr)
    if gw is not None:                     # the gateway's CSV is the same file: pass its bytes on
        text = gw.request("GET", "/admin/chargeback.csv", {"month": args.month, "by": ",".join(args.by),
                                                           "org": args.org, "workspace": args.workspace}).decode()
        write: Callable[[TextIO], UsageRow] = lambda file: _copy_csv(text, file)  # noqa: E731
    else:
        client, database = _open(args, environ)
        rows = _with_progress(queries.chargeback_rows(client, database, args.month, args.by, org=args.org,
                                                      workspaces=_workspaces(args)))
        write = lambda file: queries.write_chargeback_csv(rows, file, by=args.by)  # noqa: E731
    if args.out == "-":
        total = write(sys.stdout)
    else:
        # finance never sees a half-written file, and a link planted beside it is never followed
        with atomic_write(args.out) as file:
            total = write(file)
    print(f"{total.requests} requests, ${total.cost_usd} ({total.cost_micro_usd} micro-USD) -> {target}",
          file=sys.stderr)
    return 0


def _copy_csv(text: str, file: TextIO) -> UsageRow:
    """Write the gateway's CSV as it is; its TOTAL row (the last) gives the summary line."""
    file.write(text)
    lines = list(csv.reader(io.StringIO(text)))
    head, last = lines[0], lines[-1]
    return UsageRow((), int(last[head.index("requests")]), Tokens(0, 0, 0, 0, 0, 0),
                    int(last[head.index("cost_nano_usd")]))


def _with_progress(rows: Iterator[UsageRow]) -> Iterator[UsageRow]:
    count = 0
    for count, row in enumerate(rows, 1):
        if count % PROGRESS_EVERY_ROWS == 0:
            print(f"  {count} rows", file=sys.stderr)
        yield row
    print(f"  {count} rows", file=sys.stderr)


# ---- argument types and output -----------------------------------------------------------


def _by_list(text: str) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    try:
        return queries.check_by(items)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _utc_ms(text: str) -> int:
    """'2026-11-01', '2026-11-01T12:00' (UTC) or with an offset -> epoch milliseconds."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not an ISO date or datetime: {text!r}") from err
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _month_start_ms(now_ms: int) -> int:
    now = _EPOCH + timedelta(milliseconds=now_ms)
    return (datetime(now.year, now.month, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)


def _utc_text(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


_TOKEN_HEADERS = ("input", "cache_w5m", "cache_w1h", "cache_read", "output", "reasoning")


def _token_values(row: UsageRow | TraceCall) -> list[str]:
    t = row.tokens
    return [str(v) for v in (t.input, t.cache_write_5m, t.cache_write_1h, t.cache_read, t.output, t.reasoning)]


def _usage_table(rows: Sequence[UsageRow], by: Sequence[str]) -> list[list[str]]:
    table = [[*by, "requests", *_TOKEN_HEADERS, "web_searches", "cost_usd"]]
    table += [[v for _, v in r.group] + [str(r.requests), *_token_values(r), str(r.web_search_calls),
                                         queries.format_usd_nano(r.cost_nano_usd)] for r in rows]
    return table


def _trace_table(calls: Sequence[TraceCall]) -> list[list[str]]:
    table = [["start_utc", "model", "outcome", "latency_ms", *_TOKEN_HEADERS, "cost_usd", "running_usd"]]
    for c in calls:
        table.append([_utc_text(c.ts_start_ms), c.model, c.outcome, str(c.latency_ms), *_token_values(c),
                      queries.format_usd_nano(c.cost_nano_usd), queries.format_usd_nano(c.running_cost_nano_usd)])
    return table


def _print_table(table: list[list[str]], out: TextIO | None = None) -> None:
    out = out or sys.stdout
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() + "\n")


def _print_json_lines(objects: Iterator[dict[str, object]]) -> None:
    for obj in objects:
        sys.stdout.write(orjson.dumps(obj).decode() + "\n")


def _tokens_from_json(t: dict[str, int]) -> Tokens:
    return Tokens(t["input"], t["cache_write_5m"], t["cache_write_1h"], t["cache_read"], t["output"], t["reasoning"])


def _row_from_json(r: dict[str, Any], by: Sequence[str]) -> UsageRow:
    return UsageRow(tuple((name, str(r[name])) for name in by), int(r["requests"]), _tokens_from_json(r["tokens"]),
                    int(r["cost_nano_usd"]), int(r.get("web_search_calls", 0)))


def _call_from_json(c: dict[str, Any]) -> TraceCall:
    return TraceCall(c["event_id"], int(c["ts_start_ms"]), int(c["ts_end_ms"]), c["kind"], c["model"], c["provider"],
                     c["api"], c["outcome"], int(c["latency_ms"]), _tokens_from_json(c["tokens"]),
                     int(c["cost_nano_usd"]), int(c["running_cost_nano_usd"]))


def _row_json(row: UsageRow) -> dict[str, object]:
    return {**row.dims, "requests": row.requests, "tokens": _tokens_json(row),
            "cost_micro_usd": row.cost_micro_usd, "cost_usd": row.cost_usd,
            "cost_nano_usd": row.cost_nano_usd, "web_search_calls": row.web_search_calls}


def _call_json(call: TraceCall) -> dict[str, object]:
    return {"event_id": call.event_id, "ts_start_ms": call.ts_start_ms, "ts_end_ms": call.ts_end_ms,
            "kind": call.kind, "model": call.model, "provider": call.provider, "api": call.api,
            "outcome": call.outcome, "latency_ms": call.latency_ms, "tokens": _tokens_json(call),
            "cost_micro_usd": call.cost_micro_usd, "running_cost_micro_usd": call.running_cost_micro_usd,
            "cost_nano_usd": call.cost_nano_usd, "running_cost_nano_usd": call.running_cost_nano_usd}


def _tokens_json(row: UsageRow | TraceCall) -> dict[str, int]:
    t = row.tokens
    return {"input": t.input, "cache_write_5m": t.cache_write_5m, "cache_write_1h": t.cache_write_1h,
            "cache_read": t.cache_read, "output": t.output, "reasoning": t.reasoning}


__all__ = ["PROGRESS_EVERY_ROWS", "holder", "register", "resolve_dsn"]
