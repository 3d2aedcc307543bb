"""The fold's health as a gateway sees it: lag per usage partition, since when it is stuck, workers alive.

A gateway decides budgets on the snapshot the ledger workers publish. The
snapshot follower's own freshness (``SnapshotFollower.last_snapshot_ms``) only
says the gateway has read everything the workers wrote: with every worker
stopped the snapshot topic stops growing, the follower is always at its end,
and the snapshot looks fresh while the usage topic piles up unfolded. So the
gateway also compares, per usage partition, the end of the usage topic with
the fold's progress (the workers' ``__progress__|<p>`` records, already in
the view) and reports *how long the fold has not advanced while there was
something to fold*: ``behind_since_ms``, the later of the progress record's
time and the first unfolded record's time (the usage topic is stamped with
the broker's append time). A slow but live fold keeps advancing and stays
near zero; a dead one grows by a second per second. The gateway's snapshot age
is the larger of the two ages (``ledger.driver.LedgerHealth``), so readiness
and the failure policy both see a stopped worker.

Offsets past the progress are not all events: a worker's own transactions on
the usage topic (orphan charges, ticks) leave a commit marker there, and an
aborted transaction leaves records no one folds. When the fold seems stuck,
one read of the first unfolded offset tells a real backlog from those
(``read_committed`` returns no record below the end): nothing to fold is lag 0.

``workers`` is the number of members of the ledger workers' consumer group
(a worker killed -9 stays a member until its session times out, 10 s by default).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

log = logging.getLogger("llmgw.ledger.fold")

_MAX_BACKOFF_S = 5.0
_PROBE_TIMEOUT_S = 2.0
UNKNOWN = -1


class FoldWatch:
    def __init__(self, bootstrap: str, usage_topic: str, group_id: str, progress: Mapping[int, int],
                 progress_ms: Mapping[int, int], *, client_id: str = "llmgw-fold-watch",
                 interval_s: float = 1.0, retry_backoff_s: float = 0.5) -> None:
        self.bootstrap = bootstrap
        self.topic = usage_topic
        self.group_id = group_id
        self.progress = progress            # usage partition -> last offset folded (the view's)
        self.progress_ms = progress_ms      # usage partition -> time of that progress record
        self.client_id = client_id
        self.interval_s = interval_s
        self.retry_backoff_s = retry_backoff_s
        self.lag: dict[int, int] = {}               # usage partition -> offsets not folded yet
        self.behind_since: dict[int, int] = {}      # usage partition -> ms the fold is stuck since
        self.workers = UNKNOWN
        self.checked_ms = 0                         # when the lag was last measured
        self.probes = 0
        self._first: dict[int, tuple[int, int, int | None]] = {}   # p -> (next, end, first unfolded ts)

    @property
    def behind_since_ms(self) -> int:
        """Since when (ms) the fold has not advanced while there is a backlog; 0 when it keeps up."""
        return min(self.behind_since.values(), default=0)

    @property
    def lag_records(self) -> int:
        return sum(self.lag.values())

    async def run(self) -> None:
        """Measure every ``interval_s`` until cancelled; Kafka away keeps the last figures and retries."""
        backoff = self.retry_backoff_s
        while True:
            consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id=self.client_id,
                                        enable_auto_commit=False, isolation_level="read_committed",
                                        max_partition_fetch_bytes=64 * 1024)
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=self.client_id)
            try:
                await consumer.start()
                await admin.start()
                tps = await self._partitions(admin)
                consumer.assign(tps)
                consumer.pause(*tps)        # nothing is fetched but the probes
                backoff = self.retry_backoff_s
                while True:
                    await self.check(consumer, admin, tps)
                    await asyncio.sleep(self.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # top of a background loop: log, back off, reconnect
                log.warning("fold watch: %r; retrying in %.1fs", exc, backoff,
                            extra={"event": "ledger_fold_watch_error"})
            finally:
                await _close_quietly(consumer, admin)
            await asyncio.sleep(backoff)
            backoff = min(_MAX_BACKOFF_S, backoff * 2)

    async def check(self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient,
                    tps: list[TopicPartition]) -> None:
        end = await consumer.end_offsets(tps)
        now = int(time.time() * 1000)
        for tp in tps:
            await self._measure(consumer, tp, end[tp], now)
        self.checked_ms = now
        self.workers = await self._workers(admin)

    async def _measure(self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, now: int) -> None:
        p = tp.partition
        nxt = self.progress.get(p, -1) + 1
        lag = max(0, end - nxt)
        advanced = self.progress_ms.get(p, 0)
        since = 0
        if lag and now - advanced <= 2_000 + 2 * self.interval_s * 1000:
            since = advanced                      # the fold advanced just now: alive, maybe slow
        elif lag:
            known = self._first.get(p)
            if known is None or known[0] != nxt or (known[2] is None and known[1] < end):
                known = (nxt, end, await self._first_unfolded(consumer, tp, nxt, end, now))
                self._first[p] = known
            first_ts = known[2]
            if first_ts is None:                  # markers or aborted records only: nothing to fold
                lag = 0
            else:
                since = max(advanced, first_ts)
        self.lag[p] = lag
        if since:
            self.behind_since[p] = since
        else:
            self.behind_since.pop(p, None)

    async def _first_unfolded(self, consumer: AIOKafkaConsumer, tp: TopicPartition, nxt: int, end: int,
                              now: int) -> int | None:
        """Append time of the first committed record at or after ``nxt``; None when there is none below
        ``end``; ``now`` when the read did not tell within its deadline (counted as stuck from now)."""
        self.probes += 1
        consumer.seek(tp, nxt)
        consumer.resume(tp)
        try:
            deadline = asyncio.get_running_loop().time() + _PROBE_TIMEOUT_S
            while asyncio.get_running_loop().time() < deadline:
                records = (await consumer.getmany(tp, timeout_ms=200, max_records=1)).get(tp)
                if records:
                    return int(records[0].timestamp)
                if await consumer.position(tp) >= end:
                    return None
            return now
        finally:
            consumer.pause(tp)

    async def _workers(self, admin: AIOKafkaAdminClient) -> int:
        """Members of the workers' consumer group (0 when it is empty or gone)."""
        response: Any = (await admin.describe_consumer_groups([self.group_id]))[0]
        for group in response.groups:
            error_code, group_id, state, members = group[0], group[1], group[2], group[5]
            if group_id == self.group_id and error_code == 0:
                return 0 if state in ("Dead", "Empty") else len(members)
        return UNKNOWN

    async def _partitions(self, admin: AIOKafkaAdminClient) -> list[TopicPartition]:
        while True:
            meta = (await admin.describe_topics([self.topic]))[0]
            parts = sorted(p["partition"] for p in meta["partitions"])
            if meta["error_code"] == 0 and parts:
                return [TopicPartition(self.topic, p) for p in parts]
            await asyncio.sleep(self.retry_backoff_s)

    def stats(self) -> dict[str, int]:
        return {"fold_lag_records": self.lag_records, "fold_behind_since_ms": self.behind_since_ms,
                "ledger_workers": self.workers, "fold_probes": self.probes}


async def _close_quietly(consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient) -> None:
    try:
        await consumer.stop()
    except (KafkaError, OSError) as exc:
        log.warning("fold watch consumer did not close cleanly: %r", exc)
    try:
        await admin.close()
    except (KafkaError, OSError) as exc:
        log.warning("fold watch admin client did not close cleanly: %r", exc)


__all__ = ["FoldWatch", "UNKNOWN"]
