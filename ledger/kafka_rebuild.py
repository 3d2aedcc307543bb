"""``llmgw ledger rebuild`` in Kafka mode: refold the usage topic and compare with the snapshots.

The independent reconciliation the ledger keeps running: it reads ``{prefix}.usage`` from offset
0 with ``read_committed``, folds it with ``fold`` and the same duplicate rule as the worker
(``ledger.worker.fold_record``: each ``event_id`` once within the horizon; closed windows deleted
after ``LLMGW_SNAPSHOT_RETAIN_CLOSED_S`` of log time, which must be the workers'), reads
``{prefix}.snapshots`` to its end, and compares every key's totals.

The comparison is made at a consistent cut: each usage partition is refolded only up to the
offset its progress record says the snapshots include, so a worker that is merely behind (or
folding right now) never shows up as a difference; the events past the cut are reported as lag.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

from aiokafka import TopicPartition

from .configlog import open_config_log
from .fold import Totals, TzOf, utc
from .topics import PartitionReader, Topics, partitions_of, read_snapshot_partitions
from .orphans import OpenCalls
from .retention import expired
from .worker import (DEFAULT_HORIZON_MS, DUPLICATE, FOLDED, UNREADABLE, SeenIds, default_orphan_after, fold_record,
                     retain_closed_ms, tz_of_settings)

if TYPE_CHECKING:
    from llmgw.core.settings import Settings


@dataclass
class FoldCounts:
    records: int = 0
    folded: int = 0
    duplicates: int = 0
    unreadable: int = 0


@dataclass
class RebuildReport:
    live: dict[str, Totals]
    rebuilt: dict[str, Totals]
    counts: FoldCounts
    progress: dict[int, int]               # partition -> last usage offset the snapshots include
    lag: dict[int, int] = field(default_factory=dict)   # partition -> committed events past the cut

    @property
    def differences(self) -> list[tuple[str, Totals | None, Totals | None]]:
        keys = sorted(set(self.live) | set(self.rebuilt))
        return [(k, self.live.get(k), self.rebuilt.get(k)) for k in keys if self.live.get(k) != self.rebuilt.get(k)]

    @property
    def identical(self) -> bool:
        return self.live == self.rebuilt


async def fold_topic(bootstrap: str, topics: Topics, *, tz_of: TzOf = utc, horizon_ms: int = DEFAULT_HORIZON_MS,
                     until: Mapping[int, int] | None = None, counts: FoldCounts | None = None,
                     orphan_after_ms: int | None = None, retain_closed_ms: int | None = None) -> dict[str, Totals]:
    """Fold the whole usage topic from offset 0, each event_id once within the horizon, charging
    orphaned calls and deleting closed windows past ``retain_closed_ms`` as the worker does.

    ``until`` maps a partition to the offset to stop before (default: its end now).
    """
    counts = counts if counts is not None else FoldCounts()
    totals: dict[str, Totals] = {}
    parts = await partitions_of(bootstrap, topics.usage)
    async with PartitionReader(bootstrap) as reader:
        start: dict[TopicPartition, int | None] = {TopicPartition(topics.usage, p): None for p in parts}
        end = None if until is None else {tp: until.get(tp.partition, 0) for tp in start}
        seen: dict[int, SeenIds] = {p: SeenIds(horizon_ms) for p in parts}
        after_ms = default_orphan_after(horizon_ms) if orphan_after_ms is None else orphan_after_ms
        calls: dict[int, OpenCalls] = {p: OpenCalls(after_ms) for p in parts}
        # Each partition folds its own partial totals (an org's calls spread over every partition,
        # keyed by API key or by call), exactly as the workers do; a key's total is their sum.
        per_partition: dict[int, dict[str, Totals]] = defaultdict(dict)
        async for tp, records in reader.read(start, end):
            state, ids = per_partition[tp.partition], seen[tp.partition]
            for r in records:
                outcome, changed = fold_record(state, ids, r.value, r.timestamp, tz_of, calls[tp.partition],
                                               retain_closed_ms=retain_closed_ms)
                state.update(changed)
                counts.records += 1
                counts.folded += outcome == FOLDED
                counts.duplicates += outcome == DUPLICATE
                counts.unreadable += outcome == UNREADABLE
    for p, state in per_partition.items():
        clock_ms = seen[p].clock_ms           # the worker tombstoned what expired by its last transaction
        for key, t in state.items():
            if not expired(key, clock_ms, retain_closed_ms):
                totals[key] = totals[key].plus(t) if key in totals else t
    return totals


async def read_snapshot_state(bootstrap: str, topics: Topics) -> tuple[dict[str, Totals], dict[int, int]]:
    """Every key's latest totals (summed over partitions) and each partition's progress offset."""
    parts = await partitions_of(bootstrap, topics.snapshots)
    async with PartitionReader(bootstrap) as reader:
        by_partition, progress = await read_snapshot_partitions(reader, topics, parts)
    totals: dict[str, Totals] = {}
    for state in by_partition.values():
        for key, t in state.items():
            totals[key] = totals[key].plus(t) if key in totals else t
    return totals, progress


async def read_snapshots(bootstrap: str, topics: Topics) -> dict[str, Totals]:
    """The snapshot topic read to its end (``read_committed``): latest totals per spend key."""
    return (await read_snapshot_state(bootstrap, topics))[0]


async def compare(bootstrap: str, topics: Topics, *, tz_of: TzOf = utc, horizon_ms: int = DEFAULT_HORIZON_MS,
                  orphan_after_ms: int | None = None, retain_closed_ms: int | None = None) -> RebuildReport:
    """Snapshots vs a refold of the usage topic, at the cut the snapshots' progress records give."""
    live, progress = await read_snapshot_state(bootstrap, topics)
    until = {p: o + 1 for p, o in progress.items()}
    counts = FoldCounts()
    rebuilt = await fold_topic(bootstrap, topics, tz_of=tz_of, horizon_ms=horizon_ms, until=until, counts=counts,
                               orphan_after_ms=orphan_after_ms, retain_closed_ms=retain_closed_ms)
    parts = await partitions_of(bootstrap, topics.usage)
    async with PartitionReader(bootstrap) as reader:
        ends = await reader.end_offsets([TopicPartition(topics.usage, p) for p in parts])
    behind = {tp.partition: end - until.get(tp.partition, 0) for tp, end in ends.items()}
    lag = {p: n for p, n in behind.items() if n > 0}
    return RebuildReport(live, rebuilt, counts, progress, lag)


def _fmt(t: Totals | None) -> str:
    return "absent" if t is None else str(t.to_list())


def main(settings: "Settings", *, show: int = 20) -> int:
    """Print the comparison; exit 0 when every key is identical, 1 otherwise."""
    topics = Topics(settings.topic_prefix)
    state = asyncio.run(open_config_log(settings.data_dir, settings.kafka_bootstrap, settings.topic_prefix).load())
    report = asyncio.run(compare(settings.kafka_bootstrap, topics, tz_of=tz_of_settings(settings, state),
                                 orphan_after_ms=int(settings.orphan_after_s * 1000),
                                 retain_closed_ms=retain_closed_ms(settings.snapshot_retain_closed_s)))
    c = report.counts
    print(f"refolded {c.records} usage records of {topics.usage} up to the snapshots' progress: "
          f"{c.folded} folded, {c.duplicates} duplicates skipped, {c.unreadable} unreadable")
    print(f"snapshots {topics.snapshots}: {len(report.live)} spend keys; refold: {len(report.rebuilt)} spend keys")
    if report.lag:
        print(f"not yet folded by the workers (past the cut, not compared): {sum(report.lag.values())} events "
              f"in partitions {sorted(report.lag)}")
    diffs = report.differences
    if not diffs:
        print("identical")
        return 0
    print(f"DIFFERENT: {len(diffs)} spend keys differ ([spend_micro_usd, requests, input_tokens, output_tokens, spend_nano_usd])")
    for key, live, rebuilt in diffs[:show]:
        print(f"  {key}: snapshot {_fmt(live)}, refold {_fmt(rebuilt)}")
    if len(diffs) > show:
        print(f"  ... and {len(diffs) - show} more")
    return 1
