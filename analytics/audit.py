"""The audit log in ClickHouse: every configuration change, kept after the config log compacts.

Entries are what ``ledger.audit.audit_entries(records)`` derives from the config
log's history (``{ts_ms, actor, reason, id, type, action, before, after,
changed, ...}``: before is the previous record of the same id, secrets' hashes
redacted). ``insert_entries`` lands them in ``audit_log`` (migration 003),
``before``/``after`` as JSON text. Landing the same history again adds nothing:
each entry has a key hashed from (id, time, actor, after), and keys already
stored are skipped (the table is a ReplacingMergeTree on it as well, read FINAL).

    SELECT ts, actor, action, id, JSONExtractString(after, 'window') AS window, reason
    FROM audit_log FINAL WHERE type = 'budget' ORDER BY ts DESC LIMIT 20
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from clickhouse_connect.driver.client import Client

from llmgw.analytics.store import check_identifier
from llmgw.core.config import ConfigRecord
from llmgw.ledger.audit import audit_entries

_COLUMNS = ("ts", "actor", "type", "id", "action", "before", "after", "changed", "reason", "entry_key")


def entry_key(entry: Mapping[str, Any]) -> str:
    """Stable identity of one change: the same record in any replay of the history hashes the same."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (entry["id"], str(entry["ts_ms"]), entry.get("actor") or "",
                 orjson.dumps(entry.get("after"), option=orjson.OPT_SORT_KEYS).decode()):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def entries_from_records(records: Iterable[ConfigRecord]) -> list[dict[str, Any]]:
    """Audit entries of a config-log history, as the admin API shows them (``ledger.audit.audit_entries``)."""
    return audit_entries(records)


def _row(entry: Mapping[str, Any]) -> list[Any]:
    def as_json(value: Any) -> str:
        return "" if value is None else orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()

    return [datetime.fromtimestamp(int(entry["ts_ms"]) / 1000, tz=timezone.utc), entry.get("actor") or "",
            entry["type"], entry["id"], entry.get("action") or "", as_json(entry.get("before")),
            as_json(entry.get("after")), list(entry.get("changed") or ()), entry.get("reason") or "",
            entry_key(entry)]


def insert_entries(client: Client, db: str, entries: Sequence[Mapping[str, Any]]) -> int:
    """Store audit entries not stored yet; return how many were written."""
    db = check_identifier(db)
    rows: dict[str, list[Any]] = {}
    for entry in entries:
        row = _row(entry)
        rows.setdefault(row[-1], row)
    if not rows:
        return 0
    known = {r[0] for r in client.query(
        f"SELECT entry_key FROM {db}.audit_log WHERE entry_key IN {{keys:Array(String)}}",
        parameters={"keys": list(rows)}).result_rows}
    fresh = [row for key, row in sorted(rows.items()) if key not in known]
    if fresh:
        client.insert("audit_log", fresh, column_names=_COLUMNS, database=db)
    return len(fresh)


def insert_records(client: Client, db: str, records: Iterable[ConfigRecord]) -> int:
    """Land a config-log history (``ledger.audit.read_history``) in ``audit_log``."""
    return insert_entries(client, db, entries_from_records(records))


def recent(client: Client, db: str, limit: int = 50, types: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The latest changes, newest first, ``before``/``after`` decoded."""
    db = check_identifier(db)
    result = client.query(
        f"SELECT toUnixTimestamp64Milli(ts), actor, type, id, action, before, after, changed, reason"
        f" FROM {db}.audit_log FINAL"
        " WHERE empty({types:Array(String)}) OR has({types:Array(String)}, type)"
        " ORDER BY ts DESC, id LIMIT {limit:UInt32}",
        parameters={"types": list(types), "limit": limit})
    return [{"ts_ms": int(r[0]), "actor": r[1], "type": r[2], "id": r[3], "action": r[4],
             "before": orjson.loads(r[5]) if r[5] else None, "after": orjson.loads(r[6]) if r[6] else None,
             "changed": list(r[7]), "reason": r[8]} for r in result.result_rows]


__all__ = ["entries_from_records", "entry_key", "insert_entries", "insert_records", "recent"]
