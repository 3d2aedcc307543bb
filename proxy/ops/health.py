"""What the ledger looks like from this replica: snapshot age, spool, backlog, readiness.

Works on any ledger by duck typing, so this module needs neither driver:

- A ledger with ``last_snapshot_ms`` (the Kafka ledger's snapshot follower)
  decides budgets on a snapshot read from Kafka. Its age is ``now -
  last_snapshot_ms``: when the follower last found itself at the end of
  every partition. Before ``snapshot_ready`` (the first catch-up) the age is
  infinite.
- Any other ledger (the embedded one) folds in-process: its snapshot is
  always current once it started, so its age is 0.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any


def snapshot_age_s(ledger: Any, now_ms: int | None = None) -> float:
    last = getattr(ledger, "last_snapshot_ms", None)
    if last is None:
        return 0.0
    if not getattr(ledger, "snapshot_ready", True) or not last:
        return math.inf
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return max(0.0, (now - int(last)) / 1000)


def is_kafka(ledger: Any) -> bool:
    return getattr(ledger, "last_snapshot_ms", None) is not None


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


def ledger_state(ledger: Any, started: bool, max_age_s: float, now_ms: int | None = None) -> LedgerState:
    kafka = is_kafka(ledger)
    stats: dict[str, Any] = {}
    if callable(getattr(ledger, "stats", None)):
        stats = ledger.stats()
    spool = int(stats.get("spool_depth_events", 0))
    if hasattr(ledger, "backlog_events"):        # Kafka: submitted, not acked yet (memory + spool)
        backlog = int(ledger.backlog_events)
    else:                                        # embedded: settled calls not yet durable and folded
        backlog = int(getattr(getattr(ledger, "view", None), "local_backlog", 0))
    errors = int(stats.get("send_failures", 0)) + int(stats.get("connect_failures", 0))
    age = snapshot_age_s(ledger, now_ms) if started else math.inf
    if not started:
        ready, reason = False, "the ledger has not started"
    elif kafka and not getattr(ledger, "snapshot_ready", True):
        ready, reason = False, "the budget snapshot is still being read from Kafka (not caught up yet)"
    elif age > max_age_s:
        ready, reason = False, (f"the budget snapshot is {age:.1f} s old, over the {max_age_s:g} s bound "
                                "(LLMGW_SNAPSHOT_MAX_AGE_S): is the ledger reachable?")
    else:
        ready, reason = True, ""
    return LedgerState(ready, reason, "kafka" if kafka else "embedded", age, max_age_s, spool, backlog, errors)
