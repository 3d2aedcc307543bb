"""Crash-safe metering: a call the provider served is charged even when the gateway dies mid-call.

The in-process tests drive the embedded ledger directly (begin, submit, an abandoned writer as
the crash, a restart on the same data dir). The end-to-end tests run `llmgw serve` as a real
process, hold 40 slow streams open through it, `kill -9` it, and check what the ledger charged.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ledger import events as E
from ledger.embedded import EmbeddedLedger, log_events, rebuild
from ledger.fold import fold_all
from ledger.started import GATEWAY_CRASH, CallStarted, decode_record, encode_record
from pricing import cost, load_catalog
from tests.fake_provider import ANTHROPIC_MESSAGES, Reply, Usage
from tests.test_cli_serve import free_port, llmgw


def started(i: int, reserved: int = 1_000, org: str = "acme", tags: tuple[str, ...] = ()) -> CallStarted:
    return CallStarted(E.new_event_id(1_764_000_000_000 + i), 1_764_000_000_000 + i, org, "backend", "alice",
                       "key-1", "anthropic", "messages", "claude-sonnet-4-5", reserved, "gw-1",
                       "claude-sonnet-4-5", tags, True)


def usage_of(s: CallStarted, cost_micro_usd: int) -> E.UsageEvent:
    return E.UsageEvent(s.started_event_id, s.ts_ms, s.ts_ms + 50, s.org, s.workspace, s.user, s.key_id,
                        s.provider, s.api, s.model, s.model, E.Tokens(input=10, output=20), cost_micro_usd,
                        tags=s.tags)


async def crash(ledger: EmbeddedLedger) -> None:
    """What kill -9 leaves: whatever the writer made durable, nothing else (no stop, no checkpoint)."""
    await ledger.flush()
    for task in (ledger._task, ledger._analytics_task):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    ledger.log.close()


def test_started_record_round_trips_and_is_never_read_as_a_usage_event():
    s = started(1, tags=("project:apollo",))
    line = encode_record(s)
    assert decode_record(line) == s
    raw = orjson.loads(line)
    assert "event_id" not in raw          # an older fold finds no id: it cannot take the call as seen
    with pytest.raises(TypeError):
        E.decode(line)                    # ... nor mistake the record for a usage event
    orphan = s.orphan_event()
    assert (orphan.event_id, orphan.outcome, orphan.cost_micro_usd) == (s.started_event_id, E.ORPHANED, 1_000)
    assert orphan.cost_estimated and orphan.error_type == GATEWAY_CRASH and orphan.project == "apollo"
    assert E.ORPHANED in E.OUTCOMES


async def test_restart_charges_every_call_a_crash_left_open_and_only_those(tmp_path):
    ledger = EmbeddedLedger(tmp_path)
    await ledger.start()
    calls = [started(i, reserved=1_000 + i) for i in range(5)]
    for s in calls:
        ledger.begin(s)
    ledger.submit(usage_of(calls[0], 77))          # finished before the crash
    ledger.submit(usage_of(calls[1], 88))
    await crash(ledger)

    again = EmbeddedLedger(tmp_path)
    await again.start()
    assert again.orphans_charged == 3
    events = log_events(tmp_path / "ledger" / "events.log")
    by_id = {}
    for ev in events:
        by_id.setdefault(ev.event_id, []).append(ev)
    assert all(len(v) == 1 for v in by_id.values())            # each call charged exactly once
    assert [by_id[s.started_event_id][0].cost_micro_usd for s in calls] == [77, 88, 1_002, 1_003, 1_004]
    assert {by_id[s.started_event_id][0].outcome for s in calls[2:]} == {E.ORPHANED}
    org_day = [v for k, v in again.view.folded.items() if k.startswith("org|acme|day|")]
    assert [t.spend_micro_usd for t in org_day] == [77 + 88 + 1_002 + 1_003 + 1_004]
    await again.stop()

    third = EmbeddedLedger(tmp_path)               # a clean stop, then a restart: nothing more to charge
    await third.start()
    assert third.orphans_charged == 0
    assert third.view.folded == rebuild(tmp_path) == fold_all(events)
    await third.stop()


async def test_calls_open_at_a_checkpoint_are_still_charged(tmp_path):
    """The checkpoint keeps the open started records: the log before it is never reread."""
    ledger = EmbeddedLedger(tmp_path, checkpoint_every=1)
    await ledger.start()
    open_call, done = started(1, reserved=5_000), started(2)
    ledger.begin(open_call)
    ledger.begin(done)
    await ledger.flush()
    ledger.submit(usage_of(done, 40))              # a checkpoint is written after this event
    await ledger.flush()
    await asyncio.sleep(0.05)
    assert ledger.checkpoint.open_calls() == {open_call.started_event_id: open_call}
    await crash(ledger)
    again = EmbeddedLedger(tmp_path)
    await again.start()
    [orphan] = [e for e in log_events(tmp_path / "ledger" / "events.log") if e.outcome == E.ORPHANED]
    assert orphan.event_id == open_call.started_event_id and orphan.cost_micro_usd == 5_000
    await again.stop()


async def test_a_begun_record_is_durable_by_the_end_of_the_next_group_commit(tmp_path):
    """The window a kill -9 can hit: begin() queues; the writer's next batch makes it durable.
    The record is written together with (never after) any usage event submitted after it."""
    ledger = EmbeddedLedger(tmp_path, group_commit_s=0.05)
    await ledger.start()
    writes: list[int] = []
    append = ledger.log.append

    def counting(batch):  # type: ignore[no-untyped-def]
        positions = append(batch)
        writes.append(len(batch))
        return positions

    ledger.log.append = counting  # type: ignore[method-assign]
    s, other = started(1), started(2)
    ledger.begin(s)
    ledger.submit(usage_of(other, 5))
    while not writes:
        await asyncio.sleep(0.005)
    lines = (tmp_path / "ledger" / "events.log").read_bytes().splitlines()
    assert [decode_record(x) for x in lines] == [s, usage_of(other, 5)]   # one write carried both
    assert writes == [2]
    await ledger.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["done", "open", "done_after_crash"])),
                     min_size=1, max_size=12))
def test_every_begun_call_ends_charged_once_whatever_the_crash_cut(tmp_path_factory, plan):
    """Differential: per call, the ledger holds its real cost if its event was durable before the
    crash, else its reservation; never both, never neither."""
    tmp = tmp_path_factory.mktemp("crash")

    async def run() -> None:
        ledger = EmbeddedLedger(tmp)
        await ledger.start()
        calls = [started(i, reserved=r + 1) for i, (r, _) in enumerate(plan)]
        for s, (_, fate) in zip(calls, plan):
            ledger.begin(s)
            if fate == "done":
                ledger.submit(usage_of(s, 1))
        await crash(ledger)                      # "done_after_crash" events never reach the log
        again = EmbeddedLedger(tmp)
        await again.start()
        charged = {e.event_id: e.cost_micro_usd for e in log_events(tmp / "ledger" / "events.log")}
        assert len(charged) == len(log_events(tmp / "ledger" / "events.log")) == len(calls)
        assert charged == {s.started_event_id: (1 if fate == "done" else s.reserved_micro_usd)
                           for s, (_, fate) in zip(calls, plan)}
        await again.stop()

    asyncio.run(run())
