"""The embedded ledger hands every durable event to the analytics hook, even across a failed insert.

A ClickHouse insert can fail (disk full, a merge timeout, a bug in a view). The events stay in the
log; what must not happen is a later batch succeeding, moving the analytics mark past them, and
ClickHouse never seeing them: the chargeback CSV would then be short of money the budgets counted.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

from llmgw.ledger.embedded import EmbeddedLedger
from llmgw.core.events import Tokens, UsageEvent, new_event_id


def event(i: int) -> UsageEvent:
    now = int(time.time() * 1000)
    return UsageEvent(event_id=new_event_id(), ts_start_ms=now, ts_end_ms=now + 10, org="acme", workspace="ws",
                      user="u", key_id="k", provider="openai", api="chat", model_requested="gpt-4o",
                      model_served="gpt-4o", tokens=Tokens(input=10, output=5), cost_micro_usd=100 + i,
                      request_id=f"r{i}")


class Hook:
    """Records what reached "ClickHouse"; raises on the calls listed in ``fail_calls``."""

    def __init__(self, fail_calls: set[int] = frozenset()) -> None:
        self.fail_calls, self.calls, self.stored = set(fail_calls), 0, {}

    async def __call__(self, batch: Sequence[UsageEvent], first: int, end: int) -> None:
        self.calls += 1
        if self.calls in self.fail_calls:
            self.stored.update((e.event_id, e) for e in batch[: len(batch) // 2])   # a partial insert
            raise RuntimeError("insert failed")
        self.stored.update((e.event_id, e) for e in batch)


async def wait_for(cond, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def submit_wave(ledger: EmbeddedLedger, hook: Hook, start: int, n: int) -> list[UsageEvent]:
    """One wave, then wait until the analytics loop has offered it to the hook once."""
    calls = hook.calls
    wave = [event(i) for i in range(start, start + n)]
    for ev in wave:
        ledger.submit(ev)
    await ledger.flush()
    await wait_for(lambda: hook.calls > calls)
    return wave


async def test_a_failed_insert_is_replayed_before_later_batches_move_the_mark(tmp_path: Path) -> None:
    hook = Hook(fail_calls={1})
    ledger = EmbeddedLedger(tmp_path, on_batch=hook, analytics_interval_s=0.02)
    await ledger.start()
    sent = await submit_wave(ledger, hook, 0, 20)                      # this insert fails
    sent += await submit_wave(ledger, hook, 20, 20)                    # replays the first wave with it
    sent += await submit_wave(ledger, hook, 40, 20)
    await wait_for(lambda: len(hook.stored) == len(sent))
    assert set(hook.stored) == {e.event_id for e in sent}
    end = ledger.log.end
    await ledger.stop()
    assert int(ledger.analytics_mark.read_text()) == end


async def test_events_whose_inserts_kept_failing_reach_analytics_after_a_restart(tmp_path: Path) -> None:
    broken = Hook(fail_calls=set(range(1, 10_000)))
    ledger = EmbeddedLedger(tmp_path, on_batch=broken, analytics_interval_s=0.02)
    await ledger.start()
    sent = await submit_wave(ledger, broken, 0, 30)
    sent += await submit_wave(ledger, broken, 30, 30)
    await ledger.stop()
    assert not (ledger.analytics_mark.exists() and int(ledger.analytics_mark.read_text()) > 0)

    working = Hook()
    again = EmbeddedLedger(tmp_path, on_batch=working, analytics_interval_s=0.02)
    await again.start()                                                # the catch-up replays the log
    assert set(working.stored) == {e.event_id for e in sent}
    await again.stop()
