"""The bounded wait for batch callers: queue for a rate window instead of a 429.

A caller opts in per request with ``x-llmgw-wait: SECONDS``. When a rate limit
would refuse the call, but capacity frees within ``min(SECONDS, max_wait_s)``,
the limiter books that capacity at once (so waiters are served in arrival
order and nobody can take a slot promised to a waiter) and the call sleeps
until its slot, then goes upstream. Longer waits, or more than
``max_waiters`` callers already waiting on this proxy, get the usual 429.

Only rate limits queue. Budgets are checked, and held, before the wait: a
call over a budget is refused at once, never parked.
"""
from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Mapping

from .errors import BadRequest

if TYPE_CHECKING:
    from .policy import Policy, Reservation

HEADER = "x-llmgw-wait"


class WaitQueue:
    def __init__(self, max_wait_s: float = 60.0, max_waiters: int = 1000) -> None:
        self.max_wait_s = max_wait_s
        self.max_waiters = max_waiters
        self.waiting = 0

    def allowance_ms(self, headers: Mapping[str, str]) -> int:
        """How long this caller may wait for a rate window (0: refuse instead)."""
        raw = headers.get(HEADER)
        if raw is None:
            return 0
        try:
            seconds = float(raw)
        except ValueError:
            raise BadRequest(f"`{HEADER}` must be a number of seconds, got {raw!r}") from None
        if not math.isfinite(seconds) or seconds <= 0 or self.waiting >= self.max_waiters:
            return 0
        return int(min(seconds, self.max_wait_s) * 1000)

    async def wait(self, policy: "Policy", r: "Reservation") -> None:
        """Sleep until the booked slot; a caller that leaves meanwhile gives everything back."""
        if not r.wait_ms:
            return
        self.waiting += 1
        try:
            await asyncio.sleep(r.wait_ms / 1000)
        except BaseException:
            policy.release(r, forwarded=False)
            raise
        finally:
            self.waiting -= 1
