"""Open holds, and the sweeper that frees the ones nobody settled.

Every reservation that holds money on a budget is listed here from
``Policy.reserve`` to ``Policy.release``. A call releases its own hold when it
settles (``call.py``); the sweeper is the backstop for a path that never does
(a bug, a task lost): it frees any hold older than the longest a call may
legitimately run, ``hold_max_age_s`` = ``first_byte_timeout_s`` (the upstream
may take that long to answer) + ``stream_max_s`` (the longest stream a hold
covers), logs each one and counts it (``llmgw_holds_swept_total``).

A swept hold is released through ``Policy.release``, which closes the
reservation: if the call does settle later, its event is still submitted (its
real spend counts) and its own release is a no-op, so nothing is released twice.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from .policy import Policy, Reservation
    from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.proxy")


def hold_max_age_s(settings: "Settings") -> float:
    return settings.first_byte_timeout_s + settings.stream_max_s


class OpenHolds:
    """Reservations holding money, oldest first (a dict keeps insertion order): O(1) per call."""

    __slots__ = ("_open", "swept", "swept_micro_usd")

    def __init__(self) -> None:
        self._open: dict[int, tuple["Reservation", float]] = {}
        self.swept = 0
        self.swept_micro_usd = 0

    def add(self, r: "Reservation", at_s: float | None = None) -> None:
        """``at_s``: when it was placed (monotonic), if the caller already read the clock."""
        self._open[id(r)] = (r, time.monotonic() if at_s is None else at_s)

    def discard(self, r: "Reservation") -> None:
        self._open.pop(id(r), None)

    def __len__(self) -> int:
        return len(self._open)

    @property
    def micro_usd(self) -> int:
        return sum(r.amount_micro_usd for r, _ in self._open.values())

    def older_than(self, cutoff_s: float) -> Iterator[tuple["Reservation", float]]:
        """Holds placed before ``cutoff_s`` (monotonic), oldest first; a snapshot, safe to release from."""
        old = []
        for r, at in self._open.values():
            if at >= cutoff_s:
                break
            old.append((r, at))
        return iter(old)


def sweep(policy: "Policy", max_age_s: float, now_s: float | None = None) -> int:
    """Free every hold older than ``max_age_s``; returns how many were freed."""
    now_s = time.monotonic() if now_s is None else now_s
    holds = policy.holds
    n = 0
    for r, at in holds.older_than(now_s - max_age_s):
        policy.release(r)        # closes it (a later settle releases nothing); keeps the worst-case rate charge
        holds.swept += 1
        holds.swept_micro_usd += r.amount_micro_usd
        n += 1
        log.warning("freed a hold nobody settled after %.0f s", now_s - at,
                    extra={"event": "hold_swept", "budget_id": r.holds[0].key if r.holds else "",
                           "amount_micro_usd": r.amount_micro_usd, "age_s": round(now_s - at, 3)})
    return n


async def sweep_forever(policy: "Policy", max_age_s: float) -> None:
    """The sweeper's loop: a pass every second (or a quarter of ``max_age_s`` if shorter)."""
    interval_s = max(0.01, min(1.0, max_age_s / 4))
    while True:
        await asyncio.sleep(interval_s)
        try:
            sweep(policy, max_age_s)
        except Exception:        # top of a background loop: log and go on
            log.exception("hold sweep failed", extra={"event": "hold_sweep_error"})
