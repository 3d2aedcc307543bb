"""The last config a Kafka-mode gateway applied, kept on its own disk for a start without Kafka.

Keys, budgets and admins live in the config topic (``ledger.kafka_config``). A
gateway that restarts while Kafka is away (an OOM kill, a roll, a scale-up
during an outage) cannot read them, and without them it can authenticate no
one. So each gateway writes the records it last applied to
``<data_dir>/config-cache.jsonl`` (``core.files.atomic_write``: whole or
not at all, 0600), and a start that cannot read the topic starts from that
file and serves per the failure policy (``proxy/failure.py``) until the topic
answers again, when the log's state replaces the cached one in one step.

The file names the topic it came from in its first line; a cache of another
topic (another ``LLMGW_TOPIC_PREFIX``) is never used. What the cache cannot
know is what changed on the topic while this gateway was down: a key revoked
meanwhile still works here until Kafka answers. That is the same blind spot as
a running gateway's during an outage, and the docs say so.
"""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Callable

import orjson

from llmgw.ledger.configlog import ConfigLog
from llmgw.core.config import ConfigRecord, ConfigState
from llmgw.core.files import atomic_write
from .kafka_config import ConfigLogUnavailable

log = logging.getLogger("llmgw.ledger.config")

CACHE_NAME = "config-cache.jsonl"


class ConfigCache:
    def __init__(self, data_dir: str | Path, topic: str) -> None:
        self.path = Path(data_dir) / CACHE_NAME
        self.topic = topic
        self.saved_version = -1        # the state's version last written

    def load(self) -> ConfigState | None:
        """The cached state, or None when there is none for this topic (or it is unreadable)."""
        try:
            lines = self.path.read_bytes().splitlines()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("config cache %s unreadable: %r", self.path, exc, extra={"event": "config_cache_unreadable"})
            return None
        try:
            head = orjson.loads(lines[0]) if lines else {}
            if head.get("topic") != self.topic:
                log.warning("config cache %s is of topic %r, not %r: not used", self.path, head.get("topic"),
                            self.topic, extra={"event": "config_cache_other_topic"})
                return None
            state = ConfigState()
            for line in lines[1:]:
                state.apply(ConfigRecord.decode(line))
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            log.error("config cache %s unreadable: %r", self.path, exc, extra={"event": "config_cache_unreadable"})
            return None
        return state

    def save(self, records: list[ConfigRecord]) -> None:
        """Replace the file with these records (blocking: call it off the event loop)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        head = orjson.dumps({"topic": self.topic, "saved_ms": int(time.time() * 1000), "records": len(records)})
        with atomic_write(self.path, binary=True) as f:
            f.write(head + b"\n")
            for rec in records:
                f.write(rec.encode() + b"\n")

    async def keep(self, state: ConfigState, changed: asyncio.Event) -> None:
        """Write the state each time ``changed`` is set, until cancelled (several changes, one write)."""
        while True:
            await changed.wait()
            changed.clear()
            if state.version == self.saved_version:
                continue
            version, records = state.version, list(state.records.values())
            try:
                await asyncio.to_thread(self.save, records)
            except OSError as exc:    # a full disk must not stop the gateway; the next change retries
                log.error("config cache %s not written: %r", self.path, exc, extra={"event": "config_cache_error"})
                continue
            self.saved_version = version


async def load_or_cached(config_log: ConfigLog, cache: ConfigCache) -> tuple[ConfigState, bool]:
    """``(state, current)``: the log's state, or (Kafka away) the cached one with ``current`` False:
    empty when there is no cache, so the gateway still starts, refuses every key and waits for Kafka."""
    try:
        return await config_log.load(), True
    except ConfigLogUnavailable as exc:
        state = cache.load()
        if state is None:
            log.error("config topic unavailable (%s) and no config cache at %s: starting with no keys or "
                      "budgets; every call is refused until Kafka answers", exc, cache.path,
                      extra={"event": "config_start_empty"})
            return ConfigState(), False
        log.error("config topic unavailable (%s): starting from the config cache %s (%d records); "
                  "changes made meanwhile arrive when Kafka answers", exc, cache.path, len(state.records),
                  extra={"event": "config_start_cached"})
        return state, False


async def follow_cached(config_log: ConfigLog, cache: ConfigCache, state: ConfigState, current: bool,
                        on_change: Callable[[], None], on_current: Callable[[], None] = lambda: None,
                        retry_s: float = 1.0, retry_max_s: float = 10.0) -> None:
    """Follow the log into ``state`` and keep the cache written, until cancelled.

    Started from the cache (``current`` False), it first reads the whole log again until Kafka
    answers, then swaps the log's records in at once (a key revoked meanwhile is never briefly
    valid, as it would be while replaying its history record by record), then follows."""
    changed = asyncio.Event()

    def applied() -> None:
        on_change()
        changed.set()

    keeper = asyncio.get_running_loop().create_task(cache.keep(state, changed), name="llmgw-config-cache")
    try:
        if not current:
            fresh = await _load_until_answered(config_log, retry_s, retry_max_s)
            state.records = fresh.records
            state.version += fresh.version + 1
            log.warning("config topic answered again: %d records replace the cached config", len(state.records),
                        extra={"event": "config_resynced"})
            applied()
            on_current()
        changed.set()                        # the state as loaded: on disk for the next start
        await config_log.follow(state, applied)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def _load_until_answered(config_log: ConfigLog, retry_s: float, retry_max_s: float) -> ConfigState:
    backoff = retry_s
    while True:
        try:
            return await config_log.load()
        except ConfigLogUnavailable as exc:
            log.warning("config topic still unavailable (%s); retrying in %.1fs", exc, backoff,
                        extra={"event": "config_still_unavailable"})
        await asyncio.sleep(backoff)
        backoff = min(retry_max_s, backoff * 2)


__all__ = ["CACHE_NAME", "ConfigCache", "follow_cached", "load_or_cached"]
