"""What the ledger looks like from this replica: snapshot age, spool, backlog, readiness.

Read from the driver's ``health()`` (``ledger.driver.LedgerHealth``): a
Kafka-mode replica decides budgets on a snapshot read from Kafka, whose age is
the larger of ``now - last_snapshot_ms`` (when the follower last found itself
at the end of every partition; infinite before the first catch-up) and the
time the workers' fold has not advanced while the usage topic had events to
fold (``ledger.fold_watch``: a stopped worker leaves the snapshot topic still,
so the follower alone would call it fresh); the embedded ledger folds
in-process, so its snapshot is always current (age 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from llmgw.ledger.driver import EMBEDDED, KAFKA, LedgerHealth


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
    fold_stalled_s: float = 0.0
    fold_lag: tuple[tuple[int, int], ...] = ()
    ledger_workers: int = -1

    @property
    def fold_lag_records(self) -> int:
        return sum(n for _, n in self.fold_lag)

    def body(self) -> dict[str, Any]:
        age = None if math.isinf(self.snapshot_age_s) else round(self.snapshot_age_s, 3)
        out: dict[str, Any] = {"status": "ready" if self.ready else "not_ready", "mode": self.mode,
                               "snapshot_age_s": age, "snapshot_max_age_s": self.max_age_s,
                               "spool_depth_events": self.spool_depth_events,
                               "ledger_backlog_events": self.backlog_events}
        if self.mode == KAFKA:
            out.update({"fold_stalled_s": round(self.fold_stalled_s, 3), "fold_lag_records": self.fold_lag_records,
                        "fold_lag_by_partition": {str(p): n for p, n in self.fold_lag},
                        "ledger_workers": None if self.ledger_workers < 0 else self.ledger_workers})
        if not self.ready:
            out["reason"] = self.reason
        return out


def ledger_state(health: LedgerHealth, started: bool, max_age_s: float, now_ms: int | None = None) -> LedgerState:
    age = health.snapshot_age_s(now_ms) if started else math.inf
    stalled = health.fold_stalled_s(now_ms)
    if not started:
        ready, reason = False, "the ledger has not started"
    elif health.mode == KAFKA and not health.snapshot_ready:
        ready, reason = False, "the budget snapshot is still being read from Kafka (not caught up yet)"
    elif age > max_age_s and stalled >= age:
        workers = "unknown" if health.ledger_workers < 0 else str(health.ledger_workers)
        ready, reason = False, (f"the ledger workers have not folded the usage topic for {stalled:.1f} s "
                                f"({health.fold_lag_records} records waiting, {workers} workers in the group), "
                                f"over the {max_age_s:g} s bound (LLMGW_SNAPSHOT_MAX_AGE_S): is a ledger "
                                "worker running?")
    elif age > max_age_s:
        ready, reason = False, (f"the budget snapshot is {age:.1f} s old, over the {max_age_s:g} s bound "
                                "(LLMGW_SNAPSHOT_MAX_AGE_S): is the ledger reachable?")
    else:
        ready, reason = True, ""
    return LedgerState(ready, reason, health.mode, age, max_age_s, health.spool_depth_events,
                       health.backlog_events, health.errors, stalled, health.fold_lag, health.ledger_workers)


NOT_STARTED = LedgerHealth(EMBEDDED, snapshot_ready=False, last_snapshot_ms=None, backlog_events=0)
