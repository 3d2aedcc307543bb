"""Open a call's upstream response, moving to the route's next upstream when one cannot take it.

A call moves on only while nothing of it can have been served or billed: no response began
(``UpstreamUnreachable``: no connection, or it closed before any response header, as a pooled
keep-alive connection to an upstream that is going away does), or the provider answered 429 or 5xx
before any body byte was read. One case stays open: a provider that does a long non-streamed call's work
and then drops the connection before any header may bill an attempt the gateway never saw.
Once a response is handed back the call belongs to that upstream: a stream that breaks later is never
retried, so nothing is generated (or charged) twice. A read timeout is not retried either: the provider
may still be generating. Every outcome feeds the upstream's circuit breaker (proxy/routing.py).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator, Mapping

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import forward
from .context import GATEWAY
from .errors import UpstreamUnreachable
from .routing import Breaker, Target
from .transport import UpstreamResponse
from .types import Call

if TYPE_CHECKING:
    from .context import Gateway


def retryable(status: int) -> bool:
    return status == 429 or status >= 500


async def open_upstream(gw: "Gateway", target: Target, path: str, call: Call,
                        incoming: Mapping[str, str],
                        query: Mapping[str, str] | None = None) -> tuple[UpstreamResponse, Target]:
    """The upstream response and the target that gave it (the event names that upstream)."""
    attempts = target.attempts()
    for i, t in enumerate(attempts):
        last = i == len(attempts) - 1
        breaker = gw.routing.breakers.get(t.upstream.name) or Breaker()
        now = time.monotonic()
        breaker.trying(now)
        try:
            resp = await forward.open_upstream(gw.transport_for(t.upstream), t, path, call, incoming, query=query)
        except UpstreamUnreachable:
            breaker.failure(now)
            if last:
                raise
            breaker.failovers += 1
            continue
        if not retryable(resp.status):
            breaker.success()
        else:
            breaker.failure(now)
            if not last:
                resp.close()                      # an error body nobody will read
                breaker.failovers += 1
                continue
        return resp, t
    raise AssertionError("a target has at least one attempt")     # pragma: no cover


class HealthCollector:
    """Upstream health for Prometheus, read at scrape time from the breakers (nothing per call)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        gw = self.app.get(GATEWAY)
        breakers = gw.routing.breakers if gw is not None else {}
        up = GaugeMetricFamily("llmgw_upstream_up", "1 while the upstream's circuit breaker is closed, 0 while open",
                               labels=["upstream"])
        failures = CounterMetricFamily("llmgw_upstream_failures", "Connect errors, 429s and 5xx from the upstream",
                                       labels=["upstream"])
        moved = CounterMetricFamily("llmgw_upstream_failovers", "Calls moved off the upstream to the route's next one",
                                    labels=["upstream"])
        for name, b in sorted(breakers.items()):
            up.add_metric([name], 1.0 if b.healthy else 0.0)
            failures.add_metric([name], b.total_failures)
            moved.add_metric([name], b.failovers)
        yield from (up, failures, moved)

    def describe(self) -> Iterator[Metric]:
        return iter(())

