"""Waiting for something to become true, the one way tests here do it: poll, never a fixed sleep."""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable

Predicate = Callable[[], "bool | Awaitable[bool]"]


async def until(predicate: Predicate, timeout_s: float = 30.0, interval_s: float = 0.05, what: str = "") -> float:
    """Seconds until ``predicate()`` (sync or async) was true; AssertionError past ``timeout_s``."""
    t0 = time.monotonic()
    while True:
        ok = predicate()
        if inspect.isawaitable(ok):
            ok = await ok
        elapsed = time.monotonic() - t0
        if ok:
            return elapsed
        if elapsed > timeout_s:
            raise AssertionError(f"{what or 'the condition'} was not true within {timeout_s:g} s")
        await asyncio.sleep(interval_s)
