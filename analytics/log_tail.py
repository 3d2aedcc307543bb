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

The sink's known-id check (a query per batch) is needed only when a batch may
hold an event ClickHouse has already: an event *in doubt*. In the steady state
none is: every event before the mark was stored by an insert that returned,
and the log holds each event once (the ledger's fold, which counts each line,
relies on that too: the writer appends a batch again only when its append
failed and was cut), so the events after the mark were never sent. The tail
then inserts with ``none_stored`` (the dedup token and the ReplacingMergeTree
still hold). Events are in doubt, and their batch is checked,

- on the first pass after a start: the last process may have died in an insert
  (or the mark was moved by the in-process hook, ``EmbeddedLedger``);
- after an insert that raised (a timeout may come after the rows were stored):
  its events stay in doubt until the tail reads them again, wherever the log
  then holds them. A cut may have moved them behind newer records, or not yet
  written them again when the next pass reads;
- after a cut seen under the mark, for the rest of the process: the tail sent
  events from lines that are gone, and does not know which; the writer
  appends them again later.

The second case survives a restart: before each insert the tail writes the
batch's ids and those still in doubt to ``ledger/analytics.sending``; the next
process starts with them in doubt (the batch only if the mark is not past it).
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson

from llmgw.analytics.sink import Sink
from llmgw.core.events import UsageEvent
from llmgw.ledger.embedded import (analytics_mark_path, is_started_line, log_path, read_lines, read_mark,
                                  save_mark)
from llmgw.ledger.started import decode_record

log = logging.getLogger("llmgw.analytics.log_tail")


def sending_path(data_dir: str | Path) -> Path:
    """The ids of the tail's insert under way and of the events still in doubt (module docstring)."""
    return Path(data_dir) / "ledger" / "analytics.sending"


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
        self.sending_path = sending_path(data_dir)
        self._doubt: set[str] = set()        # ids perhaps stored, though the mark is not past them
        self._doubt_loaded = False
        self._check_all = True               # the first pass since the start: check every batch
        self._doubt_unknown = False          # a cut was seen (or the record unreadable): check every batch

    @property
    def mark(self) -> int:
        return read_mark(self.mark_path)

    def catch_up(self) -> int:
        """Insert every usage event appended since the mark; returns how many were read."""
        if not self.log.exists():
            return 0
        if not self._doubt_loaded:
            self._load_doubt()
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
        self._check_all = self._doubt_unknown  # the rest of the last process's doubt is in self._doubt
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
        self._doubt_unknown = self._check_all = True
        return 0

    def _send(self, batch: Sequence[UsageEvent], first: int, end: int, last_line: bytes) -> None:
        fd = os.open(self.log, os.O_RDONLY)
        try:
            os.fsync(fd)                       # what ClickHouse gets, the log keeps
        finally:
            os.close(fd)
        doubt = self._doubt
        ids = {e.event_id for e in batch}
        none_stored = not self._check_all and doubt.isdisjoint(ids)
        self._save_sending(end, ids, doubt)
        try:
            self.inserted += self.sink.insert(batch, f"embedded:{first}-{end}", none_stored=none_stored)
            self.read += len(batch)
            self._save_mark(end, last_line)
        except BaseException:
            doubt |= ids                       # perhaps stored: checked wherever the log holds them next
            raise
        doubt -= ids                           # stored, and the mark is past them

    def _save_sending(self, end: int, batch: set[str], doubt: set[str]) -> None:
        """Replaced whole (a fresh temp file renamed over it), not fsync'd: it must outlive this
        process, not the machine (an fsync here cost 0.9 ms of CPU per pass, a tenth of the check it
        saves). A power cut stops the writer too, and a writer that starts cuts no complete line
        (``EventLog._repair``), so no event of the batch leaves the log to come back later."""
        fd, tmp = tempfile.mkstemp(dir=self.sending_path.parent, prefix=f".{self.sending_path.name}.",
                                   suffix=".partial")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({"end": end, "batch": list(batch), "doubt": list(doubt)}))
            os.replace(tmp, self.sending_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _load_doubt(self) -> None:
        """What the last process left in doubt: its events in doubt, and the batch it was sending
        unless the mark passed it (an insert that returned)."""
        self._doubt_loaded = True
        if not self.sending_path.exists():
            return
        try:
            sending = orjson.loads(self.sending_path.read_bytes())
            doubt = {str(i) for i in sending["doubt"]}
            if self.mark < int(sending["end"]):
                doubt.update(str(i) for i in sending["batch"])
        except (ValueError, KeyError, TypeError):
            log.warning("analytics: %s is unreadable; every batch is checked for stored events until "
                        "the next start", self.sending_path, extra={"event": "analytics_sending_unreadable"})
            self._doubt_unknown = True
            return
        self._doubt = doubt

    def _save_mark(self, end: int, last_line: bytes) -> None:
        save_mark(self.mark_path, end)
        self._last_line = (end, last_line) if last_line else None


__all__ = ["LogTail"]
