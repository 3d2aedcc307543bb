"""A failed append to the embedded ledger's log (a disk full mid-write) is retried by the writer:
the retry must leave each event in the log once, so the fold, ClickHouse and rebuild count it once."""
from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

from llmgw.ledger.embedded import EmbeddedLedger, EventLog, log_events, log_path
from llmgw.ledger.fold import fold_all

from tests.test_embedded_fold import random_event


class DiskFull:
    """How many more writes of the log fail: each puts half its bytes on disk, then raises ENOSPC."""

    def __init__(self, fail: int) -> None:
        self.fail = fail

    def wrap(self, log: EventLog) -> None:
        """Fail ``log``'s writes, also after it reopens its file to cut a failed append back."""
        log._f = DiskFullFile(log._f, self)  # type: ignore[assignment]
        cut_to = log._cut_to

        def cut_and_wrap_again(end: int) -> None:
            cut_to(end)
            log._f = DiskFullFile(log._f, self)  # type: ignore[assignment]
        log._cut_to = cut_and_wrap_again  # type: ignore[method-assign]


class DiskFullFile:
    def __init__(self, f: Any, disk: DiskFull) -> None:
        self._f, self._disk = f, disk

    def write(self, data: bytes) -> int:
        if self._disk.fail:
            self._disk.fail -= 1
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            raise OSError(28, "No space left on device")
        n: int = self._f.write(data)
        return n

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def test_an_append_that_failed_half_way_is_cut_before_the_retry(tmp_path: Path) -> None:
    rnd = random.Random(3)
    first, batch = [random_event(rnd) for _ in range(3)], [random_event(rnd) for _ in range(5)]
    log = EventLog(tmp_path / "events.log")
    log.append(first)
    end = log.end
    disk = DiskFull(1)
    disk.wrap(log)
    try:
        log.append(batch)
    except OSError:
        pass
    else:
        raise AssertionError("the injected disk-full write did not fail")
    assert log.end == end                                   # nothing of the failed batch is acknowledged
    positions = log.append(batch)                           # the writer's retry
    assert positions[0] == end
    assert [e.event_id for e in log_events(tmp_path / "events.log")] == [e.event_id for e in first + batch]
    log.close()


async def test_the_ledger_retries_a_failed_write_and_counts_each_event_once(tmp_path: Path) -> None:
    ledger = EmbeddedLedger(tmp_path)
    await ledger.start()
    try:
        disk = DiskFull(2)
        disk.wrap(ledger.log)
        rnd = random.Random(11)
        events = [random_event(rnd) for _ in range(50)]
        for ev in events:
            ledger.submit(ev)
        await ledger.flush(timeout_s=10)
        logged = log_events(log_path(tmp_path))
        assert sorted(e.event_id for e in logged) == sorted(e.event_id for e in events)
        assert ledger.view.folded == fold_all(events)
        assert ledger.view.local_backlog == 0
        assert disk.fail == 0                               # both injected failures happened
    finally:
        await ledger.stop()


async def test_a_failure_after_the_append_never_writes_the_batch_again(tmp_path: Path) -> None:
    """The checkpoint's save fails (a full disk) after the batch's append was durable: the batch is
    not appended again (before, the writer re-queued it and the log held it twice: the fold at the
    next start charged it twice), and the next save is tried after a later batch."""
    ledger = EmbeddedLedger(tmp_path, checkpoint_every=1)
    await ledger.start()
    saves = ledger.checkpoint.save
    failed = []

    def full_disk_once(*args: Any, **kwargs: Any) -> None:
        if not failed:
            failed.append(1)
            raise OSError(28, "No space left on device")
        saves(*args, **kwargs)

    ledger.checkpoint.save = full_disk_once  # type: ignore[method-assign]
    rnd = random.Random(5)
    first, later = [random_event(rnd) for _ in range(4)], [random_event(rnd) for _ in range(3)]
    try:
        for ev in first:
            ledger.submit(ev)
        await ledger.flush(timeout_s=10)
        async with asyncio.timeout(10):                 # the save follows the fold: wait for it
            while not failed:
                await asyncio.sleep(0.01)
        for ev in later:
            ledger.submit(ev)
        await ledger.flush(timeout_s=10)
        assert ledger.view.folded == fold_all(first + later)
    finally:
        await ledger.stop()
    logged = [e.event_id for e in log_events(log_path(tmp_path))]
    assert sorted(logged) == sorted(e.event_id for e in first + later)
    again = EmbeddedLedger(tmp_path)                    # the next start folds the log from its checkpoint
    await again.start()
    try:
        assert again.view.folded == fold_all(first + later)
    finally:
        await again.stop()
