"""The gateway's side of the analytics process (``analytics/process.py``): start, watch, stop.

The composition root runs one ``AnalyticsProcess`` for the gateway's life
(``proxy/parts.py``, ``analytics_process_ctx``) when ``runs_apart`` says so. It
is started before the ledger and stopped after it, so its last pass inserts
the ledger's last events. If it dies, it is started again (after
``restart_delay_s``, doubling up to a minute): it resumes from its mark, and
meanwhile the spend pages answer 503 instead of opening the store themselves.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from llmgw.analytics import store
from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.analytics.supervisor")
MAX_RESTART_DELAY_S = 60.0
# What the process prints on stdout once it inserts and serves, and its exit status when another
# process holds the data dir. Here, not in analytics/process.py: importing that module loads chDB,
# which the gateway never should.
READY = b"ready\n"
LOCKED_EXIT = 3


def runs_apart(settings: Settings) -> bool:
    """Embedded with analytics, unless turned off or on an in-memory store (which only one process
    could see)."""
    if not (settings.embedded and settings.analytics and settings.analytics_process):
        return False
    target = store.Target.from_dsn(settings.analytics_dsn)
    return not (target.kind == "chdb" and target.location == ":memory:")


class AnalyticsProcessError(RuntimeError):
    """The analytics process did not come up."""


class _Locked(Exception):
    """Another analytics process holds the data dir."""


class AnalyticsProcess:
    def __init__(self, settings: Settings, interval_s: float = 1.0, start_timeout_s: float = 60.0,
                 stop_timeout_s: float = 30.0, restart_delay_s: float = 1.0) -> None:
        self.settings = settings
        self.interval_s = interval_s
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.restart_delay_s = restart_delay_s
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        """Spawn it and wait until it inserts and serves (``AnalyticsProcessError`` if it cannot).

        While another one holds the data dir (the previous gateway's, killed a moment ago, still
        in its last pass) it is tried again until ``start_timeout_s``."""
        deadline = asyncio.get_running_loop().time() + self.start_timeout_s
        while True:
            try:
                return await self._start_once()
            except _Locked:
                if asyncio.get_running_loop().time() > deadline:
                    raise AnalyticsProcessError("the analytics process did not start: another one holds "
                                                f"{self.settings.data_dir} (still after {self.start_timeout_s:.0f}s)"
                                                ) from None
                await asyncio.sleep(0.2)

    async def _start_once(self) -> None:
        s = self.settings
        argv = [sys.executable, "-m", "llmgw.analytics.process", "--data-dir", s.data_dir,
                "--parent-pid", str(os.getpid()), "--interval-s", str(self.interval_s)]
        if s.config:
            argv += ["--config", s.config]
        # Its own session, so its own process group (uvloop takes no process_group=): a terminal's
        # Ctrl-C reaches the gateway only, which stops it in order.
        # The DSN goes in the environment, not the command line: a server DSN may carry a password,
        # and every local user can read a process's arguments.
        env = {**os.environ, "LLMGW_CLICKHOUSE_DSN": s.analytics_dsn}
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, start_new_session=True,
                                                    env=env)
        self.proc = proc
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout_s):
                line = await proc.stdout.readline()
        except TimeoutError:
            await self._kill()
            raise AnalyticsProcessError(f"the analytics process (pid {proc.pid}) was not ready after "
                                        f"{self.start_timeout_s:.0f}s") from None
        if line != READY:
            code = await proc.wait()
            if code == LOCKED_EXIT:
                raise _Locked()
            raise AnalyticsProcessError(f"the analytics process did not start: it exited with {code} "
                                        "(its log is above)")
        log.info("analytics process started (pid %d)", proc.pid, extra={"event": "analytics_process_started"})

    async def supervise(self) -> None:
        """Start it again whenever it exits; runs until cancelled."""
        delay = self.restart_delay_s
        while True:
            assert self.proc is not None
            code = await self.proc.wait()
            log.error("the analytics process (pid %d) exited with %s; starting it again in %.0fs",
                      self.proc.pid, code, delay, extra={"event": "analytics_process_died"})
            await asyncio.sleep(delay)
            try:
                await self.start()
                self.restarts += 1
                delay = self.restart_delay_s
            except Exception:           # AnalyticsProcessError, or the exec itself failing (EMFILE...)
                log.exception("analytics process restart failed")
                delay = min(delay * 2, MAX_RESTART_DELAY_S)

    async def stop(self) -> None:
        """SIGTERM (it inserts what is left, then exits); SIGKILL past ``stop_timeout_s``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(self.stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            log.error("the analytics process (pid %d) did not stop in %.0fs; killing it", proc.pid,
                      self.stop_timeout_s)
            await self._kill()

    async def _kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


__all__ = ["AnalyticsProcess", "AnalyticsProcessError", "runs_apart"]
