"""The gateway's analytics pages: ``/admin/spend``, ``/admin/chargeback.csv`` and ``/dashboard``.

``add_routes(app)`` is called by ``proxy.app.create_app``.

- ``GET /admin/spend?by=workspace,tag:project&since=2026-11-01&until=2026-12-01[&org=acme][&workspace=acme/backend]``:
  JSON, money as exact integers (``cost_micro_usd``) and exact decimal strings.
- ``GET /admin/chargeback.csv?month=2026-11&by=workspace,tag:project[&org=acme][&workspace=acme/backend]``: the
  CLI's chargeback CSV (same columns, TOTAL row), streamed while ClickHouse reads.
- ``GET /admin/trace/{session id or request id}``: a session's calls in order with the
  running cost (``llmgw trace``); a request id (``x-llmgw-request-id``) finds its session.
- ``/dashboard``: spend to the minute, budgets, alerts, refusals, top sessions
  (``analytics/dashboard*.py``), behind a login form and a signed session cookie.

Admin endpoints take an admin credential (``Authorization: Bearer`` or
``x-api-key``), checked by the admin part (``proxy.admin``): reading spend
needs ``spend.read`` and the CSV ``exports.read`` (owner and finance); a
workspace admin sees only its own workspaces. Queries block, so they run in
worker threads, on the process's analytics client (in embedded mode the same
chDB engine the ledger writes to, through separate handles so a long export
never holds up the ledger's inserts).
"""
from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO, cast

import orjson
from aiohttp import web
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from llmgw.analytics import queries, store
from llmgw.analytics.queries import TraceCall, UsageRow
from llmgw.proxy.admin.errors import BadRequest, Forbidden, NotFound
from llmgw.proxy.admin.roles import READ_EXPORTS, READ_SPEND, WORKSPACE_ADMIN, AdminPrincipal
from llmgw.proxy.admin.runtime import admin_of
from llmgw.proxy.context import GATEWAY
from llmgw.proxy.errors import GatewayError
from llmgw.core.scopes import parse_workspace

from llmgw.proxy.reports import dashboard_routes

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CSV_CHUNK_BYTES = 64 * 1024
_QUEUE_CHUNKS = 8


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/spend", spend_handler, allow_head=False)
    app.router.add_get("/admin/chargeback.csv", chargeback_handler, allow_head=False)
    app.router.add_get("/admin/trace/{ref}", trace_handler, allow_head=False)
    dashboard_routes.add_routes(app)
    from llmgw.proxy.reports import reconcile_web     # it imports this module: added once this one is whole
    reconcile_web.add_routes(app)


# ---- shared by the handlers -----------------------------------------------------------------


class AnalyticsUnavailable(GatewayError):
    """The analytics store is off, unreachable or failing: spend cannot be read right now."""

    status, kind, should_retry = 503, "unavailable", True


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Store failures become a 503 the admin edge renders (never a bare 500 with a traceback)."""
    try:
        yield
    except (store.StoreError, ClickHouseError) as err:
        raise AnalyticsUnavailable(f"the analytics store failed: {type(err).__name__}: {err}") from err


def analytics_client(app: web.Application, role: str = "reader") -> tuple[Client, str]:
    """The process's client on the analytics store (blocking on first use: call it in a thread)."""
    settings = app[GATEWAY].settings
    if settings.embedded and not settings.analytics:
        raise AnalyticsUnavailable("analytics is off (LLMGW_ANALYTICS=0): no spend is recorded in ClickHouse")
    client = store.connect(settings.analytics_dsn, role=role)
    return client, str(client.database)


def scope_of(admin: AdminPrincipal) -> Sequence[str] | None:
    """The workspaces an admin may see spend of (None: all of them)."""
    return admin.workspaces if admin.role == WORKSPACE_ADMIN else None


def filtered_scope(request: web.Request, admin: AdminPrincipal, org: str | None) -> Sequence[str] | None:
    """The admin's scope narrowed to ``workspace=ORG/NAME`` (or ``workspace:ORG/NAME``, or NAME with
    ``org``) when the query names one; a workspace outside the admin's scope is refused, not emptied."""
    mine = scope_of(admin)
    raw = request.query.get("workspace")
    if not raw:
        return mine
    try:
        ws = "/".join(parse_workspace(raw, org or ""))
    except ValueError as err:
        raise BadRequest(str(err)) from None
    if mine is not None and ws not in mine:
        raise Forbidden(f"workspace {ws} is outside this admin's scope ({', '.join(mine) or 'none'})")
    return [ws]


def parse_utc_ms(text: str, name: str) -> int:
    """'2026-11-01', '2026-11-01T12:00[:00][Z|+hh:mm]' (UTC unless stated) or epoch milliseconds."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: not an ISO date or time, nor epoch milliseconds: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _by(request: web.Request) -> list[str]:
    raw = request.query.get("by", "workspace")
    try:
        return queries.check_by([item for item in raw.split(",") if item.strip()])
    except ValueError as err:
        raise BadRequest(str(err)) from None


def _usage_json(row: UsageRow) -> dict[str, Any]:
    t = row.tokens
    return {**row.dims, "requests": row.requests,
            "tokens": asdict(t),
            "cost_micro_usd": row.cost_micro_usd, "cost_usd": row.cost_usd,
            "cost_nano_usd": row.cost_nano_usd, "web_search_calls": row.web_search_calls}


# ---- /admin/spend -------------------------------------------------------------------------------


async def spend_handler(request: web.Request) -> web.Response:
    admin = admin_of(request)
    admin.require(READ_SPEND)
    by = _by(request)
    now_ms = time.time_ns() // 1_000_000
    now = _EPOCH + timedelta(milliseconds=now_ms)
    month_start = (datetime(now.year, now.month, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
    since_ms = parse_utc_ms(request.query["since"], "since") if "since" in request.query else month_start
    until_ms = parse_utc_ms(request.query["until"], "until") if "until" in request.query else now_ms
    if until_ms <= since_ms:
        raise BadRequest("until must be after since")
    org = request.query.get("org") or None
    workspaces = filtered_scope(request, admin, org)

    def run() -> list[UsageRow]:
        client, db = analytics_client(request.app)
        return queries.spend(client, db, by, since_ms, until_ms, org=org, workspaces=workspaces)

    with store_errors():
        rows = await asyncio.to_thread(run)
    total = UsageRow((), sum(r.requests for r in rows), _sum_tokens(rows), sum(r.cost_nano_usd for r in rows),
                     sum(r.web_search_calls for r in rows))
    body = {"since_ms": since_ms, "until_ms": until_ms, "by": by, "org": org,
            "rows": [_usage_json(r) for r in rows], "total": _usage_json(total)}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


def _sum_tokens(rows: Sequence[UsageRow]) -> Any:
    from llmgw.core.events import Tokens

    return Tokens(*(sum(getattr(r.tokens, f) for r in rows) for f in
                    ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output", "reasoning")))


# ---- /admin/trace/{ref} --------------------------------------------------------------------------


def call_json(call: TraceCall) -> dict[str, Any]:
    t = call.tokens
    return {"event_id": call.event_id, "ts_start_ms": call.ts_start_ms, "ts_end_ms": call.ts_end_ms,
            "kind": call.kind, "model": call.model, "provider": call.provider, "api": call.api,
            "outcome": call.outcome, "latency_ms": call.latency_ms,
            "tokens": asdict(t),
            "cost_micro_usd": call.cost_micro_usd, "running_cost_micro_usd": call.running_cost_micro_usd,
            "cost_nano_usd": call.cost_nano_usd, "running_cost_nano_usd": call.running_cost_nano_usd}


async def trace_handler(request: web.Request) -> web.Response:
    admin = admin_of(request)
    admin.require(READ_SPEND)
    if admin.role == WORKSPACE_ADMIN:
        raise Forbidden("a trace is not limited to one workspace; ask an owner, finance or viewer admin")
    ref = request.match_info["ref"]

    def run() -> list[TraceCall]:
        client, db = analytics_client(request.app)
        return queries.trace_ref(client, db, ref)

    with store_errors():
        calls = await asyncio.to_thread(run)
    if not calls:
        raise NotFound(f"no calls recorded for session or request {ref!r}")
    body = {"ref": ref, "calls": [call_json(c) for c in calls],
            "total_cost_micro_usd": calls[-1].running_cost_micro_usd}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


# ---- /admin/chargeback.csv ----------------------------------------------------------------------


class _Cancelled(Exception):
    """The client went away: the producer thread stops reading."""


class _ChunkWriter(io.TextIOBase):
    """A text sink that hands ~64 KiB byte chunks to ``emit``."""

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._emit = emit
        self._parts: list[str] = []
        self._size = 0

    def write(self, text: str) -> int:
        self._parts.append(text)
        self._size += len(text)
        if self._size >= _CSV_CHUNK_BYTES:
            self.flush()
        return len(text)

    def flush(self) -> None:
        if self._parts:
            self._emit("".join(self._parts).encode())
            self._parts, self._size = [], 0


async def chargeback_handler(request: web.Request) -> web.StreamResponse:
    admin = admin_of(request)
    admin.require(READ_EXPORTS)
    month = request.query.get("month", "")
    try:
        queries.month_bounds_ms(month)
    except ValueError as err:
        raise BadRequest(str(err)) from None
    by, org = _by(request), request.query.get("org") or None
    workspaces = filtered_scope(request, admin, org)
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
    gone = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        future = asyncio.run_coroutine_threadsafe(chunks.put(item), loop)
        while True:                                  # back pressure, but never outlive the request
            try:
                future.result(timeout=0.5)
                return
            except TimeoutError:
                if gone.is_set():
                    future.cancel()
                    raise _Cancelled from None

    def produce() -> None:
        try:
            client, db = analytics_client(request.app, role="export")
            rows = queries.chargeback_rows(client, db, month, by, org=org, workspaces=workspaces)
            writer = _ChunkWriter(put)
            try:
                queries.write_chargeback_csv(_until(rows, gone), cast(TextIO, writer), by=by)
                writer.flush()
            finally:
                rows.close()                         # ends the ClickHouse stream, frees the client
            put(None)
        except _Cancelled:
            return
        except BaseException as exc:   # handed to the handler, which answers or aborts the stream
            try:
                put(exc)
            except _Cancelled:
                return

    worker = loop.run_in_executor(None, produce)
    try:
        first = await chunks.get()
        if isinstance(first, BaseException):
            with store_errors():
                raise first
        resp = web.StreamResponse(headers={
            "Content-Type": "text/csv; charset=utf-8", "Cache-Control": "no-store",
            "Content-Disposition": f'attachment; filename="chargeback-{month}.csv"'})
        await resp.prepare(request)
        item: bytes | BaseException | None = first
        while item is not None:
            if isinstance(item, BaseException):
                raise item                            # mid-stream: the client sees a cut response, not a short file
            await resp.write(item)
            item = await chunks.get()
        await resp.write_eof()
        return resp
    finally:
        gone.set()
        await asyncio.shield(worker)


def _until(rows: Iterator[UsageRow], gone: threading.Event) -> Iterator[UsageRow]:
    for row in rows:
        if gone.is_set():
            raise _Cancelled
        yield row


__all__ = ["AnalyticsUnavailable", "analytics_client", "parse_utc_ms", "scope_of"]
