"""The ledger's Kafka topics: names, creation, record formats, and reading partitions to their end.

Three topics per deployment, named from one prefix (default ``llmgw``):

- ``{prefix}.usage``: usage events, key = ``started.usage_key`` (the call's API key; its event id
  or its org with ``LLMGW_USAGE_KEY=call|org``; the org on topics written before), value = ``events.encode``.
  Kept forever by default (``llmgw ledger rebuild`` refolds it from offset 0) and stamped with the
  broker's append time, which the worker's duplicate horizon is measured in (``ledger/worker.py``).
- ``{prefix}.snapshots``: compacted, the same partition count, co-partitioned: what the worker folds
  from usage partition p it writes to snapshot partition p, explicitly. Key = spend key, value =
  ``{"t": [spend_micro_usd, requests, input_tokens, output_tokens, spend_nano_usd], "p": p, "o": offset}``,
  partition p's partial totals of the key (a key's total is the sum over the partitions)
  (``Totals.to_list``: the micro figure is the nanos rounded up; a record without the fifth value,
  written before nano-USD, is read as micro x 1000), plus one
  progress record per transaction, key ``__progress__|{p}``, value ``{"p": p, "o": offset}``, where
  ``o`` is the last usage offset of partition p that transaction folded.
- ``{prefix}.config``: one partition, compacted (``ledger/configlog.py``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import AsyncIterator, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from .fold import Totals

log = logging.getLogger("llmgw.ledger.topics")

DEFAULT_PARTITIONS = 8
PROGRESS_PREFIX = "__progress__|"

# Snapshot and config topics are compacted. Segments roll hourly so the cleaner can compact
# them (the active segment never is); a record stays uncompacted for at least a minute, so a
# follower tailing the head sees every update; a dirty log is cleaned within a day at the
# latest, which bounds how much a follower replays when it starts from the beginning.
_COMPACTED = {
    "cleanup.policy": "compact",
    "segment.ms": str(3_600_000),
    "segment.bytes": str(64 << 20),
    "min.cleanable.dirty.ratio": "0.25",
    "min.compaction.lag.ms": str(60_000),
    "max.compaction.lag.ms": str(86_400_000),
    "delete.retention.ms": str(86_400_000),
}


class TopicLayoutError(RuntimeError):
    """Existing topics do not have the layout the ledger needs (e.g. not co-partitioned)."""


@dataclass(frozen=True, slots=True)
class Topics:
    prefix: str = "llmgw"
    partitions: int = DEFAULT_PARTITIONS

    @property
    def usage(self) -> str:
        return f"{self.prefix}.usage"

    @property
    def snapshots(self) -> str:
        return f"{self.prefix}.snapshots"

    @property
    def config(self) -> str:
        return f"{self.prefix}.config"


# -- record formats ------------------------------------------------------------------------
def progress_key(partition: int) -> str:
    return f"{PROGRESS_PREFIX}{partition}"


def is_progress_key(key: str) -> bool:
    return key.startswith(PROGRESS_PREFIX)


def encode_snapshot(totals: Totals, partition: int, offset: int) -> bytes:
    return orjson.dumps({"t": totals.to_list(), "p": partition, "o": offset})


def encode_progress(partition: int, offset: int) -> bytes:
    return orjson.dumps({"p": partition, "o": offset})


def decode_snapshot(value: bytes | None) -> Totals | None:
    """Totals of a snapshot record; None for a tombstone."""
    if value is None:
        return None
    return Totals.from_list(orjson.loads(value)["t"])


def decode_progress(value: bytes) -> int:
    """The last usage offset a progress record says was folded."""
    return int(orjson.loads(value)["o"])


# -- creation ------------------------------------------------------------------------------
def topic_configs(topics: Topics, usage_retention_ms: int = -1) -> dict[str, dict[str, str]]:
    """The configs ``ensure_topics`` creates each topic with."""
    return {
        topics.usage: {"cleanup.policy": "delete", "retention.ms": str(usage_retention_ms),
                       "message.timestamp.type": "LogAppendTime"},
        topics.snapshots: dict(_COMPACTED),
        topics.config: dict(_COMPACTED),
    }


async def ensure_topics(bootstrap: str, topics: Topics, *, replication_factor: int | None = None,
                        usage_retention_ms: int = -1, timeout_s: float = 30.0,
                        min_insync_replicas: int | None = None) -> Topics:
    """Create whichever of the three topics is missing; idempotent, safe to race.

    Replication defaults to min(3, brokers), with ``min.insync.replicas`` = min(2, replication)
    (None or 0 for either means that default; ``LLMGW_KAFKA_REPLICATION_FACTOR``,
    ``LLMGW_KAFKA_MIN_INSYNC_REPLICAS``).
    Returns the layout that exists (its partition count is the existing usage topic's, which
    may differ from ``topics.partitions``). Raises ``TopicLayoutError`` if usage and snapshots
    are not co-partitioned, which no worker can fix.
    """
    counts = {topics.usage: topics.partitions, topics.snapshots: topics.partitions, topics.config: 1}
    configs = topic_configs(topics, usage_retention_ms)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        if not replication_factor:
            replication_factor = min(3, max(1, len((await admin.describe_cluster())["brokers"])))
        min_isr = min_insync_replicas or min(2, replication_factor)
        if min_isr > replication_factor:
            raise ValueError(f"min.insync.replicas {min_isr} > replication factor {replication_factor}: "
                             "no write could ever be acknowledged")
        for config in configs.values():
            config["min.insync.replicas"] = str(min_isr)
        existing = await _partition_counts(admin, list(counts))
        if topics.usage in existing and topics.snapshots not in existing:
            counts[topics.snapshots] = existing[topics.usage]
        if topics.snapshots in existing and topics.usage not in existing:
            counts[topics.usage] = existing[topics.snapshots]
        missing = [NewTopic(name, num_partitions=n, replication_factor=replication_factor,
                            topic_configs=configs[name])
                   for name, n in counts.items() if name not in existing]
        if missing:
            response = await admin.create_topics(missing, timeout_ms=int(timeout_s * 1000))
            for name, code, *message in response.topic_errors:
                err = for_code(code)
                if code != 0 and err is not TopicAlreadyExistsError:
                    raise err(f"create topic {name!r}: {message[0] if message else ''}")
                if code == 0:
                    log.info("created topic %s (%d partitions)", name, counts[name])
        actual = await _wait_for_leaders(admin, list(counts), timeout_s)
    finally:
        await admin.close()
    if actual[topics.usage] != actual[topics.snapshots]:
        raise TopicLayoutError(
            f"{topics.usage} has {actual[topics.usage]} partitions but {topics.snapshots} has "
            f"{actual[topics.snapshots]}: the snapshot topic must be co-partitioned with usage")
    return replace(topics, partitions=actual[topics.usage])


async def _partition_counts(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, int]:
    out = {}
    for meta in await admin.describe_topics(names):
        if meta["error_code"] == 0:
            out[meta["topic"]] = len(meta["partitions"])
    return out


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    while True:
        ready = {}
        for meta in await admin.describe_topics(names):
            parts = meta["partitions"]
            if meta["error_code"] == 0 and parts and all(p["error_code"] == 0 and p["leader"] >= 0 for p in parts):
                ready[meta["topic"]] = len(parts)
        if len(ready) == len(names):
            return ready
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics without a leader after {timeout_s}s: {sorted(set(names) - set(ready))}")
        await asyncio.sleep(0.1)


async def partitions_of(bootstrap: str, topic: str, *, timeout_s: float = 30.0) -> list[int]:
    """The partition numbers of an existing topic; ``TopicLayoutError`` if it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await admin.start()
    try:
        (meta,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if meta["error_code"] != 0 or not meta["partitions"]:
        raise TopicLayoutError(f"topic {topic!r} does not exist")
    return sorted(int(p["partition"]) for p in meta["partitions"])


# -- reading -------------------------------------------------------------------------------
class PartitionReader:
    """One group-less ``read_committed`` consumer for reading partitions between two offsets.

    ``end_offsets`` under ``read_committed`` is the last stable offset: everything below it is
    committed or aborted, so reading "to the end" never waits on an open transaction.
    """

    def __init__(self, bootstrap: str, *, request_timeout_ms: int = 30_000) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
            auto_offset_reset="earliest", request_timeout_ms=request_timeout_ms,
            max_partition_fetch_bytes=4 << 20, fetch_max_bytes=16 << 20)

    async def __aenter__(self) -> "PartitionReader":
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self._consumer.end_offsets(tps))

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict(await self._consumer.beginning_offsets(tps))

    async def offset_for_time(self, tp: TopicPartition, ts_ms: int) -> int | None:
        """The first offset whose timestamp is >= ``ts_ms``; None if there is none."""
        found = await self._consumer.offsets_for_times({tp: max(0, ts_ms)})
        hit = found.get(tp)
        return None if hit is None else int(hit.offset)

    async def read(self, start: Mapping[TopicPartition, int | None],
                   end: Mapping[TopicPartition, int] | None = None,
                   ) -> AsyncIterator[tuple[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]:
        """Committed records of each partition from ``start`` (None: its beginning) to ``end``
        (exclusive; default: the end offset when the read starts), in offset order per partition."""
        consumer = self._consumer
        tps = list(start)
        consumer.assign(tps)
        stop = dict(end) if end is not None else await self.end_offsets(tps)
        first = await self.beginning_offsets(tps)
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            s = start[tp]
            begin = first[tp] if s is None else max(s, first[tp])
            if begin < stop[tp]:
                consumer.seek(tp, begin)
                todo[tp] = stop[tp]
        idle = [tp for tp in tps if tp not in todo]
        if idle:
            consumer.pause(*idle)
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=500)
            for tp, records in fetched.items():
                limit = todo.get(tp)
                if limit is None:
                    continue
                if records and records[-1].offset >= limit:
                    records = [r for r in records if r.offset < limit]
                if records:
                    yield tp, records
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    consumer.pause(tp)
                    del todo[tp]
        # Every partition read is paused now, and the next read assigns its own. Never ``assign([])``
        # here: with aiokafka 0.14 a consumer emptied that way hangs for good in ``stop()``, which
        # stalled a worker taking over partitions and the rebuild command on their ``async with``.


async def read_snapshot_partitions(reader: PartitionReader, topics: Topics, partitions: list[int],
                                   ) -> tuple[dict[int, dict[str, Totals]], dict[int, int]]:
    """Latest totals per key and the progress offset, per snapshot partition, to its end."""
    totals: dict[int, dict[str, Totals]] = {p: {} for p in partitions}
    progress: dict[int, int] = {}
    start: dict[TopicPartition, int | None] = {TopicPartition(topics.snapshots, p): None for p in partitions}
    async for tp, records in reader.read(start):
        state = totals[tp.partition]
        for r in records:
            key = r.key.decode() if r.key is not None else ""
            if is_progress_key(key):
                if r.value is not None:
                    progress[tp.partition] = decode_progress(r.value)
                continue
            value = decode_snapshot(r.value)
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
    return totals, progress
