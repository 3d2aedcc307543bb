"""The Responses API over WebSocket (``GET /v1/responses``), which Codex's
built-in provider tries before HTTP+SSE.

This module only frames and unframes. Frames are relayed untouched both ways;
each client ``response.create`` frame is one call, driven through the same
lifecycle as an HTTP call (``call.py``: failure policy, model access, budgets,
rate limits, downgrade, queue, refusal events, settle exactly once). A refusal
is an ``error`` frame in the Responses shape and never reaches the provider.

A turn ends at its terminal event (``response.completed`` / ``incomplete`` /
``failed``, or ``error``) and is settled then. A turn the client or the
upstream abandons (its socket closes first) is settled as cancelled with what
was metered, estimated if incomplete.

The key is re-checked on every turn, whenever the config changes (the
Gateway asks every open session, on every replica) and when it expires: a
revoked or expired key's session gets an ``error`` frame and is closed (1008).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
from aiohttp import WSCloseCode, WSMsgType, web

from llmgw.core import events as E

from .adapters.openai_chat import is_codex
from .adapters.openai_responses import OpenAIResponses, ResponsesMeter, parse_create
from .call import LiveCall, outcome_of, route
from .context import GATEWAY, Gateway
from .errors import AuthError, BadRequest, GatewayError, UpstreamError
from .forward import REDACTED, upstream_headers
from llmgw.core.principal import Principal
from llmgw.proxy.keys import authenticate, presented_key
from .routing import Target
from .types import Call

log = logging.getLogger("llmgw.proxy")
_ADAPTER = OpenAIResponses()
_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)


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
    upstream = await _connect(gw, request, target)
    client = web.WebSocketResponse(autoping=True, max_msg_size=gw.settings.max_body_bytes)
    try:
        await client.prepare(request)
    except BaseException:
        await upstream.close()
        raise
    await ResponsesSession(gw, request, presented_key(request.headers) or "", principal, client, upstream,
                           upstream_secret=target.upstream.api_key).run()
    return client


async def _connect(gw: Gateway, request: web.Request, target: Target) -> aiohttp.ClientWebSocketResponse:
    ws_url = target.upstream.url(_ADAPTER.upstream_path).replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    headers = upstream_headers(request.headers, target)
    for h in ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions", "accept-encoding"):
        headers.popall(h, None)
    try:
        return await gw.session(target.upstream).ws_connect(ws_url, headers=headers, autoping=True)
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(f"upstream refused the WebSocket: {exc.status}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"could not open a WebSocket to upstream: {type(exc).__name__}") from None


class _Turn:
    """One ``response.create`` in flight: its admitted call and what its meter saw."""

    __slots__ = ("live", "meter", "first_output_s", "bytes_out", "sent")

    def __init__(self, live: LiveCall) -> None:
        self.live = live
        self.meter = ResponsesMeter(live.call)
        self.first_output_s: float | None = None
        self.bytes_out = 0
        self.sent = False

    def observe(self, data: str) -> int | None:
        """Meter one upstream frame; its status if it ends the turn."""
        raw = data.encode()
        self.bytes_out += len(raw)
        meter = self.meter
        meter.observe_frame(raw)
        if self.first_output_s is None and meter.saw_output():
            self.first_output_s = time.monotonic()
        return _status_of_end(raw) if meter.finished else None

    def finish(self, status: int) -> None:
        usage = self.meter.result()
        self.live.settle(usage, outcome_of(status, usage, False, False), status, self.first_output_s, self.bytes_out)

    def abandon(self) -> None:
        self.live.settle(self.meter.result(), E.CANCELLED, 499, self.first_output_s, self.bytes_out,
                         forwarded=self.sent)


def _status_of_end(raw: bytes) -> int:
    """The status a turn ended with, once the meter parsed its terminal event (by its ``type``,
    never by the bytes: a model's text may quote any event name): 200, or an ``error`` frame's own."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 502
    if isinstance(obj, dict) and obj.get("type") == "error":
        status = obj.get("status")
        return status if isinstance(status, int) and not isinstance(status, bool) and status >= 400 else 502
    return 200


def _call_of(obj: dict[str, Any]) -> tuple[Call, bool]:
    """The call a ``response.create`` frame asks for (flat, or under ``response``), and whether
    forwarding needs the frame rewritten (``metadata.tags`` taken out)."""
    nested = isinstance(obj.get("response"), dict)
    inner = dict(obj["response"]) if nested else {k: v for k, v in obj.items() if k != "type"}
    meta = inner.get("metadata")
    if isinstance(meta, dict):
        inner["metadata"] = dict(meta)          # parse_create may take tags out: not from the client's frame
    call = parse_create(inner, None)
    if inner.get("generate") is False:          # a warm-up: no output, no tools, no images read
        call = replace(call, max_output_tokens=0, image_count=0, web_search=False)
    return replace(call, stream=True), inner.get("metadata") != meta


def _frame(obj: dict[str, Any], body: bytes) -> str:
    inner = orjson.loads(body)
    if isinstance(obj.get("response"), dict):
        return orjson.dumps({**obj, "response": inner}).decode()
    return orjson.dumps({"type": "response.create", **inner}).decode()


class ResponsesSession:
    """One client socket relayed to one upstream socket, opened with one gateway key."""

    def __init__(self, gw: Gateway, request: web.Request, key: str, principal: Principal,
                 client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                 upstream_secret: str = "") -> None:
        self.gw, self.request, self.client, self.upstream = gw, request, client, upstream
        # the gateway's provider credential: a frame that echoes it (an error quoting the key it
        # was sent) reaches the client redacted, as HTTP error bodies do (forward.scrub_error_body)
        self._secret = upstream_secret if len(upstream_secret) >= 8 else ""
        self._key = key                          # re-checked on each turn and config change; never logged
        self.principal = principal
        self.key_id = principal.key_id
        self.turns: deque[_Turn] = deque()       # in flight, oldest first: upstream answers in order
        self.ended_by: GatewayError | None = None
        self._ended = asyncio.Event()
        self._expiry: asyncio.TimerHandle | None = None

    # -- the key ------------------------------------------------------------------------
    def authenticate(self) -> Principal:
        p = authenticate(self.gw.config, self._key, int(time.time() * 1000))
        if p is None:
            raise AuthError("this gateway API key was revoked or has expired; the WebSocket session is closed")
        self.principal = p
        return p

    def recheck(self) -> None:
        """The Gateway calls it on every config change, the expiry timer at the key's expiry:
        end the session if its key no longer authenticates. Never raises, never awaits."""
        if self._ended.is_set():
            return
        try:
            p = self.authenticate()
        except AuthError as err:
            self.end(err)
            return
        self._arm_expiry(p)

    def _arm_expiry(self, p: Principal) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if p.expires_ms:
            delay_s = max(0.0, p.expires_ms / 1000 - time.time()) + 0.001
            self._expiry = asyncio.get_running_loop().call_later(delay_s, self.recheck)

    def end(self, err: GatewayError) -> None:
        self.ended_by = err
        self._ended.set()

    # -- the relay ----------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.gw.session_opened(self)
        self._arm_expiry(self.principal)
        tasks: tuple[asyncio.Task[Any], ...] = (loop.create_task(self._from_client(), name="llmgw-ws-client"),
                 loop.create_task(self._from_upstream(), name="llmgw-ws-upstream"),
                 loop.create_task(self._ended.wait(), name="llmgw-ws-ended"))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.gw.session_closed(self)
            if self._expiry is not None:
                self._expiry.cancel()
            for t in tasks:
                t.cancel()
            while self.turns:                    # settled before any await: runs even when cancelled
                self.turns.popleft().abandon()
            for t, r in zip(tasks, await asyncio.gather(*tasks, return_exceptions=True)):
                if isinstance(r, Exception) and not isinstance(r, _GONE):
                    log.error("WebSocket relay %s failed", t.get_name(), exc_info=r,
                              extra={"event": "ws_relay_error", "key_id": self.key_id})
            await self._close()

    async def _close(self) -> None:
        client, err = self.client, self.ended_by
        try:
            if err is not None and not client.closed:
                await client.send_str(_error_frame(err))
                await client.close(code=WSCloseCode.POLICY_VIOLATION, message=err.message[:120].encode())
        except _GONE:
            log.debug("client left before its session was closed", extra={"event": "ws_client_gone"})
        finally:
            await self.upstream.close()
            await client.close()

    async def _from_client(self) -> None:
        client, upstream = self.client, self.upstream
        async for msg in client:
            if msg.type == WSMsgType.BINARY:
                await upstream.send_bytes(msg.data)
                continue
            if msg.type != WSMsgType.TEXT:
                continue
            try:
                frame = await self._admit(msg.data)
            except AuthError as err:             # revoked or expired since the last turn
                self.end(err)
                return
            except GatewayError as err:
                err.client = "codex" if is_codex(self.request.headers) else ""
                await client.send_str(_error_frame(err))
                continue
            await upstream.send_str(frame)

    async def _admit(self, data: str) -> str:
        """The frame to forward: a ``response.create`` is admitted as a call first (or refused)."""
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BadRequest("frame is not valid JSON") from None
        if not isinstance(obj, dict) or obj.get("type") != "response.create":
            return data
        started_ms, t0 = int(time.time() * 1000), time.monotonic()
        gw, request = self.gw, self.request
        principal = self.authenticate()
        stale = gw.stale_tags(principal)
        asked, rewrite = _call_of(obj)
        call, target = route(gw, request, principal, _ADAPTER, asked, stale)
        live = await LiveCall.admit(gw, request, principal, _ADAPTER, call, target, started_ms, t0,
                                    log_request=False)
        turn = _Turn(live)
        self.turns.append(turn)
        live.begin()                              # durable before forwarding: a crash is charged
        turn.sent = True                          # from here the frame is the provider's
        return _frame(obj, live.call.body) if rewrite or live.call is not call else data

    async def _from_upstream(self) -> None:
        client, turns = self.client, self.turns
        async for msg in self.upstream:
            if msg.type == WSMsgType.TEXT:
                if turns and (status := turns[0].observe(msg.data)) is not None:
                    turns.popleft().finish(status)          # settled before the frame goes on
                data = msg.data
                if self._secret and self._secret in data:
                    data = data.replace(self._secret, REDACTED.decode())
                await client.send_str(data)
            elif msg.type == WSMsgType.BINARY:
                await client.send_bytes(msg.data)
