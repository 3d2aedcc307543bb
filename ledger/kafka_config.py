"""The config log on Kafka: a compacted one-partition topic, ``{prefix}.config``.

Same interface as ``FileConfigLog``: ``append`` a ``ConfigRecord`` (key =
``rec.id``, value = ``rec.encode()``), ``load`` the state from the beginning
to the end offset, ``follow`` new records. A delete is a normal record whose
``data`` is null, not a tombstone: the deletion stays in the log for audit, and
compaction keeps only the latest record of each id anyway.

The topic is created on first use if missing (1 partition, compacted with the
settings of ``ledger.topics``, replication factor up to 3), because ``llmgw keys create`` may run before any
gateway or processor. One partition keeps every change in one total order.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from llmgw.core.config import ConfigRecord, ConfigState
from .topics import Topics, topic_configs

log = logging.getLogger("llmgw.ledger.config")

_MAX_BACKOFF_S = 10.0
# compaction settings shared with ``ensure_topics`` (the same for every prefix)
_CONFIG_TOPIC_CONFIGS = topic_configs(Topics())[Topics().config]


class ConfigLogUnavailable(RuntimeError):
    """Kafka did not answer within the deadline, or refused the connection outright (the gateway
    cannot know its keys and budgets from the log; ``ledger.config_cache`` has the last ones it saw)."""


# What "Kafka is away" looks like: aiokafka refuses at once (KafkaConnectionError: nothing listens)
# or times out (a broker that does not answer); a socket error can also escape its bootstrap.
_AWAY = (TimeoutError, KafkaError, OSError)


class KafkaConfigLog:
    def __init__(self, bootstrap: str, topic: str, *, timeout_s: float = 30.0,
                 retry_backoff_s: float = 0.5) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self.retry_backoff_s = retry_backoff_s
        self._tp = TopicPartition(topic, 0)
        self._position = 0          # next offset to read; load() and follow() continue from here
        self._topic_ready = False

    async def append(self, rec: ConfigRecord) -> None:
        """Write one record and wait for the broker's ack (``acks=all``, idempotent)."""
        await self.ensure_topic()
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, enable_idempotence=True, acks="all",
                                    client_id="llmgw-config")
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.start()
                await producer.send_and_wait(self.topic, rec.encode(), key=rec.id.encode(), partition=0)
        except _AWAY as exc:
            raise ConfigLogUnavailable(f"Kafka at {self.bootstrap} did not take config record {rec.id!r}: "
                                       f"{self._why(exc)}") from None
        finally:
            await producer.stop()

    async def load(self) -> ConfigState:
        """Every record from the beginning to the end offset at call time."""
        await self.ensure_topic()
        state = ConfigState()
        consumer = self._consumer()
        try:
            async with asyncio.timeout(self.timeout_s):
                await consumer.start()
                consumer.assign([self._tp])
                consumer.seek(self._tp, 0)
                end = (await consumer.end_offsets([self._tp]))[self._tp]
                while await consumer.position(self._tp) < end:
                    self._apply(state, await consumer.getmany(self._tp, timeout_ms=500))
                self._position = await consumer.position(self._tp)
        except _AWAY as exc:
            raise ConfigLogUnavailable(f"could not read config topic {self.topic} from Kafka at "
                                       f"{self.bootstrap}: {self._why(exc)}") from None
        finally:
            await consumer.stop()
        return state

    async def follow(self, state: ConfigState, on_change: Callable[[], None],
                     interval_s: float = 0.25) -> None:
        """Apply records past the last one read (by ``load`` or earlier here) until cancelled;
        ``on_change`` after each fetch that applied any. Reconnects on its own."""
        backoff = self.retry_backoff_s
        while True:
            consumer = self._consumer()
            try:
                await self.ensure_topic()
                await consumer.start()
                consumer.assign([self._tp])
                consumer.seek(self._tp, self._position)
                backoff = self.retry_backoff_s
                while True:
                    batch = await consumer.getmany(self._tp, timeout_ms=max(1, int(interval_s * 1000)))
                    applied = self._apply(state, batch)
                    self._position = await consumer.position(self._tp)
                    if applied:
                        on_change()
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # top of a background loop: log, back off, reconnect
                log.error("config follower: %r; retrying in %.1fs", exc, backoff,
                          extra={"event": "config_follow_error"})
            finally:
                await consumer.stop()
            await asyncio.sleep(backoff)
            backoff = min(_MAX_BACKOFF_S, backoff * 2)

    async def ensure_topic(self) -> None:
        """Create the topic if it does not exist (1 partition, compacted) and wait for its leader."""
        if self._topic_ready:
            return
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="llmgw-config-admin",
                                    request_timeout_ms=int(self.timeout_s * 1000))
        try:
            async with asyncio.timeout(self.timeout_s):
                await admin.start()
                if self.topic not in await admin.list_topics():
                    await self._create(admin)
                await self._wait_for_leader(admin)
        except _AWAY as exc:
            raise ConfigLogUnavailable(f"config topic {self.topic} at Kafka {self.bootstrap}: "
                                       f"{self._why(exc)}") from None
        finally:
            await admin.close()
        self._topic_ready = True

    async def _create(self, admin: AIOKafkaAdminClient) -> None:
        brokers = len((await admin.describe_cluster())["brokers"])
        replicas = min(3, max(1, brokers))     # as ledger.topics.ensure_topics does by default
        topic = NewTopic(self.topic, num_partitions=1, replication_factor=replicas,
                         topic_configs={**_CONFIG_TOPIC_CONFIGS, "min.insync.replicas": str(min(2, replicas))})
        response = await admin.create_topics([topic])
        for name, code, *message in response.topic_errors:
            err = for_code(code)
            if code == 0 or err is TopicAlreadyExistsError:   # another process won the race: fine
                continue
            raise err(f"create topic {name!r}: {message[0] if message else ''}")
        log.info("created config topic %s", self.topic, extra={"event": "config_topic_created"})

    async def _wait_for_leader(self, admin: AIOKafkaAdminClient) -> None:
        while True:
            for meta in await admin.describe_topics([self.topic]):
                if meta["error_code"] == 0 and any(p["error_code"] == 0 and p["leader"] >= 0
                                                   for p in meta["partitions"]):
                    return
            await asyncio.sleep(0.1)

    def _why(self, exc: BaseException) -> str:
        return f"no answer within {self.timeout_s:.0f}s" if isinstance(exc, TimeoutError) else str(exc)

    def _consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(bootstrap_servers=self.bootstrap, client_id="llmgw-config",
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                isolation_level="read_committed")

    @staticmethod
    def _apply(state: ConfigState, batches: dict[TopicPartition, list[Any]]) -> int:
        n = 0
        for records in batches.values():
            for r in records:
                if r.value is None:      # a tombstone written by some other tool: treat as delete
                    if r.key is not None:
                        state.records.pop(r.key.decode(), None)
                        state.version += 1
                        n += 1
                    continue
                try:
                    state.apply(ConfigRecord.decode(r.value))
                except (ValueError, KeyError, TypeError) as exc:
                    log.error("config topic: skipping unreadable record at offset %d: %r", r.offset, exc,
                              extra={"event": "config_bad_record"})
                    continue
                n += 1
        return n


__all__ = ["ConfigLogUnavailable", "KafkaConfigLog"]
