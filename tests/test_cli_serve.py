"""The walking skeleton as a user meets it: `llmgw` commands in their own processes."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import openai
import pytest

from llmgw.ledger.embedded import log_events
from llmgw.core.events import OK, REJECTED_BUDGET
from llmgw.proxy.cli import LISTEN_BACKLOG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def llmgw(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmgw.proxy.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def env(fake_provider, tmp_path):
    e = dict(os.environ)
    e.update(LLMGW_DATA_DIR=str(tmp_path / "data"), LLMGW_OPENAI_BASE_URL=fake_provider.openai_base_url,
             LLMGW_OPENAI_API_KEY=fake_provider.openai_key, LLMGW_ANTHROPIC_BASE_URL=fake_provider.anthropic_base_url,
             LLMGW_ANTHROPIC_API_KEY=fake_provider.anthropic_key, LLMGW_ANALYTICS=os.environ.get("LLMGW_ANALYTICS", "1"))
    e.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    return e


async def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"llmgw serve exited: {proc.stderr.read() if proc.stderr else ''}")
            try:
                async with http.head(url + "/api/hello") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("llmgw serve did not become ready")


def test_help_explains_every_command(env):
    out = llmgw("--help", env=env)
    assert out.returncode == 0
    for cmd in ("serve", "keys", "budgets", "ledger", "pricing", "spend", "chargeback", "trace"):
        assert cmd in out.stdout
    assert "mint a key" in llmgw("keys", "--help", env=env).stdout


async def test_serve_forwards_records_and_follows_config_from_another_process(env, fake_provider, tmp_path):
    created = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "alice", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-llmgw-") and "shown once" in created.stderr
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        # a fleet connecting at once must not overflow the accept queue (aiohttp's default is 128):
        # for a listening socket, ss reports the backlog as Send-Q
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert int(listening.split()[2]) == min(LISTEN_BACKLOG, somaxconn) > 128, listening
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        resp = await client.chat.completions.create(model="gpt-4o-mini",
                                                    messages=[{"role": "user", "content": "hello"}])
        assert resp.choices[0].message.content
        assert llmgw("budgets", "set", "user:alice", "day", "0.000001", env=env).returncode == 0
        for _ in range(40):                     # the running gateway follows the config log
            try:
                await client.chat.completions.create(model="gpt-4o-mini",
                                                     messages=[{"role": "user", "content": "again"}])
                await asyncio.sleep(0.1)
            except openai.RateLimitError as exc:
                assert "user alice daily budget" in exc.message
                break
        else:
            raise AssertionError("the budget set from another process never took effect")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    events = log_events(tmp_path / "data" / "ledger" / "events.log")
    assert events[0].outcome == OK and events[0].user == "alice" and events[0].cost_micro_usd > 0
    assert events[-1].outcome == REJECTED_BUDGET
    assert all(e.outcome in (OK, REJECTED_BUDGET) for e in events)
    rebuilt = llmgw("ledger", "rebuild", env=env)
    assert rebuilt.returncode == 0 and "identical" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr
