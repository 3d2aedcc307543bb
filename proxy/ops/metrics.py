"""Prometheus metrics, one registry per app (several gateways in one test process never clash).

Request-path cost is a few counter increments per call: usage events are
observed as the ledger takes them (``observe_event``), requests that end
without an event (refused before metering, unmetered pass-through) by the
ops middleware (``observe_request``). Ledger gauges (snapshot age, spool,
backlog, producer errors) are read only when Prometheus scrapes.

Labels are bounded: ``api``, ``outcome``, ``reason``, ``direction``,
``upstream`` (configured upstream names), ``status_class``, and on
``llmgw_usage_anomalies_total`` ``wire`` (the API) and ``kind`` (a fixed set
of codes, proxy/usage.py). Never a
budget, key, user or model. Metrics are observability only: the ledger's
integers are the truth.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from llmgw.core import events as E
from llmgw.ledger.driver import KAFKA

from ..usage import AnomalyCollector
from .health import LedgerState

if TYPE_CHECKING:
    from ..holds import OpenHolds

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
TTFT_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
_REFUSED = {E.REJECTED_BUDGET: "budget", E.REJECTED_RATE: "rate", E.REJECTED_POLICY: "policy"}


def status_class(ev: E.UsageEvent) -> str:
    """How an upstream call failed: the provider's status class, or what the gateway saw."""
    if ev.error_type == "upstream":            # the gateway's own UpstreamError: no provider answer
        return "timeout" if ev.http_status == 504 else "unreachable"
    if ev.http_status >= 400:
        return f"{ev.http_status // 100}xx"
    return "stream"                            # 200, then an in-stream error or a cut stream


class _Children(dict):  # type: ignore[type-arg]
    """Label values -> child metric, resolved once: ``labels()`` costs a lock and a tuple per call."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def __missing__(self, key: tuple[str, ...]) -> Any:
        child = self[key] = self.metric.labels(*key)
        return child


class Metrics:
    def __init__(self, ledger_state: Callable[[], LedgerState | None] = lambda: None,
                 open_holds: Callable[[], "OpenHolds | None"] = lambda: None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("llmgw_requests", "Model API requests by API and outcome",
                                ["api", "outcome"], registry=r)
        self.duration = Histogram("llmgw_request_duration_seconds", "Model API request duration, whole stream",
                                  ["api"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.ttft = Histogram("llmgw_time_to_first_token_seconds", "Time from request to the first output token",
                              ["api"], buckets=TTFT_BUCKETS_S, registry=r)
        self.upstream_errors = Counter("llmgw_upstream_errors", "Upstream calls that failed",
                                       ["upstream", "status_class"], registry=r)
        self.refusals = Counter("llmgw_refusals", "Requests the gateway refused, by reason", ["reason"], registry=r)
        self.spend = Counter("llmgw_spend_micro_usd", "Spend metered, micro-USD (the ledger is the truth)",
                             registry=r)
        self.tokens = Counter("llmgw_tokens", "Tokens metered", ["direction"], registry=r)
        self.in_flight = InFlight()
        r.register(self.in_flight)
        r.register(LedgerCollector(ledger_state))
        r.register(AnomalyCollector())      # llmgw_usage_anomalies_total{wire,kind} (proxy/usage.py)
        r.register(HoldsCollector(open_holds))
        self._requests, self._duration, self._ttft = _Children(self.requests), _Children(self.duration), _Children(self.ttft)
        self._upstream_errors, self._refusals = _Children(self.upstream_errors), _Children(self.refusals)
        self._input, self._cache_read, self._cache_write, self._output = (
            self.tokens.labels(d) for d in ("input", "cache_read", "cache_write", "output"))

    def observe_event(self, ev: E.UsageEvent) -> None:
        if ev.kind != E.USAGE:          # re-rating adjustments are ledger facts, not requests
            return
        self._requests[(ev.api, ev.outcome)].inc()
        self._duration[(ev.api,)].observe(ev.latency_ms / 1000)
        if ev.ttft_ms is not None:
            self._ttft[(ev.api,)].observe(ev.ttft_ms / 1000)
        reason = _REFUSED.get(ev.outcome)
        if reason is not None:
            self._refusals[(reason,)].inc()
        elif ev.outcome == E.UPSTREAM_ERROR:
            self._upstream_errors[(ev.provider, status_class(ev))].inc()
        if ev.cost_micro_usd > 0:
            self.spend.inc(ev.cost_micro_usd)
        t = ev.tokens
        if t.total:
            self._input.inc(t.input)
            if t.cache_read:
                self._cache_read.inc(t.cache_read)
            if t.cache_write_5m or t.cache_write_1h:
                self._cache_write.inc(t.cache_write_5m + t.cache_write_1h)
            self._output.inc(t.output)

    def observe_request(self, api: str, outcome: str, duration_s: float, refusal: str | None) -> None:
        """A request that ended without a usage event."""
        self._requests[(api, outcome)].inc()
        self._duration[(api,)].observe(duration_s)
        if refusal is not None:
            self._refusals[(refusal,)].inc()


class InFlight(Collector):
    """``llmgw_requests_in_flight``: a plain count the ops middleware moves twice per request,
    read at scrape (a prometheus ``Gauge`` takes a lock on every move). Moved from the event loop only."""

    def __init__(self) -> None:
        self.count = 0

    def inc(self) -> None:
        self.count += 1

    def dec(self) -> None:
        self.count -= 1

    def collect(self) -> Iterator[Metric]:
        yield _gauge("llmgw_requests_in_flight", "Model API requests being served", float(self.count))


class LedgerCollector(Collector):
    """Ledger gauges, read at scrape time from whatever ledger the gateway runs."""

    def __init__(self, state: Callable[[], LedgerState | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        s = self.state()
        if s is None:
            return
        yield _gauge("llmgw_ready", "1 when /readyz answers 200", float(s.ready))
        yield _gauge("llmgw_snapshot_age_seconds", "Age of the budget snapshot this replica decides on "
                     "(0 in embedded mode; +Inf before the first snapshot)", s.snapshot_age_s)
        yield _gauge("llmgw_spool_depth_events", "Usage events waiting in the local spool for Kafka",
                     float(s.spool_depth_events))
        yield _gauge("llmgw_ledger_backlog", "Usage events submitted but not yet durable in the ledger",
                     float(s.backlog_events))
        c = CounterMetricFamily("llmgw_producer_errors", "Kafka sends and connects that failed")
        c.add_metric([], float(s.producer_errors))
        yield c
        if s.mode != KAFKA:
            return
        yield _gauge("llmgw_ledger_fold_stalled_seconds", "How long the ledger workers' fold has not advanced "
                     "while the usage topic had events to fold (0: it keeps up)", s.fold_stalled_s)
        lag = GaugeMetricFamily("llmgw_ledger_fold_lag_records", "Usage topic offsets past the fold's progress, "
                                "per usage partition", labels=["partition"])
        for p, n in s.fold_lag:
            lag.add_metric([str(p)], float(n))
        yield lag
        if s.ledger_workers >= 0:
            yield _gauge("llmgw_ledger_workers", "Members of the ledger workers' consumer group",
                         float(s.ledger_workers))


class HoldsCollector(Collector):
    """Budget holds open on this replica and their dollars, and holds the sweeper freed (proxy/holds.py)."""

    def __init__(self, holds: Callable[[], "OpenHolds | None"]) -> None:
        self.holds = holds

    def collect(self) -> Iterator[Metric]:
        h = self.holds()
        if h is None:
            return
        yield _gauge("llmgw_holds_open", "Budget reservations held by calls in flight", float(len(h)))
        yield _gauge("llmgw_holds_open_usd", "Dollars held by open reservations", h.micro_usd / 1_000_000)
        c = CounterMetricFamily("llmgw_holds_swept", "Holds freed by the sweeper because no call settled them")
        c.add_metric([], float(h.swept))
        yield c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], value)
    return g
