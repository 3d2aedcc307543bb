"""The Kafka ledger worker's orphan rule as pure functions: each started call charged once, by its
usage event or by its reservation, and the rule rebuilt exactly from the tail of the log."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
from hypothesis import given, settings, strategies as st

from llmgw.core import events as E
from llmgw.ledger.fold import Totals, fold_all
from llmgw.ledger.orphans import OpenCalls, encode_tick
from llmgw.ledger.started import CallStarted, encode_record
from llmgw.ledger.worker import (DUPLICATE, FOLDED, ORPHAN_COPY, STARTED, TICK, SeenIds, _Staged, admit_record,
                                 fold_record)

T0 = 1_764_000_000_000


def started(i: int, reserved: int = 1_000) -> CallStarted:
    return CallStarted(f"call-{i}", T0, "acme", "backend", "alice", "key-1", "anthropic", "messages",
                       "claude-sonnet-4-5", reserved, "gw-1")


def usage(i: int, cost_micro_usd: int) -> E.UsageEvent:
    return E.UsageEvent(f"call-{i}", T0, T0 + 10, "acme", "backend", "alice", "key-1", "anthropic", "messages",
                        "claude-sonnet-4-5", "claude-sonnet-4-5", E.Tokens(input=3, output=4), cost_micro_usd)


def replay(records: list[tuple[bytes, int]], horizon_ms: int, after_ms: int
           ) -> tuple[list[tuple[str, list[str]]], dict[str, Totals]]:
    seen, calls, totals = SeenIds(horizon_ms), OpenCalls(after_ms), {}
    out = []
    for value, ts in records:
        orphans: list[E.UsageEvent] = []
        outcome, changed = fold_record(totals, seen, value, ts, lambda _: "UTC", calls, orphans)
        totals.update(changed)
        out.append((outcome, [o.event_id for o in orphans]))
    return out, totals


def test_a_call_with_no_usage_event_is_charged_its_reservation_once_the_clock_passes_it():
    records = [(encode_record(started(1, 700)), 100), (encode_record(started(2, 900)), 110),
               (encode_record(usage(1, 55)), 150), (encode_tick(0), 110 + 1_000),   # not yet: due after 1110
               (encode_tick(0), 1_111), (encode_record(usage(2, 66)), 1_200),       # the real event, late
               (encode_record(started(2, 900).orphan_event()), 1_300)]              # the worker's copy
    decisions, totals = replay(records, horizon_ms=10_000, after_ms=1_000)
    assert decisions == [(STARTED, []), (STARTED, []), (FOLDED, []), (TICK, []), (TICK, ["call-2"]),
                         (DUPLICATE, []), (ORPHAN_COPY, [])]
    assert totals == fold_all([usage(1, 55), started(2, 900).orphan_event()])
    [org_day] = [t for k, t in totals.items() if k.startswith("org|acme|day|")]
    assert (org_day.spend_micro_usd, org_day.requests) == (55 + 900, 2)


def test_records_an_older_worker_cannot_read_are_never_taken_as_usage():
    """A started record has no ``event_id``: an older fold finds it unreadable (folds nothing) and
    cannot mark the call's id as seen, which would drop the real usage event as a duplicate."""
    raw = orjson.loads(encode_record(started(1)))
    assert "event_id" not in raw and "cost_micro_usd" not in raw


# -- properties over random logs ------------------------------------------------------------------
ops = st.lists(st.tuples(st.sampled_from(["start", "end", "tick", "copy"]), st.integers(0, 8),
                         st.integers(0, 40), st.integers(1, 5_000)), max_size=60)


def build(plan: list[tuple[str, int, int, int]]) -> list[tuple[bytes, int]]:
    """A log: non-decreasing broker timestamps (LogAppendTime), records of every kind."""
    ts, out = T0, []
    for kind, i, step, amount in plan:
        ts += step
        value = {"start": lambda: encode_record(started(i, amount)), "end": lambda: encode_record(usage(i, amount)),
                 "tick": lambda: encode_tick(ts),
                 "copy": lambda: encode_record(started(i, amount).orphan_event())}[kind]()
        out.append((value, ts))
    return out


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 200), st.integers(1, 100))
def test_the_orphan_rule_rebuilt_from_the_log_tail_decides_like_the_full_replay(plan, horizon_ms, after_ms):
    """What a worker reads on acquisition (records stamped >= last - 2 x horizon - orphan_after) gives
    the same decisions, and the same orphan charges, for every later record as the state from 0
    (with orphan_after <= horizon, which the worker requires)."""
    after_ms = min(after_ms, horizon_ms)
    records = build(plan)
    for n in range(1, len(records) + 1):
        full_seen, full_calls = SeenIds(horizon_ms), OpenCalls(after_ms)
        for value, ts in records[:n]:
            admit_record(full_seen, full_calls, orjson.loads(value), ts)
        target = records[n - 1][1] - 2 * horizon_ms - after_ms
        start = next(k for k, (_, ts) in enumerate(records) if ts >= target)
        tail_seen, tail_calls = SeenIds(horizon_ms), OpenCalls(after_ms)
        for value, ts in records[start:n]:
            admit_record(tail_seen, tail_calls, orjson.loads(value), ts)
        for value, ts in records[n:]:
            a = admit_record(full_seen, full_calls, orjson.loads(value), ts)
            b = admit_record(tail_seen, tail_calls, orjson.loads(value), ts)
            assert (a[0], [s.started_event_id for s in a[1]]) == (b[0], [s.started_event_id for s in b[1]])


@settings(max_examples=200, deadline=None)
@given(ops, st.integers(1, 200), st.integers(1, 100), st.integers(1, 10))
def test_staged_transactions_decide_like_one_pass(plan, horizon_ms, after_ms, batch):
    """The worker folds a batch against staged copies (ids, open calls, totals) that replace the
    committed ones only after the commit: the same decisions and totals as one direct pass."""
    records = build(plan)
    expected, expected_totals = replay(records, horizon_ms, after_ms)
    seen, calls, totals, got = SeenIds(horizon_ms), OpenCalls(after_ms), {}, []
    for k in range(0, len(records), batch):
        staged, staged_calls, changes = seen.begin(), calls.copy(), _Staged(totals)
        for value, ts in records[k:k + batch]:
            orphans: list[E.UsageEvent] = []
            outcome, changed = fold_record(changes, staged, value, ts, lambda _: "UTC", staged_calls, orphans)
            changes.update(changed)
            got.append((outcome, [o.event_id for o in orphans]))
        seen.commit(staged)
        calls = staged_calls
        totals.update(changes)
    assert got == expected and totals == expected_totals


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1, 100))
def test_every_started_call_is_charged_exactly_once_within_the_horizon(plan, after_ms):
    """With a horizon longer than the log: each started call ends with exactly one charge (its usage
    event or its reservation) once a record passes its due time, and never a second one."""
    records = build([p for p in plan if p[0] != "copy"])
    records.append((encode_tick(0), (records[-1][1] if records else T0) + after_ms + 1))
    decisions, _ = replay(records, horizon_ms=10**9, after_ms=after_ms)
    charges: dict[str, int] = {}
    for (value, _), (outcome, orphans) in zip(records, decisions):
        raw: dict[str, Any] = orjson.loads(value)
        if outcome == FOLDED:
            charges[raw["event_id"]] = charges.get(raw["event_id"], 0) + 1
        for o in orphans:
            charges[o] = charges.get(o, 0) + 1
    starts = {orjson.loads(v)["started_event_id"] for v, _ in records if b"started_event_id" in v}
    assert all(n == 1 for n in charges.values())
    assert starts <= set(charges)


# -- analytics accepts what crash-safe metering writes ---------------------------------------------
def test_clickhouse_stores_orphan_charges_and_spend_splits_them_by_outcome(analytics_db):
    from llmgw.analytics.queries import spend

    now = 1_764_000_000_000
    s = replace(started(1, 4_321), ts_ms=now)
    analytics_db.sink.insert([s.orphan_event(), replace(usage(2, 100), ts_start_ms=now, ts_end_ms=now + 5)])
    rows = spend(analytics_db.client, analytics_db.database, ["outcome"], now - 1, now + 1)
    assert {(dict(r.group)["outcome"], r.cost_micro_usd, r.requests) for r in rows} == {
        (E.ORPHANED, 4_321, 1), (E.OK, 100, 1)}
    # the late real event of an orphan is dropped like any copy: the store keeps the charge the ledger kept
    analytics_db.sink.insert([replace(usage(1, 7), ts_start_ms=now, ts_end_ms=now + 5)])
    rows = spend(analytics_db.client, analytics_db.database, ["outcome"], now - 1, now + 1)
    assert sum(r.cost_micro_usd for r in rows) == 4_321 + 100


def test_the_kafka_sink_passes_over_started_and_tick_records_without_counting_them_bad():
    from llmgw.analytics.consumer import decode_batch

    class Rec:
        def __init__(self, value: bytes) -> None:
            self.value, self.topic, self.partition, self.offset = value, "llmgw.usage", 0, 0

    values = [encode_record(started(1)), encode_tick(5), encode_record(usage(1, 9)), b"junk"]
    events, bad = decode_batch([Rec(v) for v in values])  # type: ignore[arg-type]
    assert [e.event_id for e in events] == ["call-1"] and bad == 1
