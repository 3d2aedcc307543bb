"""How the usage topic is keyed (``ledger.started.usage_key``), as pure functions: by API key or by
call, so one organization's calls spread over every partition, while each call's records (started
record, usage event, every spool copy, the orphan charge) share one partition; and the partial
sums each partition folds add up to exactly what one partition folding everything gives. The
broker-side proof is tests/test_one_org_spread.py (two workers, a gateway's snapshot view)."""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given, settings, strategies as st

from llmgw.core import events as E
from llmgw.core.settings import Settings
from llmgw.ledger.fold import ZERO, Totals, fold_all
from llmgw.ledger.kafka_ledger import KafkaLedger
from llmgw.ledger.orphans import encode_tick
from llmgw.ledger.spend import SpendView
from llmgw.ledger.spool import Spool
from llmgw.ledger.started import (CALL_KEY, KEY_KEY, ORG_KEY, USAGE_KEYS, CallStarted, decode_record, encode_record,
                                  usage_key)
from llmgw.ledger.worker import OpenCalls, SeenIds, fold_record

T0 = 1_764_000_000_000
HOUR_MS = 3_600_000
partition_of = DefaultPartitioner()    # what the proxy's producer does with the key (murmur2, as Java's)


def partition(rec: CallStarted | E.UsageEvent, partitions: int, keying: str = KEY_KEY) -> int:
    return int(partition_of(usage_key(rec, keying), list(range(partitions)), list(range(partitions))))


def call(i: int, org: str = "acme", user: str = "alice", cost: int = 1_000, reserved: int = 5_000,
         salt: int = 0, key: str = "") -> tuple[CallStarted, E.UsageEvent]:
    """A call's started record and its usage event (same id, same attribution)."""
    event_id, key = E.uuid7_of(T0 + i, (salt << 32) | i), key or f"{org}-key"
    started = CallStarted(event_id, T0 + i, org, "backend", user, key, "anthropic", "messages",
                          "claude-sonnet-4-5", reserved, "gw-1")
    usage = E.UsageEvent(event_id, T0 + i, T0 + i + 10, org, "backend", user, key, "anthropic",
                         "messages", "claude-sonnet-4-5", "claude-sonnet-4-5", E.Tokens(input=3, output=4),
                         cost_nano_usd=cost)
    return started, usage


# -- one call, one partition; one org, every partition ---------------------------------------------
@settings(max_examples=200, deadline=None)
@given(i=st.integers(0, 2**31), org=st.text(min_size=1, max_size=12), user=st.text(max_size=12),
       key=st.text(min_size=1, max_size=12), salt=st.integers(0, 2**40), partitions=st.integers(1, 64))
def test_every_record_of_a_call_lands_in_one_partition(i: int, org: str, user: str, key: str, salt: int,
                                                        partitions: int) -> None:
    started, usage = call(i, org, user, salt=salt, key=key)
    copies = [started, usage, started.orphan_event(),
              decode_record(encode_record(started)), decode_record(encode_record(usage))]  # a spool's re-sends
    for keying in USAGE_KEYS:
        assert len({usage_key(r, keying) for r in copies}) == 1
        assert len({partition(r, partitions, keying) for r in copies}) == 1
    assert usage_key(usage) == key.encode() == usage.ledger_key.encode() == started.ledger_key.encode()
    assert usage_key(usage, CALL_KEY) == usage.event_id.encode()


def test_one_organizations_calls_spread_over_every_partition_by_key_or_call_and_sit_in_one_by_org() -> None:
    calls = [call(i, salt=7, key=f"acme-k{i % 200}")[1] for i in range(4_000)]
    for keying in (KEY_KEY, CALL_KEY):
        spread = Counter(partition(u, 8, keying) for u in calls)
        assert sorted(spread) == list(range(8))
        assert min(spread.values()) > 4_000 / 8 * 0.6, spread      # murmur2 spreads (deterministic ids)
    assert len({partition(u, 8, ORG_KEY) for u in calls}) == 1       # the old keying: one hot partition
    one_key = [call(i, salt=7)[1] for i in range(400)]               # one key: spread only by call
    assert len({partition(u, 8, KEY_KEY) for u in one_key}) == 1
    assert len({partition(u, 8, CALL_KEY) for u in one_key}) == 8


def test_an_unknown_keying_is_refused_before_anything_is_sent(tmp_path: object) -> None:
    started, usage = call(1)
    with pytest.raises(ValueError, match="usage key"):
        usage_key(usage, "user")
    with pytest.raises(ValueError, match="LLMGW_USAGE_KEY"):
        KafkaLedger("127.0.0.1:9", str(tmp_path), usage_key="budget")
    assert Settings.load({}).usage_key == KEY_KEY
    assert Settings.load({"LLMGW_USAGE_KEY": "org"}).usage_key == ORG_KEY
    assert KafkaLedger.from_settings(Settings.load({"LLMGW_USAGE_KEY": "org"})).usage_key == ORG_KEY


async def keying_after_start(data_dir: Path, configured: str) -> str:
    ledger = KafkaLedger("127.0.0.1:9", data_dir, usage_key=configured, follow_snapshots=False,
                         connect_timeout_s=0.2, send_timeout_s=0.2, retry_backoff_s=0.05)
    await ledger.start()
    try:
        return ledger.usage_key
    finally:
        await ledger.stop(0.5)


async def test_a_spool_is_continued_with_the_keying_it_was_written_with(tmp_path: Path) -> None:
    """A spooled record may already be on Kafka; re-sent under another key it would land in another
    partition and count twice. So a changed LLMGW_USAGE_KEY waits for a start with an empty spool."""
    spool_dir = tmp_path / "spool"
    assert await keying_after_start(tmp_path, ORG_KEY) == ORG_KEY           # empty spool: as configured
    assert (spool_dir / "keying").read_text() == "org\n"
    spool = Spool(spool_dir)
    spool.append([call(1)[0], call(1)[1]])                                    # left over, keyed by org
    spool.close()
    assert await keying_after_start(tmp_path, CALL_KEY) == ORG_KEY           # kept while records are left
    assert await keying_after_start(tmp_path, CALL_KEY) == ORG_KEY
    (spool_dir / "keying").unlink()                                           # a spool from before the setting
    assert await keying_after_start(tmp_path, CALL_KEY) == ORG_KEY
    spool = Spool(spool_dir)
    spool.ack(len(spool.peek()))                                              # Kafka took them
    spool.close()
    assert await keying_after_start(tmp_path, CALL_KEY) == CALL_KEY          # empty: the new keying
    assert (spool_dir / "keying").read_text() == "call\n"


# -- partial sums per partition add up to the one-partition fold -------------------------------------
calls_plan = st.lists(st.tuples(st.integers(0, 3),            # user
                                st.integers(0, 2_000_000),     # real cost (nano-USD)
                                st.booleans(),                 # the gateway crashed: no usage event
                                st.integers(0, 2),             # spool copies of the usage event
                                st.booleans()),                # a spool copy of the started record
                      min_size=1, max_size=60)


def log_of(plan: list[tuple[int, int, bool, int, bool]], salt: int, rng: random.Random
           ) -> tuple[list[CallStarted | E.UsageEvent], list[E.UsageEvent]]:
    """One org's records in append order (calls overlapping, copies after their originals), and what
    the ledger must charge: each finished call its real cost once, each crashed call its reservation."""
    pending: list[list[CallStarted | E.UsageEvent]] = []
    charged: list[E.UsageEvent] = []
    for i, (user, cost, crashed, copies, started_twice) in enumerate(plan):
        started, usage = call(i, user=f"u{user}", cost=cost, reserved=3_000_000, salt=salt, key=f"k{i % 5}")
        recs: list[CallStarted | E.UsageEvent] = [started] + [started] * started_twice
        if crashed:
            charged.append(started.orphan_event())
        else:
            recs += [usage] * (1 + copies)
            charged.append(usage)
        pending.append(recs)
    out: list[CallStarted | E.UsageEvent] = []
    while pending:                      # interleave the calls, each call's records kept in order
        recs = rng.choice(pending)
        out.append(recs.pop(0))
        if not recs:
            pending.remove(recs)
    return out, charged


def fold_partitions(log: list[CallStarted | E.UsageEvent], partitions: int, keying: str
                    ) -> dict[int, dict[str, Totals]]:
    """Each partition folded on its own, as a worker does (``fold_record``: ids once, orphans charged),
    then a tick past ``orphan_after`` in each, as a worker writes to an idle partition."""
    after_ms = HOUR_MS
    state = {p: ({}, SeenIds(24 * HOUR_MS), OpenCalls(after_ms)) for p in range(partitions)}
    ts = T0
    for rec in log:
        ts += 1
        totals, seen, calls = state[partition(rec, partitions, keying)]
        _, changed = fold_record(totals, seen, encode_record(rec), ts, lambda _: "UTC", calls)
        totals.update(changed)
    for totals, seen, calls in state.values():
        _, changed = fold_record(totals, seen, encode_tick(ts + after_ms + 1), ts + after_ms + 1,
                                 lambda _: "UTC", calls)
        totals.update(changed)
    return {p: s[0] for p, s in state.items()}


@settings(max_examples=150, deadline=None)
@given(plan=calls_plan, salt=st.integers(0, 2**40), partitions=st.integers(1, 12), seed=st.integers(0, 2**32))
def test_partials_folded_per_partition_sum_to_every_call_charged_once(
        plan: list[tuple[int, int, bool, int, bool]], salt: int, partitions: int, seed: int) -> None:
    log, charged = log_of(plan, salt, random.Random(seed))
    expected = fold_all(charged)
    one = fold_partitions(log, 1, CALL_KEY)[0]
    by_keying = {keying: fold_partitions(log, partitions, keying) for keying in USAGE_KEYS}
    by_call = by_keying[CALL_KEY]
    for parts in by_keying.values():
        summed: dict[str, Totals] = {}
        for totals in parts.values():
            for k, t in totals.items():
                summed[k] = summed.get(k, ZERO).plus(t)
        assert summed == expected == one
    # and a proxy's view, fed the partitions' snapshot records interleaved, shows the same sums
    view = SpendView()
    records = [(p, k, t) for p, totals in by_call.items() for k, t in totals.items()]
    random.Random(seed).shuffle(records)
    for p, k, t in records:
        view.apply_snapshot(k, t, p)
    assert view.folded == expected
