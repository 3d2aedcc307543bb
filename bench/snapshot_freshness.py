"""Snapshot freshness: a call settled on proxy A -> visible in proxy B's spend view, p50/p99.

Run by hand (not part of the test suite):

    python bench/snapshot_freshness.py                            # starts a throwaway broker (deploy/kafka)
    python bench/snapshot_freshness.py --bootstrap 127.0.0.1:9092 # or use a running one
    python bench/snapshot_freshness.py --events 1000 --rate 200 --partitions 8

What runs, all in this one process on one event loop: proxy A and proxy B are two ``KafkaLedger``s
(own spool dirs; B only follows the snapshot topic), and one ``LedgerWorker`` (``ledger/worker.py``)
folds ``{prefix}.usage`` into ``{prefix}.snapshots``. A submits ``--events`` usage events at
``--rate`` per second, each for its own org so each one changes its own spend keys. Per event:

- ``ack``:     A.submit -> Kafka acked it on the usage topic (``view.placed`` on A);
- ``visible``: A.submit -> B's follower applied the snapshot record of that event's org key,
  i.e. the moment B's budget checks see the call (no local count on B: it never saw the call);
- ``folded``:  A.submit -> the worker sent that snapshot record (its producer timestamp), so
  ``visible - folded`` is the worker's transaction commit plus B's fetch.

The worker commits one transaction per fetched batch, and B reads ``read_committed``, so
``visible`` = A's linger + produce ack + the worker's fetch + the transaction commit + B's fetch.
Both clients long-poll (aiokafka's ``fetch_max_wait_ms`` 500 ms) but return as soon as data arrives.
One process shares one core between A, B and the worker: read the numbers as an upper bound for
the same machine. The report records the commit and the machine.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import ConsumerRecord  # noqa: E402

from llmgw.core.events import Tokens, UsageEvent, new_event_id  # noqa: E402
from llmgw.ledger.fold import Totals, keys_of  # noqa: E402
from llmgw.ledger.kafka_ledger import KafkaLedger  # noqa: E402
from llmgw.ledger.topics import Topics, ensure_topics  # noqa: E402
from llmgw.ledger.worker import LedgerWorker  # noqa: E402


def make_event(i: int, run: str) -> UsageEvent:
    now = int(time.time() * 1000)
    return UsageEvent(event_id=new_event_id(), ts_start_ms=now, ts_end_ms=now, org=f"{run}-o{i}", workspace="w",
                      user="u", key_id=f"{run}-k{i}", provider="openai", api="chat", model_requested="m",
                      model_served="m", tokens=Tokens(input=100, output=20), cost_micro_usd=1_000 + i)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def summary(name: str, xs: list[float]) -> str:
    return (f"{name:<8} n={len(xs):<5} p50={pct(xs, 0.50):7.1f} ms  p90={pct(xs, 0.90):7.1f} ms  "
            f"p99={pct(xs, 0.99):7.1f} ms  max={max(xs):7.1f} ms  mean={statistics.fmean(xs):7.1f} ms")


def machine() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip() or "no commit"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    import aiokafka
    return (f"commit {commit}{' (+uncommitted changes)' if dirty else ''}; {socket.gethostname()}, "
            f"{os.cpu_count()} cpus, {platform.platform()}, Python {platform.python_version()}, "
            f"aiokafka {aiokafka.__version__}")


async def run(bootstrap: str, events: int, rate: float, partitions: int) -> None:
    run_id = new_event_id()[:8]
    topics = await ensure_topics(bootstrap, Topics(f"bench-{run_id}", partitions=partitions))
    data = Path(tempfile.mkdtemp(prefix="llmgw-freshness-"))
    worker = LedgerWorker(bootstrap, topics, group_id=f"{topics.prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)
    a = KafkaLedger(bootstrap, data / "a", topic_prefix=topics.prefix, follow_snapshots=False, gateway_id="a")
    b = KafkaLedger(bootstrap, data / "b", topic_prefix=topics.prefix, gateway_id="b")

    submitted: dict[str, float] = {}     # event_id -> submit time
    org_key: dict[str, str] = {}         # B's key to watch -> event_id
    acked: dict[str, float] = {}
    visible: dict[str, float] = {}

    worker_sent_ms: dict[str, int] = {}  # event_id -> the snapshot record's timestamp (worker's send time)
    submitted_wall_ms: dict[str, float] = {}
    placed, applied = a.view.placed, b.view.apply_snapshot
    assert b.follower is not None
    apply_record = b.follower._apply

    def on_record(rec: "ConsumerRecord[bytes, bytes]") -> None:
        ev = org_key.get(rec.key.decode()) if rec.key is not None else None
        if ev is not None:
            worker_sent_ms.setdefault(ev, rec.timestamp)
        apply_record(rec)

    def on_placed(event_id: str, partition: int, position: int) -> None:
        acked.setdefault(event_id, time.perf_counter())
        placed(event_id, partition, position)

    def on_applied(key: str, totals: Totals | None) -> None:
        ev = org_key.get(key)
        if ev is not None and totals is not None and totals.requests:
            visible.setdefault(ev, time.perf_counter())
        applied(key, totals)

    a.view.placed = on_placed            # type: ignore[method-assign]
    b.view.apply_snapshot = on_applied   # type: ignore[method-assign]
    b.follower._apply = on_record        # type: ignore[method-assign]

    await worker.start()
    await a.start()
    await b.start()
    try:
        t0 = time.monotonic()
        while len(worker.owned) < topics.partitions or not b.snapshot_ready:
            if time.monotonic() - t0 > 120:
                raise TimeoutError(f"worker owns {sorted(worker.owned)}, B ready: {b.snapshot_ready}")
            await asyncio.sleep(0.05)
        print(f"ready in {time.monotonic() - t0:.1f}s: worker owns {topics.partitions} partitions, B caught up")
        for i in range(20):    # warm-up: connections, producer ids, first transactions
            a.submit(make_event(i, f"{run_id}w"))
        await a.flush(30)
        await asyncio.sleep(1)

        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(events):
            ev = make_event(i, run_id)
            org_key[keys_of(ev)[0]] = ev.event_id
            submitted[ev.event_id] = time.perf_counter()
            submitted_wall_ms[ev.event_id] = time.time() * 1000
            a.submit(ev)
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))
        async with asyncio.timeout(120):
            while len(visible) < events:
                await asyncio.sleep(0.01)
    finally:
        await a.stop(5)
        await b.stop(5)
        await worker.stop()

    ack_ms = [1000 * (acked[e] - t) for e, t in submitted.items() if e in acked]
    vis_ms = [1000 * (visible[e] - t) for e, t in submitted.items() if e in visible]
    fold_ms = [worker_sent_ms[e] - t for e, t in submitted_wall_ms.items() if e in worker_sent_ms]
    print(f"\n{events} events at {rate:g}/s, {topics.partitions} partitions, one worker, proxies A and B")
    print(summary("ack", ack_ms))
    print(summary("visible", vis_ms))
    print(summary("folded", fold_ms) + "   (submit -> the worker sent the snapshot record, wall clock)")
    print(f"worker: {worker.stats.transactions} transactions, {worker.stats.events_folded} events folded")
    print(f"B follower: last record delay {b.follower.last_record_delay_ms if b.follower else -1} ms")
    print(machine())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="", help="a running broker; default: start a throwaway one")
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0, help="events per second from proxy A")
    ap.add_argument("--partitions", type=int, default=8)
    args = ap.parse_args()
    if args.bootstrap:
        asyncio.run(run(args.bootstrap, args.events, args.rate, args.partitions))
        return 0
    from tests.fixtures.kafka import KafkaBroker
    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="llmgw-bench-kafka-")))
    broker.start()
    try:
        asyncio.run(run(broker.bootstrap, args.events, args.rate, args.partitions))
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
