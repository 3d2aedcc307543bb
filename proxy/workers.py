"""``llmgw serve --workers N``: N gateway processes on one port, and the supervisor that owns them.

Why processes: one aiohttp process saturates a core at about 0.7 ms of CPU per
call, so one machine's cores only all serve with one process each. They share
the listening port through ``SO_REUSEPORT`` (the kernel spreads connections).

Why Kafka only: the embedded ledger is one process's local log with a single
writer; N writers on it would corrupt it. With Kafka every worker is simply one
more proxy, exactly as if it ran on another machine, which fixes three things:

- each worker has its own ``gateway_id``, because ``ledger/presence.py`` counts
  live proxies by gateway id and budget margins and rate-limit shares are
  divided by that count: N workers must count as N proxies. The default id
  (``host:pid``) is computed by each worker itself; an explicit id gets ``/w{i}``;
- each worker has its own spool (it is ``flock``'d: one process per spool).
  Worker 0 keeps ``data_dir``, so a spool left by a single-process run is
  still replayed; worker i uses ``data_dir/worker-{i}``;
- files a single process finds in ``data_dir`` by default (``prices.json``, the
  chDB store, ``dashboard.secret``) are pointed at the shared copy, so every
  worker prices, reads analytics and signs dashboard sessions the same way.

Each worker is a fresh interpreter (``python -m proxy.cli ... serve --workers 1
--worker-index I``), never a fork of this one, so no event loop or thread
state is copied. Each runs in its own process group, so a terminal's Ctrl-C
reaches only the supervisor, which forwards it once (a second signal would cut
a worker's graceful drain short), and on Linux each gets SIGTERM if the
supervisor itself dies, so none is ever orphaned.

The supervisor does not restart workers. If one exits on its own, it stops the
others and exits 1: the orchestrator (systemd, Kubernetes, compose) restarts
the whole gateway, so there is one restart policy, in one place.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from llmgw.core.settings import Settings

log = logging.getLogger("llmgw.workers")

STOP_GRACE_S = 15.0        # past shutdown_timeout_s: the ledger flush (bounded by 5 s) and interpreter exit
POLL_S = 0.1
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Worker:
    index: int
    data_dir: str
    argv: tuple[str, ...]
    env_overrides: Mapping[str, str]


def plan(s: Settings) -> list[Worker]:
    """The N worker command lines for ``s``; ``ValueError`` (one line, exit 2) if N workers cannot serve."""
    if s.workers < 1:
        raise ValueError(f"--workers must be 1 or more, not {s.workers}")
    if s.embedded:
        raise ValueError("--workers needs the Kafka ledger: the embedded ledger is a local log with a single "
                         "writer process; set LLMGW_KAFKA_BOOTSTRAP, or run one worker")
    if s.port == 0:
        raise ValueError("--workers needs a fixed --port: with port 0 each worker would listen on its own")
    return [_worker(s, i) for i in range(s.workers)]


def _worker(s: Settings, index: int) -> Worker:
    data_dir = s.data_dir if index == 0 else os.path.join(s.data_dir, f"worker-{index}")
    flags = ["--data-dir", data_dir, "--kafka-bootstrap", s.kafka_bootstrap]
    if s.config:
        flags += ["--config", s.config]
    argv = (sys.executable, "-m", "llmgw.proxy.cli", *flags, "serve", "--host", s.host, "--port", str(s.port),
            "--workers", "1", "--worker-index", str(index))
    env: dict[str, str] = {}
    if s.gateway_id != _default_gateway_id():       # set by the user: keep it recognisable, make it unique
        env["LLMGW_GATEWAY_ID"] = f"{s.gateway_id}/w{index}"
    if index > 0:
        env.update(_shared_files(s))
    return Worker(index, data_dir, argv, env)


def _default_gateway_id() -> str:
    """What ``Settings.load`` puts in ``gateway_id`` when nobody set one (this process's)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _shared_files(s: Settings) -> dict[str, str]:
    """Settings that default to a file in ``data_dir``, pinned to the supervisor's ``data_dir``."""
    from .context import prices_path

    env = {}
    prices = prices_path(s)
    if prices is not None and not s.prices:
        env["LLMGW_PRICES"] = str(prices.resolve())
    if not s.clickhouse_dsn:
        env["LLMGW_CLICKHOUSE_DSN"] = s.analytics_dsn
    return env


def share_dashboard_secret(s: Settings, workers: Sequence[Worker]) -> None:
    """Without ``LLMGW_ADMIN_KEY`` the dashboard signs sessions with ``<data_dir>/dashboard.secret``:
    create it once here and link each worker's to it, or a session cookie made on one worker would be
    refused by the next connection's worker."""
    if s.admin_key:
        return
    from llmgw.proxy.reports.session import secret_for

    secret_for(s)
    for w in workers:
        link = Path(w.data_dir) / "dashboard.secret"
        if w.data_dir == s.data_dir or link.is_symlink() or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("..") / "dashboard.secret")


def supervise(workers: Sequence[Worker], stop_timeout_s: float) -> int:
    """Run the workers until a signal or a worker's exit; 0 only if all stopped cleanly on a signal."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for w in workers:
            procs.append(_spawn(w))
        return _watch(procs, received, stop_timeout_s)
    finally:
        _kill(procs)                                # only if something above raised: none is left
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawn(w: Worker) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(w.argv, env={**os.environ, **w.env_overrides}, process_group=0,
                            preexec_fn=_die_with_parent(os.getpid()))
    log.info("worker %d started (pid %d)", w.index, proc.pid,
             extra={"event": "worker_started", "worker": w.index, "pid": proc.pid})
    return proc


def _die_with_parent(parent_pid: int) -> Callable[[], None] | None:
    """Runs in the child before exec: SIGTERM it when the supervisor dies (Linux), however it dies."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent_pid:              # the supervisor died before prctl took effect
            os._exit(1)
    return preexec


def _watch(procs: Sequence[subprocess.Popen[bytes]], received: list[int], stop_timeout_s: float) -> int:
    stop_at: float | None = None                    # monotonic deadline, once stopping
    failed = False
    while True:
        running = [p for p in procs if p.poll() is None]
        if stop_at is None and received:
            log.info("signal %d: stopping %d workers", received[0], len(running), extra={"event": "workers_stopping"})
            _signal(running, received[0])
            stop_at = time.monotonic() + stop_timeout_s
        elif stop_at is None and len(running) < len(procs):
            for i, p in enumerate(procs):
                if p.returncode is not None:
                    log.error("worker %d (pid %d) exited with %d; stopping the others", i, p.pid, p.returncode,
                              extra={"event": "worker_died", "worker": i, "pid": p.pid, "status": p.returncode})
            failed = True
            _signal(running, signal.SIGTERM)
            stop_at = time.monotonic() + stop_timeout_s
        elif stop_at is not None and running and time.monotonic() > stop_at:
            log.error("workers still running %.0fs after the stop signal: killing them", stop_timeout_s,
                      extra={"event": "workers_killed"})
            _kill(running)
        if not running:
            return 1 if failed or any(p.returncode != 0 for p in procs) else 0
        time.sleep(POLL_S)


def _signal(procs: Sequence[subprocess.Popen[bytes]], sig: int) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)


def _kill(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
