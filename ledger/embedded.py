"""The embedded ledger: one process, no broker, same fold.

Events are appended to ``<data_dir>/ledger/events.log`` (one JSON line each,
fsync'd per batch) and folded by ``ledger.fold`` only after they are durable.
A checkpoint holds the totals together with the log position they include,
written atomically, so a restart refolds exactly the lines after it: nothing
counted twice, nothing lost. The log position plays the part a Kafka offset
plays in the broker deployment (partition 0).

The log also holds each call's ``CallStarted`` record (``ledger/started.py``),
written before the call is forwarded, in the same group commit as the usage
events. The writer keeps the started records no usage event has closed yet
(the checkpoint keeps them too); on start, the ones still open belong to calls
a crash cut short, and each is charged its reservation as an ``orphaned``
usage event appended to the log before anything else is served. That event
closes the record, so a second restart charges nothing again.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Awaitable, Callable, Iterator, Sequence

import orjson

from .driver import EMBEDDED, LedgerHealth
from llmgw.core.events import UsageEvent
from llmgw.core.files import atomic_write
from .fold import Totals, TzOf, fold, keys_in, spends, utc
from .spend import SpendView
from .started import STARTED_KEY, CallStarted, Record, decode_record, decode_started, encode_record

log = logging.getLogger("llmgw.ledger")

BatchHook = Callable[[Sequence[UsageEvent], int, int], Awaitable[None]]


class EventLog:
    """Append-only JSON lines; a position is the byte offset where a line starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        self._f = open(path, "ab")
        self._durable_end = self._f.tell()
        self._torn = False        # a failed append may have left bytes past _durable_end

    def _repair(self) -> None:
        """Drop a torn last line left by a crash mid-write (it was never acknowledged)."""
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb+") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            log.warning("ledger log %s had a torn last line; truncated %d bytes", self.path, size - cut)

    def append(self, events: Sequence[Record]) -> list[int]:
        """Write and fsync; the positions returned are durable.

        A failed append (a short write, a failed fsync) is cut off before the next one: the caller
        retries the same records, and what the failed attempt left in the file must not count them
        a second time."""
        if self._torn:
            self._cut_to(self._durable_end)
        pos = self._durable_end
        out, chunks = [], []
        for ev in events:
            line = encode_record(ev) + b"\n"
            out.append(pos)
            chunks.append(line)
            pos += len(line)
        try:
            self._f.write(b"".join(chunks))
            self._f.flush()
            os.fsync(self._f.fileno())
        except BaseException:
            self._torn = True
            raise
        self._durable_end = pos
        return out

    def _cut_to(self, end: int) -> None:
        try:
            self._f.close()             # may flush what the failed append left buffered: cut below
        except OSError:
            pass
        os.truncate(self.path, end)
        self._f = open(self.path, "ab")
        self._torn = False
        log.warning("ledger log %s: cut an unacknowledged append back to %d bytes", self.path, end)

    @property
    def end(self) -> int:
        return self._durable_end

    def read_from(self, position: int) -> Iterator[tuple[int, int, UsageEvent]]:
        """(position, position after it, event) for every usage event from ``position``."""
        for pos, end, rec in self.read_records(position):
            if isinstance(rec, UsageEvent):
                yield pos, end, rec

    def read_records(self, position: int) -> Iterator[tuple[int, int, Record]]:
        """(position, position after it, record) for every complete line from ``position``:
        usage events and started records."""
        return read_records(self.path, position)

    def close(self) -> None:
        self._f.close()


def read_records(path: Path, position: int) -> Iterator[tuple[int, int, Record]]:
    """(position, position after it, record) for every complete line of the log at ``path`` from
    ``position``. A line still being written (no newline yet) ends the reading: readers in another
    process (``analytics/log_tail.py``) never see half a record."""
    for pos, end, line in read_lines(path, position):
        yield pos, end, decode_record(line)


def read_lines(path: Path, position: int) -> Iterator[tuple[int, int, bytes]]:
    """``read_records`` undecoded: (position, position after it, the line with its newline)."""
    with open(path, "rb") as f:
        f.seek(position)
        pos = position
        for line in f:
            if not line.endswith(b"\n"):
                break
            if line.strip():
                yield pos, pos + len(line), line
            pos += len(line)


_STARTED_LINE = b'{"' + STARTED_KEY.encode() + b'":'


def is_started_line(line: bytes) -> bool:
    """Whether a log line is a started record, without decoding it: ``encode_record`` writes a
    started record's ``started_event_id`` first and a usage event's ``event_id`` first. A reader
    of usage events alone (``analytics/log_tail.py``) skips half the log's lines this way."""
    return line.startswith(_STARTED_LINE)


def log_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "ledger" / "events.log"


def analytics_mark_path(data_dir: str | Path) -> Path:
    """The log position up to which every usage event is in ClickHouse (whoever inserts them)."""
    return Path(data_dir) / "ledger" / "analytics.position"


def read_mark(path: Path) -> int:
    return int(path.read_text()) if path.exists() else 0


def save_mark(path: Path, position: int) -> None:
    """Atomically (a crash leaves the old mark or the new one, never an empty file)."""
    with atomic_write(path) as f:
        f.write(str(position))


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> tuple[int, dict[str, Totals]]:
        if not self.path.exists():
            return 0, {}
        raw = orjson.loads(self.path.read_bytes())
        return int(raw["position"]), {k: Totals.from_list(v) for k, v in raw["totals"].items()}

    def open_calls(self) -> dict[str, CallStarted]:
        """Started records not closed before ``position`` (calls in flight when it was saved)."""
        if not self.path.exists():
            return {}
        started = (decode_started(r) for r in orjson.loads(self.path.read_bytes()).get("open") or ())
        return {c.started_event_id: c for c in started}

    def save(self, position: int, totals: dict[str, Totals],
             open_calls: dict[str, CallStarted] | None = None) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"position": position, "totals": {k: v.to_list() for k, v in totals.items()},
                                      "open": list((open_calls or {}).values())}))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def fold_log(log_: EventLog, start: int, totals: dict[str, Totals], tz_of: TzOf,
             open_calls: dict[str, CallStarted] | None = None) -> int:
    """Fold every event from ``start``; returns the position after the last one. ``open_calls``
    (the started records open at ``start``) gains the records started and loses those closed."""
    end = start
    calls: dict[str, CallStarted] = {} if open_calls is None else open_calls
    for _, end, rec in log_.read_records(start):
        if isinstance(rec, CallStarted):
            calls[rec.started_event_id] = rec
        else:
            calls.pop(rec.event_id, None)
            totals.update(fold(totals, rec, tz_of))
    return end


class EmbeddedLedger:
    """Durable log + in-process fold + optional analytics hook, behind ``submit``."""

    def __init__(self, data_dir: str | Path, tz_of: TzOf = utc, on_batch: BatchHook | None = None,
                 checkpoint_every: int = 20_000, analytics_interval_s: float = 1.0,
                 group_commit_s: float = 0.002, started_commit_s: float = 0.02) -> None:
        root = Path(data_dir) / "ledger"
        self.log = EventLog(log_path(data_dir))
        self.checkpoint = Checkpoint(root / "totals.json")
        self.analytics_mark = analytics_mark_path(data_dir)
        self.tz_of = tz_of
        self.view = SpendView(tz_of=tz_of)
        self.on_batch = on_batch
        self._queue: asyncio.Queue[Record] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._analytics_task: asyncio.Task[None] | None = None
        self._analytics_pending: list[UsageEvent] = []
        self._analytics_first = 0
        self._analytics_end = 0
        self._analytics_behind = False       # a batch failed; the next flush replays from the log
        self._analytics_interval_s = analytics_interval_s
        self._group_commit_s = group_commit_s
        self._started_commit_s = started_commit_s
        self._usage_arrived = asyncio.Event()
        self._since_checkpoint = 0
        self._checkpoint_every = checkpoint_every
        self.events_written = 0
        self.events_submitted = 0
        self.started_submitted = 0
        self.started_written = 0
        self.orphans_charged = 0           # at start: calls a crash cut short, charged their reservation
        self.open_calls: dict[str, CallStarted] = {}   # durable started records no usage event closed yet
        # event id -> (org tz, spend keys, the keys the view counted it in), from submit to write
        self._keys: dict[str, tuple[str, list[str], list[str]]] = {}

    async def start(self) -> None:
        position, totals = self.checkpoint.load()
        open_calls = self.checkpoint.open_calls()
        end = fold_log(self.log, position, totals, self.tz_of, open_calls)
        end = self._charge_orphans(open_calls, totals, end)
        self.view.folded = totals
        self.view.advance(0, end)
        self.checkpoint.save(end, totals)
        self._analytics_behind = not await self._catch_up_analytics()
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="llmgw-ledger-writer")
        if self.on_batch is not None:
            self._analytics_task = loop.create_task(self._analytics_loop(), name="llmgw-analytics-batcher")

    def _charge_orphans(self, open_calls: dict[str, CallStarted], totals: dict[str, Totals], end: int) -> int:
        """Charge every call started before a crash and never closed: its reservation, as an
        ``orphaned`` usage event with the call's own id, made durable before anything is served."""
        if not open_calls:
            return end
        orphans = [c.orphan_event() for c in sorted(open_calls.values(), key=lambda c: c.ts_ms)]
        self.log.append(orphans)
        for ev in orphans:
            totals.update(fold(totals, ev, self.tz_of))
        self.orphans_charged = len(orphans)
        log.warning("ledger: %d calls were in flight when the gateway last stopped without closing them; "
                    "charged their reservations (%d micro-USD) as orphaned", len(orphans),
                    sum(ev.cost_micro_usd for ev in orphans), extra={"event": "ledger_orphans_charged"})
        return self.log.end

    def submit(self, event: UsageEvent) -> None:
        """Never blocks the request: the writer task owns durability. The event's spend keys are
        computed once, here, for the view and for the fold after the write."""
        if spends(event):
            tz = self.tz_of(event.org)
            keys = keys_in(event, tz)
            self._keys[event.event_id] = (tz, keys, self.view.add_local(event, keys))
        self._queue.put_nowait(event)
        self.events_submitted += 1
        self._usage_arrived.set()

    def health(self) -> LedgerHealth:
        return LedgerHealth(EMBEDDED, snapshot_ready=True, last_snapshot_ms=None,
                            backlog_events=self.view.local_backlog)

    def begin(self, started: CallStarted) -> None:
        """Queue the call's started record for the next group commit, or within ``started_commit_s``
        if no usage event comes to share it (no wait: see docs/ledger.md, "Crash-safe metering",
        for the window this leaves and its bound)."""
        self._queue.put_nowait(started)
        self.started_submitted += 1

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Group commit: the calls ending in the next ~2 ms share one write, one fsync and one
            # hand-off to a thread (that hand-off alone cost ~5% of the proxy's CPU at 650 calls/s).
            # Budgets do not wait for it: ``submit`` already counted the event in the view.
            await asyncio.sleep(self._group_commit_s)
            self._drain(batch)
            if self._started_commit_s > self._group_commit_s and self._only_started(batch):
                # A batch of started records alone would cost a write and an fsync of its own (~0.3 ms
                # of CPU here, as much as the rest of a call): wait a little longer for a usage event
                # to share them. This widens the crash window of these records to started_commit_s.
                self._usage_arrived.clear()
                try:
                    async with asyncio.timeout(self._started_commit_s - self._group_commit_s):
                        await self._usage_arrived.wait()
                except TimeoutError:
                    pass
                self._drain(batch)
            try:
                # fsync off the event loop: the loop keeps relaying streams meanwhile
                positions = await asyncio.to_thread(self.log.append, batch)
            except Exception:   # the loop must survive; the batch is retried (the log cut the failed append)
                log.exception("ledger write failed; retrying batch of %d", len(batch))
                for ev in batch:
                    self._queue.put_nowait(ev)
                await asyncio.sleep(0.5)
                continue
            # Durable from here: whatever fails below must never append the batch again (the fold at
            # every start counts each line of the log, so a second copy is a second charge).
            try:
                await self._written(batch, positions)
            except Exception:
                log.exception("ledger: %d records are durable but what follows their write failed",
                              len(batch))

    def _drain(self, batch: list[Record]) -> None:
        while not self._queue.empty() and len(batch) < 1000:
            batch.append(self._queue.get_nowait())

    @staticmethod
    def _only_started(batch: list[Record]) -> bool:
        return all(isinstance(r, CallStarted) for r in batch)

    async def _written(self, batch: list[Record], positions: list[int]) -> None:
        """Fold a durable batch into the view, hand it to analytics, and checkpoint now and then."""
        end = self.log.end
        totals = self.view.folded
        events: list[UsageEvent] = []
        open_calls, tz_of, computed = self.open_calls, self.tz_of, self._keys
        placed: list[tuple[UsageEvent, int, int]] = []
        counted: dict[str, list[str]] = {}
        for ev, pos in zip(batch, positions):
            if isinstance(ev, CallStarted):
                open_calls[ev.started_event_id] = ev
                continue
            open_calls.pop(ev.event_id, None)
            known = computed.pop(ev.event_id, None)
            # the keys from submit, unless the org's time zone changed since
            keys = known[1] if known is not None and known[0] == tz_of(ev.org) else None
            totals.update(fold(totals, ev, tz_of, keys))
            if known is not None:
                counted[ev.event_id] = known[2]
            placed.append((ev, 0, pos))
            events.append(ev)
        # Progress first: each event placed below then leaves the view's local part at once.
        self.view.advance(0, positions[-1])
        self.view.placed_many(placed, counted)
        self.events_written += len(events)
        self.started_written += len(batch) - len(events)
        if self.on_batch is not None and events:
            if not self._analytics_pending:
                self._analytics_first = positions[0]
            self._analytics_pending.extend(events)
            self._analytics_end = end
        self._since_checkpoint += len(events)
        if self._since_checkpoint >= self._checkpoint_every:
            # a failed save (a full disk) is tried again after the next batch: the start folds the log
            # from the last checkpoint that was saved, so nothing is lost meanwhile
            await asyncio.to_thread(self.checkpoint.save, end, dict(totals), dict(open_calls))
            self._since_checkpoint = 0

    async def _analytics_loop(self) -> None:
        """ClickHouse wants few large inserts: hand it what accumulated, once a second."""
        while True:
            await asyncio.sleep(self._analytics_interval_s)
            await self._flush_analytics()

    async def _flush_analytics(self) -> None:
        if self._analytics_behind:
            # A batch failed: its events are in the log only. Replay from the mark, which never
            # passed them, so a later batch that succeeds cannot skip them (the sink drops the
            # events it already holds, including any the failed insert did write).
            self._analytics_pending = []
            self._analytics_behind = not await self._catch_up_analytics()
            return
        if not self._analytics_pending:
            return
        batch, first, end = self._analytics_pending, self._analytics_first, self._analytics_end
        self._analytics_pending = []
        self._analytics_behind = not await self._analytics(batch, first, end)

    async def _analytics(self, batch: Sequence[UsageEvent], first: int, end: int) -> bool:
        try:
            await self.on_batch(batch, first, end)  # type: ignore[misc]
        except Exception:
            log.exception("analytics insert of log positions [%d, %d) failed; replaying from %d", first, end, first)
            return False
        await asyncio.to_thread(save_mark, self.analytics_mark, end)   # off the loop
        return True

    async def _catch_up_analytics(self) -> bool:
        """Send the log from the analytics mark on; False if a batch failed (the mark stays before it).

        The mark and the log are read in a thread, a batch at a time: a catch-up after a long
        analytics outage reads a large log, and the loop serves calls meanwhile. It reads only up
        to the writer's durable end: past it may be the complete lines of an append that failed
        (its fsync, say), which the writer cuts before retrying its records, often behind newer
        ones; a mark past them would skip those newer events."""
        if self.on_batch is None:
            return True
        start = await asyncio.to_thread(read_mark, self.analytics_mark)
        while True:
            batch, first, end = await asyncio.to_thread(self._log_slice, start, 5000, self.log.end)
            if not batch:
                return True
            if not await self._analytics(batch, first, end):
                return False
            start = end

    def _log_slice(self, start: int, limit: int, durable: int) -> tuple[list[UsageEvent], int, int]:
        """Up to ``limit`` usage events from log position ``start`` on, of those before ``durable``:
        (events, first position, end)."""
        batch: list[UsageEvent] = []
        first = end = start
        for pos, line_end, ev in self.log.read_from(start):
            if line_end > durable:
                break
            end = line_end
            if not batch:
                first = pos
            batch.append(ev)
            if len(batch) >= limit:
                break
        return batch, first, end

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until everything submitted so far is durable and folded."""
        async with asyncio.timeout(timeout_s):
            while self.events_written < self.events_submitted or self.started_written < self.started_submitted:
                await asyncio.sleep(0.005)

    async def recorded(self, event_ids: set[str]) -> set[str]:
        await self.flush()
        return await asyncio.to_thread(self._recorded, event_ids)

    def _recorded(self, event_ids: set[str]) -> set[str]:
        return {ev.event_id for _, _, ev in self.log.read_from(0) if ev.event_id in event_ids}

    async def stop(self, timeout_s: float = 5.0) -> None:
        try:
            await self.flush(timeout_s)
        except TimeoutError:
            log.error("ledger stop: %d events still queued after %.1fs", self._queue.qsize(), timeout_s)
        for task in (self._task, self._analytics_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        await self._flush_analytics()
        self.checkpoint.save(self.log.end, self.view.folded, self.open_calls)
        self.log.close()


def rebuild(data_dir: str | Path, tz_of: TzOf = utc) -> dict[str, Totals]:
    """Fold the whole embedded log from the start (``llmgw ledger rebuild``)."""
    log_ = EventLog(Path(data_dir) / "ledger" / "events.log")
    try:
        totals: dict[str, Totals] = {}
        fold_log(log_, 0, totals, tz_of)
        return totals
    finally:
        log_.close()


def log_events(path: str | Path) -> list[UsageEvent]:
    """The usage events of an embedded log file (its started records left out), for tools and tests."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip() and isinstance(rec := decode_record(line), UsageEvent):
            out.append(rec)
    return out
