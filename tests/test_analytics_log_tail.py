"""The analytics process's tail of the embedded ledger's log (``analytics/log_tail.py``).

The tail reads every complete line, and a complete line is not always one the ledger keeps: an
append whose write reached the file but whose fsync failed is unacknowledged, and the writer cuts
it off before its retry (``EventLog._cut_to``). The retry holds the same records, usually behind
newer ones (``EmbeddedLedger._run`` re-queues a failed batch after what arrived meanwhile), so the
tail's mark can end up past the log's end, in the middle of a line, or on a line start with a
record before it the tail never read. Every case must still store every event exactly once.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from llmgw.analytics.log_tail import LogTail
from llmgw.analytics.sink import Sink
from llmgw.core.events import UsageEvent
from llmgw.ledger.embedded import EmbeddedLedger, EventLog, is_started_line, log_path, read_mark
from llmgw.ledger.started import CallStarted, decode_record, encode_record
from tests.fixtures.chdb import AnalyticsDB, usage_event


class FsyncFails:
    """The log's file with its fsync failing once: every byte written reaches the file, unacknowledged."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def fileno(self) -> int:
        raise OSError(5, "Input/output error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def append_unacknowledged(log: EventLog, events: list[UsageEvent]) -> None:
    log._f = FsyncFails(log._f)  # type: ignore[assignment]
    with pytest.raises(OSError):
        log.append(events)


class StoresThenTimesOut(Sink):
    """A store whose next insert (when ``fail_next``) stores its rows and then raises, as a timeout
    after ClickHouse's success does; it counts its known-id checks."""

    def __init__(self, db: AnalyticsDB) -> None:
        super().__init__(db.client, db.database)
        self.fail_next = False
        self.checks = 0

    def insert(self, events: Sequence[UsageEvent], dedup_token: str | None = None, *,
               none_stored: bool = False) -> int:
        sent = super().insert(events, dedup_token, none_stored=none_stored)
        if self.fail_next:
            self.fail_next = False
            raise TimeoutError("the insert timed out after ClickHouse stored its rows")
        return sent

    def _known_ids(self, chunk: Sequence[UsageEvent]) -> set[str]:
        self.checks += 1
        return super()._known_ids(chunk)


def stored(db: AnalyticsDB) -> tuple[list[str], int]:
    """(event ids, one per row, sorted; requests the daily rollup counted)."""
    ids = [r[0] for r in db.client.query(f"SELECT event_id FROM {db.database}.usage_events ORDER BY event_id"
                                         ).result_rows]
    requests = db.client.query(f"SELECT sum(requests) FROM {db.database}.usage_by_day").result_rows[0][0]
    return ids, int(requests)


@pytest.mark.parametrize(("retry", "restarted"), [
    ("nothing yet", False), ("nothing yet", True), ("a longer record first", False),
    ("a longer record first", True), ("a record of the same length first", False)])
def test_a_cut_under_the_mark_is_noticed_and_every_event_is_stored_once(
        tmp_path: Path, analytics_db: AnalyticsDB, retry: str, restarted: bool) -> None:
    """``restarted``: the analytics process restarts after the cut, and has only the mark to check.
    (A restarted tail cannot tell a retry of the same length apart: that case needs the line it read.)"""
    kept = [usage_event(n) for n in range(3)]
    lost_append = [usage_event(3)]
    newer = usage_event(10 if retry == "a longer record first" else 4)
    assert (len(encode_record(newer)) == len(encode_record(lost_append[0]))) == (retry != "a longer record first")
    log = EventLog(log_path(tmp_path))
    tail = LogTail(tmp_path, analytics_db.sink, batch_events=2)
    log.append(kept)
    append_unacknowledged(log, lost_append)
    assert tail.catch_up() == 4                      # the tail read the append the ledger is about to cut
    assert tail.mark == log_path(tmp_path).stat().st_size > log.end
    if restarted:
        tail = LogTail(tmp_path, analytics_db.sink, batch_events=2)
    if retry == "nothing yet":
        log.append([])                               # the cut alone: the mark is past the log's end
        assert tail.catch_up() == 3
        log.append(lost_append)
    else:
        log.append([newer] + lost_append)            # the retry, behind an event that arrived meanwhile
    tail.catch_up()
    later = usage_event(20)
    log.append([later])
    tail.catch_up()
    log.close()
    everything = kept + lost_append + [later] + ([] if retry == "nothing yet" else [newer])
    assert stored(analytics_db) == (sorted(e.event_id for e in everything), len(everything))
    assert tail.mark == log.end


def test_started_records_are_told_by_their_first_bytes_and_never_become_rows(
        tmp_path: Path, analytics_db: AnalyticsDB) -> None:
    events = [usage_event(n) for n in range(3)]
    started = [CallStarted(e.event_id, e.ts_start_ms, e.org, e.workspace, e.user, e.key_id, e.provider, e.api,
                           e.model_served, 5_000, model_requested=e.model_requested, tags=e.tags, stream=True)
               for e in events + [usage_event(9)]]                      # the last call is still open
    log = EventLog(log_path(tmp_path))
    log.append([started[0], started[1], events[0], started[2], events[1], events[2], started[3]])
    log.close()
    lines = log_path(tmp_path).read_bytes().splitlines(keepends=True)
    told = [is_started_line(line) for line in lines]
    assert told == [isinstance(decode_record(line), CallStarted) for line in lines]
    assert told == [True, True, False, True, False, False, True]
    tail = LogTail(tmp_path, analytics_db.sink)
    assert tail.catch_up() == 3
    assert stored(analytics_db) == (sorted(e.event_id for e in events), 3)
    assert tail.mark == log.end                                         # past the last started record too


async def test_the_in_process_catch_up_reads_only_what_the_ledger_acknowledged(tmp_path: Path) -> None:
    """``EmbeddedLedger._catch_up_analytics`` (analytics in the gateway's process) runs beside the
    writer: it must not read, and mark, lines of an append the writer is about to cut."""
    sent: list[UsageEvent] = []

    async def on_batch(events: Sequence[UsageEvent], first: int, end: int) -> None:
        sent.extend(events)

    ledger = EmbeddedLedger(tmp_path, on_batch=on_batch)   # not started: the test is the writer
    kept, lost_append, newer = [usage_event(n) for n in range(3)], [usage_event(3)], usage_event(10)
    await asyncio.to_thread(ledger.log.append, kept)
    await asyncio.to_thread(append_unacknowledged, ledger.log, lost_append)
    assert await ledger._catch_up_analytics()
    assert await asyncio.to_thread(read_mark, ledger.analytics_mark) == ledger.log.end
    await asyncio.to_thread(ledger.log.append, [newer] + lost_append)     # the writer's retry
    assert await ledger._catch_up_analytics()
    ledger.log.close()
    assert {e.event_id for e in sent} == {e.event_id for e in kept + lost_append + [newer]}
    assert await asyncio.to_thread(read_mark, ledger.analytics_mark) == ledger.log.end


def test_in_the_steady_state_the_tail_inserts_without_asking_the_store_what_it_holds(
        tmp_path: Path, analytics_db: AnalyticsDB) -> None:
    """The known-id check runs on the first pass after a start only; then every event after the mark
    is one no insert of this tail has sent."""
    events = [usage_event(n) for n in range(5)]
    sink = StoresThenTimesOut(analytics_db)
    log = EventLog(log_path(tmp_path))
    log.append([events[0]])
    tail = LogTail(tmp_path, sink)
    assert tail.catch_up() == 1 and sink.checks == 1
    for n in range(1, 4):
        log.append([events[n]])
        assert tail.catch_up() == 1
    assert sink.checks == 1
    log.append([events[4]])
    tail = LogTail(tmp_path, sink)                   # a restart: the last process may have died in an insert
    assert tail.catch_up() == 1 and sink.checks == 2
    log.close()
    assert stored(analytics_db) == (sorted(e.event_id for e in events), 5)


@pytest.mark.parametrize("restarted", [False, True])
def test_events_of_an_insert_that_raised_are_checked_on_the_next_pass_wherever_the_log_holds_them(
        tmp_path: Path, analytics_db: AnalyticsDB, restarted: bool) -> None:
    """The insert stored its rows, then raised (a timeout). The next pass reads them again, cut
    differently (more events appended meanwhile), so the dedup token differs: only the check drops
    them. ``restarted``: the process died instead of retrying; the next one knows from the file
    the tail wrote before sending."""
    events = [usage_event(n) for n in range(5)]
    sink = StoresThenTimesOut(analytics_db)
    log = EventLog(log_path(tmp_path))
    tail = LogTail(tmp_path, sink)
    log.append([events[0]])
    tail.catch_up()                                  # the first pass after the start: now the steady state
    log.append([events[1], events[2]])
    sink.fail_next = True
    with pytest.raises(TimeoutError):
        tail.catch_up()
    log.append([events[3]])
    if restarted:
        tail = LogTail(tmp_path, sink)
    assert tail.catch_up() == 3
    log.append([events[4]])
    tail.catch_up()
    log.close()
    assert stored(analytics_db) == (sorted(e.event_id for e in events), 5)


@pytest.mark.parametrize("restarted", [False, True])
def test_events_of_an_insert_that_raised_stay_in_doubt_while_a_cut_took_them_out_of_the_log(
        tmp_path: Path, analytics_db: AnalyticsDB, restarted: bool) -> None:
    """The insert that raised had sent the lines of an unacknowledged append; the writer cuts them
    (the mark is before them: no cut is seen) and appends them again only after the next pass, behind
    a newer event. ``restarted``: the process died in the insert and the next one starts in between."""
    events = [usage_event(n) for n in range(5)]
    sink = StoresThenTimesOut(analytics_db)
    log = EventLog(log_path(tmp_path))
    tail = LogTail(tmp_path, sink)
    log.append([events[0]])
    tail.catch_up()
    lost_append = events[1:3]
    append_unacknowledged(log, lost_append)
    sink.fail_next = True
    with pytest.raises(TimeoutError):
        tail.catch_up()                              # stored, unmarked
    log.append([])                                   # the writer's cut, before its retry
    if restarted:
        tail = LogTail(tmp_path, sink)
    assert tail.catch_up() == 0
    log.append([events[3]] + lost_append)       # the retry, behind an event that arrived meanwhile
    assert tail.catch_up() == 3
    log.close()
    assert stored(analytics_db) == (sorted(e.event_id for e in events[:4]), 4)


def test_an_unreadable_sending_record_leaves_every_batch_checked_and_nothing_lost(
        tmp_path: Path, analytics_db: AnalyticsDB, caplog: pytest.LogCaptureFixture) -> None:
    """The record names what the last process may have stored; without it the tail cannot tell."""
    events = [usage_event(n) for n in range(3)]
    sink = StoresThenTimesOut(analytics_db)
    log = EventLog(log_path(tmp_path))
    tail = LogTail(tmp_path, sink)
    log.append(events[:1])
    tail.catch_up()
    tail.sending_path.write_bytes(b'{"end": 1, "batch": ["torn')
    tail = LogTail(tmp_path, sink)
    checks = sink.checks
    for event in events[1:]:
        log.append([event])
        assert tail.catch_up() == 1
    assert sink.checks == checks + 2
    assert "unreadable" in caplog.text
    log.close()
    assert stored(analytics_db) == (sorted(e.event_id for e in events), 3)
