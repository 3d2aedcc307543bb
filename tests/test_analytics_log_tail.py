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
