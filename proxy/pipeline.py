"""The request path over HTTP, in one sitting: auth, route, admit, forward, stream, meter, settle.

The rules every metered call follows, whatever its transport, live in
``call.py``; this module is the HTTP side of them. Every metered call ends
in exactly one usage event, whatever happens: the ``finally`` of ``handle``
settles it from what the meter saw (synchronously, no await), so a client
that leaves mid-stream still pays for what the provider generated.
"""
from __future__ import annotations

import time

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from llmgw.core import events as E

from . import failover, forward
from .call import LiveCall, outcome_of, route
from .context import GATEWAY, REQUEST_ID, Gateway
from .errors import BodyTooLarge, GatewayError, UnreadableBody
from llmgw.core.capture import CapturedCall, policy_for
from .routing import Target
from .types import Adapter, Call, Usage


async def handle(request: web.Request, adapter: Adapter) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started_ms, t0 = int(time.time() * 1000), time.monotonic()
    principal = gw.authenticate(request)                                     # auth
    stale = gw.stale_tags(principal)               # failure policy: refuse, or tag llmgw:stale
    call = adapter.parse(await read_body(request, gw.settings.max_body_bytes))
    call, target = route(gw, request, principal, adapter, call, stale)       # tags, model access, routing
    if not call.metered:
        return await passthrough(request, gw, target, adapter.upstream_path, call)
    live = await LiveCall.admit(gw, request, principal, adapter, call, target, started_ms, t0)   # admit
    call, target = live.call, live.target
    outcome, status, relay = E.UPSTREAM_ERROR, 502, None
    usage: Usage | None = None      # the meter's; an empty one is made only for a call that failed before it
    live.begin()                                    # durable before forwarding: a crash is charged
    try:
        upstream, target = await failover.open_upstream(gw, target, adapter.upstream_path, call,
                                                        request.headers, query=request.query)   # forward
        live.record.provider = target.upstream.name     # the upstream that took it, after any failover
        async with upstream:
            status = upstream.status
            meter = adapter.meter(call)
            capture = policy_for(gw.config, principal.org, principal.workspace) if gw.capture_sink else None
            relay = forward.Relay(meter, capture.max_bytes if capture else 0)
            extra = gw.policy.remaining_headers(live.reservation)
            request_id = request.get(REQUEST_ID)
            if request_id:                  # the reply leaves before error_edge could add it
                extra["x-llmgw-request-id"] = request_id
            if forward.is_stream(upstream):
                resp = await relay.stream(request, upstream, extra)                      # stream
            else:
                body = forward.scrub_error_body(status, await upstream.read(), target)
                relay.bytes_out = len(body)
                if relay.kept is not None:                    # capture keeps its bound, as in relay.stream
                    relay.kept += body[:relay.keep_bytes + 1]
                meter.finish_json(body)
                resp = await relay.reply(request, web.Response(status=status, body=body,
                                                               headers=forward.downstream_headers(upstream, extra)))
            usage = meter.result()                                                        # meter
            outcome = outcome_of(status, usage, relay.client_gone, relay.upstream_broke)
            return resp
    except BaseException as exc:
        if isinstance(exc, GatewayError):
            status = exc.status
            if usage is None:
                usage = Usage()
            usage.error_type = exc.kind
        elif relay is not None and relay.meter is not None:
            usage = relay.meter.result()
            outcome = E.CANCELLED
        raise
    finally:                                                                              # settle
        event = live.settle(usage if usage is not None else Usage(), outcome, status,
                            relay.first_output_s if relay else None, relay.bytes_out if relay else 0)
        if event is not None and relay is not None and relay.kept is not None and gw.capture_sink is not None:
            gw.capture_sink.put(CapturedCall.of(event.event_id, event.ts_start_ms, event.org, event.workspace,
                                                event.api, call.body, bytes(relay.kept), relay.keep_bytes))


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise BodyTooLarge(f"request body of {length} bytes exceeds the limit of {limit}")
    chunks, size, content = [], 0, request.content
    try:
        while chunk := await content.readany():        # whatever has arrived: a small body is one read
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if content.at_eof():        # the whole body was there: no read more to learn it ended
                break
    except RequestPayloadError as exc:      # a Content-Encoding the body does not have, or a cut chunk
        raise unreadable_body(request, exc) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def unreadable_body(request: web.Request, exc: RequestPayloadError) -> UnreadableBody:
    """The 400 for a body aiohttp could not decode. The rest of the stream cannot be framed, so the
    answer closes the connection; the body is marked read, so aiohttp does not read it again after."""
    request.content.feed_eof()
    cause = exc.__cause__
    problem = str(getattr(cause, "message", "") or cause or exc).strip().splitlines()[0][:200]
    return UnreadableBody(f"the request body could not be read: {problem}")


async def passthrough(request: web.Request, gw: Gateway, target: Target, path: str,
                      call: Call | None = None) -> web.StreamResponse:
    """Calls that cost nothing (count_tokens, model lists): authenticated, routed, not metered."""
    method = "POST" if call is not None else "GET"
    upstream = await forward.open_upstream(gw.transport_for(target.upstream), target, path,
                                           call or Call(model="", stream=False, body=b""), request.headers, method,
                                           query=request.query)
    async with upstream:
        body = forward.scrub_error_body(upstream.status, await upstream.read(), target)
        return web.Response(status=upstream.status, body=body, headers=forward.downstream_headers(upstream, {}))


__all__ = ["handle", "passthrough", "read_body"]
