"""The audit log in ClickHouse: config-log history in, who/when/before/after/why out, each change once."""
from __future__ import annotations

from llmgw.analytics import audit
from llmgw.core.config import ConfigRecord
from llmgw.proxy import keys as K
from llmgw.core.budgets import Budget
from tests.fixtures.chdb import NOV_4_MS, AnalyticsDB


def _history() -> list[ConfigRecord]:
    _, key = K.mint("acme", "backend", "alice", actor="admin:ops")
    set_ = Budget("user", "alice", "day", 50_000_000, org="acme").record(actor="admin:ops", reason="pilot")
    data = dict(set_.data or {}, limit_micro_usd=80_000_000)
    raise_ = ConfigRecord(set_.id, "budget", data, set_.ts_ms + 1000, "admin:finance", "Q4 launch")
    revoke = ConfigRecord(key.id, "key", None, key.ts_ms + 2000, "admin:ops", "laptop lost")
    return [key, set_, raise_, revoke]


def test_history_lands_once_with_before_and_after(analytics_db: AnalyticsDB) -> None:
    client, db = analytics_db.client, analytics_db.database
    history = _history()
    assert audit.insert_records(client, db, history) == 4
    assert audit.insert_records(client, db, history) == 0        # the same history again
    assert audit.insert_records(client, db, history[:2]) == 0    # a shorter replay (compacted log)

    budget_changes = audit.recent(client, db, types=["budget"])
    assert [(e["action"], e["actor"], e["reason"]) for e in budget_changes] == [
        ("update", "admin:finance", "Q4 launch"), ("create", "admin:ops", "pilot")]
    newest = budget_changes[0]
    assert newest["before"]["limit_micro_usd"] == 50_000_000 and newest["after"]["limit_micro_usd"] == 80_000_000
    assert newest["changed"] == ["limit_micro_usd"] and newest["ts_ms"] == history[2].ts_ms

    [revoked, created] = audit.recent(client, db, types=["key"])
    assert revoked["action"] == "delete" and revoked["after"] is None and revoked["reason"] == "laptop lost"
    assert created["after"]["sha256"] == "<redacted>"          # a key's hash never reaches ClickHouse
    stored = client.query(f"SELECT count() FROM {db}.audit_log").result_rows[0][0]
    assert stored == 4


def test_entries_from_the_admin_part(analytics_db: AnalyticsDB) -> None:
    """Entries built elsewhere (the admin API's /admin/audit) insert as they are."""
    rec = ConfigRecord("org:acme", "org", {"name": "acme"}, NOV_4_MS, "admin:owner-key", "")
    [entry] = audit.entries_from_records([rec])
    assert audit.insert_entries(analytics_db.client, analytics_db.database, [entry, entry]) == 1
    [row] = audit.recent(analytics_db.client, analytics_db.database)
    assert (row["type"], row["id"], row["action"], row["before"], row["after"]) == (
        "org", "org:acme", "create", None, {"name": "acme"})
