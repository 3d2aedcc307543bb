"""What crash-safe metering costs a call in the embedded ledger: CPU per call, begin to durable.

Run by hand (not part of the test suite):

    python bench/started_record.py --calls 20000 --batch 64

Measures, in one process, with ``time.process_time`` (this thread's CPU, so fsync's wait on the
disk is not counted; it happens in the writer's thread, off the event loop):

- ``begin``: building the call's ``CallStarted`` and queueing it (what the request path pays);
- ``write``: the writer's share per call, a group commit of ``--batch`` calls with and without
  their started records (encode, one write, one fsync per batch, the open-call bookkeeping);
- ``paced``: process CPU per call in a live ``EmbeddedLedger`` when calls are far apart (each
  begin and end ``--paced-ms`` apart), with and without started records: where a started record
  cannot share a group commit with a usage event at once (it waits up to ``started_commit_s``);
- ``durable``: wall time from ``begin`` to the end of the group commit that made it durable, in a
  live ``EmbeddedLedger`` with ``--in-flight`` calls open and one call starting and one ending every
  ``--gap-ms``: the window a kill -9 can hit.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmgw.core import events as E  # noqa: E402
from llmgw.ledger.embedded import EmbeddedLedger, EventLog  # noqa: E402
from llmgw.ledger.started import CallStarted  # noqa: E402

TAGS = ("project:apollo",)


def started(i: int, event_id: str = "") -> CallStarted:
    return CallStarted(event_id or E.new_event_id(), 1_764_000_000_000 + i, "acme", "backend", "alice", "key-1", "anthropic",
                       "messages", "claude-sonnet-4-5", 123_456, "gw-1", "claude-sonnet-4-5", TAGS, True)


def usage(s: CallStarted) -> E.UsageEvent:
    return E.UsageEvent(s.started_event_id, s.ts_ms, s.ts_ms + 900, s.org, s.workspace, s.user, s.key_id,
                        s.provider, s.api, s.model, s.model, E.Tokens(input=900, output=400), 7_000,
                        price_version="2026-01", tags=TAGS, request_id="req-1", gateway_id="gw-1", stream=True)


def cpu_us_per_call(fn, n: int) -> float:  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1e6 / n


def bench_begin(n: int) -> float:
    """The event id is not counted: a call mints it anyway (its usage event carries it)."""
    queue: asyncio.Queue[CallStarted] = asyncio.Queue()
    ids = [E.new_event_id() for _ in range(n)]
    return cpu_us_per_call(lambda: [queue.put_nowait(started(i, ids[i])) for i in range(n)], n)


def bench_write(n: int, batch: int, with_started: bool) -> float:
    calls = [started(i) for i in range(n)]
    records: list[list[object]] = []
    for k in range(0, n, batch):
        chunk = calls[k:k + batch]
        records.append([*chunk, *map(usage, chunk)] if with_started else list(map(usage, chunk)))
    with tempfile.TemporaryDirectory() as tmp:
        log = EventLog(Path(tmp) / "events.log")
        open_calls: dict[str, CallStarted] = {}

        def run() -> None:
            for recs in records:
                log.append(recs)  # type: ignore[arg-type]
                for r in recs:    # the writer's bookkeeping of open calls
                    if isinstance(r, CallStarted):
                        open_calls[r.started_event_id] = r
                    else:
                        open_calls.pop(r.event_id, None)

        us = cpu_us_per_call(run, n)
        log.close()
    return us


async def bench_paced(n: int, gap_ms: float, with_started: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = EmbeddedLedger(tmp)
        await ledger.start()
        calls = [started(i) for i in range(n)]
        t0 = time.process_time()
        for s in calls:
            if with_started:
                ledger.begin(s)
            await asyncio.sleep(gap_ms / 1000)
            ledger.submit(usage(s))
            await asyncio.sleep(gap_ms / 1000)
        await ledger.flush()
        cpu = (time.process_time() - t0) * 1e6 / n
        await ledger.stop()
    return cpu


async def bench_durable(n: int, gap_ms: float, in_flight: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        ledger = EmbeddedLedger(tmp)
        await ledger.start()
        begun: list[float] = []
        durable: list[float] = []

        async def watch() -> None:    # a record is durable once the writer's count covers it
            while len(durable) < n:
                while len(durable) < ledger.started_written:
                    durable.append(time.perf_counter())
                await asyncio.sleep(0.001)

        watcher = asyncio.get_running_loop().create_task(watch())
        calls = [started(i) for i in range(n)]
        for i in range(n):
            ledger.begin(calls[i])
            if i >= in_flight:
                ledger.submit(usage(calls[i - in_flight]))
            begun.append(time.perf_counter())
            await asyncio.sleep(gap_ms / 1000)
        await watcher
        await ledger.stop()
    return [(d - b) * 1000 for b, d in zip(begun, durable)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=64, help="calls per group commit")
    ap.add_argument("--gap-ms", default="0.5,20", help="between call starts, for the durable window")
    ap.add_argument("--in-flight", type=int, default=64)
    ap.add_argument("--durable-calls", type=int, default=1_000)
    ap.add_argument("--paced-ms", default="10,50", help="between a call's begin and end, and to the next call")
    ap.add_argument("--paced-calls", type=int, default=200)
    args = ap.parse_args()
    begin = bench_begin(args.calls)
    plain = min(bench_write(args.calls, args.batch, False) for _ in range(3))
    both = min(bench_write(args.calls, args.batch, True) for _ in range(3))
    print(f"begin (request path): {begin:.2f} us CPU per call")
    print(f"writer, usage events only: {plain:.2f} us CPU per call; with started records: {both:.2f} us "
          f"(+{both - plain:.2f} us), batches of {args.batch}")
    for paced in (float(x) for x in args.paced_ms.split(",") if x):
        plain = min(asyncio.run(bench_paced(args.paced_calls, paced, False)) for _ in range(2))
        both = min(asyncio.run(bench_paced(args.paced_calls, paced, True)) for _ in range(2))
        print(f"paced, {paced:g} ms between a call's begin, its end and the next call: usage events only "
              f"{plain:.0f} us CPU per call; with started records {both:.0f} us ({both - plain:+.0f} us)")
    for gap in (float(x) for x in args.gap_ms.split(",") if x):
        ms = sorted(asyncio.run(bench_durable(args.durable_calls, gap, args.in_flight)))
        q = statistics.quantiles(ms, n=100)
        print(f"begin -> durable (wall; {args.in_flight} calls open, one starting and one ending every {gap:g} ms): "
              f"p50 {q[49]:.2f} ms, p99 {q[98]:.2f} ms, max {ms[-1]:.2f} ms")


if __name__ == "__main__":
    main()
