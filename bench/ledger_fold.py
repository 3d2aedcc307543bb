"""How many usage events per second one Kafka ledger worker folds (run by hand, not in the suite).

    python bench/ledger_fold.py                      # starts a throwaway broker via deploy/kafka/kafka.sh
    python bench/ledger_fold.py --bootstrap HOST:PORT --events 200000

It writes N random events (20 orgs, random users/workspaces/keys/project tags) to a fresh usage
topic, then starts one ``LedgerWorker`` and times how long it takes to fold the backlog, i.e. until
the transaction holding each partition's last event has committed. Printed for comparison: the pure ``fold_all``
rate (no Kafka), the worker's rate (backlog / time until its last commit returned, and after
acquisition), and the time
``llmgw ledger rebuild`` needs to refold the topic.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiokafka  # noqa: E402
from aiokafka import AIOKafkaProducer, TopicPartition  # noqa: E402

from llmgw.core.events import Tokens, UsageEvent, encode, new_event_id  # noqa: E402
from llmgw.ledger.fold import fold_all  # noqa: E402
from llmgw.ledger.kafka_rebuild import fold_topic  # noqa: E402
from llmgw.ledger.topics import PartitionReader, Topics, ensure_topics  # noqa: E402
from llmgw.ledger.worker import LedgerWorker  # noqa: E402

KAFKA_SH = REPO / "deploy" / "kafka" / "kafka.sh"


def events(n: int, orgs: int, seed: int = 1) -> list[UsageEvent]:
    rng, now = random.Random(seed), int(time.time() * 1000)
    out = []
    for _ in range(n):
        org = f"org{rng.randrange(orgs)}"
        start = now - rng.randrange(48 * 3_600_000)
        tags = (f"project:p{rng.randrange(5)}",) if rng.random() < 0.5 else ()
        out.append(UsageEvent(
            event_id=new_event_id(), ts_start_ms=start, ts_end_ms=start + 2_000, org=org,
            workspace=f"ws{rng.randrange(4)}", user=f"user{rng.randrange(50)}", key_id=f"{org}-k{rng.randrange(10)}",
            provider="openai", api="chat", model_requested="gpt", model_served="gpt",
            tokens=Tokens(input=rng.randrange(5_000), output=rng.randrange(1_000)),
            cost_micro_usd=rng.randrange(100_000), tags=tags))
    return out


async def produce(bootstrap: str, topic: str, evs: list[UsageEvent]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=5, max_batch_size=256 << 10)
    await producer.start()
    began = time.perf_counter()
    try:
        futs = [await producer.send(topic, encode(e), key=e.ledger_key.encode()) for e in evs]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()
    return time.perf_counter() - began


async def bench(bootstrap: str, n: int, partitions: int, orgs: int) -> None:
    evs = events(n, orgs)
    t = time.perf_counter()
    expected = fold_all(evs)
    pure_s = time.perf_counter() - t
    topics = await ensure_topics(bootstrap, Topics(f"bench{int(time.time())}", partitions))
    produce_s = await produce(bootstrap, topics.usage, evs)
    async with PartitionReader(bootstrap) as reader:
        ends = {tp.partition: e for tp, e in (await reader.end_offsets(
            [TopicPartition(topics.usage, p) for p in range(partitions)])).items()}

    worker = LedgerWorker(bootstrap, topics, group_id=f"{topics.prefix}-ledger")
    began = time.perf_counter()
    await worker.start()
    while any(worker.owned.get(p, -1) < end for p, end in ends.items() if end > 0):
        await asyncio.sleep(0.01)   # owned offsets move only after each commit returned
    total_s = time.perf_counter() - began
    acquire_s = max(worker.stats.acquire_s) if worker.stats.acquire_s else 0.0
    stats = worker.stats
    await worker.stop()

    t = time.perf_counter()
    rebuilt = await fold_topic(bootstrap, topics)
    rebuild_s = time.perf_counter() - t
    assert rebuilt == expected, "refold differs from fold_all"

    print(f"commit   {_commit()}  (working tree, uncommitted changes count as the same commit)")
    print(f"machine  {platform.machine()} {os.cpu_count()} cpus, {platform.python_implementation()} "
          f"{platform.python_version()}, aiokafka {aiokafka.__version__}")
    print(f"events   {n} over {orgs} orgs into {partitions} partitions -> {len(expected)} spend keys")
    print(f"produce  {produce_s:.2f}s ({n / produce_s:,.0f} events/s, one idempotent producer)")
    print(f"fold_all {pure_s:.2f}s ({n / pure_s:,.0f} events/s, pure Python, no Kafka)")
    print(f"worker   {total_s:.2f}s to fold the backlog ({n / total_s:,.0f} events/s end to end; "
          f"{n / max(1e-9, total_s - acquire_s):,.0f} events/s after {acquire_s:.2f}s acquiring "
          f"{stats.acquisitions} partitions) in {stats.transactions} transactions "
          f"({n / max(1, stats.transactions):,.0f} events each)")
    print(f"rebuild  {rebuild_s:.2f}s to refold the topic ({n / rebuild_s:,.0f} events/s)")


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "(no commit yet)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", help="an existing broker; default: start one with deploy/kafka/kafka.sh")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--orgs", type=int, default=20)
    args = ap.parse_args()
    if args.bootstrap:
        asyncio.run(bench(args.bootstrap, args.events, args.partitions, args.orgs))
        return 0
    with tempfile.TemporaryDirectory(prefix="llmgw-bench-kafka-") as state:
        bootstrap = subprocess.run([str(KAFKA_SH), "start", state], check=True, capture_output=True,
                                   text=True).stdout.strip().splitlines()[-1]
        try:
            asyncio.run(bench(bootstrap, args.events, args.partitions, args.orgs))
        finally:
            subprocess.run([str(KAFKA_SH), "stop", state], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
