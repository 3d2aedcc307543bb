"""Spool replay after a Kafka outage: how fast a gateway empties its spool, and what the outage cost it.

Run by hand (not part of the test suite):

    python bench/spool_replay.py                              # 10 min at 500 calls/s, throwaway broker
    python bench/spool_replay.py --bootstrap 127.0.0.1:9092 --outage-s 600 --rate 500 --users 2000

The outage is simulated by volume, not by waiting: a ``KafkaLedger`` whose broker address answers
nothing (port 9) is given ``rate x outage_s`` usage events as fast as it takes them (users of 50
orgs, one call each in turn, timestamps spread over the outage's ``outage_s`` as a real outage would
leave them); its sender writes them to the on-disk spool, as it does when Kafka stops answering.
Then the ledger is pointed at the live broker (as a broker coming back) and the spool replays.

Printed: the spool's size; the gateway's memory during the outage (RSS before and after the calls,
and the local view's per-key entries: the events themselves are only on disk); the replay rate
(events acknowledged by Kafka per second, until the spool is empty); and, with ``--fold`` (default),
how long one ledger worker process (``python -m llmgw.ledger.worker``) then needs to fold the backlog
and the proxy's own view to drop it (``local_backlog`` 0: every replayed event left the local sums
once the snapshot passed it).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmgw.core.events import Tokens, UsageEvent, new_event_id  # noqa: E402
from llmgw.ledger.kafka_ledger import KafkaLedger  # noqa: E402
from llmgw.ledger.topics import Topics, ensure_topics  # noqa: E402

from bench.snapshot_freshness import machine, on_a_broker  # noqa: E402

DEAD = "127.0.0.1:9"


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def outage_event(i: int, n: int, users: int, t0_ms: int, outage_ms: int) -> UsageEvent:
    ts = t0_ms + i * outage_ms // max(1, n)
    u = i % users
    return UsageEvent(event_id=new_event_id(), ts_start_ms=ts, ts_end_ms=ts + 800, org=f"org{u % 50}",
                      workspace=f"ws{u % 7}", user=f"user{u}", key_id=f"key{u % 300}", provider="openai",
                      api="chat", model_requested="gpt-4o", model_served="gpt-4o",
                      tokens=Tokens(input=1_200, output=300), cost_micro_usd=1_000 + i % 5_000,
                      tags=("project:p1",) if i % 3 == 0 else ())


async def run(bootstrap: str, outage_s: float, rate: float, users: int, partitions: int, fold: bool) -> None:
    topics = await ensure_topics(bootstrap, Topics(f"bench-spool-{new_event_id()[:8]}", partitions=partitions))
    data = Path(tempfile.mkdtemp(prefix="llmgw-spool-bench-"))
    n = int(outage_s * rate)
    ledger = KafkaLedger(DEAD, data, topic_prefix=topics.prefix, follow_snapshots=fold, gateway_id="bench",
                         connect_timeout_s=1.0, retry_backoff_s=0.25, spool_max_bytes=2 << 30)
    ledger.create_topics = False
    await ledger.start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        rss0 = rss_mb()
        t0_ms = int(time.time() * 1000) - int(outage_s * 1000)
        t_sub = time.monotonic()
        for i in range(n):
            ledger.submit(outage_event(i, n, users, t0_ms, int(outage_s * 1000)))
            if i % 1_000 == 999:
                # calls come at `rate`, far below what the spool takes (~20,000/s here): a live gateway's
                # sender has spooled each chunk before the next, so wait for that instead of the clock
                while ledger.spool_depth_events <= i:
                    await asyncio.sleep(0.001)
        while ledger.spool_depth_events < n:
            await asyncio.sleep(0.05)
        spool_s = time.monotonic() - t_sub
        rss1 = rss_mb()
        spool_bytes = ledger.spool_depth_bytes
        local = getattr(ledger.view, "local", None)      # absent before the per-key sums (a baseline run)
        entries, backlog = (local.entries if local is not None else "n/a"), ledger.view.local_backlog
        print(f"outage of {outage_s:g}s at {rate:g} calls/s simulated by volume: {n} events, {users} users "
              f"of 50 orgs; spooled in {spool_s:.1f}s ({n / spool_s:,.0f}/s)")
        print(f"spool: {spool_bytes / 2**20:.1f} MiB ({spool_bytes / n:.0f} B/event); gateway RSS "
              f"{rss0:.1f} -> {rss1:.1f} MiB during the outage ({(rss1 - rss0) * 2**20 / n:.0f} B/event); "
              f"local view: {entries} per-key entries for {backlog} events not yet in the snapshot")

        if fold:
            worker = subprocess.Popen([sys.executable, "-m", "llmgw.ledger.worker", "--bootstrap", bootstrap,
                                       "--prefix", topics.prefix, "--partitions", str(partitions),
                                       "--log-level", "WARNING"])
        ledger.bootstrap = bootstrap               # Kafka is back (for the follower and fold watch too)
        if ledger.follower is not None:
            ledger.follower.bootstrap = bootstrap
        if ledger.fold_watch is not None:
            ledger.fold_watch.bootstrap = bootstrap
        ledger._next_connect_at = 0.0
        t_back = time.monotonic()
        t_first = None
        while ledger.spool_depth_events or ledger.backlog_events:
            if t_first is None and ledger.events_acked:
                t_first = time.monotonic()
            await asyncio.sleep(0.02)
        t_done = time.monotonic()
        t_first = t_first or t_done
        print(f"replay: {n} events on Kafka {t_done - t_back:.1f}s after it came back (the sender's reconnect "
              f"backoff took {t_first - t_back:.1f}s of that); from the first ack to the last: "
              f"{n / max(1e-3, t_done - t_first):,.0f} events/s (gateway RSS {rss_mb():.1f} MiB; "
              f"{ledger.events_replayed} replayed, {ledger.events_acked} acked)")
        if fold:
            peak_entries = 0
            while ledger.view.local_backlog:
                peak_entries = max(peak_entries, ledger.view.local.entries)
                await asyncio.sleep(0.05)
            fold_s = time.monotonic() - t_back
            print(f"folded: the worker's snapshot passed every replayed event {fold_s:.1f}s after Kafka came back "
                  f"({n / fold_s:,.0f} events/s end to end); the proxy's local view then held "
                  f"{ledger.view.local.entries} entries (peak {peak_entries} while the fold caught up)")
    finally:
        await ledger.stop(5)
        if worker is not None:
            worker.terminate()
            worker.wait(30)
    print(machine())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", default="", help="a running broker; default: start a throwaway one")
    ap.add_argument("--outage-s", type=float, default=600.0)
    ap.add_argument("--rate", type=float, default=500.0, help="calls per second during the outage")
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--no-fold", action="store_true", help="measure the replay only (no worker)")
    args = ap.parse_args()
    on_a_broker(args.bootstrap, lambda b: asyncio.run(run(b, args.outage_s, args.rate, args.users,
                                                          args.partitions, not args.no_fold)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
