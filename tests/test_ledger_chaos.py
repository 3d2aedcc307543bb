"""Chaos on the real broker: the ledger stays exact through kill -9, rebalances and a broker restart.

Three "proxies" (idempotent producers that re-send whatever they were not told was delivered, as
a proxy's spool does) send 20,000 events keyed by call (so each org in every partition) while two
workers run as separate processes. Mid-run a worker is killed with SIGKILL three times (a replacement starts each time)
and the broker is restarted once; then 100 delivered events are sent again on purpose. When the
workers have caught up, every aggregate in the snapshot topic must equal ``fold_all`` over the
unique events (nothing lost, nothing counted twice) and ``llmgw ledger rebuild`` must agree.
"""
from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from llmgw.core.events import UsageEvent, encode
from llmgw.ledger.fold import fold_all
from llmgw.ledger.kafka_rebuild import compare, read_snapshots
from llmgw.ledger.topics import Topics, ensure_topics
from tests.fixtures.kafka import KafkaBroker, unique_topic
from llmgw.ledger.worker import LedgerWorker
from tests.test_ledger_worker import ProgressWatcher, produce, random_events, usage_ends

pytestmark = pytest.mark.kafka

EVENTS = 20_000
PROXIES = 3
SEND_S = 30.0                 # how long the proxies take to send everything
DELIBERATE_DUPLICATES = 100
TEST_TIMEOUT_S = 170
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Proxy:
    """Sends events and keeps re-sending the ones whose send raised, until each is acknowledged."""

    bootstrap: str
    topic: str
    acked: set[str] = field(default_factory=set)
    attempts: int = 0
    failed: int = 0
    producers: int = 0
    _producer: AIOKafkaProducer | None = None

    async def _fresh_producer(self) -> AIOKafkaProducer:
        if self._producer is not None:
            await _stop_quietly(self._producer)
        self._producer = None
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all",
                                    request_timeout_ms=4_000, retry_backoff_ms=200)
        await asyncio.wait_for(producer.start(), 10)
        self._producer, self.producers = producer, self.producers + 1
        return producer

    async def send_chunk(self, events: Sequence[UsageEvent]) -> list[UsageEvent]:
        """Send; returns the events this attempt could not confirm (the spool keeps them)."""
        try:
            producer = self._producer or await self._fresh_producer()
        except BaseException as exc:
            _reraise_own_cancellation(exc)
            return list(events)
        pending, failed = [], []
        for e in events:
            self.attempts += 1
            try:
                fut = await asyncio.wait_for(producer.send(self.topic, encode(e), key=e.ledger_key.encode()), 5)
            except BaseException as exc:
                _reraise_own_cancellation(exc)
                failed.append(e)
                continue
            pending.append((e, fut))
        for e, fut in pending:
            try:
                await asyncio.wait_for(fut, 15)
                self.acked.add(e.event_id)
            except BaseException as exc:
                _reraise_own_cancellation(exc)
                failed.append(e)
        if failed:  # a producer that lost acks may be in a fatal state: the next chunk starts a new one
            self.failed += len(failed)
            await _stop_quietly(producer)
            self._producer = None
        return failed

    async def run(self, events: Sequence[UsageEvent], duration_s: float, chunk: int = 25) -> None:
        spool: list[UsageEvent] = []
        chunks = [events[i:i + chunk] for i in range(0, len(events), chunk)]
        began = time.monotonic()
        for n, part in enumerate(chunks):
            delay = began + duration_s * n / len(chunks) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if spool:
                spool = await self.send_chunk(spool)
            spool += await self.send_chunk(part)
        while spool:
            await asyncio.sleep(0.5)
            spool = await self.send_chunk(spool)

    async def close(self) -> None:
        if self._producer is not None:
            await _stop_quietly(self._producer)


def _reraise_own_cancellation(exc: BaseException) -> None:
    """aiokafka can raise CancelledError out of a send when the broker goes away; that is a failed
    send like any other. Only a cancellation of this task itself must propagate."""
    task = asyncio.current_task()
    if not isinstance(exc, Exception) and (not isinstance(exc, asyncio.CancelledError)
                                           or (task is not None and task.cancelling())):
        raise exc


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), 10)
    except BaseException as exc:
        _reraise_own_cancellation(exc)


class Workers:
    """Ledger worker processes (``python -m ledger.worker``), each logging to its own file."""

    def __init__(self, bootstrap: str, topics: Topics, log_dir: Path) -> None:
        self.bootstrap, self.topics, self.log_dir = bootstrap, topics, log_dir
        self.procs: list[asyncio.subprocess.Process] = []
        self.killed = 0

    async def start(self) -> asyncio.subprocess.Process:
        log = open(self.log_dir / f"worker{len(self.procs)}.log", "wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llmgw.ledger.worker", "--bootstrap", self.bootstrap, "--prefix", self.topics.prefix,
            "--partitions", str(self.topics.partitions), "--session-timeout-ms", "6000",
            "--heartbeat-interval-ms", "1000", "--retain-closed-s", "0", cwd=REPO,   # events up to 72 h old stdout=log, stderr=log,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        log.close()
        self.procs.append(proc)
        return proc

    def alive(self) -> list[asyncio.subprocess.Process]:
        return [p for p in self.procs if p.returncode is None]

    async def kill_one(self, rng: random.Random) -> None:
        victim = rng.choice(self.alive())
        victim.kill()                       # SIGKILL: no revoke, no commit, transactions left open
        await victim.wait()
        self.killed += 1
        await self.start()

    async def stop_all(self) -> list[int]:
        """SIGTERM the live ones; their exit codes (0 after a clean stop)."""
        alive = self.alive()
        for p in alive:
            p.terminate()
        return [await asyncio.wait_for(p.wait(), 30) for p in alive]

    def logs(self) -> str:
        out = []
        for f in sorted(self.log_dir.glob("worker*.log")):
            lines = f.read_text(errors="replace").splitlines()
            out.append(f"--- {f.name} (last 15 of {len(lines)} lines)\n" + "\n".join(lines[-15:]))
        return "\n".join(out)


async def chaos(workers: Workers, broker: KafkaBroker, rng: random.Random, timings: dict[str, float]) -> None:
    began = time.monotonic()

    async def at(t: float) -> None:
        await asyncio.sleep(max(0.0, began + t - time.monotonic()))

    await at(5)
    await workers.kill_one(rng)
    await at(9)
    t = time.monotonic()
    await broker.astop()
    await broker.astart()
    timings["broker_restart_s"] = time.monotonic() - t
    await at(20)
    await workers.kill_one(rng)
    await at(26)
    await workers.kill_one(rng)


async def test_a_worker_rides_out_a_broker_killed_under_its_transactions(kafka_broker: KafkaBroker) -> None:
    """SIGKILL the broker while one worker folds a backlog: its transactions fail or time out with
    their outcome unknown; it re-acquires every partition from what Kafka committed and goes on."""
    bootstrap = kafka_broker.bootstrap
    topics = await ensure_topics(bootstrap, Topics(unique_topic("brokerkill"), partitions=8))
    events = random_events(15_000, seed=99, orgs=20)
    async with asyncio.timeout(TEST_TIMEOUT_S):
        await produce(bootstrap, topics, events)
        ends = await usage_ends(bootstrap, topics)
        worker = LedgerWorker(bootstrap, topics, group_id=f"{topics.prefix}-ledger", session_timeout_ms=6_000,
                              heartbeat_interval_ms=1_000, transaction_timeout_s=2.0, acquire_timeout_s=10.0,
                              max_records_per_txn=100)     # many small transactions: the kill cuts several
        await worker.start()
        try:
            while sum(worker.owned.values()) == 0:          # folding has begun
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            folded_before_kill = sum(worker.owned.values())
            try:
                await kafka_broker.astop(kill=True)
            finally:
                await kafka_broker.astart()
            async with ProgressWatcher(bootstrap, topics) as watcher:
                await watcher.wait_for(ends, timeout_s=90)
        finally:
            await worker.stop()
        live = await read_snapshots(bootstrap, topics)
    print(f"\nbroker kill: {folded_before_kill} of {len(events)} events folded before the kill, "
          f"{worker.stats.failed_transactions} transactions failed, {worker.stats.releases} partition releases, "
          f"{worker.stats.acquisitions} acquisitions")
    assert folded_before_kill < len(events) - 2_000, "the kill came while the backlog was being folded"
    assert worker.stats.failed_transactions >= 2, "the kill cut transactions in flight"
    assert worker.stats.acquisitions >= topics.partitions + worker.stats.failed_transactions
    assert live == fold_all(events)


async def test_exact_through_kills_rebalances_and_a_broker_restart(kafka_broker: KafkaBroker,
                                                                  tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    topics = await ensure_topics(bootstrap, Topics(unique_topic("chaos"), partitions=8))
    events = random_events(EVENTS, seed=2026, orgs=20)
    rng = random.Random(7)
    workers = Workers(bootstrap, topics, tmp_path)
    proxies = [Proxy(bootstrap, topics.usage) for _ in range(PROXIES)]
    timings: dict[str, float] = {}
    began = time.monotonic()
    try:
        async with asyncio.timeout(TEST_TIMEOUT_S):
            await workers.start()
            await workers.start()
            async with asyncio.TaskGroup() as tg:     # one failure cancels the others
                tg.create_task(chaos(workers, kafka_broker, rng, timings))
                for i, p in enumerate(proxies):
                    tg.create_task(p.run(events[i::PROXIES], SEND_S))
            timings["sent_s"] = time.monotonic() - began
            again = rng.sample(events, DELIBERATE_DUPLICATES)
            assert await proxies[0].send_chunk(again) == []
            ends = await usage_ends(bootstrap, topics)
            async with ProgressWatcher(bootstrap, topics) as watcher:
                await watcher.wait_for(ends, timeout_s=90)
            timings["caught_up_s"] = time.monotonic() - began
            live = await read_snapshots(bootstrap, topics)
            report = await compare(bootstrap, topics)
            exit_codes = await workers.stop_all()
    except BaseException:
        print(workers.logs())
        raise
    finally:
        for p in proxies:
            await p.close()
        for p in workers.alive():
            p.kill()
            await p.wait()

    acked = set().union(*(p.acked for p in proxies))
    records = sum(ends.values())
    expected = fold_all(events)
    print(f"\nchaos: {len(events)} events, {records} usage records ({records - len(events)} duplicates, "
          f"{DELIBERATE_DUPLICATES} deliberate), {sum(p.failed for p in proxies)} sends re-sent, "
          f"{sum(p.producers for p in proxies)} producers, {workers.killed} workers killed, "
          f"broker restart {timings.get('broker_restart_s', 0):.1f}s, sent in {timings['sent_s']:.1f}s, "
          f"caught up at {timings['caught_up_s']:.1f}s, {len(expected)} spend keys")
    assert acked == {e.event_id for e in events}, "every event was acknowledged at least once"
    assert workers.killed >= 2 and "broker_restart_s" in timings
    assert records >= len(events) + DELIBERATE_DUPLICATES
    missing = [k for k in expected if k not in live]
    extra = [k for k in live if k not in expected]
    wrong = [k for k in expected if k in live and live[k] != expected[k]]
    assert (missing, extra, wrong[:10]) == ([], [], []), f"{len(wrong)} keys differ"
    assert live == expected
    assert report.identical and not report.lag
    assert report.counts.folded == len(events) and report.counts.duplicates == records - len(events)
    assert exit_codes == [0, 0]
