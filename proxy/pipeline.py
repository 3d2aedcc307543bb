"""The request path, in one sitting: auth, budget check, forward, stream, meter, emit.

Every metered call ends in exactly one usage event, whatever happens: the
``finally`` of ``handle`` builds it from what the meter saw and hands it to
the ledger synchronously (no await), so a client that leaves mid-stream still
pays for what the provider generated.
"""
from __future__ import annotations

import time
from dataclasses import replace

from aiohttp import web

from ledger import events as E
from pricing import Price, RequestShape, cost

from . import admission, failover, forward
from .context import GATEWAY, REQUEST_ID, Gateway
from .errors import BodyTooLarge, GatewayError
from .capture import CapturedCall, policy_for
from .keys import Principal
from .routing import Target
from .types import Adapter, Call, Usage


async def handle(request: web.Request, adapter: Adapter) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    started_ms, t0 = int(time.time() * 1000), time.monotonic()
    principal = gw.authenticate(request)                                     # auth
    stale = gw.stale_tags(principal)               # failure policy: refuse, or tag llmgw:stale
    call = adapter.parse(await read_body(request, gw.settings.max_body_bytes))
    call = replace(call, tags=E.normalize_tags((*principal.tags, *gw.client_tags(request, call.tags), *stale)))
    gw.policy.check_model(principal, call.model)
    target = gw.routing.resolve(adapter.family, call.model)
    if not call.metered:
        return await passthrough(request, gw, target, adapter.upstream_path, call)
    price, price_estimated = gw.price(target, call.model, started_ms)
    shape = RequestShape(len(call.body), call.max_output_tokens, call.service_tier,
                         call.image_count, call.web_search, n=call.choices)
    ctx = CallRecord(principal, adapter, call, target.upstream.name, started_ms, request)
    try:                                             # budgets, rate limits; may queue or downgrade (admission.py)
        admitted = await admission.admit(gw, request, principal, adapter.family, call, shape, target, price,
                                         price_estimated, started_ms)
    except GatewayError as err:
        gw.emit(ctx.event(gw, Usage(), _REJECTED.get(err.kind, E.REJECTED_POLICY),
                          err.status, t0, None, 0, ""), request)
        raise
    reservation, call, target = admitted.reservation, admitted.call, admitted.target
    price, price_estimated = admitted.price, admitted.price_estimated
    if admitted.downgraded:                          # the event keeps the model the client asked for
        ctx = CallRecord(principal, adapter, call, target.upstream.name, started_ms, request, ctx.call.model)
    outcome, status, relay, usage = E.UPSTREAM_ERROR, 502, None, Usage()
    try:
        upstream, target = await failover.open_upstream(gw, target, adapter.upstream_path, call,
                                                        request.headers)                 # forward
        ctx.provider = target.upstream.name           # the upstream that took it, after any failover
        async with upstream:
            status = upstream.status
            meter = adapter.meter(call)
            capture = policy_for(gw.config, principal.org, principal.workspace) if gw.capture_sink else None
            relay = forward.Relay(meter, capture.max_bytes if capture else 0)
            extra = gw.policy.remaining_headers(reservation)
            if forward.is_stream(upstream):
                resp = await relay.stream(request, upstream, extra)                      # stream
            else:
                body = await upstream.read()
                relay.bytes_out = len(body)
                if relay.kept is not None:                    # capture keeps its bound, as in relay.stream
                    relay.kept += body[:relay.keep_bytes + 1]
                meter.finish_json(body)
                resp = web.Response(status=status, body=body,
                                    headers=forward.downstream_headers(upstream, extra))
            usage = meter.result()                                                        # meter
            outcome = _outcome(status, relay, usage)
            if outcome == E.OK and not usage.complete:
                usage = _estimate_missing(usage, call, relay.bytes_out)
            return resp
    except BaseException as exc:
        if isinstance(exc, GatewayError):
            status = exc.status
            usage.error_type = exc.kind
        elif relay is not None and relay.meter is not None:
            usage = relay.meter.result()
            outcome = E.CANCELLED
        raise
    finally:                                                                              # emit
        ttft = relay.first_output_s if relay else None
        event = ctx.settle(gw, call, usage, outcome, status, t0, ttft, price, price_estimated)
        gw.emit(event, request)
        gw.policy.release(reservation, usage.tokens.total)
        if relay is not None and relay.kept is not None and gw.capture_sink is not None:   # opt-in capture
            gw.capture_sink.put(CapturedCall.of(event.event_id, event.ts_start_ms, event.org, event.workspace,
                                                event.api, call.body, bytes(relay.kept), relay.keep_bytes))


_REJECTED = {"budget": E.REJECTED_BUDGET, "rate": E.REJECTED_RATE}


def _outcome(status: int, relay: "forward.Relay | None", usage: Usage) -> str:
    if relay is not None and relay.client_gone:
        return E.CANCELLED
    if status >= 400 or usage.error_type or (relay is not None and relay.upstream_broke):
        return E.UPSTREAM_ERROR
    return E.OK


def _estimate_missing(usage: Usage, call: Call, bytes_out: int) -> Usage:
    """A successful call whose provider never reported usage (an OpenAI-compatible
    server that ignores ``include_usage``, say) is never priced at zero: bound
    its tokens by the bytes that went each way and flag the event as estimated."""
    t = usage.tokens
    tokens = E.Tokens(input=max(t.input, len(call.body) // 3), cache_write_5m=t.cache_write_5m,
                      cache_write_1h=t.cache_write_1h, cache_read=t.cache_read,
                      output=max(t.output, bytes_out // 3), reasoning=t.reasoning)
    return Usage(tokens=tokens, model_served=usage.model_served, complete=False, error_type=usage.error_type,
                 web_search_calls=usage.web_search_calls)


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"request body of {request.content_length} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def passthrough(request: web.Request, gw: Gateway, target: Target, path: str,
                      call: Call | None = None) -> web.StreamResponse:
    """Calls that cost nothing (count_tokens, model lists): authenticated, routed, not metered."""
    method = "POST" if call is not None else "GET"
    upstream = await forward.open_upstream(gw.session(target.upstream), target, path,
                                           call or Call(model="", stream=False, body=b""), request.headers, method)
    async with upstream:
        body = await upstream.read()
        return web.Response(status=upstream.status, body=body, headers=forward.downstream_headers(upstream, {}))


class CallRecord:
    """Attribution of one call, fixed before forwarding; turns a usage into an event."""

    __slots__ = ("principal", "adapter", "call", "provider", "started_ms", "request_id", "session_id",
                 "model_requested")

    def __init__(self, principal: Principal, adapter: Adapter, call: Call, provider: str,
                 started_ms: int, request: web.Request, model_requested: str = "") -> None:
        self.principal, self.adapter, self.call, self.provider = principal, adapter, call, provider
        self.model_requested = model_requested or call.model
        self.started_ms = started_ms
        self.request_id = request.get(REQUEST_ID, "")
        h = request.headers
        self.session_id = h.get("x-claude-code-session-id") or h.get("x-llmgw-session") or ""

    def settle(self, gw: Gateway, call: Call, usage: Usage, outcome: str, status: int, t0: float,
               ttft_s: float | None, price: Price, price_estimated: bool) -> E.UsageEvent:
        """The event of a call that reached the provider, priced. It is billed at the tier the provider
        says it served (a fallback to standard speed, a project's default priority), the request's
        when it says nothing; base rates for a tier the entry has no price for are flagged as a guess."""
        tier = usage.service_tier or call.service_tier
        priced = cost(usage.tokens, price, service_tier=tier, web_search_calls=usage.web_search_calls)
        return self.event(gw, usage, outcome, status, t0, ttft_s, priced.micro_usd, priced.price_version,
                          cost_estimated=price_estimated or priced.tier_unpriced, service_tier=tier)

    def event(self, gw: Gateway, usage: Usage, outcome: str, status: int, t0: float,
              ttft_s: float | None, cost_micro_usd: int, price_version: str,
              cost_estimated: bool = False, service_tier: str | None = None) -> E.UsageEvent:
        p, call = self.principal, self.call
        now = time.monotonic()
        tags = call.tags
        return E.UsageEvent(
            event_id=E.new_event_id(self.started_ms), ts_start_ms=self.started_ms,
            ts_end_ms=self.started_ms + int((now - t0) * 1000),
            org=p.org, workspace=p.workspace, user=p.user, key_id=p.key_id,
            provider=self.provider, api=self.adapter.api, model_requested=self.model_requested,
            model_served=usage.model_served or call.model, tokens=usage.tokens,
            cost_micro_usd=cost_micro_usd, price_version=price_version, outcome=outcome,
            http_status=status, latency_ms=int((now - t0) * 1000),
            ttft_ms=int((ttft_s - t0) * 1000) if ttft_s is not None else None,
            project=dict(t.split(":", 1) for t in tags).get("project", ""), tags=tags,
            session_id=self.session_id, request_id=self.request_id, gateway_id=gw.settings.gateway_id,
            stream=call.stream, usage_estimated=not usage.complete and usage.tokens.total > 0,
            cost_estimated=cost_estimated, error_type=usage.error_type,
            service_tier=service_tier or call.service_tier or "", web_search_calls=usage.web_search_calls,
        )


__all__ = ["handle", "passthrough", "read_body"]
