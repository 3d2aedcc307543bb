"""The audit log as the admin API filters it: by time, type, actor, record id, workspace.

The entries themselves are derived from the config log's history in ``ledger/audit.py``
(``audit_entries``, ``AuditTrail``): the analytics side lands them in ClickHouse too, so they
live below both.
"""
from __future__ import annotations

from typing import Any


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


