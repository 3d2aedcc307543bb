"""A proxy's own spend, summed per key until the snapshot passes it (ledger/local_sums.py).

The handoff is checked against a model that keeps every event: an event leaves the local sums
exactly once, never before the snapshot's progress passes it; at progress records that land
between acknowledgement batches the view is exact; memory is bounded by keys, not events.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import given, settings, strategies as st

from llmgw.core.events import Tokens, UsageEvent, new_event_id
from llmgw.ledger.fold import Totals, fold_all, keys_of
from llmgw.ledger.local_sums import LocalSums
from llmgw.ledger.spend import SpendView

KEYS = [f"org|o{i}|day|0" for i in range(6)]


@dataclass
class Ev:
    keys: tuple[str, ...]
    amount: int
    at: tuple[int, int] | None = None       # (partition, position) once placed


class Model:
    """Every event, as the per-event view kept them before: the reference."""

    def __init__(self) -> None:
        self.events: list[Ev] = []
        self.progress: dict[int, int] = {}
        self.next_pos: dict[int, int] = defaultdict(int)

    def folded(self, e: Ev) -> bool:
        return e.at is not None and self.progress.get(e.at[0], -1) >= e.at[1]

    def exact(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for e in self.events:
            if not self.folded(e):
                for k in e.keys:
                    out[k] += e.amount
        return {k: v for k, v in out.items() if v}


# an operation: ("add", keys, amount) | ("place", how many of the oldest unplaced, partition, gap)
#               | ("advance", partition, how far back from the newest position, 0 = all)
ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
              st.integers(1, 1_000)),
    st.tuples(st.just("place"), st.integers(1, 6), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("advance"), st.integers(0, 2), st.integers(0, 8)),
), max_size=120)


def run(script: list[tuple], sums: LocalSums, model: Model, *, boundaries_only: bool = False,
        on_step: object = None) -> list[int]:
    """Apply the script to both; returns the positions that end an acknowledgement batch."""
    batch_ends: dict[int, list[int]] = defaultdict(list)
    for op in script:
        if op[0] == "add":
            ev = Ev(tuple(op[1]), op[2])
            model.events.append(ev)
            sums.add(ev.keys, ev.amount)
        elif op[0] == "place":
            _, n, partition, gap = op
            todo = [e for e in model.events if e.at is None][:n]
            for e in todo:
                model.next_pos[partition] += 1 + gap       # other proxies' records in between
                e.at = (partition, model.next_pos[partition])
                sums.place(e.keys, e.amount, *e.at)
            sums.seal()
            if todo:
                batch_ends[partition].append(model.next_pos[partition])
        else:
            _, partition, back = op
            newest = model.next_pos[partition] + (1 if back == 0 else 0)
            target = newest - back
            if boundaries_only and back:
                ends = [p for p in batch_ends[partition] if p <= target]
                if not ends:
                    continue
                target = ends[-1]
            if target > model.progress.get(partition, -1):
                model.progress[partition] = target
            sums.advance(partition, target)
        if callable(on_step):
            on_step()
    return [p for ends in batch_ends.values() for p in ends]


@settings(max_examples=300, deadline=None)
@given(ops)
def test_never_below_the_spend_and_exact_once_the_snapshot_passes_everything(script: list[tuple]) -> None:
    sums, model = LocalSums(max_buckets=3), Model()

    def check() -> None:
        exact = model.exact()
        for k in KEYS:
            assert sums.amount(k) >= exact.get(k, 0), "an event left before the snapshot had it"
        assert len(sums.sums) <= len(KEYS) and all(v for v in sums.sums.values())
        assert all(sums.bucket_count(p) <= 3 for p in range(3)), "buckets bounded per partition"

    run(script, sums, model, on_step=check)
    for p in range(3):                  # the snapshot catches up with everything placed
        model.progress[p] = model.next_pos[p]
        sums.advance(p, model.next_pos[p])
    unplaced = [e for e in model.events if e.at is None]
    assert sums.sums == model.exact(), "each placed event left exactly once"
    assert sums.unplaced_events == len(unplaced) and sums.placed_events == 0
    assert sums.entries == len(sums.sums), "no bucket left behind"


@settings(max_examples=300, deadline=None)
@given(ops)
def test_exact_at_every_progress_that_falls_between_acknowledgement_batches(script: list[tuple]) -> None:
    sums, model = LocalSums(max_buckets=10_000), Model()

    def check() -> None:
        assert sums.sums == model.exact()

    run(script, sums, model, boundaries_only=True, on_step=check)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), st.integers(-500, 500)), max_size=200),
       st.integers(1, 4))
def test_signed_amounts_each_leave_once(events: list[tuple[str, int]], max_buckets: int) -> None:
    """Adjustments can be negative: they too leave once, and a key that nets to zero is forgotten."""
    sums = LocalSums(max_buckets=max_buckets)
    for key, amount in events:
        sums.add((key,), amount)
    for i, (key, amount) in enumerate(events):
        sums.place((key,), amount, i % 2, i)
        if i % 7 == 6:
            sums.seal()
    sums.advance(0, len(events))
    sums.advance(1, len(events))
    assert sums.sums == {} and sums.entries == 0 and sums.backlog_events == 0


def test_an_outage_costs_one_entry_per_key_however_many_events() -> None:
    """Nothing acknowledged (Kafka away): the local sums grow with keys, not with events."""
    sums = LocalSums()
    for i in range(50_000):
        sums.add((KEYS[i % 4], KEYS[4]), 10)
    assert sums.entries == 5 and sums.backlog_events == 50_000
    assert sums.amount(KEYS[4]) == 500_000


def test_a_replay_far_ahead_of_the_fold_keeps_at_most_max_buckets_and_leaves_exactly() -> None:
    sums = LocalSums(max_buckets=8)
    n = 20_000
    for i in range(n):
        sums.add((KEYS[i % 6],), 3)
    for start in range(0, n, 500):                  # acked in batches of 500, nothing folded yet
        for i in range(start, start + 500):
            sums.place((KEYS[i % 6],), 3, 0, i)
        sums.seal()
    assert sums.bucket_count(0) == 8 and sums.entries <= 6 * (1 + 8)
    sizes = []
    progress = 0
    while sums.placed_events:                       # the fold catches up, 1,700 offsets a transaction
        progress += 1_700
        before = sums.placed_events
        sums.advance(0, progress)
        sizes.append(before - sums.placed_events)
        exact = max(0, n - 1 - progress) * 3        # the spend of the events the snapshot lacks
        assert sum(sums.sums.values()) >= exact
        assert sum(sums.sums.values()) - exact <= 2 * n // 8 * 3, "excess bounded by a balanced bucket"
    assert sums.sums == {}


def _event(org: str, cost: int, ts_ms: int) -> UsageEvent:
    return UsageEvent(event_id=new_event_id(), ts_start_ms=ts_ms, ts_end_ms=ts_ms + 10, org=org, workspace="w",
                      user="u", key_id=f"k-{org}", provider="openai", api="chat", model_requested="m",
                      model_served="m", tokens=Tokens(input=1, output=1), cost_micro_usd=cost)


def test_a_time_zone_change_between_count_and_ack_leaves_nothing_behind() -> None:
    """An org's zone moves its day windows; an event counted under the old zone must leave those keys."""
    zones = {"acme": "UTC"}
    view = SpendView(tz_of=lambda org: zones.get(org, "UTC"))
    ts = int(time.time() * 1000)
    before = [_event("acme", 1_000, ts) for _ in range(3)]
    for ev in before:
        view.add_local(ev)
    zones["acme"] = "Pacific/Kiritimati"            # UTC+14: other day keys
    after = _event("acme", 500, ts)
    view.add_local(after)                           # still under the zone its backlog was counted in
    utc_day = [k for k in keys_of(before[0]) if k.startswith("org|acme|day|")][0]
    assert view.spent(utc_day) == 3_500
    view.placed_many([(ev, 0, i) for i, ev in enumerate(before + [after])])
    view.advance(0, 3)
    assert view.local.sums == {} and view.local_backlog == 0 and view._zones == {}
    view.add_local(_event("acme", 7, ts))           # a new backlog takes the new zone
    kiri_day = [k for k in keys_of(after, lambda _o: "Pacific/Kiritimati") if k.startswith("org|acme|day|")][0]
    assert kiri_day != utc_day and view.spent(kiri_day) == 7


def test_the_view_adds_local_sums_to_the_snapshot_and_drops_them_as_it_passes() -> None:
    view = SpendView()
    ts = int(time.time() * 1000)
    evs = [_event("acme", 1_000 + i, ts) for i in range(10)]
    for ev in evs:
        view.add_local(ev)
    view.placed_many([(ev, 2, 100 + i) for i, ev in enumerate(evs[:5])])
    view.placed_many([(ev, 2, 200 + i) for i, ev in enumerate(evs[5:])])
    key = keys_of(evs[0])[0]
    total = sum(e.cost_micro_usd for e in evs)
    assert view.spent(key) == total
    folded: dict[str, Totals] = fold_all(evs[:5])
    for k, t in folded.items():
        view.apply_snapshot(k, t)
    view.advance(2, 104)                            # the snapshot has the first batch
    assert view.spent(key) == total and view.local_backlog == 5
    view.apply_snapshot(key, None)                  # a tombstone forgets the key
    assert key not in view.folded


def test_buckets_of_many_keys_stay_within_a_few_entries_per_key() -> None:
    """No worker folds (progress never moves) while thousands of keys are acked in many batches:
    the buckets are merged to stay within ENTRY_FACTOR entries per key, and still leave exactly."""
    from llmgw.ledger.local_sums import ENTRY_FACTOR, MIN_ENTRY_BUDGET
    sums = LocalSums(max_buckets=32)
    keys = [f"user|o/u{i}|hour|0" for i in range(3_000)]
    for batch in range(200):
        for j in range(300):
            sums.add((keys[(batch * 300 + j) % 3_000],), 1)
        for j in range(300):
            sums.place((keys[(batch * 300 + j) % 3_000],), 1, batch % 4, batch * 300 + j)
        sums.seal()
        assert sums.entries - len(sums.sums) <= max(MIN_ENTRY_BUDGET, ENTRY_FACTOR * len(sums.sums)) + 300
    assert sum(sums.sums.values()) == 60_000
    for p in range(4):
        sums.advance(p, 60_000)
    assert sums.sums == {} and sums.entries == 0
