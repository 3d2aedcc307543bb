"""What the ledger looks like from this replica: snapshot age, spool, backlog, readiness.

Read from the driver's ``health()`` (``ledger.driver.LedgerHealth``): a
Kafka-mode replica decides budgets on a snapshot read from Kafka, whose age is
``now - last_snapshot_ms`` (when the follower last found itself at the end of
every partition; infinite before the first catch-up); the embedded ledger folds
in-process, so its snapshot is always current (age 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ledger.driver import EMBEDDED, KAFKA, LedgerHealth


@dataclass(frozen=True, slots=True)
class LedgerState:
    ready: bool
    reason: str
    mode: str
    snapshot_age_s: float
    max_age_s: float
    spool_depth_events: int
    backlog_events: int
    producer_errors: int

    def body(self) -> dict[str, Any]:
        age = None if math.isinf(self.snapshot_age_s) else round(self.snapshot_age_s, 3)
        out: dict[str, Any] = {"status": "ready" if self.ready else "not_ready", "mode": self.mode,
                               "snapshot_age_s": age, "snapshot_max_age_s": self.max_age_s,
                               "spool_depth_events": self.spool_depth_events,
                               "ledger_backlog_events": self.backlog_events}
        if not self.ready:
            out["reason"] = self.reason
        return out


def ledger_state(health: LedgerHealth, started: bool, max_age_s: float, now_ms: int | None = None) -> LedgerState:
    age = health.snapshot_age_s(now_ms) if started else math.inf
    if not started:
        ready, reason = False, "the ledger has not started"
    elif health.mode == KAFKA and not health.snapshot_ready:
        ready, reason = False, "the budget snapshot is still being read from Kafka (not caught up yet)"
    elif age > max_age_s:
        ready, reason = False, (f"the budget snapshot is {age:.1f} s old, over the {max_age_s:g} s bound "
                                "(LLMGW_SNAPSHOT_MAX_AGE_S): is the ledger reachable?")
    else:
        ready, reason = True, ""
    return LedgerState(ready, reason, health.mode, age, max_age_s, health.spool_depth_events,
                       health.backlog_events, health.errors)


NOT_STARTED = LedgerHealth(EMBEDDED, snapshot_ready=False, last_snapshot_ms=None, backlog_events=0)
