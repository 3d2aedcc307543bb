"""How many gateway proxies are alive right now, from heartbeats on a compacted topic.

Every proxy shares each budget's safety margin and each rate limit with the
others (``proxy/policy.py``, ``proxy/ratelimit.py``): N must be the live count,
not a number someone typed. Each proxy writes ``{prefix}.proxies`` a heartbeat
keyed by its gateway id every ``interval_s`` and a tombstone when it stops; each
counts the ids it heard from within ``ttl_s`` (by its own clock, so clock skew
between machines does not matter). A proxy that dies without a tombstone drops
out after ``ttl_s``; until then N is over-counted, which only makes shares
smaller: the safe direction.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger("llmgw.presence")


class Presence:
    def __init__(self, bootstrap: str, topic: str, gateway_id: str, on_count: Callable[[int], None],
                 interval_s: float = 2.0, ttl_s: float = 10.0) -> None:
        self.bootstrap, self.topic, self.gateway_id = bootstrap, topic, gateway_id
        self.on_count = on_count
        self.interval_s, self.ttl_s = interval_s, ttl_s
        self.last_heard: dict[str, float] = {}
        self.count = 1

    def live(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        heard = {gid for gid, t in self.last_heard.items() if now - t <= self.ttl_s}
        return max(1, len(heard | {self.gateway_id}))

    def _update(self) -> None:
        n = self.live()
        if n != self.count:
            log.info("live gateway proxies: %d (was %d)", n, self.count)
            self.count = n
            self.on_count(n)

    async def ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(self.topic, 1, 1, topic_configs={
                "cleanup.policy": "compact", "segment.ms": "3600000"})])
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    async def run(self) -> None:
        """Heartbeat and listen until cancelled; Kafka being away only pauses the count's updates."""
        while True:
            try:
                await self.ensure_topic()
                await self._run_connected()
            except asyncio.CancelledError:
                raise
            except Exception as exc:                  # Kafka away: keep the last count, try again
                log.warning("presence: %s; retrying", type(exc).__name__)
                await asyncio.sleep(self.interval_s)

    async def _run_connected(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks=1)
        consumer = AIOKafkaConsumer(self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest",
                                    enable_auto_commit=False, group_id=None)
        await producer.start()
        await consumer.start()
        key = self.gateway_id.encode()
        try:
            listen = asyncio.ensure_future(self._listen(consumer))
            try:
                while True:
                    await producer.send_and_wait(self.topic, orjson.dumps({"id": self.gateway_id}), key=key)
                    self._update()
                    await asyncio.sleep(self.interval_s)
            finally:
                listen.cancel()
                await asyncio.gather(listen, return_exceptions=True)
                try:                                  # leave at once rather than after ttl_s
                    await asyncio.wait_for(producer.send_and_wait(self.topic, None, key=key), 2.0)
                except Exception:
                    pass
        finally:
            await consumer.stop()
            await producer.stop()

    async def _listen(self, consumer: AIOKafkaConsumer) -> None:
        async for msg in consumer:
            gid = msg.key.decode() if msg.key else ""
            if not gid:
                continue
            if msg.value is None:
                self.last_heard.pop(gid, None)
            else:
                self.last_heard[gid] = time.monotonic()
            self._update()
