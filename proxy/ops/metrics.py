"""Prometheus metrics, one registry per app (several gateways in one test process never clash).

Request-path cost is a few counter increments per call: usage events are
observed as the ledger takes them (``observe_event``), requests that end
without an event (refused before metering, unmetered pass-through) by the
ops middleware (``observe_request``). Both run on the event loop only, and so
does a scrape, so those counters and histograms are plain numbers
(``LoopCounter``, ``LoopHistogram``): prometheus_client's take a lock per move
and walk the buckets in Python, ~45,000 instructions per call for the eight moves
(callgrind), several times the plain ones. Ledger gauges (snapshot age, spool,
backlog, producer errors) are read only when Prometheus scrapes.

Labels are bounded: ``api``, ``outcome``, ``reason``, ``direction``,
``upstream`` (configured upstream names), ``status_class``, and on
``llmgw_usage_anomalies_total`` ``wire`` (the API) and ``kind`` (a fixed set
of codes, proxy/usage.py). Never a
budget, key, user or model. Metrics are observability only: the ledger's
integers are the truth.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
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


Key = tuple[str, ...]


class LoopCounter(Collector):
    """A counter per label values, moved from the event loop only and read there at scrape: a plain
    float (no lock), exposed as prometheus_client's ``Counter`` is (``<name>_total``, ``_created``)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = (), keys: Sequence[Key] = ()) -> None:
        """``keys``: label values shown (at 0) before their first move, as an unlabelled counter is."""
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[Key, float] = {}
        self.created: dict[Key, float] = {}
        for key in keys or ([()] if not labels else []):
            self.inc(key, 0.0)

    def inc(self, key: Key, amount: float = 1.0) -> None:
        v = self.values.get(key)
        if v is None:
            self.created[key] = time.time()
            v = 0.0
        self.values[key] = v + amount

    def collect(self) -> Iterator[Metric]:
        c = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, v in list(self.values.items()):
            c.add_metric(list(key), v, created=self.created[key])
        yield c


class LoopHistogram(Collector):
    """A histogram per label values, on the same terms as ``LoopCounter``: per series, a count per
    bucket (``value <= bound``, found by bisection) and the sum; exposed as prometheus_client's
    ``Histogram`` is (cumulative ``_bucket`` with ``le``, ``_count``, ``_sum``, ``_created``)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.bounds = [float(b) for b in buckets] + [float("inf")]
        # each bound's ``le`` as prometheus_client writes it ("0.005", "1.0", "+Inf")
        self.les: list[str] = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.series: dict[Key, list[float]] = {}        # bucket counts, then the sum
        self.created: dict[Key, float] = {}

    def observe(self, key: Key, value: float) -> None:
        s = self.series.get(key)
        if s is None:
            s = self.series[key] = [0.0] * (len(self.bounds) + 1)
            self.created[key] = time.time()
        s[bisect_left(self.bounds, value)] += 1
        s[-1] += value

    def collect(self) -> Iterator[Metric]:
        h = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, s in list(self.series.items()):
            cumulative, buckets = 0.0, []
            for le, n in zip(self.les, s):
                cumulative += n
                buckets.append((le, cumulative))
            h.add_metric(list(key), buckets, s[-1])
            h.add_sample(self.name + "_created", dict(zip(self.labels, key)), self.created[key])
        yield h


class Metrics:
    def __init__(self, ledger_state: Callable[[], LedgerState | None] = lambda: None,
                 open_holds: Callable[[], "OpenHolds | None"] = lambda: None) -> None:
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.requests = LoopCounter("llmgw_requests", "Model API requests by API and outcome", ["api", "outcome"])
        self.duration = LoopHistogram("llmgw_request_duration_seconds", "Model API request duration, whole stream",
                                      ["api"], LATENCY_BUCKETS_S)
        self.ttft = LoopHistogram("llmgw_time_to_first_token_seconds", "Time from request to the first output token",
                                  ["api"], TTFT_BUCKETS_S)
        self.upstream_errors = LoopCounter("llmgw_upstream_errors", "Upstream calls that failed",
                                           ["upstream", "status_class"])
        self.refusals = LoopCounter("llmgw_refusals", "Requests the gateway refused, by reason", ["reason"])
        self.spend = LoopCounter("llmgw_spend_micro_usd", "Spend metered, micro-USD (the ledger is the truth)")
        self.tokens = LoopCounter("llmgw_tokens", "Tokens metered", ["direction"],
                                  keys=[(d,) for d in ("input", "cache_read", "cache_write", "output")])
        for c in (self.requests, self.duration, self.ttft, self.upstream_errors, self.refusals, self.spend,
                  self.tokens):
            r.register(c)
        self.in_flight = InFlight()
        r.register(self.in_flight)
        r.register(LedgerCollector(ledger_state))
        r.register(AnomalyCollector())      # llmgw_usage_anomalies_total{wire,kind} (proxy/usage.py)
        r.register(HoldsCollector(open_holds))

    def observe_event(self, ev: E.UsageEvent) -> None:
        if ev.kind != E.USAGE:          # re-rating adjustments are ledger facts, not requests
            return
        api = (ev.api,)
        self.requests.inc((ev.api, ev.outcome))
        self.duration.observe(api, ev.latency_ms / 1000)
        if ev.ttft_ms is not None:
            self.ttft.observe(api, ev.ttft_ms / 1000)
        reason = _REFUSED.get(ev.outcome)
        if reason is not None:
            self.refusals.inc((reason,))
        elif ev.outcome == E.UPSTREAM_ERROR:
            self.upstream_errors.inc((ev.provider, status_class(ev)))
        if ev.cost_micro_usd > 0:
            self.spend.inc((), ev.cost_micro_usd)
        t = ev.tokens
        if t.total:
            tokens = self.tokens
            tokens.inc(_INPUT, t.input)
            if t.cache_read:
                tokens.inc(_CACHE_READ, t.cache_read)
            if t.cache_write_5m or t.cache_write_1h:
                tokens.inc(_CACHE_WRITE, t.cache_write_5m + t.cache_write_1h)
            tokens.inc(_OUTPUT, t.output)

    def observe_request(self, api: str, outcome: str, duration_s: float, refusal: str | None) -> None:
        """A request that ended without a usage event."""
        self.requests.inc((api, outcome))
        self.duration.observe((api,), duration_s)
        if refusal is not None:
            self.refusals.inc((refusal,))


_INPUT, _CACHE_READ, _CACHE_WRITE, _OUTPUT = ("input",), ("cache_read",), ("cache_write",), ("output",)


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
