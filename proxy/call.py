"""One metered call, whatever carries it: checked, admitted, then settled exactly once.

HTTP (``pipeline.handle``) and the Responses WebSocket (``websocket.py``, one
call per ``response.create`` frame) drive the same steps, in this order::

    gw.stale_tags()    failure policy, right after authentication       (refusals: no event)
    route()            tags, model access, routing                      (refusals: no event)
    LiveCall.admit()   price, worst case, budgets, rate limits,         (refusals: a rejected_* event)
                       downgrade, queue
    ... the transport forwards, relays and feeds the adapter's meter ...
    LiveCall.settle()  one usage event to the ledger, the hold released

``settle`` is synchronous (it never awaits, so it runs to the end inside a
``finally`` of a cancelled handler) and idempotent: the first call wins, any
later one is a no-op. The hold is released even if building the event fails.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from aiohttp import web

from llmgw.core import events as E
from llmgw.ledger.started import CallStarted
from llmgw.pricing import Price, RequestShape, cost

from . import admission
from .context import REQUEST_ID, Gateway
from .errors import GatewayError
from llmgw.core.principal import Principal
from .policy import Reservation
from .routing import Target
from .types import Adapter, Call, Usage
from .usage import estimate_missing, report

log = logging.getLogger("llmgw.proxy")

_REJECTED = {"budget": E.REJECTED_BUDGET, "rate": E.REJECTED_RATE}


def rejected_outcome(err: GatewayError) -> str:
    """The outcome of a refused call's event: budget, rate, or any other policy."""
    return _REJECTED.get(err.kind, E.REJECTED_POLICY)


def call_tags(gw: Gateway, request: web.Request, principal: Principal, body_tags: tuple[str, ...],
              stale: tuple[str, ...]) -> tuple[str, ...]:
    """A call's tags: the key's, the client's own (never ``llmgw...``) and the failure policy's."""
    return E.normalize_tags((*principal.tags, *gw.client_tags(request, body_tags), *stale))


def route(gw: Gateway, request: web.Request, principal: Principal, adapter: Adapter, call: Call,
          stale: tuple[str, ...]) -> tuple[Call, Target]:
    """The checks before a call is priced: its tags (``stale``: what the failure policy said right
    after authentication, ``Gateway.stale_tags``), model access and routing. Raises without an
    event, as nothing was held."""
    tags = call_tags(gw, request, principal, call.tags, stale)
    if tags != call.tags:
        call = replace(call, tags=tags)
    gw.policy.check_model(principal, call.model)
    return call, gw.routing.resolve(adapter.family, call.model)


class LiveCall:
    """An admitted call: what it holds, what it is billed at, and whether it is settled yet."""

    __slots__ = ("gw", "record", "call", "target", "reservation", "price", "price_estimated", "t0", "request",
                 "settled")

    def __init__(self, gw: Gateway, record: "CallRecord", call: Call, target: Target, reservation: Reservation,
                 price: Price, price_estimated: bool, t0: float, request: web.Request | None = None) -> None:
        self.gw, self.record, self.call, self.target = gw, record, call, target
        self.reservation, self.price, self.price_estimated = reservation, price, price_estimated
        self.t0, self.request = t0, request
        self.settled = False

    @classmethod
    async def admit(cls, gw: Gateway, request: web.Request, principal: Principal, adapter: Adapter, call: Call,
                    target: Target, started_ms: int, t0: float, log_request: bool = True) -> "LiveCall":
        """Hold the call's worst case against every budget and rate limit (admission.py), or raise
        the refusal after submitting its ``rejected_*`` event. ``started_ms``/``t0``: when the
        call arrived (wall clock for the event, monotonic for its latency). ``log_request``: list the
        call's event on the request's access-log line (not for a WebSocket turn: one request, many calls)."""
        price, price_estimated = gw.price(target, call.model, started_ms)
        shape = RequestShape(len(call.body), call.max_output_tokens, call.service_tier,
                             call.image_count, call.web_search, n=call.choices)
        record = CallRecord(principal, adapter, call, target.upstream.name, started_ms, request)
        try:
            admitted = await admission.admit(gw, request, principal, adapter.family, call, shape, target, price,
                                             price_estimated, started_ms)
        except GatewayError as err:
            gw.emit(record.event(gw, Usage(), rejected_outcome(err), err.status, t0, None,
                                 0, ""), request if log_request else None)
            raise
        if admitted.downgraded:                      # the event keeps the model the client asked for
            record = CallRecord(principal, adapter, admitted.call, admitted.target.upstream.name, started_ms,
                                request, call.model)
        return cls(gw, record, admitted.call, admitted.target, admitted.reservation, admitted.price,
                   admitted.price_estimated, t0, request if log_request else None)

    def begin(self) -> None:
        """Write the call's started record before it is forwarded (synchronous; the ledger batches it)."""
        self.gw.ledger.begin(self.record.started(self.gw, self.call, self.reservation))

    def settle(self, usage: Usage, outcome: str, status: int, first_output_s: float | None = None,
               bytes_out: int = 0, forwarded: bool = True) -> E.UsageEvent | None:
        """The call's one usage event, submitted, and its hold released; None if already settled.

        A call served (``ok``), cut (``cancelled``) or failed after its output began streaming
        (an in-stream error) without the provider's final usage is never priced at zero:
        ``estimate_missing`` bounds it. Never awaits."""
        if self.settled:
            return None
        self.settled = True
        gw = self.gw
        failed_streaming = outcome == E.UPSTREAM_ERROR and status < 400 and first_output_s is not None
        if forwarded and not usage.complete and (
                outcome == E.OK or ((outcome == E.CANCELLED or failed_streaming) and not usage.tokens.total)):
            usage = estimate_missing(usage, self.call, bytes_out)
        event, tokens_used = None, None            # None: the rate limits keep the worst case
        try:
            event = self.record.settle(gw, self.call, usage, outcome, status, self.t0, first_output_s,
                                       self.price, self.price_estimated)
            tokens_used = max(usage.tokens.total, 0)
        except Exception:   # never lose the call: charge its hold, flagged estimated, and say why
            log.exception("pricing a call failed; charging its reservation instead",
                          extra={"event": "settle_fallback", "request_id": self.record.request_id})
            event = self.record.event(gw, Usage(), outcome, status, self.t0, first_output_s,
                                      self.reservation.amount_micro_usd * E.NANO_PER_MICRO, "", cost_estimated=True)
        finally:
            try:
                if event is not None:
                    gw.emit(event, self.request)
            finally:
                gw.policy.release(self.reservation, tokens_used, forwarded=forwarded,   # a normal end teaches
                                  observed=usage.tokens if outcome == E.OK and usage.complete else None)  # predicted holds
        return event


def outcome_of(status: int, usage: Usage, client_gone: bool, upstream_broke: bool) -> str:
    if client_gone:
        return E.CANCELLED
    if status >= 400 or usage.error_type or upstream_broke:
        return E.UPSTREAM_ERROR
    return E.OK


def project_of(tags: tuple[str, ...]) -> str:
    """The value of the call's ``project`` tag ("" if none; of several, the last, as a dict of the
    tags would keep): looked for, not a dict of every tag built per call."""
    for t in reversed(tags):
        if t.startswith("project:"):
            return t[8:]
    return ""


class CallRecord:
    """Attribution of one call, fixed before forwarding; turns a usage into an event."""

    __slots__ = ("principal", "adapter", "call", "provider", "started_ms", "request_id", "session_id",
                 "model_requested", "event_id")

    def __init__(self, principal: Principal, adapter: Adapter, call: Call, provider: str,
                 started_ms: int, request: web.Request, model_requested: str = "") -> None:
        self.principal, self.adapter, self.call, self.provider = principal, adapter, call, provider
        self.model_requested = model_requested or call.model
        self.started_ms = started_ms
        self.request_id = request.get(REQUEST_ID, "")
        h = request.headers
        self.session_id = (h.get("x-claude-code-session-id") or h.get("x-llmgw-session") or h.get("session_id")
                           or h.get("session-id") or h.get("thread-id") or "")   # Codex sends session_id/-id, thread-id
        self.event_id = E.new_event_id(started_ms)     # the started record and the usage event share it

    def started(self, gw: Gateway, call: Call, reservation: Reservation) -> CallStarted:
        """The call's started record: what the ledger charges if its usage event never comes."""
        p = self.principal
        return CallStarted(self.event_id, self.started_ms, p.org, p.workspace, p.user, p.key_id, self.provider,
                           self.adapter.api, call.model, reservation.worst_micro_usd or reservation.amount_micro_usd,
                           gw.settings.gateway_id,
                           self.model_requested, call.tags, call.stream)

    def settle(self, gw: Gateway, call: Call, usage: Usage, outcome: str, status: int, t0: float,
               ttft_s: float | None, price: Price, price_estimated: bool) -> E.UsageEvent:
        """The event of a call that reached the provider, priced. It is billed at the tier the provider
        says it served (a fallback to standard speed, a project's default priority), the request's
        when it says nothing; base rates for a tier the entry has no price for are flagged as a guess."""
        tier = usage.service_tier or call.service_tier
        if call.cache_writes_long:
            usage.tokens = usage.tokens.writes_at_long_retention()
        report(usage, self.adapter.api, call.model, self.request_id, self.provider)
        priced = cost(usage.tokens, price, service_tier=tier, web_search_calls=usage.web_search_calls)
        return self.event(gw, usage, outcome, status, t0, ttft_s, priced.nano_usd, priced.price_version,
                          cost_estimated=price_estimated or priced.tier_unpriced, service_tier=tier)

    def event(self, gw: Gateway, usage: Usage, outcome: str, status: int, t0: float,
              ttft_s: float | None, cost_nano_usd: int, price_version: str,
              cost_estimated: bool = False, service_tier: str | None = None) -> E.UsageEvent:
        p, call = self.principal, self.call
        now = time.monotonic()
        latency_ms = int((now - t0) * 1000)
        tags = call.tags
        return E.UsageEvent(
            event_id=self.event_id, ts_start_ms=self.started_ms,
            ts_end_ms=self.started_ms + latency_ms,
            org=p.org, workspace=p.workspace, user=p.user, key_id=p.key_id,
            provider=self.provider, api=self.adapter.api, model_requested=self.model_requested,
            model_served=usage.model_served or call.model, tokens=usage.tokens,
            cost_nano_usd=cost_nano_usd, price_version=price_version, outcome=outcome,
            http_status=status, latency_ms=latency_ms,
            ttft_ms=int((ttft_s - t0) * 1000) if ttft_s is not None else None,
            project=project_of(tags), tags=tags,
            session_id=self.session_id, request_id=self.request_id, gateway_id=gw.settings.gateway_id,
            stream=call.stream, usage_estimated=not usage.complete and usage.tokens.total > 0,
            cost_estimated=cost_estimated, error_type=usage.error_type,
            service_tier=service_tier or call.service_tier or "", web_search_calls=usage.web_search_calls,
            usage_anomalous=bool(usage.anomalies),
        )


__all__ = ["CallRecord", "LiveCall", "outcome_of", "route"]
