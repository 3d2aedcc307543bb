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

import aiohttp
import orjson
import pytest
from aiokafka import TopicPartition
from hypothesis import HealthCheck, given, settings, strategies as st

from llmgw.core import events as E
from llmgw.ledger.embedded import EmbeddedLedger, log_events, rebuild
from llmgw.ledger.fold import fold_all
from llmgw.ledger.kafka_rebuild import compare, read_snapshots
from llmgw.ledger.started import GATEWAY_CRASH, CallStarted, decode_record, encode_record, usage_event_of
from llmgw.ledger.topics import PartitionReader, Topics, ensure_topics
from llmgw.ledger.worker import LedgerWorker
from llmgw.pricing import cost, load_catalog
from tests.fake_provider import ANTHROPIC_MESSAGES, Reply, Usage
from tests.fixtures.kafka import unique_topic
from tests.test_cli_serve import free_port, llmgw
from tests.test_ledger_worker import produce, wait_caught_up
from tests.waits import until


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
    await until(lambda: bool(writes), what="the first group commit")
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


# -- end to end: `llmgw serve` killed with 40 streams in flight -------------------------------------
IN_FLIGHT, COMPLETED = 40, 5
STREAM_USAGE = Usage(input=9, output=400)
BODY = {"model": "claude-sonnet-4-5", "max_tokens": 500, "stream": True,
        "messages": [{"role": "user", "content": "a long answer please"}]}


@pytest.fixture
def env(fake_provider, tmp_path):
    e = dict(os.environ)
    e.update(LLMGW_DATA_DIR=str(tmp_path / "data"), LLMGW_OPENAI_BASE_URL=fake_provider.openai_base_url,
             LLMGW_OPENAI_API_KEY=fake_provider.openai_key, LLMGW_ANTHROPIC_BASE_URL=fake_provider.anthropic_base_url,
             LLMGW_ANTHROPIC_API_KEY=fake_provider.anthropic_key, LLMGW_ANALYTICS="0")
    e.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    return e


async def serve(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                async with http.get(url + "/readyz") as r:
                    if r.status == 200:
                        return proc, url
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    proc.kill()
    raise AssertionError("llmgw serve did not become ready")


def key_for(env: dict[str, str]) -> str:
    out = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "alice", env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def call(http: aiohttp.ClientSession, url: str, key: str, first: asyncio.Event | None = None) -> bytes:
    """One Messages call; returns what the client got (a killed gateway cuts it: that is the answer)."""
    body = b""
    try:
        async with http.post(url + "/v1/messages", data=orjson.dumps(BODY),
                             headers={"x-api-key": key, "anthropic-version": "2023-06-01",
                                      "content-type": "application/json"}) as r:
            assert r.status == 200
            async for chunk in r.content.iter_any():
                body += chunk
                if first is not None:
                    first.set()
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
        pass
    return body


async def start_streams(fake_provider, url: str, key: str, http: aiohttp.ClientSession
                        ) -> tuple[list[asyncio.Task[bytes]], list[bytes]]:
    """COMPLETED calls that finish, then IN_FLIGHT slow streams (20 s each) all past their first byte."""
    fake_provider.script(*[Reply(usage=Usage(input=9, output=5))] * COMPLETED,
                         *[Reply(chunks=400, chunk_delay_s=0.05, usage=STREAM_USAGE)] * IN_FLIGHT)
    done = [await call(http, url, key) for _ in range(COMPLETED)]
    assert all(b"message_stop" in b for b in done)
    firsts = [asyncio.Event() for _ in range(IN_FLIGHT)]
    streams = [asyncio.create_task(call(http, url, key, f)) for f in firsts]
    await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), 30)
    assert len(fake_provider.requests_for(ANTHROPIC_MESSAGES)) == COMPLETED + IN_FLIGHT
    return streams, done


def served_micro_usd(usage: Usage) -> int:
    """What the provider bills for a reply it served in full (it may bill less for a cut one)."""
    price = load_catalog().price_at(BODY["model"], int(time.time() * 1000), "anthropic")
    return cost(E.Tokens(input=usage.input, output=usage.output), price).micro_usd


def check_charges(events: list[E.UsageEvent]) -> None:
    """COMPLETED calls charged once at their real cost, IN_FLIGHT charged once as orphans; no other charge."""
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids)) == COMPLETED + IN_FLIGHT, (len(ids), len(set(ids)))
    ok = [e for e in events if e.outcome == E.OK]
    orphans = [e for e in events if e.outcome == E.ORPHANED]
    assert len(ok) == COMPLETED and all(e.tokens.output == 5 for e in ok)
    assert len(orphans) == IN_FLIGHT
    bill = served_micro_usd(STREAM_USAGE)
    # the stated bound: the reservation held for the call, never below what the provider can bill for it
    assert all(e.cost_micro_usd >= bill > 0 and e.cost_estimated and e.error_type == GATEWAY_CRASH for e in orphans)


async def test_kill_9_with_40_streams_in_flight_then_restart_charges_all_40(env, fake_provider, tmp_path):
    key = key_for(env)
    proc, url = await serve(env)
    try:
        async with aiohttp.ClientSession() as http:
            streams, _ = await start_streams(fake_provider, url, key, http)
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            cut = await asyncio.gather(*streams)
        assert all(b"message_stop" not in b for b in cut)          # every stream was in flight
        log_path = tmp_path / "data" / "ledger" / "events.log"
        assert len(log_events(log_path)) == COMPLETED             # what the old ledger charged: the 5 only
        t0 = time.monotonic()
        proc, url = await serve(env)                              # the same data dir
        restart_s = time.monotonic() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    check_charges(log_events(log_path))
    rebuilt = llmgw("ledger", "rebuild", env=env)
    assert rebuilt.returncode == 0 and "identical" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
    print(f"\n{IN_FLIGHT} of {IN_FLIGHT} in-flight streams charged after kill -9; restart to ready {restart_s:.2f}s")


# -- Kafka mode: the gateway killed and never restarted; the ledger worker charges its calls ----
async def usage_topic(bootstrap: str, topics: Topics) -> list[tuple[int, bytes]]:
    """Every committed record of the usage topic: (partition, value)."""
    out = []
    async with PartitionReader(bootstrap) as reader:
        tps = {TopicPartition(topics.usage, p): None for p in range(topics.partitions)}
        async for tp, records in reader.read(tps, None):
            out.extend((tp.partition, r.value) for r in records)
    return out


@pytest.mark.kafka
async def test_kill_9_in_kafka_mode_without_restart_the_worker_charges_all_40(
        env, kafka_bootstrap, fake_provider, tmp_path):
    prefix = unique_topic("crash")
    env = {**env, "LLMGW_KAFKA_BOOTSTRAP": kafka_bootstrap, "LLMGW_TOPIC_PREFIX": prefix}
    topics = await ensure_topics(kafka_bootstrap, Topics(prefix))
    orphan_after_ms = 4_000
    worker = LedgerWorker(kafka_bootstrap, topics, group_id=f"{prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000, orphan_after_ms=orphan_after_ms, tick_s=0.5)
    await worker.start()
    try:
        key = key_for(env)
        proc, url = await serve(env)
        try:
            async with aiohttp.ClientSession() as http:
                streams, _ = await start_streams(fake_provider, url, key, http)
                await asyncio.sleep(0.5)             # past the Kafka ack of the last started record
                killed_at = time.monotonic()
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                cut = await asyncio.gather(*streams)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert all(b"message_stop" not in b for b in cut)
        # nothing else arrives: the worker's ticks drive it
        await until(lambda: worker.stats.orphans_charged >= IN_FLIGHT, 60, what="40 orphans charged")
        charged_s = time.monotonic() - killed_at
        records = await usage_topic(kafka_bootstrap, topics)
        events = [e for _, v in records if (e := usage_event_of(v)) is not None]
        check_charges(events)                        # the 40 orphan charges are copied for analytics
        async def folded() -> bool:                  # the last transaction's snapshot records
            return await read_snapshots(kafka_bootstrap, topics) == fold_all(events)

        await until(folded, 30, 0.2, what="the snapshots to show every charge")
        live = await read_snapshots(kafka_bootstrap, topics)
        [org_day] = [t for k, t in live.items() if k.startswith("org|acme|day|")]
        assert org_day.requests == COMPLETED + IN_FLIGHT
        assert org_day.spend_micro_usd == sum(e.cost_micro_usd for e in events)

        # the gateway's spool comes back after all and replays one call's real event: counted once
        late = next(e for e in events if e.outcome == E.ORPHANED).with_(outcome=E.OK, cost_nano_usd=1_000,
                                                                        cost_estimated=False, error_type="")
        await produce(kafka_bootstrap, topics, [late])
        await wait_caught_up(kafka_bootstrap, topics)
        assert await read_snapshots(kafka_bootstrap, topics) == live
        report = await compare(kafka_bootstrap, topics, orphan_after_ms=orphan_after_ms)
        assert report.identical, report.differences[:5]
        assert worker.stats.orphans_charged == IN_FLIGHT
    finally:
        await worker.stop()
    print(f"\n{IN_FLIGHT} of {IN_FLIGHT} charged by the worker {charged_s:.1f}s after kill -9 "
          f"(orphan_after {orphan_after_ms / 1000:.0f}s, {worker.stats.ticks} ticks)")
