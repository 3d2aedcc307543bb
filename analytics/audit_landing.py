"""Landing the audit trail in ClickHouse, next to the usage events.

The config log is the truth for who changed what; ClickHouse keeps it after
Kafka compaction has dropped superseded records. A task follows the log: each
pass reads only the records appended since the last one (an idle gateway with
10,000 budgets decodes nothing), derives their entries and lands them. The
first pass reads the whole history once; entries already stored are skipped,
so a restart re-lands nothing. The embedded gateway runs it in-process; in
Kafka mode ``llmgw sink`` does.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from llmgw.analytics import audit, store
from llmgw.ledger.configlog import ConfigLog
from llmgw.ledger.audit import AuditTrail, read_history_since

log = logging.getLogger("llmgw.audit")


class AuditLanding:
    """Where the landing is in the log, and the entries read but not stored yet (a failed insert
    keeps them for the next pass instead of reading the history again)."""

    def __init__(self, config_log: ConfigLog, dsn: str, database: str | None = None) -> None:
        self.config_log, self.dsn, self.database = config_log, dsn, database
        self.position = 0
        self.trail = AuditTrail()
        self.pending: list[dict[str, Any]] = []

    async def land_new(self) -> int:
        """One pass: read what was appended, store what is not stored; how many entries were written."""
        records, self.position = await read_history_since(self.config_log, self.position)
        self.pending.extend(self.trail.extend(records))
        if not self.pending:
            return 0
        client = await asyncio.to_thread(store.connect, self.dsn, database=self.database)
        n = await asyncio.to_thread(audit.insert_entries, client, str(client.database), self.pending)
        self.pending = []
        return n


async def land_forever(config_log: ConfigLog, dsn: str, database: str | None = None,
                       interval_s: float = 5.0) -> None:
    landing = AuditLanding(config_log, dsn, database)
    while True:
        try:
            if n := await landing.land_new():
                log.info("landed %d audit entries in ClickHouse", n)
        except Exception:          # keep trying: the log and the store are both allowed to be away
            log.exception("could not land the audit log in ClickHouse; retrying")
        await asyncio.sleep(interval_s)
