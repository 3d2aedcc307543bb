"""What every ledger driver offers the gateway: submit, lifecycle, and its health.

Two drivers implement it: ``EmbeddedLedger`` (a local log folded in-process)
and ``KafkaLedger`` (events to Kafka, budgets from the folded snapshot topic).
The gateway and its readiness probe see only this protocol, so neither needs to
know which driver runs, and nothing probes a driver for optional attributes.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

from llmgw.core.events import UsageEvent
from llmgw.ledger.spend import SpendView
from llmgw.ledger.started import CallStarted

EMBEDDED = "embedded"
KAFKA = "kafka"
UNKNOWN_WORKERS = -1


@dataclass(frozen=True, slots=True)
class LedgerHealth:
    mode: str                        # EMBEDDED or KAFKA
    # Kafka: the snapshot follower has caught up once; embedded: always (it folds in-process).
    snapshot_ready: bool
    # When the budget snapshot was last known current; None where it always is (embedded).
    last_snapshot_ms: int | None
    backlog_events: int              # settled calls the folded totals do not show yet
    spool_depth_events: int = 0      # Kafka: events parked on disk until the broker takes them
    errors: int = 0                  # Kafka: failed sends and connects since start
    # Kafka: since when (ms) the workers' fold has not advanced while the usage topic had events to
    # fold (0: it keeps up); the unfolded offsets per usage partition; members of the workers' group.
    fold_behind_since_ms: int = 0
    fold_lag: tuple[tuple[int, int], ...] = ()
    ledger_workers: int = UNKNOWN_WORKERS

    def snapshot_age_s(self, now_ms: int | None = None) -> float:
        """How old the spend this replica decides on is: 0 where it folds in-process, infinite
        before a Kafka-mode replica first caught up; else the larger of the time since the follower
        was last at the end of the snapshot topic and the time the fold has been stuck."""
        last = self.last_snapshot_ms
        if last is None:
            return 0.0
        if not self.snapshot_ready or not last:
            return math.inf
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now - last) / 1000, self.fold_stalled_s(now))

    def fold_stalled_s(self, now_ms: int | None = None) -> float:
        """How long the fold has not advanced while there was something to fold (0: it keeps up)."""
        if not self.fold_behind_since_ms:
            return 0.0
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return max(0.0, (now - self.fold_behind_since_ms) / 1000)

    @property
    def fold_lag_records(self) -> int:
        return sum(n for _, n in self.fold_lag)


class Ledger(Protocol):
    view: SpendView

    def submit(self, event: UsageEvent) -> None:
        """Take one usage event; never blocks and never raises on trouble downstream."""

    def begin(self, started: CallStarted) -> None:
        """Before forwarding: make the call's started record durable (batched, no wait), so a
        gateway killed mid-call still gets the call charged (ledger/started.py)."""

    async def start(self) -> None: ...
    async def stop(self, timeout_s: float = 5.0) -> None: ...
    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every event submitted so far is durable (a batch marks itself charged after)."""
    async def recorded(self, event_ids: set[str]) -> set[str]:
        """Which of ``event_ids`` the ledger already counts: a batch charge a crash cut short is
        finished with the others only. Rare (recovery only), so it may read the whole log."""
    def health(self) -> LedgerHealth: ...


__all__ = ["EMBEDDED", "KAFKA", "UNKNOWN_WORKERS", "Ledger", "LedgerHealth"]
