"""Batched columnar inserts of usage events into ClickHouse.

Used in-process by the embedded gateway and by the Kafka sink consumer. The
calls block: from asyncio, run them in a thread (``await asyncio.to_thread(sink.insert, batch, token)``).

Exactly-once, in three layers (README "Counting each event once"):

1. Every insert carries an ``insert_deduplication_token`` derived from the
   caller's ``dedup_token`` and the batch's event ids, so a re-sent batch is
   dropped by the raw table *and* by the rollup views
   (``deduplicate_blocks_in_dependent_materialized_views``). The Kafka consumer
   passes ``kafka:{topic}:{partition}:{first_offset}-{last_offset}``.
2. Before inserting, the sink drops events whose event_id is already in
   ``usage_events`` (``skip_known=True``), so an event re-delivered in a
   *different* batch does not reach the rollups twice. A caller that knows
   none of a batch's events can be stored yet passes ``none_stored=True`` and
   saves the query: only ``LogTail`` does (``analytics/log_tail.py`` says when
   it knows; it checks after a restart, a failed insert or a cut of the log).
3. ``usage_events`` is a ReplacingMergeTree ending its key with event_id, and
   exact queries read it ``FINAL``: whatever slips past 1 and 2 (two writers
   racing on one event) is still counted once there.

On a cluster (``analytics/cluster.py``) the same three layers hold per shard:
the insert goes through the Distributed ``usage_events`` in the foreground
(``distributed_foreground_insert``), so it returns only once every shard
stored its rows and the caller's offset commit never runs ahead of them; the
sharding key over event_id splits a re-sent batch into the same per-shard
blocks, which each shard drops by the same token (its dedup log is in Keeper,
shared by its replicas). The known-id check reads every replica of every shard
(``clusterAllReplicas``), so a replica that has not fetched a part yet cannot
hide an event that is stored.
"""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from itertools import groupby
from operator import attrgetter

from clickhouse_connect.driver.client import Client

from llmgw.analytics import store
from llmgw.analytics.cluster import Cluster
from llmgw.core.events import UsageEvent

# (column, ClickHouse type, value) in table order: 001_usage_events.sql's columns and those 006
# added (cost_nano_usd after cost_micro_usd; service_tier, web_search_calls after schema_version),
# and 007's usage_anomalous last.
# tests/test_analytics_sink.py checks this list against the table. Getters are C (attrgetter) where
# they can be: one call per value of every row.
_COLUMNS: tuple[tuple[str, str, Callable[[UsageEvent], object]], ...] = (
    ("event_id", "String", attrgetter("event_id")),
    ("ts_start", "DateTime64(3, 'UTC')", attrgetter("ts_start_ms")),
    ("ts_end", "DateTime64(3, 'UTC')", attrgetter("ts_end_ms")),
    ("org", "LowCardinality(String)", attrgetter("org")),
    ("workspace", "LowCardinality(String)", attrgetter("workspace")),
    ("user", "LowCardinality(String)", attrgetter("user")),
    ("key_id", "LowCardinality(String)", attrgetter("key_id")),
    ("provider", "LowCardinality(String)", attrgetter("provider")),
    ("api", "LowCardinality(String)", attrgetter("api")),
    ("model_requested", "LowCardinality(String)", attrgetter("model_requested")),
    ("model_served", "LowCardinality(String)", attrgetter("model_served")),
    ("input_tokens", "UInt64", attrgetter("tokens.input")),
    ("cache_write_5m_tokens", "UInt64", attrgetter("tokens.cache_write_5m")),
    ("cache_write_1h_tokens", "UInt64", attrgetter("tokens.cache_write_1h")),
    ("cache_read_tokens", "UInt64", attrgetter("tokens.cache_read")),
    ("output_tokens", "UInt64", attrgetter("tokens.output")),
    ("reasoning_tokens", "UInt64", attrgetter("tokens.reasoning")),
    ("cost_micro_usd", "Int64", attrgetter("cost_micro_usd")),
    ("cost_nano_usd", "Int64", attrgetter("cost_nano_usd")),
    ("price_version", "LowCardinality(String)", attrgetter("price_version")),
    ("outcome", "LowCardinality(String)", attrgetter("outcome")),
    ("http_status", "UInt16", attrgetter("http_status")),
    ("latency_ms", "UInt32", attrgetter("latency_ms")),
    ("ttft_ms", "Nullable(UInt32)", attrgetter("ttft_ms")),
    ("project", "LowCardinality(String)", attrgetter("project")),
    ("tags", "Array(String)", lambda e: list(e.tags)),
    ("tag_map", "Map(String, String)", UsageEvent.tag_map),
    ("session_id", "String", attrgetter("session_id")),
    ("request_id", "String", attrgetter("request_id")),
    ("gateway_id", "LowCardinality(String)", attrgetter("gateway_id")),
    ("stream", "Bool", attrgetter("stream")),
    ("usage_estimated", "Bool", attrgetter("usage_estimated")),
    ("cost_estimated", "Bool", attrgetter("cost_estimated")),
    ("error_type", "LowCardinality(String)", attrgetter("error_type")),
    ("kind", "LowCardinality(String)", attrgetter("kind")),
    ("adjusts_event_id", "String", attrgetter("adjusts_event_id")),
    ("schema_version", "UInt16", attrgetter("schema_version")),
    ("service_tier", "LowCardinality(String)", attrgetter("service_tier")),
    ("web_search_calls", "UInt32", attrgetter("web_search_calls")),
    ("usage_anomalous", "Bool", attrgetter("usage_anomalous")),
)
COLUMN_NAMES = tuple(name for name, _, _ in _COLUMNS)
_COLUMN_TYPES = tuple(type_name for _, type_name, _ in _COLUMNS)

_INSERT_SETTINGS = {
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "async_insert": 0,
}
# Through a Distributed table: write every shard's block before returning (a background insert
# would return with the rows queued on this node, and could batch them with other inserts).
_DISTRIBUTED_INSERT_SETTINGS = {**_INSERT_SETTINGS, "distributed_foreground_insert": 1}


class Sink:
    """Writes usage events to ``{database}.usage_events`` (and, through views, the rollups)."""

    def __init__(self, client: Client, database: str, *, skip_known: bool = True,
                 max_rows_per_insert: int = 100_000, cluster: Cluster | None = None) -> None:
        """``cluster`` defaults to the one named by the DSN ``client`` was opened with."""
        self._client = client
        self._database = store.check_identifier(database)
        self._skip_known = skip_known
        self._max_rows = max_rows_per_insert
        self._lock = threading.Lock()  # known-id check and insert act as one step per process
        self._cluster = cluster or store.cluster_of(client)
        self._settings = _DISTRIBUTED_INSERT_SETTINGS if self._cluster and self._cluster.sharded else _INSERT_SETTINGS
        self._stored = (f"{self._database}.usage_events" if self._cluster is None
                        else self._cluster.all_replicas(self._database, "usage_events"))

    @property
    def cluster(self) -> Cluster | None:
        return self._cluster

    @property
    def database(self) -> str:
        return self._database

    def ensure_schema(self) -> list[int]:
        """Apply missing migrations; return the versions applied now."""
        return store.migrate(self._client, self._database, cluster=self._cluster)

    def insert(self, events: Sequence[UsageEvent], dedup_token: str | None = None, *,
               none_stored: bool = False) -> int:
        """Insert a batch; return how many events were sent (after dropping known ones).

        Idempotent: the same batch again, with the same ``dedup_token``, adds
        nothing, to the raw table or to the rollups. Events are grouped by
        month (one partition, so each insert writes one part atomically),
        sorted by event_id and cut into chunks of ``max_rows_per_insert``: the
        chunks, and so their tokens, are the same on every retry.

        ``none_stored``: the caller knows no event of the batch is stored, so the known-id check
        (a query per chunk, about a fifth of the insert's cost) is skipped. Wrongly claimed, an
        event stored before from another batch reaches the rollups twice.
        """
        batch = _unique(events)
        for event in batch:
            _check(event)
        sent = 0
        with self._lock:
            for month, group in groupby(sorted(batch, key=_month_then_id), key=_month):
                ordered = list(group)
                for start in range(0, len(ordered), self._max_rows):
                    chunk = ordered[start:start + self._max_rows]
                    if self._skip_known and not none_stored:
                        known = self._known_ids(chunk)
                        chunk = [e for e in chunk if e.event_id not in known]
                    if chunk:
                        self._insert_chunk(chunk, _token(dedup_token, month, chunk))
                        sent += len(chunk)
        return sent

    def _insert_chunk(self, chunk: Sequence[UsageEvent], token: str) -> None:
        columns = [list(map(value, chunk)) for _, _, value in _COLUMNS]
        self._client.insert(
            "usage_events", columns, column_names=COLUMN_NAMES, column_type_names=_COLUMN_TYPES,
            column_oriented=True, database=self._database,
            settings={**self._settings, "insert_deduplication_token": token},
        )

    def _known_ids(self, chunk: Sequence[UsageEvent]) -> set[str]:
        """Ids of ``chunk`` already stored; the org and time bounds let ClickHouse skip most parts."""
        result = self._client.query(
            known_ids_query(self._stored),
            parameters={
                "orgs": sorted({e.org for e in chunk}),
                "lo": min(e.ts_start_ms for e in chunk),
                "hi": max(e.ts_start_ms for e in chunk),
                "ids": [e.event_id for e in chunk],
            },
        )
        return {row[0] for row in result.result_rows}


def known_ids_query(stored: str) -> str:
    """The known-id check over ``stored`` (a table, or on a cluster every replica's local table)."""
    return (f"SELECT DISTINCT event_id FROM {stored}"
            " WHERE org IN {orgs:Array(String)}"
            " AND ts_start BETWEEN fromUnixTimestamp64Milli({lo:Int64}, 'UTC')"
            " AND fromUnixTimestamp64Milli({hi:Int64}, 'UTC')"
            " AND event_id IN {ids:Array(String)}")


def _unique(events: Iterable[UsageEvent]) -> list[UsageEvent]:
    seen: dict[str, UsageEvent] = {}
    for event in events:
        seen.setdefault(event.event_id, event)
    return list(seen.values())


def check_event(event: UsageEvent) -> None:
    """Raise ``ValueError`` for an event ``Sink.insert`` would refuse (no id, a negative count)."""
    _check(event)


def _check(event: UsageEvent) -> None:
    if not event.event_id:
        raise ValueError("usage event without event_id")
    tokens = event.tokens
    counts = (tokens.input, tokens.cache_write_5m, tokens.cache_write_1h, tokens.cache_read,
              tokens.output, tokens.reasoning)
    if min(counts) < 0:
        raise ValueError(f"event {event.event_id}: negative token count {counts}")


def _month(event: UsageEvent) -> str:
    """The partition (toYYYYMM of ts_start, UTC) the event lands in."""
    return _month_of_day(event.ts_start_ms // _MS_PER_DAY)


_MS_PER_DAY = 86_400_000


@lru_cache(maxsize=64)
def _month_of_day(day: int) -> str:
    """A batch spans a day or two: a date per event, twice (sorting, grouping), was most of the
    Python side of an insert before its columns (6 of 7.5 us per event)."""
    return datetime.fromtimestamp(day * 86_400, tz=timezone.utc).strftime("%Y%m")


def _month_then_id(event: UsageEvent) -> tuple[str, str]:
    return _month(event), event.event_id


def _token(prefix: str | None, month: str, chunk: Sequence[UsageEvent]) -> str:
    """Same caller token and same events -> same token; different events never share one.

    A token reused for different rows would make ClickHouse drop rows it never
    stored (and the views drop them too), so the ids are always part of it.
    """
    digest = hashlib.blake2b(digest_size=16)
    for event in chunk:
        digest.update(event.event_id.encode())
        digest.update(b"\0")
    return f"{prefix or 'events'}|{month}|{len(chunk)}|{digest.hexdigest()}"


__all__ = ["COLUMN_NAMES", "Sink", "check_event", "known_ids_query"]
