"""The embedded ledger's log into ClickHouse, exactly once, from another process.

The gateway appends every usage event to ``<data_dir>/ledger/events.log``
(``ledger/embedded.py``); the analytics process (``analytics/process.py``)
follows that file with a ``LogTail``. Why a separate reader instead of a hook
in the writer: the inserts (chDB in process, ~10% of the gateway's CPU at load)
and their threads then share nothing with the serving event loop.

Exactly once, across a crash of either process at any point:

- only complete lines are read (the writer's torn last line is never seen);
  before a batch is inserted the log is fsync'd, so an event in ClickHouse is
  one the log keeps even through a power cut;
- the mark (``ledger/analytics.position``: the log position up to which every
  usage event is stored) moves only after the batch's insert returned, and is
  replaced atomically;
- a crash between an insert and its mark replays that batch on restart, cut
  perhaps differently: the sink drops the events ClickHouse already holds
  (``Sink.insert``: dedup token, known-id filter, ReplacingMergeTree).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from llmgw.analytics.sink import Sink
from llmgw.core.events import UsageEvent
from llmgw.ledger.embedded import analytics_mark_path, log_path, read_mark, read_records, save_mark


class LogTail:
    """Follows one data dir's ledger log into one sink; ``catch_up`` is blocking (run it in a thread)."""

    def __init__(self, data_dir: str | Path, sink: Sink, batch_events: int = 5000) -> None:
        self.log = log_path(data_dir)
        self.mark_path = analytics_mark_path(data_dir)
        self.sink = sink
        self.batch_events = batch_events
        self.inserted = 0             # events sent to ClickHouse by this tail (known ones not counted)

    @property
    def mark(self) -> int:
        return read_mark(self.mark_path)

    def catch_up(self) -> int:
        """Insert every usage event appended since the mark; returns how many were read."""
        if not self.log.exists():
            return 0
        start = self.mark
        batch: list[UsageEvent] = []
        first = end = start
        read = 0
        for pos, end, rec in read_records(self.log, start):
            if not isinstance(rec, UsageEvent):
                continue                       # a started record: the ledger's, not analytics'
            if not batch:
                first = pos
            batch.append(rec)
            if len(batch) >= self.batch_events:
                self._send(batch, first, end)
                read += len(batch)
                batch = []
        if batch:
            self._send(batch, first, end)
            read += len(batch)
        elif end > self.mark:
            save_mark(self.mark_path, end)     # only started records since: nothing to insert
        return read

    def _send(self, batch: Sequence[UsageEvent], first: int, end: int) -> None:
        fd = os.open(self.log, os.O_RDONLY)
        try:
            os.fsync(fd)                       # what ClickHouse gets, the log keeps
        finally:
            os.close(fd)
        self.inserted += self.sink.insert(batch, f"embedded:{first}-{end}")
        save_mark(self.mark_path, end)


__all__ = ["LogTail"]
