"""The audit log, derived from the config log's history: who changed what, when, from what, to what, why.

Every change is already a ``ConfigRecord`` (with ``actor`` and ``reason``), and
the log keeps them all, so the audit log is a pure function of the history:
``before`` is the previous record of the same id. ``audit_entries`` is that
function; the analytics side can insert its output into ClickHouse as is.

In Kafka mode the config topic is compacted: old records of an id disappear
once compaction runs, so the history (and this log) then only goes back as far
as the latest record per id. Landing ``audit_entries`` in ClickHouse keeps it all.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterable

from ledger.configlog import ConfigLog, ConfigRecord, FileConfigLog

from .timeutil import iso_ms

# Hashes of secrets are never shown, not even to an owner reading the audit log.
_REDACT = ("sha256",)


def _redacted(data: dict[str, Any] | None) -> dict[str, Any] | None:
    if data is None:
        return None
    return {k: ("<redacted>" if k in _REDACT else v) for k, v in data.items()}


class AuditTrail:
    """The audit entries of a config-log history, derived as the history grows.

    ``before`` of an entry is the previous record of the same id, so deriving the
    entries of new records needs only the latest data per id, not the history again:
    a follower hands each batch of new records to ``extend``.
    """

    __slots__ = ("_last", "_seq")

    def __init__(self) -> None:
        self._last: dict[str, dict[str, Any] | None] = {}
        self._seq = 0

    def extend(self, records: Iterable[ConfigRecord]) -> list[dict[str, Any]]:
        out = []
        last = self._last
        for rec in records:
            before = last.get(rec.id)
            after = rec.data
            action = "delete" if after is None else ("create" if before is None else "update")
            changed = sorted(k for k in {*(before or {}), *(after or {})}
                             if (before or {}).get(k) != (after or {}).get(k))
            out.append({"seq": self._seq, "ts_ms": rec.ts_ms, "time": iso_ms(rec.ts_ms), "actor": rec.actor,
                        "reason": rec.reason, "id": rec.id, "type": rec.type, "action": action,
                        "before": _redacted(before), "after": _redacted(after), "changed": changed})
            last[rec.id] = after
            self._seq += 1
        return out


def audit_entries(records: Iterable[ConfigRecord]) -> list[dict[str, Any]]:
    """One entry per record, in log order: ``{seq, ts_ms, time, actor, reason, id, type, action,
    before, after, changed}``. ``action`` is create, update or delete; ``changed`` lists the
    top-level fields that differ. Secrets' hashes are redacted."""
    return AuditTrail().extend(records)


def select(entries: list[dict[str, Any]], *, since_ms: int = 0, types: tuple[str, ...] = (),
           actor: str = "", record_id: str = "", limit: int = 0) -> list[dict[str, Any]]:
    picked = [e for e in entries
              if e["ts_ms"] >= since_ms and (not types or e["type"] in types)
              and (not actor or actor in (e["actor"], e["actor"].partition("#")[0]))
              and (not record_id or e["id"] == record_id)]
    return picked[-limit:] if limit else picked


def touches_workspaces(entry: dict[str, Any], workspaces: tuple[str, ...]) -> bool:
    """Whether an entry concerns one of these ORG/WORKSPACEs (for a workspace admin's view)."""
    for side in (entry["before"], entry["after"]):
        if not side:
            continue
        org, ws = side.get("org"), side.get("workspace")
        if entry["type"] == "workspace":
            ws = side.get("name")
        if org and ws and f"{org}/{ws}" in workspaces:
            return True
    return False


# -- reading the history -----------------------------------------------------------------------
def _file_history(path: Path, position: int) -> tuple[list[ConfigRecord], int]:
    """Complete lines from byte ``position`` on; a torn last line waits for its newline."""
    if not path.exists():
        return [], position
    with open(path, "rb") as f:
        f.seek(position)
        data = f.read()
    end = data.rfind(b"\n")
    if end < 0:
        return [], position
    return [ConfigRecord.decode(line) for line in data[: end + 1].splitlines() if line.strip()], position + end + 1


async def read_history(log: ConfigLog) -> list[ConfigRecord]:
    """Every record the log still holds, in order (file: all of them; Kafka: what compaction left)."""
    return (await read_history_since(log, 0))[0]


async def read_history_since(log: ConfigLog, position: int) -> tuple[list[ConfigRecord], int]:
    """The records past ``position`` (a byte offset in the file, an offset on Kafka) and the position
    after them: a follower reads only what was appended since its last pass."""
    if isinstance(log, FileConfigLog):
        return await asyncio.to_thread(_file_history, log.path, position)
    return await _kafka_history(log, position)


async def _kafka_history(log: Any, position: int) -> tuple[list[ConfigRecord], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    await log.ensure_topic()
    tp = TopicPartition(log.topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=log.bootstrap, client_id="llmgw-audit",
                                enable_auto_commit=False, auto_offset_reset="earliest")
    out: list[ConfigRecord] = []
    try:
        async with asyncio.timeout(log.timeout_s):
            await consumer.start()
            consumer.assign([tp])
            consumer.seek(tp, position)
            end = (await consumer.end_offsets([tp]))[tp]
            while (position := await consumer.position(tp)) < end:
                for batch in (await consumer.getmany(tp, timeout_ms=500)).values():
                    out.extend(ConfigRecord.decode(m.value) for m in batch if m.value is not None)
    finally:
        await consumer.stop()
    return out, position
