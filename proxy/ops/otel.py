"""Optional OpenTelemetry export (``LLMGW_OTEL=1``); no dependency of the project.

With ``opentelemetry-api`` importable, every usage event becomes one client
span (start and end from the event's timestamps) and two GenAI semantic
convention instruments: ``gen_ai.client.token.usage`` (``{token}``) and
``gen_ai.client.operation.duration`` (``s``). Those conventions are still
marked Development upstream. Spans and metrics go wherever the process's
OpenTelemetry SDK sends them, e.g.::

    pip install opentelemetry-distro opentelemetry-exporter-otlp
    OTEL_SERVICE_NAME=llmgw OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4317 \\
        LLMGW_OTEL=1 opentelemetry-instrument llmgw serve

With only the API installed and no SDK configured, the calls are no-ops.
Attributes carry the model, API and provider; never a key, user or body.
"""
from __future__ import annotations

import logging
from typing import Any

from llmgw.core.events import USAGE, UsageEvent

log = logging.getLogger("llmgw.ops")

_OPERATION = {"messages": "chat", "chat": "chat", "responses": "chat", "embeddings": "embeddings"}


class OtelHook:
    def __init__(self, tracer: Any, meter: Any) -> None:
        self.tracer = tracer
        self.tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                             description="Tokens used per model call")
        self.duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                               description="Model call duration")

    def __call__(self, ev: UsageEvent) -> None:
        if ev.kind != USAGE:
            return
        op = _OPERATION.get(ev.api, ev.api)
        attrs = {"gen_ai.operation.name": op, "gen_ai.provider.name": ev.provider,
                 "gen_ai.request.model": ev.model_requested, "gen_ai.response.model": ev.model_served,
                 "llmgw.api": ev.api, "llmgw.outcome": ev.outcome}
        if ev.outcome != "ok":
            attrs["error.type"] = ev.error_type or ev.outcome
        self.duration.record(ev.latency_ms / 1000, attrs)
        if ev.tokens.total:
            self.tokens.record(ev.tokens.prompt, {**attrs, "gen_ai.token.type": "input"})
            self.tokens.record(ev.tokens.output, {**attrs, "gen_ai.token.type": "output"})
        span = self.tracer.start_span(f"{op} {ev.model_requested}", start_time=ev.ts_start_ms * 1_000_000,
                                      attributes={**attrs, "gen_ai.usage.input_tokens": ev.tokens.prompt,
                                                  "gen_ai.usage.output_tokens": ev.tokens.output,
                                                  "llmgw.request_id": ev.request_id,
                                                  "llmgw.cost_micro_usd": ev.cost_micro_usd,
                                                  "http.response.status_code": ev.http_status})
        span.end(end_time=ev.ts_end_ms * 1_000_000)


def otel_hook() -> OtelHook | None:
    """The hook on the process's global providers, or None (logged) when OpenTelemetry is absent."""
    try:
        from opentelemetry import metrics, trace
    except ImportError:
        log.warning("LLMGW_OTEL is set but opentelemetry is not installed; no traces are exported "
                    "(pip install opentelemetry-distro opentelemetry-exporter-otlp)",
                    extra={"event": "otel_missing"})
        return None
    return OtelHook(trace.get_tracer("llmgw"), metrics.get_meter("llmgw"))
