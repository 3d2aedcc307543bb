"""Where fired alerts are kept: what makes "once" survive a restart.

One ``AlertRecord`` per alert key (``budget_id|window_start|threshold``): the
alert, whether it was delivered or superseded, and one ``Delivery`` per
webhook. The latest record of a key wins, as on a compacted topic; the
evaluator writes a record *before* delivering it and again with each
delivery's result.

- Embedded: ``<data_dir>/alerts/alerts.jsonl``, one record per line, fsync'd
  before ``put`` returns; ``<data_dir>/alerts/lock`` (flock) keeps a second
  evaluator off the same directory. A torn last line (crash mid-write) was
  never acknowledged and is ignored.
- Kafka: the compacted one-partition topic ``{prefix}.alerts``, written by a
  transactional producer with the fixed id ``{prefix}-alerts``. Opening the
  store fences any previous evaluator (its next write fails with
  ``AlertStoreFenced`` and it stops) *before* the topic is read back with
  ``read_committed``, so two evaluators never both fire the same key.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, Mapping, Protocol, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import ProducerFenced, TopicAlreadyExistsError, for_code

from .alerts import Alert
from llmgw.core.files import atomic_write

log = logging.getLogger("llmgw.ledger.alerts")

FIRED, SUPERSEDED = "fired", "superseded"
PENDING, DELIVERED, REJECTED, FAILED, DROPPED = "pending", "delivered", "rejected", "failed", "dropped"
FINAL = frozenset({DELIVERED, REJECTED, FAILED, DROPPED})


class AlertStoreError(RuntimeError):
    """The alert store cannot be used (locked by another evaluator, unreachable)."""


class AlertStoreFenced(AlertStoreError):
    """A newer evaluator took over the Kafka alert topic; this one must stop."""


@dataclass(frozen=True, slots=True)
class Delivery:
    webhook_id: str
    status: str = PENDING         # pending, delivered, rejected (4xx), failed (gave up), dropped (webhook removed)
    attempts: int = 0
    http_status: int = 0
    error: str = ""
    done_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"webhook_id": self.webhook_id, "status": self.status, "attempts": self.attempts,
                "http_status": self.http_status, "error": self.error, "done_ms": self.done_ms}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Delivery":
        return cls(str(d["webhook_id"]), str(d.get("status", PENDING)), int(d.get("attempts", 0)),
                   int(d.get("http_status", 0)), str(d.get("error", "")), int(d.get("done_ms", 0)))


@dataclass(frozen=True, slots=True)
class AlertRecord:
    alert: Alert
    status: str                                 # fired, superseded
    deliveries: tuple[Delivery, ...] = ()

    @property
    def key(self) -> str:
        return self.alert.key

    @property
    def pending(self) -> list[str]:
        return [d.webhook_id for d in self.deliveries if d.status not in FINAL]

    def with_delivery(self, d: Delivery) -> "AlertRecord":
        rest = tuple(x for x in self.deliveries if x.webhook_id != d.webhook_id)
        return replace(self, deliveries=rest + (d,))

    def encode(self) -> bytes:
        return orjson.dumps({"alert": self.alert.to_dict(), "status": self.status,
                             "deliveries": [d.to_dict() for d in self.deliveries]})

    @classmethod
    def decode(cls, raw: bytes) -> "AlertRecord":
        d = orjson.loads(raw)
        return cls(Alert.from_dict(d["alert"]), str(d["status"]),
                   tuple(Delivery.from_dict(x) for x in d.get("deliveries") or ()))


class AlertStore(Protocol):
    async def open(self) -> dict[str, AlertRecord]:
        """Take ownership (lock or fence) and return the latest record of every key."""
    async def put(self, records: Sequence[AlertRecord]) -> None:
        """Durable when it returns; raises ``AlertStoreFenced`` if another evaluator took over."""
    async def forget(self, keys: Sequence[str]) -> None:
        """Drop these alerts for good (closed windows past retention): the store stays bounded."""
    async def close(self) -> None: ...


# -- embedded -------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> dict[str, AlertRecord]:
    """Latest record per key of an alerts file (complete lines only); for ``open`` and the CLI."""
    out: dict[str, AlertRecord] = {}
    if not path.exists():
        return out
    data = path.read_bytes()
    end = data.rfind(b"\n")
    for line in data[: end + 1].splitlines():
        if not line.strip():
            continue
        try:
            rec = AlertRecord.decode(line)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("alerts file %s: skipping unreadable line: %r", path, exc)
            continue
        out[rec.key] = rec
    return out


class FileAlertStore:
    def __init__(self, data_dir: str | Path) -> None:
        self.dir = Path(data_dir) / "alerts"
        self.path = self.dir / "alerts.jsonl"
        self._lock_file: IO[bytes] | None = None
        self._f: IO[bytes] | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> dict[str, AlertRecord]:
        # The evaluator opens the store from its supervising task, on the serving loop.
        return await asyncio.to_thread(self._open)

    def _open(self) -> dict[str, AlertRecord]:
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = open(self.dir / "lock", "ab")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            raise AlertStoreError(f"another alert evaluator holds {self.dir / 'lock'}") from None
        self._lock_file = lock
        records = read_jsonl(self.path)
        self._f = open(self.path, "ab")
        self._cut_torn_line()
        return records

    def _cut_torn_line(self) -> None:
        assert self._f is not None
        size = self.path.stat().st_size
        if size == 0:
            return
        with open(self.path, "rb") as f:
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            f.seek(0)
            cut = f.read().rfind(b"\n") + 1
        self._f.truncate(cut)
        log.warning("alerts file %s had a torn last line; truncated %d bytes", self.path, size - cut)

    def _append(self, blob: bytes) -> None:
        assert self._f is not None, "open() first"
        self._f.write(blob)
        self._f.flush()
        os.fsync(self._f.fileno())

    async def put(self, records: Sequence[AlertRecord]) -> None:
        if not records:
            return
        blob = b"".join(r.encode() + b"\n" for r in records)
        async with self._write_lock:
            await asyncio.to_thread(self._append, blob)

    async def forget(self, keys: Sequence[str]) -> None:
        """Rewrite the file without these keys (and without superseded lines), whole or not at all."""
        if not keys:
            return
        async with self._write_lock:
            await asyncio.to_thread(self._rewrite_without, frozenset(keys))

    def _rewrite_without(self, keys: frozenset[str]) -> None:
        assert self._f is not None, "open() first"
        live = [r for k, r in read_jsonl(self.path).items() if k not in keys]
        with atomic_write(self.path, binary=True) as f:
            f.write(b"".join(r.encode() + b"\n" for r in live))
        self._f.close()
        self._f = open(self.path, "ab")

    async def close(self) -> None:
        async with self._write_lock:
            await asyncio.to_thread(self._close)

    def _close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


# -- Kafka ----------------------------------------------------------------------------------------
async def ensure_alert_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> None:
    """Create ``{prefix}.alerts`` if missing: one partition (one order), compacted."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="llmgw-alerts-admin",
                                request_timeout_ms=int(timeout_s * 1000))
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            if topic not in await admin.list_topics():
                brokers = len((await admin.describe_cluster())["brokers"])
                replicas = min(3, max(1, brokers))
                new = NewTopic(topic, num_partitions=1, replication_factor=replicas,
                               topic_configs={"cleanup.policy": "compact", "segment.ms": str(3_600_000),
                                              "min.insync.replicas": str(min(2, replicas))})
                response = await admin.create_topics([new])
                for name, code, *message in response.topic_errors:
                    err = for_code(code)
                    if code != 0 and err is not TopicAlreadyExistsError:
                        raise err(f"create topic {name!r}: {message[0] if message else ''}")
            while True:
                (meta,) = await admin.describe_topics([topic])
                if meta["error_code"] == 0 and any(p["leader"] >= 0 for p in meta["partitions"]):
                    return
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AlertStoreError(f"Kafka at {bootstrap} did not create/describe {topic} in {timeout_s:.0f}s") from None
    finally:
        await admin.close()


async def read_alert_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> dict[str, AlertRecord]:
    """Latest committed record per key, read to the end offset (no fencing: safe for the CLI).

    Not ``topics.PartitionReader``: its ``assign([])`` before ``stop()`` makes aiokafka 0.14's stop
    hang for about a minute when the partition was empty (measured here).
    """
    out: dict[str, AlertRecord] = {}
    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, client_id="llmgw-alerts-reader",
                                enable_auto_commit=False, isolation_level="read_committed",
                                auto_offset_reset="earliest", request_timeout_ms=int(timeout_s * 1000))
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            await consumer.seek_to_beginning(tp)
            while await consumer.position(tp) < end:
                for records in (await consumer.getmany(tp, timeout_ms=500)).values():
                    for r in records:
                        if r.offset < end:
                            _apply(out, topic, r.key, r.value, r.offset)
    except TimeoutError:
        raise AlertStoreError(f"could not read {topic} from Kafka at {bootstrap} within {timeout_s:.0f}s") from None
    finally:
        await consumer.stop()
    return out


def _apply(out: dict[str, AlertRecord], topic: str, key: bytes | None, value: bytes | None, offset: int) -> None:
    if key is None:
        return
    if value is None:
        out.pop(key.decode(), None)
        return
    try:
        rec = AlertRecord.decode(value)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("alert topic %s: skipping unreadable record at offset %d: %r", topic, offset, exc)
        return
    out[rec.key] = rec


class KafkaAlertStore:
    def __init__(self, bootstrap: str, topic: str, transactional_id: str, *, timeout_s: float = 30.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.transactional_id = transactional_id
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._write_lock = asyncio.Lock()

    async def open(self) -> dict[str, AlertRecord]:
        await ensure_alert_topic(self.bootstrap, self.topic, self.timeout_s)
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, transactional_id=self.transactional_id,
                                    enable_idempotence=True, acks="all", client_id="llmgw-alerts")
        try:
            async with asyncio.timeout(self.timeout_s):
                await producer.start()        # init_transactions: fences the previous evaluator
        except BaseException:
            await producer.stop()
            raise
        self._producer = producer
        return await read_alert_topic(self.bootstrap, self.topic, self.timeout_s)

    async def put(self, records: Sequence[AlertRecord]) -> None:
        await self._write([(r.key, r.encode()) for r in records])

    async def forget(self, keys: Sequence[str]) -> None:
        """Tombstones: compaction removes the keys from the topic (after ``delete.retention.ms``)."""
        await self._write([(k, None) for k in keys])

    async def _write(self, records: Sequence[tuple[str, bytes | None]]) -> None:
        if not records:
            return
        async with self._write_lock:
            producer = self._producer
            if producer is None:
                raise AlertStoreError(f"alert store on {self.topic} is closed (after an earlier error); reopen it")
            try:
                async with asyncio.timeout(self.timeout_s):
                    async with producer.transaction():
                        futs = [await producer.send(self.topic, value, key=key.encode(), partition=0)
                                for key, value in records]
                        acks = await asyncio.gather(*futs, return_exceptions=True)
                        failed = next((a for a in acks if isinstance(a, BaseException)), None)
                        if failed is not None:
                            raise failed          # aborts the transaction
            except ProducerFenced:
                _retrieve_fatal(producer)
                await self.close()
                raise AlertStoreFenced(f"another alert evaluator took over {self.topic} "
                                       f"(transactional id {self.transactional_id})") from None
            except Exception as exc:
                # The transaction's outcome is unknown: drop the producer. The driver reopens the
                # store (fence, read back) rather than guess which records landed.
                await self.close()
                raise AlertStoreError(f"writing {len(records)} alert records to {self.topic} failed: {exc!r}") from exc

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await producer.stop()
            except Exception as exc:  # closing after a failure: report, never mask the first error
                log.warning("alert store producer did not close cleanly: %r", exc)
            finally:
                _retrieve_fatal(producer)


def _retrieve_fatal(producer: AIOKafkaProducer) -> None:
    """Mark a fenced producer's internal failure as seen: we raised it already as AlertStoreFenced.

    aiokafka 0.14 leaves it on its sender task and transaction waiter, which otherwise log "Future
    exception was never retrieved" at garbage collection. Private attributes, read defensively.
    """
    sender = getattr(producer, "_sender", None)
    txn = getattr(producer, "_txn_manager", None)
    acc = getattr(producer, "_message_accumulator", None)
    batches = [b for q in getattr(acc, "_batches", {}).values() for b in q] + list(getattr(acc, "_pending_batches", ()))
    futs = [getattr(sender, "sender_task", None), getattr(txn, "_transaction_waiter", None),
            *(getattr(b, "_drain_waiter", None) for b in batches), *(getattr(b, "future", None) for b in batches)]
    for fut in futs:
        if isinstance(fut, asyncio.Future) and fut.done() and not fut.cancelled():
            fut.exception()


__all__ = ["AlertRecord", "AlertStore", "AlertStoreError", "AlertStoreFenced", "DELIVERED", "DROPPED",
           "Delivery", "FAILED", "FIRED", "FileAlertStore", "KafkaAlertStore", "PENDING", "REJECTED",
           "SUPERSEDED", "ensure_alert_topic", "read_alert_topic", "read_jsonl"]
