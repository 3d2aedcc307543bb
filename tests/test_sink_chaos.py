"""`llmgw sink` on the real broker: killed twice mid-batch, events re-delivered, each stored once.

The sink runs as a subprocess with its own chDB store (a path this test process never opens: chDB
hosts one engine per process, and this one belongs to the session's ``chdb_dsn``). After it stops,
the store is read through fresh subprocesses: ``llmgw spend --json`` and a small query script.
"""
from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import re
import signal
import sys
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from llmgw.core.events import ADJUSTMENT, REJECTED_BUDGET, Tokens, UsageEvent, encode, new_event_id
from llmgw.ledger.topics import PartitionReader
from tests.fixtures.chdb import NOV_4_MS, usage_event
from tests.fixtures.kafka import create_topics, unique_topic

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
PARTITIONS = 8
ORGS = ("acme", "globex", "initech", "umbrella", "hooli", "stark")
DAY_MS = 86_400_000
INSERTED = re.compile(r"inserted (\S+)\[(\d+)\] offsets (\d+)-(\d+)")


def make_events(n: int, rng: random.Random, start: int = 0) -> list[UsageEvent]:
    """Distinct events over six orgs, some in October (a second partition of the table)."""
    out = []
    for i in range(start, start + n):
        org = ORGS[i % len(ORGS)]
        ts = NOV_4_MS + i * 1_000 - (10 * DAY_MS if i % 7 == 0 else 0)
        ev = usage_event(i, org=org, event_id=new_event_id(ts), ts_start_ms=ts, ts_end_ms=ts + 400,
                         workspace=f"ws-{i % 3}", user=f"u-{i % 5}", session_id=f"s-{i % 11}",
                         cost_micro_usd=rng.randrange(1, 50_000_000))
        if i % 97 == 0:
            ev = ev.with_(kind=ADJUSTMENT, adjusts_event_id=f"x-{i}", tokens=Tokens(),
                          cost_micro_usd=-rng.randrange(1, 100_000))
        elif i % 53 == 0:
            ev = ev.with_(outcome=REJECTED_BUDGET, model_served="", tokens=Tokens(), cost_micro_usd=0)
        out.append(ev)
    return out


async def produce(bootstrap: str, topic: str, events: list[UsageEvent], garbage: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=e.ledger_key.encode(), value=encode(e)) for e in events]
        for n in range(garbage):
            futures.append(await producer.send(topic, key=ORGS[n].encode(), value=b"{not a usage event"))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class SinkProcess:
    """``python -m proxy.cli sink`` with its stderr followed line by line."""

    def __init__(self, bootstrap: str, prefix: str, dsn: str, *extra: str) -> None:
        self.argv = [sys.executable, "-m", "llmgw.proxy.cli", "--kafka-bootstrap", bootstrap, "sink", "--dsn", dsn,
                     "--max-batch", "100", "--max-wait-s", "0.2", "--session-timeout-ms", "6000", *extra]
        self.env = {**os.environ, "LLMGW_TOPIC_PREFIX": prefix, "LLMGW_LOG_LEVEL": "INFO"}
        self.lines: list[str] = []
        self.inserted: list[tuple[int, int, int]] = []      # (partition, first, last)
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(*self.argv, cwd=REPO, env=self.env,
                                                         stdout=asyncio.subprocess.DEVNULL,
                                                         stderr=asyncio.subprocess.PIPE)
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            async with self._changed:
                self.lines.append(line)
                if m := INSERTED.search(line):
                    self.inserted.append((int(m[2]), int(m[3]), int(m[4])))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()           # end of output: the process is gone

    async def wait_inserted(self, count: int, timeout_s: float = 120.0) -> tuple[int, int, int]:
        try:
            async with asyncio.timeout(timeout_s):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.inserted) >= count or self._reader.done())
        except TimeoutError:
            raise AssertionError(f"fewer than {count} inserts after {timeout_s}s:\n{self.log()}") from None
        assert len(self.inserted) >= count, self.log()
        return self.inserted[count - 1]

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL
        await self._reader

    async def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            code = await self.proc.wait()
        await self._reader
        return code

    def log(self) -> str:
        return "\n".join(self.lines[-40:])


async def committed(bootstrap: str, group: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items()}


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    async with PartitionReader(bootstrap) as reader:
        ends = await reader.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
    return {tp.partition: offset for tp, offset in ends.items()}


async def wait_drained(bootstrap: str, topic: str, group: str, sink: SinkProcess, timeout_s: float = 120) -> None:
    """Until the group's committed offset is the end of every partition (0: never written)."""
    ends = await end_offsets(bootstrap, topic)
    got: dict[int, int] = {}
    try:
        async with asyncio.timeout(timeout_s):
            while (got := {p: (await committed(bootstrap, group)).get(p, 0) for p in ends}) != ends:
                assert sink.proc.returncode is None, sink.log()
                await asyncio.sleep(0.3)
    except TimeoutError:
        raise AssertionError(f"not drained: committed {got}, ends {ends}\n{sink.log()}") from None


def run_script(*argv: str) -> str:
    import subprocess
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "LLMGW_LOG_LEVEL": "WARNING"})
    assert done.returncode == 0, done.stderr
    return done.stdout


_READ_STORE = """
import json, sys
from analytics import store
c = store.connect(sys.argv[1])
rows = lambda sql: [list(r) for r in c.query(sql).result_rows]
print(json.dumps({
    "raw": rows("SELECT count(), uniqExact(event_id) FROM usage_events")[0],
    "final": rows("SELECT org, sum(cost_micro_usd), countIf(kind = 'usage') FROM usage_events FINAL GROUP BY org"),
    "rollup": rows("SELECT org, sum(cost_micro_usd), sum(requests) FROM usage_by_minute GROUP BY org"),
    "ids": [r[0] for r in rows("SELECT event_id FROM usage_events")],
}))
"""


async def test_sink_killed_twice_mid_batch_stores_each_event_once(kafka_bootstrap: str, tmp_path: Path) -> None:
    rng = random.Random(8)
    prefix = unique_topic("sinkchaos")
    topic, group = f"{prefix}.usage", f"{prefix}-analytics"
    await create_topics(kafka_bootstrap, {topic: PARTITIONS})
    dsn = f"chdb://{tmp_path / 'sink-store'}"      # the sink's own engine: never opened by this process

    first = make_events(2400, rng)
    resent = rng.sample(first, 150)                  # a proxy's spool re-sending events whose ack was lost
    await produce(kafka_bootstrap, topic, first + [first[5], first[5]] + resent, garbage=2)

    # Run 1: killed while a batch is inserted but its offsets are not committed yet.
    runs = []
    sink = SinkProcess(kafka_bootstrap, prefix, dsn, "--pause-after-insert-s", "0.4")
    await sink.start()
    partition, _, last = await sink.wait_inserted(3)
    await sink.kill()
    runs.append(sink)
    assert (await committed(kafka_bootstrap, group)).get(partition, -1) <= last, "the kill came after the commit"

    # Run 2: the same again, after re-reading that uncommitted batch.
    sink = SinkProcess(kafka_bootstrap, prefix, dsn, "--pause-after-insert-s", "0.4")
    await sink.start()
    partition, _, last = await sink.wait_inserted(2)
    await sink.kill()
    runs.append(sink)
    assert (await committed(kafka_bootstrap, group)).get(partition, -1) <= last

    # Run 3: to the end, while more events (and more re-sent copies) arrive.
    sink = SinkProcess(kafka_bootstrap, prefix, dsn)
    await sink.start()
    later = make_events(600, rng, start=5000)
    await produce(kafka_bootstrap, topic, later + rng.sample(first, 50) + later[:20])
    await wait_drained(kafka_bootstrap, topic, group, sink)
    assert await sink.stop() == 0, sink.log()
    logs = "\n".join(line for run in runs + [sink] for line in run.lines)
    assert logs.count("not a usable usage event") >= 2          # the two garbage records: logged, skipped

    unique = {e.event_id: e for e in first + later}
    want_cost: dict[str, int] = collections.Counter()
    want_requests: dict[str, int] = collections.Counter()
    for e in unique.values():
        want_cost[e.org] += e.cost_micro_usd
        want_requests[e.org] += e.kind == "usage"

    stored = json.loads(run_script("-c", _READ_STORE, dsn))
    assert stored["raw"] == [len(unique), len(unique)], "an event is stored twice (or lost)"
    assert sorted(stored["ids"]) == sorted(unique)
    assert {org: cost for org, cost, _ in stored["final"]} == want_cost
    assert {org: n for org, _, n in stored["final"]} == want_requests
    assert {org: cost for org, cost, _ in stored["rollup"]} == want_cost      # rollups exact too
    assert {org: n for org, _, n in stored["rollup"]} == want_requests

    spend = [json.loads(line) for line in run_script(
        "-m", "llmgw.proxy.cli", "spend", "--dsn", dsn, "--by", "org", "--since", "2026-10-01",
        "--until", "2026-12-01", "--json").splitlines()]
    assert {row["org"]: row["cost_micro_usd"] for row in spend} == want_cost
