"""The event-loop counters and histograms expose what prometheus_client's own would, sample for sample."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram

from llmgw.proxy.ops.metrics import LATENCY_BUCKETS_S, LoopCounter, LoopHistogram

LABELS = st.sampled_from([("chat",), ("messages",), ("responses",)])
# the bounds themselves (a value on a bound falls in its bucket), between them, and past the last
VALUES = st.one_of(st.sampled_from(LATENCY_BUCKETS_S), st.floats(0, 1000, allow_nan=False),
                   st.integers(0, 2000).map(float))


def samples(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for fam in registry.collect() for s in fam.samples
            if not s.name.endswith("_created")]


@settings(max_examples=200, deadline=None)
@given(moves=st.lists(st.tuples(LABELS, VALUES), max_size=40))
def test_a_loop_histogram_is_a_prometheus_histogram(moves):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = LoopHistogram("h_seconds", "doc", ["api"], LATENCY_BUCKETS_S)
    ours.register(mine)
    ref = Histogram("h_seconds", "doc", ["api"], buckets=LATENCY_BUCKETS_S, registry=theirs)
    for key, v in moves:
        mine.observe(key, v)
        ref.labels(*key).observe(v)
    assert samples(ours) == samples(theirs)


@settings(max_examples=200, deadline=None)
@given(moves=st.lists(st.tuples(LABELS, st.integers(0, 10**9)), max_size=40))
def test_a_loop_counter_is_a_prometheus_counter(moves):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine, plain = LoopCounter("c", "doc", ["api"]), LoopCounter("p", "doc")
    ours.register(mine)
    ours.register(plain)
    ref, ref_plain = Counter("c", "doc", ["api"], registry=theirs), Counter("p", "doc", registry=theirs)
    for key, n in moves:
        mine.inc(key, n)
        ref.labels(*key).inc(n)
        plain.inc((), n)
        ref_plain.inc(n)
    assert samples(ours) == samples(theirs)
    created = [s for fam in ours.collect() for s in fam.samples if s.name.endswith("_created")]
    assert len(created) == len({k for k, _ in moves}) + 1
