"""Closed windows leave the snapshot after their retention (ledger/retention.py), as pure functions.

The worker tombstones per transaction, with ``ClosingWindows`` finding what expired; rebuild folds
record by record and drops what expired at its cut. Both must agree at every cut, for any split of
the records into transactions.
"""
from __future__ import annotations

from collections import namedtuple

from hypothesis import given, settings, strategies as st

from llmgw.core.events import Tokens, UsageEvent, encode
from llmgw.core.spend_keys import parse_spend_key
from llmgw.core.windows import window_bounds
from llmgw.ledger.fold import Totals
from llmgw.ledger.retention import LONGEST_MS, ClosingWindows, expired, expires_at_ms
from llmgw.ledger.worker import SeenIds, _Owned, fold_record

H = 3_600_000
Record = namedtuple("Record", "value timestamp offset")      # what the worker reads of a Kafka record
T0 = 1_764_547_200_000          # 2025-12-01 00:00 UTC


def test_a_key_never_expires_before_its_window_ended_in_any_zone() -> None:
    for tz in ("UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Kiritimati"):
        for ts in range(T0 - 40 * 24 * H, T0 + 400 * 24 * H, 7 * H + 13 * 60_000):   # across DST changes
            for window in LONGEST_MS:
                start, end = window_bounds(window, ts, tz)
                key = f"user|o/u|{window}|{start}"
                late = 3 * 24 * H + 2 * H if window == "month" else 2 * H   # a 23 h day; February is 3 days short
                assert end <= expires_at_ms(key, 0) <= end + late, (tz, window, start)  # type: ignore[operator]
    assert expires_at_ms("__progress__|3", 0) is None and not expired("not a key", 10**15, 0)


def _event(i: int, start_ms: int) -> UsageEvent:
    return UsageEvent(event_id=f"e{i}", ts_start_ms=start_ms, ts_end_ms=start_ms + 1, org=f"o{i % 2}",
                      workspace="w", user=f"u{i % 3}", key_id="k", provider="p", api="a", model_requested="m",
                      model_served="m", tokens=Tokens(input=1, output=1), cost_micro_usd=1 + i % 5)


# a record: (append time step in minutes, how far back its call started, in hours); duplicates by id
records = st.lists(st.tuples(st.integers(0, 6).map(lambda k: k * 30), st.integers(0, 60), st.integers(0, 40)),
                  min_size=1, max_size=60)    # half hours: the clock often lands right on an expiry


@settings(max_examples=200, deadline=None)
@given(records, st.integers(0, 30), st.lists(st.integers(1, 8), min_size=1, max_size=20))
def test_transactions_with_tombstones_equal_one_pass_at_every_cut(raw: list[tuple[int, int, int]],
                                                                  retain_h: int, sizes: list[int]) -> None:
    retain = retain_h * H
    log, clock = [], T0
    for i, (step_min, back_h, same) in enumerate(raw):
        clock += step_min * 60_000
        ev = _event(same if same < 5 else i, clock - back_h * H)       # a few ids repeat (spool copies)
        log.append((encode(ev), clock))
    # the worker's own transaction steps (stage, then what it holds once the commit returned)
    owned = _Owned(partition=0, producer=None, totals={}, seen=SeenIds(24 * H), next_offset=0,  # type: ignore[arg-type]
                   closing=ClosingWindows(retain))
    tombstoned: set[str] = set()
    i, k = 0, 0
    while i < len(log):
        batch_records = log[i:i + sizes[k % len(sizes)]]
        txn = owned.stage([Record(value, ts, i + j) for j, (value, ts) in enumerate(batch_records)],
                          lambda _o: "UTC", retain)
        assert not any(expired(key, txn.batch.clock_ms, retain) for key in txn.changes)   # never written
        assert all(key in owned.totals for key in txn.gone)
        owned.committed(txn)
        tombstoned.update(txn.gone)
        i += len(batch_records)
        k += 1
        totals, seen, closing = owned.totals, owned.seen, owned.closing
        assert owned.next_offset == i and closing is not None
        # rebuild at this cut: one pass, then drop what expired by the cut's clock
        ids, state = SeenIds(24 * H), {}
        for value, ts in log[:i]:
            state.update(fold_record(state, ids, value, ts, lambda _o: "UTC", retain_closed_ms=retain)[1])
        rebuilt = {key: t for key, t in state.items() if not expired(key, ids.clock_ms, retain)}
        assert totals == rebuilt
        assert not any(expired(key, seen.clock_ms, retain) for key in totals)
        assert len(closing) == len(totals)
    assert all(parse_spend_key(key)[3] + LONGEST_MS[parse_spend_key(key)[2]] + retain <= seen.clock_ms
               for key in tombstoned)
