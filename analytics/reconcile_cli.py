"""``llmgw reconcile import FILE --provider openai|anthropic`` and ``llmgw reconcile report``.

Thin shells over ``analytics.reconcile``. The store is chosen as for ``llmgw
spend`` (``--dsn``, else ``LLMGW_CLICKHOUSE_DSN``, else the embedded store,
which only one process can open at a time: while ``llmgw serve`` holds it,
these go through that gateway, ``/admin/reconcile/...``).
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from clickhouse_connect.driver.exceptions import ClickHouseError

from llmgw.analytics import reconcile, store
from llmgw.analytics.cli import holder, resolve_dsn
from llmgw.analytics.queries import format_usd
from llmgw.ledger.local_gateway import GatewayRefused


def register(subparsers: Any, environ: Mapping[str, str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="ClickHouse DSN (default: $LLMGW_CLICKHOUSE_DSN, else the embedded store)")
    common.add_argument("--database", help=f"database (default: the DSN's, else {store.DEFAULT_DATABASE})")
    r = subparsers.add_parser("reconcile", help="provider bills against gateway-metered spend").add_subparsers(
        dest="reconcile_cmd", required=True, metavar="ACTION")
    i = r.add_parser("import", parents=[common], help="import a provider's cost report (API JSON or CSV export)")
    i.add_argument("file", metavar="FILE")
    i.add_argument("--provider", required=True, choices=reconcile.PROVIDERS)
    i.set_defaults(func=partial(_guarded, _import, environ))
    p = r.add_parser("report", parents=[common], help="per day and provider: metered, billed and the delta")
    p.add_argument("--since", type=_day, help="first UTC day (default: 30 days ago)")
    p.add_argument("--until", type=_day, help="UTC day after the last one (default: tomorrow)")
    p.add_argument("--provider", action="append", choices=reconcile.PROVIDERS, help="only this provider (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=partial(_guarded, _report, environ))


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text[:10])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from err


def _guarded(command: Any, environ: Mapping[str, str] | None, args: argparse.Namespace) -> int:
    try:
        return int(command(args, environ))
    except (ValueError, OSError) as err:
        print(f"llmgw: {err}", file=sys.stderr)
        return 2
    except (store.StoreError, ClickHouseError, GatewayRefused) as err:
        print(f"llmgw: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def _open(args: argparse.Namespace, environ: Mapping[str, str] | None) -> tuple[Any, str]:
    client = store.connect(resolve_dsn(args.dsn, environ), database=args.database)
    database = str(client.database)
    store.migrate(client, database)
    return client, database


def _import(args: argparse.Namespace, environ: Mapping[str, str] | None) -> int:
    data = Path(args.file).read_bytes()
    costs = reconcile.parse_report(data, args.provider)   # parse before connecting
    if (gw := holder(args, environ)) is not None:
        rows = gw.json("POST", "/admin/reconcile/import?" + urlencode(
            {"provider": args.provider, "source": Path(args.file).name}), raw=data)["rows"]
    else:
        client, database = _open(args, environ)
        rows = reconcile.import_costs(client, database, costs, source=Path(args.file).name)
    days = sorted({c.day for c in costs})
    span = f"{days[0]}..{days[-1]}" if days else "no days"
    total = sum(c.cost_micro_usd for c in costs)
    print(f"imported {rows} {args.provider} cost lines ({span}, ${format_usd(total)}) from {args.file}")
    return 0


def _report(args: argparse.Namespace, environ: Mapping[str, str] | None) -> int:
    today = datetime.now(timezone.utc).date()
    since = args.since or today - timedelta(days=30)
    until = args.until or today + timedelta(days=1)
    if (gw := holder(args, environ)) is not None:
        got = gw.json("GET", "/admin/reconcile/report?" + urlencode(
            [("since", since.isoformat()), ("until", until.isoformat()), *(("provider", p) for p in args.provider or ())]))
        rows = [reconcile.DayDelta(date.fromisoformat(r["day"]), r["provider"], r["metered_micro_usd"],
                                   r["billed_micro_usd"], r["requests"]) for r in got["rows"]]
    else:
        client, database = _open(args, environ)
        rows = reconcile.report(client, database, since, until, tuple(args.provider or ()))
    if args.json:
        import orjson
        for r in rows:
            sys.stdout.write(orjson.dumps({
                "day": r.day.isoformat(), "provider": r.provider, "requests": r.requests,
                "metered_micro_usd": r.metered_micro_usd, "billed_micro_usd": r.billed_micro_usd,
                "delta_micro_usd": r.delta_micro_usd}).decode() + "\n")
        return 0
    table = [["day", "provider", "requests", "metered_usd", "billed_usd", "delta_usd", "delta_pct"]]
    for r in rows:
        pct = _percent(r.delta_micro_usd, r.billed_micro_usd)
        table.append([r.day.isoformat(), r.provider, str(r.requests), format_usd(r.metered_micro_usd),
                      format_usd(r.billed_micro_usd), format_usd(r.delta_micro_usd), pct])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.rjust(w) if n >= 2 else c.ljust(w) for n, (c, w) in enumerate(zip(row, widths))).rstrip())
    return 0


def _percent(part: int, whole: int) -> str:
    """``part / whole`` as a signed percentage with one decimal, in integers: 1, 8 -> "+12.5%"."""
    if not whole:
        return "-"
    tenths = (abs(part) * 1000 + abs(whole) // 2) // abs(whole)
    sign = "-" if (part < 0) != (whole < 0) and part else "+"
    return f"{sign}{tenths // 10}.{tenths % 10}%"


__all__ = ["register"]
