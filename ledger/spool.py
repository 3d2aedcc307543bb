"""A local durable spool for usage events Kafka did not take.

It holds a call's ``CallStarted`` records (``ledger/started.py``) too, in the
same order as the usage events: whatever goes to the usage topic.

When the broker is unreachable the Kafka ledger appends events here instead of
holding them in memory, and replays them in order once Kafka is back. Layout
under ``<data_dir>/spool/``:

- ``seg-<seq>.jsonl``: append-only segments of ``encode(event)`` lines, fsync'd
  on every ``append`` before it returns; a new segment starts when the current
  one passes ``segment_bytes``.
- ``head``: ``"<seq> <byte offset>"`` of the oldest event not yet acked by
  Kafka, replaced atomically (write, fsync, rename) on every ``ack``.
- ``lock``: an exclusive ``flock``; one process owns a spool at a time.

A segment is deleted only after every event in it was acked. A crash can leave
a torn last line (the append never returned, so nobody was told it was
durable): it is cut off on open. A crash between Kafka's ack and the ``head``
write replays those events again: Kafka then holds the same ``event_id``
twice and the fold skips the copy. No loss; duplicates only by ``event_id``.

The spool is bounded by ``max_bytes`` (all segment files together). When an
append would pass it, the spool refuses (the whole append, or with
``partial=True`` what does not fit): it logs an error and counts
``refused_events``/``refused_bytes``; it never drops anything silently. The
gateway then keeps the refused events in memory, in order, behind the spool
(``KafkaLedger.overflow_events``), keeps counting them in its local spend view
so budgets still hold, reports ``spool_full`` (readiness should fail, to take
the gateway out of rotation), moves them into the spool as replay frees room
and sends them from memory if Kafka returns first. Events held only in memory
are lost if the process dies before Kafka or the spool took them; the ledger
logs how many at stop.

An unreadable line in the middle of a segment (disk damage, not a torn write)
is logged, counted in ``corrupt_lines`` and passed over, never replayed.
"""
from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, Sequence

from .started import Record, decode_record, encode_record

log = logging.getLogger("llmgw.ledger.spool")

DEFAULT_MAX_BYTES = 256 << 20        # 256 MiB: about 380,000 events of ~700 bytes
DEFAULT_SEGMENT_BYTES = 8 << 20
_READ_CHUNK_BYTES = 1 << 20


class SpoolError(RuntimeError):
    """The spool cannot be used (locked by another process, unreadable)."""


class SpoolFull(SpoolError):
    """An append would pass ``max_bytes``; nothing of it was written."""

    def __init__(self, events: int, nbytes: int, depth_bytes: int, max_bytes: int) -> None:
        super().__init__(f"spool full: refused {events} events ({nbytes} bytes); "
                         f"{depth_bytes} of {max_bytes} bytes in use")
        self.events = events
        self.nbytes = nbytes


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int        # bytes of complete lines
    events: int      # complete lines


class Spool:
    """Append-only, fsync'd, bounded FIFO of usage events; see the module docstring."""

    def __init__(self, directory: str | Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int = DEFAULT_SEGMENT_BYTES, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.fsync = fsync
        self.refused_events = 0          # counters, for metrics
        self.refused_bytes = 0
        self.corrupt_lines = 0
        self.appended_events = 0
        self.acked_events = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / "lock", "a+b")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise SpoolError(f"spool {self.dir} is in use by another process "
                             "(two gateways must not share a data_dir)") from None
        self._segments: list[_Segment] = []
        self._head_offset = 0            # byte offset in _segments[0] of the oldest unacked event
        self._head_events = 0            # events before _head_offset in _segments[0]
        self._writer: IO[bytes] | None = None
        self._peeked: list[tuple[int, int]] = []   # (segment seq, end offset) per event of the last peek
        self._next_seq = 1
        self._open()

    # -- metrics hooks -------------------------------------------------------------
    @property
    def depth_events(self) -> int:
        """Events appended and not yet acked."""
        return sum(s.events for s in self._segments) - self._head_events

    @property
    def depth_bytes(self) -> int:
        """Bytes of events appended and not yet acked."""
        return self.file_bytes - self._head_offset

    @property
    def file_bytes(self) -> int:
        """Bytes on disk in segment files (what ``max_bytes`` bounds)."""
        return sum(s.size for s in self._segments)

    def __len__(self) -> int:
        return self.depth_events

    # -- writing --------------------------------------------------------------------
    def append(self, events: Sequence[Record], *, partial: bool = False) -> int:
        """Write ``events`` after every earlier one and fsync; returns how many were written.

        If the bound would be passed: with ``partial`` the longest prefix that fits is written and
        the rest refused, else nothing is written and ``SpoolFull`` is raised. A refusal is logged
        and counted (``refused_events`` counts refusals, so an event refused twice counts twice).
        """
        if not events:
            return 0
        lines = [encode_record(ev) + b"\n" for ev in events]
        room = self.max_bytes - self.file_bytes
        n, size = 0, 0
        while n < len(lines) and size + len(lines[n]) <= room:
            size += len(lines[n])
            n += 1
        if n < len(lines):
            refused = len(lines) - n if partial else len(lines)
            self.refused_events += refused
            self.refused_bytes += sum(len(x) for x in lines[len(lines) - refused:])
            err = SpoolFull(refused, sum(len(x) for x in lines[len(lines) - refused:]),
                            self.file_bytes, self.max_bytes)
            log.error("%s (refused so far: %d events)", err, self.refused_events)
            if not partial:
                raise err
            if n == 0:
                return 0
        data = b"".join(lines[:n])
        seg = self._writable_segment(len(data))
        f = self._writer
        assert f is not None
        try:
            f.write(data)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        except OSError:
            # a partial write must not stay in front of later appends: cut back to the last good line
            self._close_writer()
            with open(seg.path, "rb+") as g:
                g.truncate(seg.size)
            raise
        seg.size += len(data)
        seg.events += n
        self.appended_events += n
        return n

    def _writable_segment(self, incoming: int) -> _Segment:
        last = self._segments[-1] if self._segments else None
        if last is not None and self._writer is not None and (
                last.size == 0 or last.size + incoming <= self.segment_bytes):
            return last
        self._close_writer()      # after a restart we never append to an old segment
        seq = self._next_seq
        self._next_seq += 1
        path = self.dir / f"seg-{seq:020d}.jsonl"
        self._writer = open(path, "ab")
        self._fsync_dir()
        seg = _Segment(seq, path, 0, 0)
        self._segments.append(seg)
        return seg

    # -- replay -------------------------------------------------------------------------
    def peek(self, max_events: int = 500) -> list[Record]:
        """Up to ``max_events`` oldest unacked events, in append order; ``ack`` consumes them.

        An unreadable line (logged and counted) is passed over: before the first event it is
        dropped from the head at once, after an event it goes with that event's ack."""
        out: list[Record] = []
        self._peeked = []
        unreadable_head: tuple[int, int] | None = None
        for seq, end, ev in self._iter_from_head(with_unreadable=True):
            if ev is None:
                if self._peeked:
                    self._peeked[-1] = (seq, end)
                else:
                    unreadable_head = (seq, end)
                continue
            if len(out) >= max_events:
                break
            out.append(ev)
            self._peeked.append((seq, end))
        if unreadable_head is not None:
            self._move_head(*unreadable_head)
        return out

    def iter_pending(self) -> Iterator[Record]:
        """Every unacked event, in order, without consuming (used to rebuild the local view at start)."""
        for _, _, ev in self._iter_from_head():
            assert ev is not None
            yield ev

    def ack(self, count: int) -> None:
        """The first ``count`` events of the last ``peek`` are on Kafka: move the head past them,
        delete fully acked segments, persist the head."""
        if count <= 0:
            return
        if count > len(self._peeked):
            raise ValueError(f"ack({count}) but the last peek returned {len(self._peeked)} events")
        self._move_head(*self._peeked[count - 1])
        self._peeked = []   # what follows is re-read by the next peek

    def _move_head(self, seq: int, end: int) -> None:
        acked_now = 0
        while self._segments and self._segments[0].seq < seq:
            first = self._segments.pop(0)
            acked_now += first.events - self._head_events
            self._delete(first)
            self._head_offset = self._head_events = 0
        first = self._segments[0]
        before = self._head_events
        self._head_events = before + self._count_lines(first, self._head_offset, end)
        acked_now += self._head_events - before
        self._head_offset = end
        if first.size == self._head_offset:
            # fully acked: delete it, even the active one (the next append starts a new segment)
            if len(self._segments) == 1:
                self._close_writer()
            self._segments.pop(0)
            self._delete(first)
            self._head_offset = self._head_events = 0
        self.acked_events += acked_now
        self._save_head()

    def close(self) -> None:
        self._close_writer()
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    # -- internals ------------------------------------------------------------------------
    def _open(self) -> None:
        seqs = sorted(int(p.name[4:-6]) for p in self.dir.glob("seg-*.jsonl"))
        for seq in seqs:
            path = self.dir / f"seg-{seq:020d}.jsonl"
            size, events = self._repair(path)
            self._segments.append(_Segment(seq, path, size, events))
        head_seq, head_offset = self._load_head()
        self._next_seq = max(head_seq, seqs[-1] + 1 if seqs else 1)
        while self._segments and self._segments[0].seq < head_seq:
            stale = self._segments.pop(0)   # acked, deletion interrupted by a crash
            self._delete(stale)
        if self._segments and self._segments[0].seq == head_seq:
            first = self._segments[0]
            self._head_offset = min(head_offset, first.size)
            self._head_events = self._count_lines(first, 0, self._head_offset)
        if self.depth_events:
            log.warning("spool %s holds %d events (%d bytes) not yet on Kafka; they will be replayed",
                        self.dir, self.depth_events, self.depth_bytes)

    def _repair(self, path: Path) -> tuple[int, int]:
        """Cut a torn last line (a crash mid-append); returns (size, complete lines)."""
        data = path.read_bytes()
        cut = data.rfind(b"\n") + 1
        if cut != len(data):
            with open(path, "rb+") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            log.warning("spool segment %s had a torn last line; cut %d bytes (never acknowledged)",
                        path.name, len(data) - cut)
        return cut, data.count(b"\n", 0, cut)

    def _iter_from_head(self, with_unreadable: bool = False) -> Iterator[tuple[int, int, Record | None]]:
        """(segment seq, end offset of the line, event) from the head on; None for an unreadable
        line if ``with_unreadable``."""
        for i, seg in enumerate(list(self._segments)):
            start = self._head_offset if i == 0 else 0
            with open(seg.path, "rb") as f:
                f.seek(start)
                pos = start
                while pos < seg.size:
                    chunk = f.read(min(_READ_CHUNK_BYTES, seg.size - pos))
                    if not chunk:
                        break
                    last_nl = chunk.rfind(b"\n")
                    if last_nl < 0:     # one line longer than the chunk: read the rest of it
                        chunk += f.readline()
                        last_nl = len(chunk) - 1
                    else:
                        f.seek(pos + last_nl + 1)
                    for line in chunk[: last_nl + 1].splitlines(keepends=True):
                        pos += len(line)
                        ev = self._decode(seg, line)
                        if ev is not None or with_unreadable:
                            yield seg.seq, pos, ev

    def _decode(self, seg: _Segment, line: bytes) -> Record | None:
        if not line.strip():
            return None
        try:
            return decode_record(line)
        except (ValueError, TypeError, KeyError) as exc:
            self.corrupt_lines += 1
            log.error("spool segment %s: skipping an unreadable line (%s); corrupt lines so far: %d",
                      seg.path.name, exc, self.corrupt_lines)
            return None

    @staticmethod
    def _count_lines(seg: _Segment, start: int, end: int) -> int:
        if end <= start:
            return 0
        with open(seg.path, "rb") as f:
            f.seek(start)
            return f.read(end - start).count(b"\n")

    def _load_head(self) -> tuple[int, int]:
        path = self.dir / "head"
        if not path.exists():
            return 0, 0
        try:
            seq, offset = path.read_text().split()
            return int(seq), int(offset)
        except ValueError:
            log.error("spool head file %s is unreadable; replaying from the oldest segment", path)
            return 0, 0

    def _save_head(self) -> None:
        # with no segment left the head names the next one, so seq numbers never go back
        seq, offset = (self._segments[0].seq, self._head_offset) if self._segments else (self._next_seq, 0)
        tmp = self.dir / "head.tmp"
        with open(tmp, "wb") as f:
            f.write(f"{seq} {offset}\n".encode())
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "head")
        self._fsync_dir()

    @staticmethod
    def _delete(seg: _Segment) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _fsync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_SEGMENT_BYTES", "Spool", "SpoolError", "SpoolFull"]
