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

The log only grows, with one exception: an append whose bytes reached the file
but whose fsync failed is unacknowledged, and the writer cuts it off before
retrying its records, often behind newer ones (``EventLog._cut_to``; the torn
line ``EventLog._repair`` cuts at start never ends with a newline, so no tail
read it). A tail that read the cut lines has a mark past the log's end, inside
a line, or on a line start with records before it it never read. So before each
pass the tail checks that the log still holds, just before the mark, the line
it last read there (after a restart, any line: a newline); if not, it reads
the log again from 0 and the sink drops the events it already holds.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from llmgw.analytics.sink import Sink
from llmgw.core.events import UsageEvent
from llmgw.ledger.embedded import (analytics_mark_path, is_started_line, log_path, read_lines, read_mark,
                                  save_mark)
from llmgw.ledger.started import decode_record

log = logging.getLogger("llmgw.analytics.log_tail")


class LogTail:
    """Follows one data dir's ledger log into one sink; ``catch_up`` is blocking (run it in a thread)."""

    def __init__(self, data_dir: str | Path, sink: Sink, batch_events: int = 5000) -> None:
        self.log = log_path(data_dir)
        self.mark_path = analytics_mark_path(data_dir)
        self.sink = sink
        self.batch_events = batch_events
        self.read = 0                 # usage events read and handed to the sink by this tail
        self.inserted = 0             # events sent to ClickHouse by this tail (known ones not counted)
        self.stopping = threading.Event()   # set: ``catch_up`` returns before its next insert
        self._last_line: tuple[int, bytes] | None = None   # (mark, the line just before it) once saved here

    @property
    def mark(self) -> int:
        return read_mark(self.mark_path)

    def catch_up(self) -> int:
        """Insert every usage event appended since the mark; returns how many were read."""
        if not self.log.exists():
            return 0
        start = self._start()
        batch: list[UsageEvent] = []
        first = end = start
        line = b""
        read = 0
        for pos, end, line in read_lines(self.log, start):
            if is_started_line(line):
                continue                       # a started record: the ledger's, not analytics'
            rec = decode_record(line)
            if not isinstance(rec, UsageEvent):
                continue                       # the first bytes are a shortcut; the decoded type rules
            if not batch:
                first = pos
            batch.append(rec)
            if len(batch) >= self.batch_events:
                if self.stopping.is_set():
                    return read
                self._send(batch, first, end, line)
                read += len(batch)
                batch = []
        if batch:
            if self.stopping.is_set():
                return read
            self._send(batch, first, end, line)
            read += len(batch)
        elif end > start:
            self._save_mark(end, line)         # only started records since: nothing to insert
        return read

    def _start(self) -> int:
        """The mark, or 0 (saved) if the log was cut under it since it was saved."""
        mark = self.mark
        if mark == 0:
            return 0
        expected = self._last_line[1] if self._last_line is not None and self._last_line[0] == mark else b"\n"
        with open(self.log, "rb") as f:
            f.seek(max(0, mark - len(expected)))
            if f.read(len(expected)) == expected:
                return mark
            size = f.seek(0, os.SEEK_END)
        log.warning("analytics: the ledger log %s no longer holds the line before the analytics mark %d (its "
                    "size is %d: an unacknowledged append was cut); reading it again from 0, the store drops "
                    "the events it holds", self.log, mark, size, extra={"event": "analytics_log_cut"})
        self._save_mark(0, b"")
        return 0

    def _send(self, batch: Sequence[UsageEvent], first: int, end: int, last_line: bytes) -> None:
        fd = os.open(self.log, os.O_RDONLY)
        try:
            os.fsync(fd)                       # what ClickHouse gets, the log keeps
        finally:
            os.close(fd)
        self.inserted += self.sink.insert(batch, f"embedded:{first}-{end}")
        self.read += len(batch)
        self._save_mark(end, last_line)

    def _save_mark(self, end: int, last_line: bytes) -> None:
        save_mark(self.mark_path, end)
        self._last_line = (end, last_line) if last_line else None


__all__ = ["LogTail"]
