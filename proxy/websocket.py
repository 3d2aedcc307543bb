"""The Responses API over WebSocket (``GET /v1/responses``), which Codex's
built-in provider tries before HTTP+SSE.

Frames are relayed untouched both ways. Each client ``response.create`` frame
is one call: it is checked and reserved like an HTTP call before it is
forwarded (a refusal is answered with an ``error`` frame and never reaches
the provider), and it ends in one usage event when its terminal event
(``response.completed`` / ``incomplete`` / ``failed`` or ``error``) comes back,
or when the connection closes first.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import aiohttp
import orjson
from aiohttp import WSMsgType, web

from ledger import events as E
from pricing import RequestShape

from .adapters.openai_chat import is_codex
from .adapters.openai_responses import TERMINAL, OpenAIResponses, ResponsesMeter, parse_create
from .context import GATEWAY, Gateway
from .errors import BadRequest, GatewayError, UpstreamError
from .forward import upstream_headers
from .keys import Principal
from .pipeline import CallRecord
from .policy import Reservation
from .ratelimit import worst_case_tokens
from .routing import Target
from .types import Call

_ADAPTER = OpenAIResponses()


class _InFlight:
    __slots__ = ("record", "meter", "reservation", "price", "price_estimated", "call", "t0", "first_output")

    def __init__(self, record: CallRecord, call: Call, reservation: Reservation, price, price_estimated: bool):
        self.record, self.call, self.reservation = record, call, reservation
        self.price, self.price_estimated = price, price_estimated
        self.meter = ResponsesMeter()
        self.t0 = time.monotonic()
        self.first_output: float | None = None


def _error_frame(err: GatewayError) -> str:
    e = orjson.loads(_ADAPTER.error_body(err))["error"]
    frame = {"type": "error", "status": err.status, "error": {**e, "param": None}}
    if err.client == "codex" and err.codex_final:      # Codex reads a frame's headers as an HTTP response's
        frame["headers"] = err.response_headers()
    return orjson.dumps(frame).decode()


async def responses_ws(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    principal = gw.authenticate(request)
    if request.headers.get("upgrade", "").lower() != "websocket":
        raise BadRequest("GET /v1/responses is the WebSocket mode; use POST /v1/responses for HTTP")
    target = Target(gw.routing.default("openai"), "")
    ws_url = target.upstream.url(_ADAPTER.upstream_path).replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    headers = upstream_headers(request.headers, target)
    for h in ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "accept-encoding"):
        headers.popall(h, None)
    try:
        upstream = await gw.session(target.upstream).ws_connect(ws_url, headers=headers, autoping=True)
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(f"upstream refused the WebSocket: {exc.status}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"could not open a WebSocket to upstream: {type(exc).__name__}") from None
    client = web.WebSocketResponse(autoping=True, max_msg_size=gw.settings.max_body_bytes)
    await client.prepare(request)
    inflight: list[_InFlight] = []
    try:
        await asyncio.gather(_client_to_upstream(gw, request, principal, client, upstream, inflight),
                             _upstream_to_client(gw, client, upstream, inflight))
    finally:
        for f in inflight:
            _settle(gw, f, E.CANCELLED, 499)
        await upstream.close()
        await client.close()
    return client


async def _client_to_upstream(gw: Gateway, request: web.Request, principal: Principal,
                              client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                              inflight: list[_InFlight]) -> None:
    async for msg in client:
        if msg.type != WSMsgType.TEXT:
            if msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
            continue
        raw = msg.data.encode()
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await client.send_str(_error_frame(BadRequest("frame is not valid JSON")))
            continue
        if not isinstance(obj, dict) or obj.get("type") != "response.create":
            await upstream.send_str(msg.data)
            continue
        try:
            f = _admit(gw, request, principal, obj)
        except GatewayError as err:
            err.client = "codex" if is_codex(request.headers) else ""
            await client.send_str(_error_frame(err))
            continue
        inflight.append(f)
        await upstream.send_str(msg.data)
    await upstream.close()


def _admit(gw: Gateway, request: web.Request, principal: Principal, obj: dict) -> _InFlight:
    body = {k: v for k, v in obj.items() if k != "type"}
    inner = body.get("response") if isinstance(body.get("response"), dict) else body
    call = parse_create(dict(inner), None)
    gw.policy.check_model(principal, call.model)
    target = gw.routing.resolve("openai", call.model)
    now_ms = int(time.time() * 1000)
    price, est = gw.price(target, call.model, now_ms)
    if inner.get("generate") is False:
        shape = RequestShape(len(call.body), 0, call.service_tier)
    else:
        shape = RequestShape(len(call.body), call.max_output_tokens, call.service_tier, call.image_count,
                             call.web_search)
    stale = gw.stale_tags(principal)               # the failure policy applies per call, as over HTTP
    tags = E.normalize_tags((*principal.tags, *gw.client_tags(request, call.tags), *stale))
    reservation = gw.policy.reserve(principal, tags, gw.policy.estimate(principal, call.model, price, shape),
                                    now_ms,                                                # no queue, no downgrade
                                    tokens=worst_case_tokens(price, shape))
    call = replace(call, tags=tags, stream=True)
    return _InFlight(CallRecord(principal, _ADAPTER, call, target.upstream.name, now_ms, request),
                     call, reservation, price, est)


async def _upstream_to_client(gw: Gateway, client: web.WebSocketResponse,
                              upstream: aiohttp.ClientWebSocketResponse, inflight: list[_InFlight]) -> None:
    async for msg in upstream:
        if msg.type == WSMsgType.TEXT:
            raw = msg.data.encode()
            if inflight:
                f = inflight[0]
                f.meter.observe_event(raw, None)
                if f.first_output is None and f.meter.saw_output():
                    f.first_output = time.monotonic()
                if any(t.encode() in raw for t in TERMINAL) or b'"type":"error"' in raw:
                    inflight.pop(0)
                    u = f.meter.result()
                    _settle(gw, f, E.OK if u.complete and not u.error_type else E.UPSTREAM_ERROR, 200)
            if not client.closed:
                await client.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY and not client.closed:
            await client.send_bytes(msg.data)
    if not client.closed:
        await client.close()


def _settle(gw: Gateway, f: _InFlight, outcome: str, status: int) -> None:
    usage = f.meter.result()
    gw.emit(f.record.settle(gw, f.call, usage, outcome, status, f.t0, f.first_output, f.price,
                            f.price_estimated))
    gw.policy.release(f.reservation, usage.tokens.total,
                      observed=usage.tokens if outcome == E.OK and usage.complete else None)
