"""Snapshot freshness: a call settled on proxy A -> visible in proxy B's spend view, p50/p99.

Run by hand (not part of the test suite):

    python bench/snapshot_freshness.py                            # starts a throwaway broker (deploy/kafka)
    python bench/snapshot_freshness.py --bootstrap 127.0.0.1:9092 # or use a running one
    python bench/snapshot_freshness.py --events 1000 --rate 200 --partitions 8
    python bench/snapshot_freshness.py --load-rate 5000 --worker-process --events 1500 --rate 50

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

Under load (``--load-rate R``): a second process (this script with ``--load-only``) is a busy gateway,
a ``KafkaLedger`` submitting R events/s for ``--load-orgs`` orgs (20 users each, so the fold updates
existing keys as in production) for as long as the probes run; A's ``--events`` at ``--rate`` are
then probes through the same topic, and their ``visible`` is the freshness a gateway sees while the
worker folds R events/s. ``--worker-process`` runs the worker as its own process
(``python -m llmgw.ledger.worker``), as deployed, instead of on this process's loop.
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
from typing import Callable, Iterable

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
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit}"
            f"{' (+uncommitted changes)' if dirty else ''}; {socket.gethostname()}, "
            f"{os.cpu_count()} cpus, load average {load} (1/5/15 min), {platform.platform()}, "
            f"Python {platform.python_version()}, aiokafka {aiokafka.__version__}")


def load_event(i: int, run: str, orgs: int) -> UsageEvent:
    now = int(time.time() * 1000)
    return UsageEvent(event_id=new_event_id(), ts_start_ms=now, ts_end_ms=now, org=f"{run}-L{i % orgs}",
                      workspace="w", user=f"u{i % (orgs * 20)}", key_id=f"{run}-Lk{i % orgs}", provider="openai",
                      api="chat", model_requested="m", model_served="m", tokens=Tokens(input=300, output=80),
                      cost_micro_usd=1_000 + i % 977)


async def load_only(bootstrap: str, prefix: str, rate: float, seconds: float, orgs: int) -> None:
    """``--load-only``: a busy gateway submitting ``rate`` events/s for ``seconds``."""
    data = Path(tempfile.mkdtemp(prefix="llmgw-freshness-load-"))
    ledger = KafkaLedger(bootstrap, data, topic_prefix=prefix, follow_snapshots=False, gateway_id="load",
                         create_topics=False)
    await ledger.start()
    loop = asyncio.get_running_loop()
    try:
        start, i, n = loop.time(), 0, int(rate * seconds)
        while i < n:
            due = min(n, int((loop.time() - start) * rate) + 1)
            while i < due:
                ledger.submit(load_event(i, prefix, orgs))
                i += 1
            await asyncio.sleep(0.005)
        took = loop.time() - start
        await ledger.flush(120)
        print(f"LOAD {n} events in {took:.1f}s ({n / took:,.0f}/s submitted), all acked "
              f"{loop.time() - start:.1f}s after the first", flush=True)
    finally:
        await ledger.stop(5)


async def run(bootstrap: str, events: int, rate: float, partitions: int, load_rate: float = 0.0,
              load_orgs: int = 1_000, worker_process: bool = False) -> None:
    run_id = new_event_id()[:8]
    topics = await ensure_topics(bootstrap, Topics(f"bench-{run_id}", partitions=partitions))
    data = Path(tempfile.mkdtemp(prefix="llmgw-freshness-"))
    worker = LedgerWorker(bootstrap, topics, group_id=f"{topics.prefix}-ledger", session_timeout_ms=6_000,
                          heartbeat_interval_ms=1_000)
    worker_proc: subprocess.Popen[bytes] | None = None
    load_proc: subprocess.Popen[str] | None = None
    a = KafkaLedger(bootstrap, data / "a", topic_prefix=topics.prefix, follow_snapshots=False, gateway_id="a")
    b = KafkaLedger(bootstrap, data / "b", topic_prefix=topics.prefix, gateway_id="b")

    submitted: dict[str, float] = {}     # event_id -> submit time
    org_key: dict[str, str] = {}         # B's key to watch -> event_id
    acked: dict[str, float] = {}
    visible: dict[str, float] = {}

    worker_sent_ms: dict[str, int] = {}  # event_id -> the snapshot record's timestamp (worker's send time)
    submitted_wall_ms: dict[str, float] = {}
    placed, applied = a.view.placed_many, b.view.apply_snapshot
    assert b.follower is not None
    apply_record = b.follower._apply

    def on_record(rec: "ConsumerRecord[bytes, bytes]") -> None:
        ev = org_key.get(rec.key.decode()) if rec.key is not None else None
        if ev is not None:
            worker_sent_ms.setdefault(ev, rec.timestamp)
        apply_record(rec)

    def on_placed(placements: Iterable[tuple[UsageEvent, int, int]]) -> None:
        now, placements = time.perf_counter(), list(placements)
        for ev, _, _ in placements:
            acked.setdefault(ev.event_id, now)
        placed(placements)

    def on_applied(key: str, totals: Totals | None, partition: int = 0) -> None:
        ev = org_key.get(key)
        if ev is not None and totals is not None and totals.requests:
            visible.setdefault(ev, time.perf_counter())
        applied(key, totals, partition)

    a.view.placed_many = on_placed       # type: ignore[method-assign]
    b.view.apply_snapshot = on_applied   # type: ignore[method-assign]
    b.follower._apply = on_record        # type: ignore[method-assign]

    if worker_process:
        worker_proc = subprocess.Popen([sys.executable, "-m", "llmgw.ledger.worker", "--bootstrap", bootstrap,
                                        "--prefix", topics.prefix, "--partitions", str(partitions),
                                        "--log-level", "WARNING"])
    else:
        await worker.start()
    await a.start()
    await b.start()
    try:
        t0 = time.monotonic()
        warm = [make_event(i, f"{run_id}w") for i in range(20)]
        for ev in warm:        # warm-up: connections, producer ids, first transactions
            a.submit(ev)
        await a.flush(30)
        while not b.snapshot_ready or any(keys_of(ev)[0] not in b.view.folded for ev in warm):
            if time.monotonic() - t0 > 120:
                raise TimeoutError(f"worker owns {sorted(worker.owned)}, B ready: {b.snapshot_ready}")
            await asyncio.sleep(0.05)
        print(f"ready in {time.monotonic() - t0:.1f}s: the worker folds every partition, B caught up")
        await asyncio.sleep(1)
        if load_rate:
            load_proc = subprocess.Popen(
                [sys.executable, __file__, "--load-only", "--bootstrap", bootstrap, "--prefix", topics.prefix,
                 "--rate", str(load_rate), "--seconds", str(events / rate + 5), "--load-orgs", str(load_orgs)],
                stdout=subprocess.PIPE, text=True)
            await asyncio.sleep(5)     # the load runs at its rate before the first probe

        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(events):
            ev = make_event(i, run_id)
            org_key[keys_of(ev)[0]] = ev.event_id
            submitted[ev.event_id] = time.perf_counter()
            submitted_wall_ms[ev.event_id] = time.time() * 1000
            a.submit(ev)
            await asyncio.sleep(max(0.0, start + (i + 1) / rate - loop.time()))
        async with asyncio.timeout(300):
            while len(visible) < events:
                await asyncio.sleep(0.01)
    finally:
        await a.stop(5)
        await b.stop(5)
        if worker_proc is not None:
            worker_proc.terminate()
            worker_proc.wait(30)
        else:
            await worker.stop()
        load_report = ""
        if load_proc is not None:
            load_report = await asyncio.to_thread(load_proc.communicate, None, 300)
            load_report = next((x for x in (load_report[0] or "").splitlines() if x.startswith("LOAD")), "no report")

    ack_ms = [1000 * (acked[e] - t) for e, t in submitted.items() if e in acked]
    vis_ms = [1000 * (visible[e] - t) for e, t in submitted.items() if e in visible]
    fold_ms = [worker_sent_ms[e] - t for e, t in submitted_wall_ms.items() if e in worker_sent_ms]
    print(f"\n{events} events at {rate:g}/s, {topics.partitions} partitions, one worker"
          f"{' process' if worker_process else ' (in this process)'}, proxies A and B")
    if load_rate:
        print(f"under load: {load_rate:g} events/s from another gateway process over {load_orgs} orgs: {load_report}")
    print(summary("ack", ack_ms))
    print(summary("visible", vis_ms))
    print(summary("folded", fold_ms) + "   (submit -> the worker sent the snapshot record, wall clock)")
    if not worker_process:
        print(f"worker: {worker.stats.transactions} transactions, {worker.stats.events_folded} events folded")
    print(f"B follower: last record delay {b.follower.last_record_delay_ms if b.follower else -1} ms")
    print(machine())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="", help="a running broker; default: start a throwaway one")
    ap.add_argument("--events", type=int, default=500)
    ap.add_argument("--rate", type=float, default=100.0, help="events per second from proxy A")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--load-rate", type=float, default=0.0, help="events/s from a second gateway process")
    ap.add_argument("--load-orgs", type=int, default=1_000)
    ap.add_argument("--worker-process", action="store_true", help="run the worker as its own process")
    ap.add_argument("--load-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=30.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.load_only:
        asyncio.run(load_only(args.bootstrap, args.prefix, args.rate, args.seconds, args.load_orgs))
        return 0
    on_a_broker(args.bootstrap, lambda b: asyncio.run(run(b, args.events, args.rate, args.partitions,
                                                          args.load_rate, args.load_orgs, args.worker_process)))
    return 0


def on_a_broker(bootstrap: str, go: Callable[[str], object]) -> None:
    """Run ``go`` on the broker at ``bootstrap``, or on a throwaway one (deploy/kafka/kafka.sh's jars)."""
    if bootstrap:
        go(bootstrap)
        return
    from tests.fixtures.kafka import KafkaBroker
    broker = KafkaBroker(Path(tempfile.mkdtemp(prefix="llmgw-bench-kafka-")))
    broker.start()
    try:
        go(broker.bootstrap)
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
