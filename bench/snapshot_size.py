"""Snapshot size, and a proxy's memory (RSS) holding it, with N budgets (default 100,000).

Run by hand (not part of the test suite):

    python bench/snapshot_size.py                             # 100,000 budgets, throwaway broker
    python bench/snapshot_size.py --bootstrap 127.0.0.1:9092 --budgets 100000

A budget is one user's (100 orgs, 5 workspaces each, 1,000 API keys); each user makes one call, so
the fold writes every window of every entity that call counts against: 4 windows (hour, day,
week, month) of its user, workspace, org and key, ~4 x (budgets + 1,600) spend keys: what the
snapshot holds for N budgeted users who are all active in the current hour. One ledger worker
process (``python -m llmgw.ledger.worker``) folds them. Then:

- the snapshot topic is read back to its end: records, distinct keys, bytes of keys and values
  (what a proxy downloads when it starts; compaction keeps one record per key);
- a fresh process (this script with ``--follow``) starts a ``KafkaLedger`` that follows the
  snapshot topic, as a gateway does, and reports its RSS before and after the follower caught up,
  and how long that took;
- the worker process's RSS after folding.

Closed windows past ``LLMGW_SNAPSHOT_RETAIN_CLOSED_S`` leave the topic (tombstones), so over time
each active entity also keeps its closed windows for the retention (``docs/operations.md`` has
the steady-state arithmetic).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer, TopicPartition  # noqa: E402

from llmgw.core.events import Tokens, UsageEvent, encode, new_event_id  # noqa: E402
from llmgw.ledger.kafka_ledger import KafkaLedger  # noqa: E402
from llmgw.ledger.topics import (PartitionReader, Topics, decode_progress, ensure_topics,  # noqa: E402
                                 is_progress_key)

from bench.snapshot_freshness import machine, on_a_broker  # noqa: E402


def rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def budget_call(u: int, now_ms: int) -> UsageEvent:
    org = f"org{u % 100}"
    return UsageEvent(event_id=new_event_id(), ts_start_ms=now_ms, ts_end_ms=now_ms + 500, org=org,
                      workspace=f"ws{u % 5}", user=f"user{u}", key_id=f"key{u % 1_000}", provider="openai",
                      api="chat", model_requested="gpt-4o", model_served="gpt-4o",
                      tokens=Tokens(input=800, output=200), cost_micro_usd=1_000 + u % 9_000)


async def produce(bootstrap: str, topics: Topics, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=20, max_batch_size=256 << 10)
    await producer.start()
    try:
        now = int(time.time() * 1000)
        for start in range(0, n, 5_000):
            sent = [await producer.send(topics.usage, encode(e), key=e.ledger_key.encode())
                    for e in (budget_call(u, now) for u in range(start, min(n, start + 5_000)))]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def wait_folded(bootstrap: str, topics: Topics, timeout_s: float) -> None:
    """Until every usage partition's progress record names its last offset."""
    tps = [TopicPartition(topics.usage, p) for p in range(topics.partitions)]
    async with PartitionReader(bootstrap) as reader:
        ends = {tp.partition: e for tp, e in (await reader.end_offsets(tps)).items()}
    deadline = time.monotonic() + timeout_s
    progress: dict[int, int] = {}
    while any(progress.get(p, -1) < e - 1 for p, e in ends.items() if e):
        if time.monotonic() > deadline:
            raise TimeoutError(f"progress {progress} vs ends {ends}")
        await asyncio.sleep(1.0)
        async with PartitionReader(bootstrap) as reader:
            start: dict[TopicPartition, int | None] = {TopicPartition(topics.snapshots, p): None
                                                       for p in range(topics.partitions)}
            async for _, records in reader.read(start):
                for r in records:
                    if r.key is not None and r.value is not None and is_progress_key(r.key.decode()):
                        progress[r.partition] = decode_progress(r.value)


async def topic_size(bootstrap: str, topics: Topics) -> tuple[int, int, int]:
    """(records, distinct keys, bytes of keys and values) of the snapshot topic read to its end."""
    records, size, keys = 0, 0, set()
    async with PartitionReader(bootstrap) as reader:
        start: dict[TopicPartition, int | None] = {TopicPartition(topics.snapshots, p): None
                                                   for p in range(topics.partitions)}
        async for _, batch in reader.read(start):
            for r in batch:
                records += 1
                size += len(r.key or b"") + len(r.value or b"")
                keys.add(r.key)
    return records, len(keys), size


async def follow(bootstrap: str, prefix: str) -> None:
    """``--follow``: one gateway's ledger, following the snapshot topic; prints its memory."""
    before = rss_mb()
    data = Path(tempfile.mkdtemp(prefix="llmgw-snapsize-"))
    ledger = KafkaLedger(bootstrap, data, topic_prefix=prefix, gateway_id="size", create_topics=False)
    t0 = time.monotonic()
    await ledger.start()
    try:
        while not ledger.snapshot_ready:
            await asyncio.sleep(0.05)
        took = time.monotonic() - t0
        after = rss_mb()
        print(f"FOLLOW keys={len(ledger.view.folded)} rss_before_mb={before:.1f} rss_after_mb={after:.1f} "
              f"load_s={took:.1f}", flush=True)
    finally:
        await ledger.stop(5)


async def run(bootstrap: str, budgets: int, partitions: int) -> None:
    topics = await ensure_topics(bootstrap, Topics(f"bench-size-{new_event_id()[:8]}", partitions=partitions))
    t0 = time.monotonic()
    await produce(bootstrap, topics, budgets)
    print(f"{budgets} calls of {budgets} budgeted users produced in {time.monotonic() - t0:.1f}s")
    worker = subprocess.Popen([sys.executable, "-m", "llmgw.ledger.worker", "--bootstrap", bootstrap,
                               "--prefix", topics.prefix, "--partitions", str(partitions), "--log-level", "WARNING"])
    try:
        t1 = time.monotonic()
        await wait_folded(bootstrap, topics, timeout_s=900)
        print(f"folded by one worker process in {time.monotonic() - t1:.1f}s; worker RSS {rss_mb(worker.pid):.1f} MiB")
        records, keys, size = await topic_size(bootstrap, topics)
        print(f"snapshot topic: {records} records, {keys} distinct keys ({keys - partitions} spend keys), "
              f"{size / 2**20:.1f} MiB of keys and values ({size / max(1, records):.0f} B/record)")
        out = subprocess.run([sys.executable, __file__, "--follow", "--bootstrap", bootstrap, "--prefix",
                              topics.prefix], capture_output=True, text=True, timeout=900)
        line = next((x for x in out.stdout.splitlines() if x.startswith("FOLLOW")), out.stdout + out.stderr)
        fields = dict(kv.split("=") for kv in line.split()[1:])
        grown = float(fields["rss_after_mb"]) - float(fields["rss_before_mb"])
        print(f"a gateway's snapshot follower: {fields['keys']} keys in its view after {fields['load_s']}s; "
              f"RSS {fields['rss_before_mb']} -> {fields['rss_after_mb']} MiB (+{grown:.1f} MiB, "
              f"{grown * 2**20 / max(1, int(fields['keys'])):.0f} B/key)")
    finally:
        worker.terminate()
        worker.wait(30)
    print(machine())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="", help="a running broker; default: start a throwaway one")
    ap.add_argument("--budgets", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--follow", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.follow:
        asyncio.run(follow(args.bootstrap, args.prefix))
        return 0
    on_a_broker(args.bootstrap, lambda b: asyncio.run(run(b, args.budgets, args.partitions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
