"""The embedded gateway's analytics process: ClickHouse beside the gateway, not inside it.

``llmgw serve`` (embedded, analytics on) starts it as a child
(``analytics/supervisor.py``): ``python -m llmgw.analytics.process --data-dir D
--dsn DSN``. It

- follows the gateway's ledger log into ClickHouse (``LogTail``: exactly once,
  resuming from its mark after a crash of either process);
- owns the chDB engine (one process per path) and serves it to everyone else
  over ClickHouse's HTTP interface on loopback (``analytics/chdb_http.py``),
  published in ``<chdb path>.server.json`` where ``store.connect`` finds it;
- prints ``ready`` on stdout once both run, then nothing else there;
- on SIGTERM (the gateway stopping, after its ledger flushed) inserts what is
  left, for ``FINAL_PASS_S`` at most (``last_pass``: it logs what it read and
  inserted; the rest waits for the next start), and exits; if the gateway dies
  it notices (``PR_SET_PDEATHSIG`` and its parent pid changing) and exits the
  same way, so none is left behind.

One per data dir: it holds ``ledger/analytics.lock`` (``flock``).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from llmgw.analytics import store
from llmgw.analytics.chdb_http import Engine, http_app
from llmgw.analytics.log_tail import LogTail
from llmgw.analytics.sink import Sink
from llmgw.analytics.supervisor import LOCKED_EXIT, READY
from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.analytics.process")
FINAL_PASS_S = 20.0               # at stop: how long the last catch-up may take
INSERT_GRACE_S = 5.0              # then: how long its insert under way may take (the gateway kills at 30 s)


def lock_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "ledger" / "analytics.lock"


async def run(settings: Settings, parent_pid: int, interval_s: float, batch_events: int) -> None:
    """Tail and serve until SIGTERM/SIGINT or the parent's death; then a last catch-up."""
    dsn = settings.analytics_dsn
    target = store.Target.from_dsn(dsn)
    served = target.kind == "chdb" and target.location != ":memory:"
    if served:                                                     # a dead predecessor's
        await asyncio.to_thread(store.Server.file(target.location).unlink, missing_ok=True)
    client = await asyncio.to_thread(store.connect, dsn)
    sink = Sink(client, str(client.database))
    await asyncio.to_thread(sink.ensure_schema)
    tail = LogTail(settings.data_dir, sink, batch_events)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner: web.AppRunner | None = None
    engine: Engine | None = None
    try:
        if served:
            engine = Engine(target.location)
            token = secrets.token_urlsafe(32)
            runner = web.AppRunner(http_app(engine, token), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            await asyncio.to_thread(store.Server(f"http://127.0.0.1:{port}", token, os.getpid()).publish,
                                    target.location)
        os.write(1, READY)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)   # nobody reads the pipe after READY: never block on it
        await _follow(tail, stop, parent_pid, interval_s)
    finally:
        if served:
            await asyncio.to_thread(store.Server.unpublish, target.location, os.getpid())
        if runner is not None:
            await runner.cleanup()
        if engine is not None:
            engine.close()
    if await last_pass(tail, FINAL_PASS_S, INSERT_GRACE_S):
        await asyncio.to_thread(store.close_all)


async def last_pass(tail: LogTail, timeout_s: float, grace_s: float) -> bool:
    """Insert what is left, for ``timeout_s`` at most; True once no insert runs any more.

    The pass runs in a thread, which a timeout cannot stop: past ``timeout_s`` the tail is told to
    start no other insert, and the one under way gets ``grace_s`` to return. Closing the store
    would pull the client from under that insert (chDB runs in this process); if it has not
    returned by then, False: the store is left open, and the process ends when the insert returns
    or the gateway kills it (``AnalyticsProcess.stop_timeout_s``); the mark never passed that insert, so
    the next start sends it again and the sink drops what it stored."""
    read, inserted = tail.read, tail.inserted
    final = asyncio.ensure_future(asyncio.to_thread(tail.catch_up))
    done, _ = await asyncio.wait({final}, timeout=timeout_s)
    if not done:
        tail.stopping.set()
        done, _ = await asyncio.wait({final}, timeout=grace_s)
    counts = (tail.read - read, tail.inserted - inserted, await asyncio.to_thread(lambda: tail.mark))
    if done and final.exception() is None and not tail.stopping.is_set():
        log.info("analytics process stopping: last pass read %d, inserted %d events (any others read were "
                 "stored already); log mark %d", *counts)
        return True
    if done and final.exception() is not None:
        log.error("analytics process stopping: the last pass failed after it read %d, inserted %d events; the "
                  "rest is inserted at the next start, from log mark %d", *counts, exc_info=final.exception())
    else:
        log.error("analytics process stopping: the last pass took over %.0fs; it read %d, inserted %d events; "
                  "the rest is inserted at the next start, from log mark %d%s", timeout_s, *counts,
                  "" if done else f" (an insert still runs after {grace_s:.0f}s more: the store is left open)")
    return bool(done)


async def _follow(tail: LogTail, stop: asyncio.Event, parent_pid: int, interval_s: float) -> None:
    while not stop.is_set():
        if parent_pid and os.getppid() != parent_pid:
            log.warning("analytics process: the gateway (pid %d) is gone; stopping", parent_pid)
            return
        try:
            await asyncio.to_thread(tail.catch_up)
        except Exception:     # the store may be failing for a while: the mark stays, the next pass retries
            mark = await asyncio.to_thread(lambda: tail.mark)        # a file read: off the loop
            log.exception("analytics insert from log mark %d failed; retrying", mark)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()


def _die_with_parent() -> None:
    """SIGTERM this process when its parent dies (Linux); the parent-pid check covers the rest."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))    # PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmgw.analytics.process")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--dsn", default="", help="default: LLMGW_CLICKHOUSE_DSN (how the gateway passes it)")
    parser.add_argument("--config", default="")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    parser.add_argument("--interval-s", type=float, default=1.0, help="how often the log is read")
    parser.add_argument("--batch-events", type=int, default=5000, help="events per insert at most")
    args = parser.parse_args(argv)
    if args.parent_pid:
        _die_with_parent()
        if os.getppid() != args.parent_pid:
            return 1
    settings = Settings.load(data_dir=args.data_dir, clickhouse_dsn=args.dsn or None, config=args.config or None)
    from llmgw.core.logs import configure_logging
    configure_logging(settings, stream=sys.stderr)
    path = lock_path(settings.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"llmgw analytics: another analytics process holds {path}", file=sys.stderr)
            return LOCKED_EXIT
        asyncio.run(run(settings, args.parent_pid, args.interval_s, args.batch_events))
    return 0


if __name__ == "__main__":
    sys.exit(main())
