"""The local spool: order, crash safety, the bound, replay then delete."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llmgw.core.events import Tokens, UsageEvent, encode, new_event_id
from llmgw.ledger.spool import Spool, SpoolError, SpoolFull


def event(i: int, org: str = "acme") -> UsageEvent:
    return UsageEvent(event_id=new_event_id(), ts_start_ms=1_764_000_000_000 + i, ts_end_ms=1_764_000_000_100 + i,
                      org=org, workspace="ws", user=f"u{i % 3}", key_id="k1", provider="openai", api="chat",
                      model_requested="gpt-4o", model_served="gpt-4o", tokens=Tokens(input=10, output=5),
                      cost_micro_usd=100 + i, request_id=f"r{i}")


def segments(d: Path) -> list[Path]:
    return sorted(d.glob("seg-*.jsonl"))


def drain(spool: Spool, batch: int = 7) -> list[UsageEvent]:
    out: list[UsageEvent] = []
    while True:
        got = spool.peek(batch)
        if not got:
            return out
        out.extend(got)
        spool.ack(len(got))


def test_replay_keeps_append_order_across_segments_and_reopen(tmp_path: Path) -> None:
    evs = [event(i) for i in range(100)]
    spool = Spool(tmp_path, segment_bytes=2_000)
    for i in range(0, 100, 10):
        spool.append(evs[i:i + 10])
    assert spool.depth_events == 100 and spool.depth_bytes == spool.file_bytes > 0
    assert len(segments(tmp_path)) > 3, "small segments roll over"
    spool.close()

    spool = Spool(tmp_path, segment_bytes=2_000)
    assert spool.depth_events == 100
    assert list(spool.iter_pending()) == evs, "iter_pending does not consume"
    assert drain(spool) == evs
    assert spool.depth_events == 0 and spool.depth_bytes == 0


def test_partial_ack_survives_reopen_without_replaying_acked_events(tmp_path: Path) -> None:
    evs = [event(i) for i in range(30)]
    spool = Spool(tmp_path, segment_bytes=1_500)
    spool.append(evs)
    first = spool.peek(12)
    spool.ack(5)                       # only the first five reached Kafka
    assert first[:5] == evs[:5]
    spool.close()

    spool = Spool(tmp_path, segment_bytes=1_500)
    assert spool.depth_events == 25
    assert drain(spool, batch=4) == evs[5:]


def test_torn_last_line_is_cut_and_earlier_events_kept(tmp_path: Path) -> None:
    evs = [event(i) for i in range(5)]
    spool = Spool(tmp_path)
    spool.append(evs)
    spool.close()
    seg = segments(tmp_path)[-1]
    with open(seg, "ab") as f:        # a crash in the middle of the next append
        f.write(b'{"event_id": "torn", "org": "ac')

    spool = Spool(tmp_path)
    assert spool.depth_events == 5
    assert seg.read_bytes().endswith(b"\n")
    more = [event(i) for i in range(5, 8)]
    spool.append(more)
    assert drain(spool) == evs + more


def test_corrupt_line_in_the_middle_is_skipped_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool = Spool(tmp_path)
    spool.append([event(0)])
    spool.close()
    seg = segments(tmp_path)[-1]
    with open(seg, "ab") as f:
        f.write(b"not json\n")
    spool = Spool(tmp_path)
    spool.append([event(1)])
    with caplog.at_level(logging.ERROR, logger="llmgw.ledger.spool"):
        got = drain(spool)
    assert [e.request_id for e in got] == ["r0", "r1"]
    assert spool.corrupt_lines >= 1 and "unreadable line" in caplog.text


def test_unreadable_lines_at_the_head_and_the_tail_do_not_block_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([event(0)])
    spool.close()
    seg = segments(tmp_path)[-1]
    seg.write_bytes(b"garbage at the head\n" + seg.read_bytes() + b"garbage at the tail\n")
    spool = Spool(tmp_path)
    assert spool.depth_events == 3
    assert [e.request_id for e in drain(spool)] == ["r0"]
    assert spool.depth_events == 0 and segments(tmp_path) == []


def test_bound_refuses_whole_append_loudly_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = len(encode(event(0))) + 1
    spool = Spool(tmp_path, max_bytes=one * 10 + 5)
    spool.append([event(i) for i in range(8)])
    with caplog.at_level(logging.ERROR, logger="llmgw.ledger.spool"), pytest.raises(SpoolFull) as err:
        spool.append([event(i) for i in range(8, 11)])    # would pass the bound: nothing written
    assert err.value.events == 3
    assert spool.depth_events == 8 and spool.refused_events == 3 and spool.refused_bytes > 0
    assert "spool full" in caplog.text
    spool.append([event(8), event(9)])                  # what fits still goes in
    assert spool.depth_events == 10
    drain(spool)                                        # once replayed, there is room again
    spool.append([event(i) for i in range(20, 28)])
    assert spool.depth_events == 8


def test_partial_append_writes_what_fits_and_refuses_the_rest(tmp_path: Path) -> None:
    one = len(encode(event(0))) + 1
    spool = Spool(tmp_path, max_bytes=one * 4 + 5)
    evs = [event(i) for i in range(6)]
    assert spool.append(evs, partial=True) == 4
    assert spool.refused_events == 2
    assert spool.append(evs[4:], partial=True) == 0
    assert drain(spool) == evs[:4]


def test_segments_deleted_only_after_every_event_in_them_was_acked(tmp_path: Path) -> None:
    evs = [event(i) for i in range(40)]
    spool = Spool(tmp_path, segment_bytes=3_000)
    for i in range(0, 40, 5):
        spool.append(evs[i:i + 5])
    segs = segments(tmp_path)
    assert len(segs) >= 3
    per_seg = [p.read_bytes().count(b"\n") for p in segs]

    got = spool.peek(per_seg[0] - 1)
    spool.ack(len(got))
    assert segments(tmp_path) == segs, "one event of the first segment is still unacked"
    got = spool.peek(2)
    spool.ack(1)                                        # now the first segment is done
    assert segments(tmp_path) == segs[1:]
    assert got[0] == evs[per_seg[0] - 1]
    drain(spool)
    assert segments(tmp_path) == [] and spool.depth_events == 0

    spool.append([event(99)])                           # numbering goes on after the last deleted segment
    spool.close()
    spool = Spool(tmp_path, segment_bytes=3_000)
    assert [e.request_id for e in drain(spool)] == ["r99"]


def test_ack_more_than_peeked_is_an_error(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([event(0), event(1)])
    spool.peek(1)
    with pytest.raises(ValueError):
        spool.ack(2)


def test_one_owner_per_spool_directory(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path)
    spool.close()
    Spool(tmp_path).close()
