"""The suite's blockbuster fixture (tests/conftest.py) fails a blocking call our code makes on the loop."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from blockbuster import BlockingError

from llmgw.core.config import ConfigRecord
from llmgw.ledger.configlog import FileConfigLog


async def test_a_blocking_call_from_the_gateway_on_the_loop_fails(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    seen: list[BaseException | None] = []
    done = asyncio.Event()
    old = loop.get_exception_handler()

    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        seen.append(context.get("exception"))
        done.set()

    loop.set_exception_handler(record)
    try:
        log = FileConfigLog(tmp_path / "config.jsonl")
        # A loop callback, as a handler or a background task runs: no test code on its stack.
        loop.call_soon(log.append_sync, ConfigRecord("key:k", "key", {}, 1))
        await asyncio.wait_for(done.wait(), 10)
    finally:
        loop.set_exception_handler(old)
    assert len(seen) == 1 and isinstance(seen[0], BlockingError)
    assert not (tmp_path / "config.jsonl").exists()
    # The fixture fails any test in which one was raised, even if a background task swallowed it:
    # this one was expected, so it leaves the fixture's record empty.
    from tests.conftest import _Raised
    assert [str(e) for e in _Raised.errors] == [str(seen[0])]
    _Raised.errors.clear()


async def test_the_config_log_reads_and_writes_off_the_loop(tmp_path: Path) -> None:
    log = FileConfigLog(tmp_path / "config.jsonl")
    rec = ConfigRecord("key:k", "key", {"n": 1}, 1)
    task = asyncio.ensure_future(log.append(rec))      # run by the loop, as a handler would
    await task
    state = await asyncio.ensure_future(log.load())
    assert state.get("key", "k") == rec
