"""The ops middleware: one access log line and the request metrics for every model API request.

It sits inside the error edge, so it sees a ``GatewayError`` with its kind
before the edge renders it, and outside the admin part's own error renderer,
so it sees the status an admin call was answered with. The usage events a request produced are
collected in ``request[CALL_EVENTS]`` (``Gateway.emit`` appends to it), so the
log line carries the event's outcome, model and ``key_id`` and the metrics
are not counted twice. Nothing here reads a body or a credential header.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Awaitable, Callable

from aiohttp import web

from llmgw.core.events import UsageEvent

from ..context import CALL_EVENTS, REQUEST_ID
from ..errors import GatewayError
from ..keys import key_id_of, presented_key
from .state import OPS, Ops

access = logging.getLogger("llmgw.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

UNOBSERVED = frozenset({"/metrics", "/healthz", "/readyz", "/", "/api/hello"})
# Error kinds (proxy/errors.py) that are the gateway's own refusals, and their metric reason.
REFUSALS = {"auth": "auth", "invalid_request": "invalid_request", "policy": "policy", "not_found": "not_found",
            "budget": "budget", "rate": "rate", "unavailable": "ledger_stale", "body_too_large": "body_too_large",
            "forbidden": "forbidden", "conflict": "conflict"}
# The gateway's own endpoints (admin, LiteLLM-compatible, dashboard) render their errors themselves:
# their answer's status is the whole story, and a 4xx there is a refusal, never an upstream error.
_OWN_REFUSALS = {400: "invalid_request", 401: "auth", 403: "forbidden", 404: "not_found", 405: "not_found",
                 409: "conflict", 413: "body_too_large", 429: "rate", 503: "unavailable"}
_KEY_ID = re.compile(r"k[0-9a-f]{12}")


def _outcome(status: int, kind: str, own: bool = False) -> tuple[str, str | None]:
    """(outcome, refusal reason) of a request that produced no usage event."""
    if own and not kind:
        if status >= 500 and status not in _OWN_REFUSALS:
            return "internal_error", None
        if status >= 400:
            reason = _OWN_REFUSALS.get(status, "invalid_request")
            return "rejected_" + reason, reason
        return "ok", None
    if kind in REFUSALS:
        return "rejected_" + REFUSALS[kind], REFUSALS[kind]
    if kind in ("cancelled", "internal"):
        return ("cancelled" if kind == "cancelled" else "internal_error"), None
    if kind == "upstream" or status >= 400:     # the gateway's UpstreamError, or a provider's refusal relayed
        return "upstream_error", None
    return "ok", None


def _api(request: web.Request) -> str:
    if request.path == "/v1/models":
        return "models"
    from ..app import ADAPTER   # the app module owns the key; imported late (the app imports this part)
    adapter = request.get(ADAPTER)
    return getattr(adapter, "api", "other") if adapter is not None else "other"


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else request.path[:200]


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in UNOBSERVED:
        return await handler(request)
    ops = request.app[OPS]
    t0 = time.monotonic()
    events: list[UsageEvent] = []
    request[CALL_EVENTS] = events
    ops.metrics.in_flight.inc()
    status, kind = 500, "internal"
    try:
        resp = await handler(request)
        status, kind = resp.status, ""
        return resp
    except GatewayError as err:
        status, kind = err.status, ("body_too_large" if err.status == 413 else err.kind)
        raise
    except web.HTTPException as exc:
        status, kind = exc.status, ("not_found" if exc.status in (404, 405) else "invalid_request")
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status, kind = 499, "cancelled"
        raise
    finally:                                   # sync only: runs on cancellation too
        ops.metrics.in_flight.dec()
        _record(request, ops, events, status, kind, time.monotonic() - t0)


def _record(request: web.Request, ops: Ops, events: list[UsageEvent], status: int, kind: str,
            duration_s: float) -> None:
    api = events[-1].api if events else _api(request)
    if events:
        ev = events[-1]
        outcome, model, key_id = ev.outcome, ev.model_requested, ev.key_id
    else:
        outcome, refusal = _outcome(status, kind, own=api == "other")
        ops.metrics.observe_request(api, outcome, duration_s, refusal)
        model = ""
        claimed = key_id_of(presented_key(request.headers) or "")
        key_id = claimed if claimed and _KEY_ID.fullmatch(claimed) else ""
    if not access.isEnabledFor(logging.INFO):
        return
    fields: dict[str, object] = {
        "event": "request", "request_id": request.get(REQUEST_ID, ""), "method": request.method,
        "route": _route(request), "api": api, "model": model, "status": status,
        "duration_s": round(duration_s, 4), "outcome": outcome, "key_id": key_id,
    }
    if events:
        ev = events[-1]
        fields.update(upstream=ev.provider, input_tokens=ev.tokens.prompt, output_tokens=ev.tokens.output,
                      cost_micro_usd=ev.cost_micro_usd, stream=ev.stream,
                      ttft_s=ev.ttft_ms / 1000 if ev.ttft_ms is not None else None)
        if ev.error_type:
            fields["error_type"] = ev.error_type
        if len(events) > 1:
            fields["calls"] = len(events)
    elif kind and kind != "cancelled":
        fields["error_kind"] = kind
    access.info("%s %s %d %s", request.method, fields["route"], status, outcome, extra=fields)
