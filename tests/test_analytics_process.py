"""The embedded analytics process: the ledger log into ClickHouse exactly once, from its own process.

``analytics/process.py`` runs beside the gateway, owns the chDB engine and follows the ledger
log from its mark. What must hold: a ``kill -9`` of it at any point of a stream of inserts,
then a restart, leaves ClickHouse with every event of the log once (raw rows and the rollups
the dashboard reads); whoever else reads the store goes through it; ``llmgw serve`` starts it,
and neither a clean stop nor a killed gateway leaves it running.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import openai
import pytest

from llmgw.analytics import store
from llmgw.analytics.log_tail import LogTail
from llmgw.analytics.process import last_pass
from llmgw.analytics.sink import Sink
from llmgw.analytics.supervisor import READY
from llmgw.core.events import UsageEvent
from llmgw.ledger.embedded import (EmbeddedLedger, analytics_mark_path, log_events, log_path, read_mark,
                                  read_records, save_mark)
from tests.fixtures.chdb import AnalyticsDB, usage_event
from tests.test_cli_serve import env, free_port, llmgw, wait_ready  # noqa: F401  (env is a fixture)


def spawn(data_dir: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.analytics.process", "--data-dir", str(data_dir),
                             "--dsn", f"chdb://{data_dir / 'clickhouse'}", *extra], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == READY
    return proc


def wait_until(cond: object, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


async def write_log(data_dir: Path, events: list[UsageEvent]) -> None:
    ledger = EmbeddedLedger(data_dir)
    await ledger.start()
    for ev in events:
        ledger.submit(ev)
    await ledger.stop(timeout_s=60)


def stored(data_dir: Path) -> tuple[int, int, int, int, int]:
    """(rows, distinct ids, cost summed over rows, rollup requests, rollup cost), read through the process."""
    client = store.connect(f"chdb://{data_dir / 'clickhouse'}")
    rows, ids, cost = client.query("SELECT count(), uniqExact(event_id), sum(cost_micro_usd) FROM usage_events"
                                   ).result_rows[0]
    requests, rolled = client.query("SELECT sum(requests), sum(cost_micro_usd) FROM usage_by_day").result_rows[0]
    return int(rows), int(ids), int(cost), int(requests), int(rolled)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait()


async def test_kill_9_mid_stream_then_restart_stores_every_event_exactly_once(tmp_path: Path, procs) -> None:
    events = [usage_event(i) for i in range(3000)]
    await write_log(tmp_path, events)
    end = log_path(tmp_path).stat().st_size
    mark = analytics_mark_path(tmp_path)
    kills = 0
    for _ in range(3):                      # three kill -9s, each after some batches went in
        before = read_mark(mark)
        procs.append(p := spawn(tmp_path, "--batch-events", "97", "--interval-s", "0.01"))
        wait_until(lambda: read_mark(mark) > before)
        if read_mark(mark) == end:
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
    assert kills >= 1 and read_mark(mark) < end, "no kill landed mid-stream"
    procs.append(last := spawn(tmp_path, "--interval-s", "0.01"))
    wait_until(lambda: read_mark(mark) == end)
    want = sum(e.cost_micro_usd for e in events)
    assert stored(tmp_path) == (3000, 3000, want, 3000, want)
    last.send_signal(signal.SIGTERM)
    assert last.wait(timeout=30) == 0
    assert not store.Server.file(str(tmp_path / "clickhouse")).exists()
    # A crash after an insert and before its mark, made certain: the mark goes back 2,000 events
    # (not on a batch cut) and the process replays them in batches cut differently.
    save_mark(mark, [pos for pos, _, _ in read_records(log_path(tmp_path), 0)][1000])
    procs.append(replay := spawn(tmp_path, "--batch-events", "333", "--interval-s", "0.01"))
    wait_until(lambda: read_mark(mark) == end)
    assert stored(tmp_path) == (3000, 3000, want, 3000, want)
    replay.send_signal(signal.SIGTERM)
    assert replay.wait(timeout=30) == 0


async def test_events_appended_while_it_runs_reach_clickhouse_and_a_second_process_is_refused(
        tmp_path: Path, procs) -> None:
    await write_log(tmp_path, [usage_event(i) for i in range(10)])
    procs.append(p := spawn(tmp_path, "--interval-s", "0.01"))
    second = subprocess.run([sys.executable, "-m", "llmgw.analytics.process", "--data-dir", str(tmp_path),
                             "--dsn", f"chdb://{tmp_path / 'clickhouse'}"], capture_output=True, timeout=60)
    assert second.returncode == 3 and b"another analytics process" in second.stderr
    await write_log(tmp_path, [usage_event(i) for i in range(10, 25)])     # the gateway again, later
    wait_until(lambda: read_mark(analytics_mark_path(tmp_path)) == log_path(tmp_path).stat().st_size)
    events = log_events(log_path(tmp_path))
    assert stored(tmp_path)[:3] == (25, 25, sum(e.cost_micro_usd for e in events))
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0


def children(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(x) for x in out.split()}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0) until its parent reaps it
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def serve(env: dict[str, str]) -> tuple[str, subprocess.Popen[str], str]:
    """A key, and ``llmgw serve`` started as a user starts it (its analytics process with it)."""
    key = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "alice", env=env).stdout.strip()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return key, proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL])
async def test_serve_runs_the_analytics_process_and_leaves_none_behind(env, tmp_path: Path, stop: int) -> None:  # noqa: F811
    key, proc, url = serve(env)
    data = tmp_path / "data"
    try:
        await wait_ready(url, proc)
        server = store.Server.find(str((data / "clickhouse").resolve()))
        assert server is not None and server.pid in children(proc.pid)
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        for _ in range(3):
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        if stop == signal.SIGKILL:         # the ledger's events reach ClickHouse while both run
            await asyncio.to_thread(wait_until, lambda: stored(data)[0] == 3)
    finally:
        proc.send_signal(stop)
        proc.wait(timeout=30)
    await asyncio.to_thread(wait_until, lambda: gone(server.pid), 30.0)
    if stop == signal.SIGTERM:             # a clean stop: its last pass took the ledger's last events
        mark = read_mark(analytics_mark_path(data))
        assert mark == log_path(data).stat().st_size
        assert len(log_events(log_path(data))) == 3
        assert not store.Server.file(str((data / "clickhouse").resolve())).exists()


async def test_a_killed_analytics_process_is_started_again_and_misses_nothing(env, tmp_path: Path) -> None:  # noqa: F811
    key, proc, url = serve(env)
    data = tmp_path / "data"
    location = str((data / "clickhouse").resolve())
    try:
        await wait_ready(url, proc)
        first = store.Server.find(location)
        assert first is not None
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        for _ in range(2):
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        os.kill(first.pid, signal.SIGKILL)
        for _ in range(3):                 # served while it is away: the log keeps them
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])

        def restarted() -> bool:
            found = store.Server.find(location)
            return found is not None and found.pid != first.pid and found.pid in children(proc.pid)
        await asyncio.to_thread(wait_until, restarted)
        await asyncio.to_thread(wait_until, lambda: stored(data)[:2] == (5, 5))
        assert stored(data)[2] == sum(e.cost_micro_usd for e in log_events(log_path(data)))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def test_the_served_store_takes_inserts_settings_long_parameters_and_reports_errors(
        tmp_path: Path, procs) -> None:
    """What the other writers and readers send through the process (captured bodies and the audit
    trail insert, the sink's known-id check binds thousands of ids, a bad query must be an error)."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    procs.append(p := spawn(tmp_path, "--interval-s", "0.01"))
    client = store.connect(f"chdb://{tmp_path / 'clickhouse'}")
    db = str(client.database)
    now_ms = int(time.time() * 1000)          # call_bodies keeps rows for days only (a TTL)
    rows = [[f"e{i}", now_ms + i, "acme", "ws", "chat", "req", "resp", False] for i in range(3)]
    cols = ["event_id", "ts", "org", "workspace", "api", "request", "response", "truncated"]
    types = ["String", "DateTime64(3, 'UTC')", "LowCardinality(String)", "LowCardinality(String)",
             "LowCardinality(String)", "String", "String", "Bool"]
    client.insert("call_bodies", rows, column_names=cols, column_type_names=types, database=db)
    assert client.command(f"SELECT count() FROM {db}.call_bodies") == 3
    # per-statement settings reach the engine: two different rows under one dedup token, the
    # second is dropped (insert_deduplication_token, the sink's first layer), and a query's own
    # setting is the one it runs with
    sink = Sink(client, db, skip_known=False)
    sink._insert_chunk([usage_event(1)], "one-token")
    sink._insert_chunk([usage_event(2)], "one-token")
    assert client.command(f"SELECT count() FROM {db}.usage_events") == 1
    assert client.query("SELECT getSetting('max_threads')", settings={"max_threads": 3}).result_rows == [(3,)]
    ids = [f"e{i}" for i in range(20_000)]            # too long for a URL: sent as a form
    got = client.query(f"SELECT event_id FROM {db}.call_bodies WHERE event_id IN {{ids:Array(String)}} "
                       "ORDER BY event_id", parameters={"ids": ids}).result_rows
    assert got == [("e0",), ("e1",), ("e2",)]
    with pytest.raises(DatabaseError) as err:
        client.query(f"SELECT no_such_column FROM {db}.call_bodies")
    assert err.value.code == 47           # UNKNOWN_IDENTIFIER, as a ClickHouse server answers
    stranger = store.Server.find(str(tmp_path / "clickhouse"))
    assert stranger is not None
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as refused:     # without the token: nothing
        urllib.request.urlopen(urllib.request.Request(stranger.url + "/?query=SELECT%201"), timeout=10)
    assert refused.value.code == 403
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 0


class SlowStore(Sink):
    """A store whose inserts last until ``until`` is set (the process giving up on its last pass,
    or the test letting the insert finish)."""

    def __init__(self, db: AnalyticsDB) -> None:
        super().__init__(db.client, db.database)
        self.until = threading.Event()
        self.started = 0
        self.returned = threading.Event()

    def insert(self, events: Sequence[UsageEvent], dedup_token: str | None = None, *,
               none_stored: bool = False) -> int:
        self.started += 1
        self.until.wait()
        try:
            return super().insert(events, dedup_token, none_stored=none_stored)
        finally:
            self.returned.set()


def count_rows(db: AnalyticsDB) -> tuple[int, int]:
    return db.client.query(f"SELECT count(), uniqExact(event_id) FROM {db.database}.usage_events").result_rows[0]


async def test_a_last_pass_past_its_deadline_ends_after_the_insert_under_way_and_says_what_is_left(
        tmp_path: Path, analytics_db: AnalyticsDB, caplog: pytest.LogCaptureFixture) -> None:
    events = [usage_event(n) for n in range(3)]
    await write_log(tmp_path, events)
    slow = SlowStore(analytics_db)
    tail = LogTail(tmp_path, slow, batch_events=1)
    slow.until = tail.stopping                     # the insert under way lasts past the deadline
    with caplog.at_level(logging.INFO, logger="llmgw.analytics.process"):
        assert await last_pass(tail, timeout_s=0.01, grace_s=60.0)     # the store may close now:
    assert slow.returned.is_set() and slow.started == 1                # its insert returned, no other began
    assert "read 1, inserted 1 events" in caplog.text
    assert f"from log mark {await asyncio.to_thread(lambda: tail.mark)}" in caplog.text
    # what was left goes in at the next start, once
    assert await asyncio.to_thread(LogTail(tmp_path, analytics_db.sink).catch_up) == 2
    assert await asyncio.to_thread(count_rows, analytics_db) == (3, 3)


async def test_a_last_pass_whose_insert_outlasts_the_grace_leaves_the_store_open(
        tmp_path: Path, analytics_db: AnalyticsDB, caplog: pytest.LogCaptureFixture) -> None:
    await write_log(tmp_path, [usage_event(0)])
    slow = SlowStore(analytics_db)
    tail = LogTail(tmp_path, slow)
    with caplog.at_level(logging.INFO, logger="llmgw.analytics.process"):
        assert not await last_pass(tail, timeout_s=0.01, grace_s=0.01)
    assert "the store is left open" in caplog.text and not slow.returned.is_set()
    slow.until.set()                                   # the insert still finishes against an open store
    await asyncio.to_thread(slow.returned.wait)
    assert await asyncio.to_thread(count_rows, analytics_db) == (1, 1)
