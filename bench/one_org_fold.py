"""One organization's fold throughput with 1, 2 and 4 ledger workers, and a million-event rebuild.

Run by hand (not part of the test suite):

    python bench/one_org_fold.py                                  # throwaway broker, 200,000 events per run
    python bench/one_org_fold.py --workers 1,2,4 --keying key,call,org --events 200000 --rebuild-events 1000000
    python bench/one_org_fold.py --bootstrap HOST:PORT

Every event belongs to one org (``acme``: 200 users in 10 workspaces, two API keys each, half the calls with a
project tag): the case the usage topic's keying (``LLMGW_USAGE_KEY``) decides. Keyed by org they all land in
one partition, so one worker folds them whatever the group's size; keyed by API key (the default)
or by call they spread over the partitions and each worker folds its partitions' partial sums.

Per (keying, workers): fresh topics (``--partitions``, default 8); ``workers`` worker processes
(``python -m llmgw.ledger.worker``) start and fold one warm-up event per partition, and once more
when the group is Stable with every worker, so every partition is acquired before the clock
starts. The workers are then paused (SIGSTOP; their session timeout is 120 s) while one producer
writes the backlog, and resumed (SIGCONT): the clock runs from there until every partition's
progress record reached its end (the commit holding its last event), so it times the fold of a
backlog, not the producer. The snapshot is then read back and must equal ``fold_all`` of every
event sent. The workers' CPU seconds come from ``getrusage(RUSAGE_CHILDREN)`` after they exit, and
each worker's from ``/proc/<pid>/stat`` before it is stopped: how evenly the fold's work is split,
which is what the throughput scales with where each worker has a core of its own. Also
printed per keying: how many (partition, spend key) partials the snapshot holds against spend
keys, which is what a gateway's view and a starting gateway's download grow with.

Rebuild: ``--rebuild-events`` one-org events keyed by API key on their own topic, refolded by
``fold_topic`` (what ``llmgw ledger rebuild`` runs), compared with ``fold_all``.

The workers and the broker share this machine's cores: the scaling a run can show is capped by the
cores left over; the header prints the CPU count and load.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

from bench.snapshot_freshness import machine, on_a_broker  # noqa: E402
from llmgw.core.events import Tokens, UsageEvent, encode, new_event_id  # noqa: E402
from llmgw.ledger.fold import fold_all  # noqa: E402
from llmgw.ledger.kafka_rebuild import fold_topic, read_snapshots  # noqa: E402
from llmgw.ledger.started import usage_key  # noqa: E402
from llmgw.ledger.topics import (PartitionReader, Topics, decode_progress, ensure_topics,  # noqa: E402
                                 is_progress_key, read_snapshot_partitions)


def one_org(n: int, seed: int = 1) -> list[UsageEvent]:
    import random
    rng, now = random.Random(seed), int(time.time() * 1000)
    out = []
    for _ in range(n):
        start, user = now - rng.randrange(3_600_000), rng.randrange(200)
        out.append(UsageEvent(                        # each user in one workspace, with two keys of its own
            event_id=new_event_id(), ts_start_ms=start, ts_end_ms=start + 2_000, org="acme",
            workspace=f"ws{user % 10}", user=f"user{user}", key_id=f"acme-u{user}-k{rng.randrange(2)}",
            provider="openai", api="chat", model_requested="gpt-4o", model_served="gpt-4o",
            tokens=Tokens(input=rng.randrange(5_000), output=rng.randrange(1_000)),
            cost_nano_usd=rng.randrange(100_000_000), tags=(("project:p1",) if rng.random() < 0.5 else ())))
    return out


async def produce(bootstrap: str, topic: str, evs: list[UsageEvent], keying: str,
                  partition: int | None = None) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                linger_ms=5, max_batch_size=256 << 10)
    await producer.start()
    try:
        futs = [await producer.send(topic, encode(e), key=usage_key(e, keying), partition=partition) for e in evs]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def ends_of(bootstrap: str, topics: Topics) -> dict[int, int]:
    async with PartitionReader(bootstrap) as reader:
        ends = await reader.end_offsets([TopicPartition(topics.usage, p) for p in range(topics.partitions)])
    return {tp.partition: end for tp, end in ends.items()}


async def wait_folded(bootstrap: str, topics: Topics, ends: dict[int, int], timeout_s: float) -> None:
    """Until every partition's committed progress record reached its end offset - 1."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topics.snapshots, p) for p in range(topics.partitions)])
        progress: dict[int, int] = {}
        async with asyncio.timeout(timeout_s):
            while any(progress.get(p, -1) < end - 1 for p, end in ends.items() if end > 0):
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    for r in records:
                        if r.key is not None and r.value is not None and is_progress_key(r.key.decode()):
                            progress[r.partition] = decode_progress(r.value)
    finally:
        await consumer.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process (Linux ``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def wait_stable(bootstrap: str, group: str, members: int, timeout_s: float = 120) -> None:
    """Until the workers' group is Stable with ``members`` members (no rebalance left to come)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                response: Any = (await admin.describe_consumer_groups([group]))[0]
                state, found = response.groups[0][2], response.groups[0][5]
                if state == "Stable" and len(found) == members:
                    return
                await asyncio.sleep(0.2)
    finally:
        await admin.close()


async def fold_run(bootstrap: str, keying: str, workers: int, evs: list[UsageEvent], partitions: int) -> dict[str, object]:
    topics = await ensure_topics(bootstrap, Topics(f"oneorg{time.time_ns()}-{keying}-{workers}w", partitions))
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    procs = [subprocess.Popen([sys.executable, "-m", "llmgw.ledger.worker", "--bootstrap", bootstrap,
                               "--prefix", topics.prefix, "--partitions", str(partitions), "--log-level", "WARNING",
                               "--session-timeout-ms", "120000", "--heartbeat-interval-ms", "3000"])
             for _ in range(workers)]
    try:
        warm = one_org(2 * partitions, seed=99)
        for p, e in enumerate(warm[:partitions]):     # every partition acquired and folding before the clock
            await produce(bootstrap, topics.usage, [e], keying, partition=p)
        await wait_folded(bootstrap, topics, await ends_of(bootstrap, topics), timeout_s=180)
        await wait_stable(bootstrap, f"{topics.prefix}-ledger", workers)
        for p, e in enumerate(warm[partitions:]):     # and again once the group holds every worker
            await produce(bootstrap, topics.usage, [e], keying, partition=p)
        await wait_folded(bootstrap, topics, await ends_of(bootstrap, topics), timeout_s=180)
        for proc in procs:                            # the backlog is written while the workers are paused
            proc.send_signal(signal.SIGSTOP)
        began = time.perf_counter()
        try:
            await produce(bootstrap, topics.usage, evs, keying)
        finally:
            produced_s = time.perf_counter() - began
            for proc in procs:
                proc.send_signal(signal.SIGCONT)
        began = time.perf_counter()
        ends = await ends_of(bootstrap, topics)
        await wait_folded(bootstrap, topics, ends, timeout_s=1_800)
        fold_s = time.perf_counter() - began
        worker_cpu = [cpu_seconds(proc.pid) for proc in procs]   # each worker's share of the fold
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    async with PartitionReader(bootstrap) as reader:
        by_partition, _ = await read_snapshot_partitions(reader, topics, list(range(partitions)))
    live = await read_snapshots(bootstrap, topics)
    partials = sum(len(keys) for keys in by_partition.values())
    assert live == fold_all(warm + evs), "the snapshot differs from fold_all"
    spread = {p: end - 2 for p, end in sorted(ends.items())}    # events per partition (minus the warm-up)
    worker_cpu_s = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {"keying": keying, "workers": workers, "events": len(evs), "fold_s": fold_s, "produce_s": produced_s,
            "rate": len(evs) / fold_s, "busy_partitions": sum(1 for n in spread.values() if n > 0),
            "max_partition_share": max(spread.values()) / len(evs), "worker_cpu_s": worker_cpu_s,
            "partials": partials, "spend_keys": len(live), "per_worker_cpu_s": sorted(worker_cpu, reverse=True)}


async def rebuild_run(bootstrap: str, n: int, partitions: int) -> dict[str, float]:
    evs = one_org(n, seed=7)
    t = time.perf_counter()
    expected = fold_all(evs)
    pure_s = time.perf_counter() - t
    topics = await ensure_topics(bootstrap, Topics(f"oneorg{time.time_ns()}-rebuild", partitions))
    await produce(bootstrap, topics.usage, evs, "key")
    t = time.perf_counter()
    rebuilt = await fold_topic(bootstrap, topics)
    rebuild_s = time.perf_counter() - t
    assert rebuilt == expected, "the refold differs from fold_all"
    return {"events": n, "rebuild_s": rebuild_s, "pure_s": pure_s, "keys": len(expected)}


async def run(bootstrap: str, args: argparse.Namespace) -> None:
    print(machine())
    print(f"one org, {args.events:,} events per run, {args.partitions} partitions; workers are processes")
    evs = one_org(args.events)
    rows = []
    for keying in args.keying.split(","):
        for workers in (int(w) for w in args.workers.split(",")):
            row = await fold_run(bootstrap, keying, workers, evs, args.partitions)
            rows.append(row)
            print(f"  keyed by {keying:4} {workers} worker(s): {row['rate']:>8,.0f} events/s "
                  f"({row['fold_s']:.1f} s; produced in {row['produce_s']:.1f} s), "
                  f"{row['busy_partitions']} busy partitions, largest {row['max_partition_share']:.0%} of events, "
                  f"workers' CPU {row['worker_cpu_s']:.1f} s (each: "
                  f"{', '.join(f'{c:.1f}' for c in row['per_worker_cpu_s'])}); snapshot {row['partials']:,} "
                  f"partials of {row['spend_keys']:,} spend keys", flush=True)
    by = collections.defaultdict(dict)
    for row in rows:
        by[row["keying"]][row["workers"]] = row["rate"]
    for keying, rates in by.items():
        one = rates.get(min(rates))
        print(f"  scaling keyed by {keying}: " + ", ".join(f"{w} workers x{r / one:.2f}" for w, r in sorted(rates.items())))
    if args.rebuild_events:
        r = await rebuild_run(bootstrap, args.rebuild_events, args.partitions)
        print(f"  rebuild of {r['events']:,.0f} events ({r['keys']:,.0f} spend keys): {r['rebuild_s']:.1f} s "
              f"({r['events'] / r['rebuild_s']:,.0f} events/s); fold_all alone {r['pure_s']:.1f} s; equal")
    print(machine())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="", help="an existing broker; default: a throwaway one")
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--keying", default="key,call,org", help="any of key (the default keying), call, org")
    ap.add_argument("--rebuild-events", type=int, default=1_000_000, help="0: skip the rebuild")
    args = ap.parse_args()
    on_a_broker(args.bootstrap, lambda b: asyncio.run(run(b, args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
