"""Every `llmgw` command beside a running embedded `llmgw serve`, each in its own process.

The gateway holds chDB's file lock and follows the config log on a timer; the CLI finds it through
`<data_dir>/gateway.json` and goes through its admin API instead (ledger/local_gateway.py).
"""
from __future__ import annotations

import asyncio
import csv
import getpass
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import openai
import pytest

from llmgw.proxy.cli import main

from tests.test_cli_serve import env, free_port, llmgw, wait_ready  # noqa: F401  (env is a fixture)


@pytest.fixture
async def served(env):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _create_key(env, user: str) -> str:
    out = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", user, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


async def _until(check, what: str, timeout_s: float = 30.0):
    """Wait for the analytics batcher (about once a second) to have written what a command reads."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {what}")
        await asyncio.sleep(0.3)


async def _create_key_in_process(env, monkeypatch, capsys, user: str) -> str:
    """`llmgw keys create` run by ``main`` here, so the call comes microseconds after it returns
    (a subprocess's own exit would give the gateway's config follower time to catch up anyway)."""
    for name, value in env.items():
        if name.startswith("LLMGW_"):
            monkeypatch.setenv(name, value)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["keys", "create", "--org", "acme", "--workspace", "backend",
                                          "--user", user]) == 0
    return capsys.readouterr().out.strip()


async def test_a_key_works_the_moment_keys_create_returns(served, env, monkeypatch, capsys):
    url, _ = served
    for user in ("alice", "bob", "carol", "dave", "erin"):   # each used at once: no follower tick to wait for
        key = await _create_key_in_process(env, monkeypatch, capsys, user)
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
            resp = await client.chat.completions.create(model="gpt-4o-mini",
                                                        messages=[{"role": "user", "content": "hi"}])
        assert resp.choices[0].message.content
    # a budget set from the CLI binds the next call, with no wait either
    assert await asyncio.to_thread(main, ["budgets", "set", "user:erin", "day", "0.000001"]) == 0
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError, match="user erin daily budget"):
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    audit = llmgw("audit", "--json", "--type", "key,budget", env=env)     # reads the log beside the gateway
    assert audit.returncode == 0, audit.stderr
    assert sum(1 for line in audit.stdout.splitlines() if json.loads(line)["id"].startswith("key:")) == 5
    # written through the gateway, each still names the person at the terminal, not the gateway's local token
    assert {json.loads(line)["actor"] for line in audit.stdout.splitlines()} == {f"cli:{getpass.getuser()}"}
    listed = llmgw("keys", "list", env=env)
    key_id = next(line.split("\t")[0] for line in listed.stdout.splitlines() if "erin" in line)
    assert llmgw("keys", "revoke", key_id, env=env).returncode == 0
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "y"}])


async def test_spend_trace_chargeback_and_rebuild_beside_the_running_gateway(served, env, tmp_path):
    url, proc = served
    found = tmp_path / "data" / "gateway.json"
    assert stat.S_IMODE(found.stat().st_mode) == 0o600     # it holds a token with the data dir's authority
    key = _create_key(env, "alice")
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0,
                                  default_headers={"x-llmgw-session": "sess-42"}) as client:
        raws = [await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"call {i}"}]) for i in range(3)]
    request_id = raws[1].headers["x-llmgw-request-id"]

    def spend():
        out = llmgw("spend", "--by", "user", "--json", env=env)
        assert out.returncode == 0, out.stderr                 # not the chDB lock error
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        return rows if rows and rows[0]["requests"] == 3 else None
    rows = await _until(spend, "3 calls in llmgw spend")
    assert rows[0]["user"] == "alice" and rows[0]["cost_micro_usd"] > 0

    traced = llmgw("trace", "sess-42", "--json", env=env)
    assert traced.returncode == 0, traced.stderr
    calls = [json.loads(line) for line in traced.stdout.splitlines()]
    assert len(calls) == 3 and calls[-1]["running_cost_micro_usd"] == rows[0]["cost_micro_usd"]
    by_request = llmgw("trace", request_id, "--json", env=env)       # a request id finds its session
    assert [json.loads(line) for line in by_request.stdout.splitlines()] == calls
    missing = llmgw("trace", "no-such-session", env=env)
    assert missing.returncode == 1 and "no calls recorded" in missing.stderr
    month = datetime.now(timezone.utc).strftime("%Y-%m")
    out_file = tmp_path / "cb.csv"
    cb = llmgw("chargeback", "--month", month, "--by", "user", "--out", str(out_file), env=env)
    assert cb.returncode == 0, cb.stderr
    table = list(csv.DictReader(io.StringIO(out_file.read_text())))
    assert table[0]["user"] == "alice" and table[-1]["month"] == "TOTAL"
    assert int(table[-1]["cost_micro_usd"]) == rows[0]["cost_micro_usd"]
    assert "3 requests" in cb.stderr

    rebuilt = llmgw("ledger", "rebuild", env=env)
    assert rebuilt.returncode == 0 and "identical" in rebuilt.stdout, rebuilt.stdout + rebuilt.stderr

    bill = Path(__file__).parent / "data" / "reconcile" / "openai_costs_2026-11.json"
    imported = llmgw("reconcile", "import", str(bill), "--provider", "openai", env=env)
    assert imported.returncode == 0 and "imported" in imported.stdout, imported.stderr
    report = llmgw("reconcile", "report", "--since", "2026-11-01", "--until", "2026-12-01", "--json", env=env)
    assert report.returncode == 0, report.stderr
    billed = [json.loads(line) for line in report.stdout.splitlines()]
    assert billed and all(r["provider"] == "openai" and r["billed_micro_usd"] >= 0 for r in billed)

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:   # no session
        lone = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "alone"}])
    lone_id = lone.headers["x-llmgw-request-id"]

    def lone_trace():
        out = llmgw("trace", lone_id, "--json", env=env)
        return out if out.returncode == 0 else None           # 1 until the call lands in ClickHouse
    out = await _until(lone_trace, "the sessionless call in llmgw trace")
    [alone] = [json.loads(line) for line in out.stdout.splitlines()]
    assert alone["cost_micro_usd"] > 0 and alone["running_cost_micro_usd"] == alone["cost_micro_usd"]

    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    assert not found.exists()                  # a stopped gateway leaves no file pointing at it
    direct = llmgw("spend", "--by", "user", "--json", env=env)       # and the CLI opens the store itself
    assert direct.returncode == 0, direct.stderr
    total = json.loads(direct.stdout.splitlines()[0])["cost_micro_usd"]     # nanos summed, then rounded once
    assert rows[0]["cost_micro_usd"] < total <= rows[0]["cost_micro_usd"] + alone["cost_micro_usd"]


async def test_a_stale_discovery_file_is_ignored(env, tmp_path):
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (data / "gateway.json").write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": dead.pid,
                                                   "host": os.uname().nodename, "token": "llmgw-local-x",
                                                   "embedded": True, "analytics_dsn": ""}))
    assert llmgw("keys", "create", "--org", "a", "--workspace", "w", "--user", "u", env=env).returncode == 0
    assert "key:" in (data / "config.jsonl").read_text()


@pytest.mark.parametrize("path", ["/admin/config/records", "/admin/ledger/rebuild"])
async def test_only_the_local_token_may_append_raw_records_or_rebuild(admin_gw, http, path):
    """An owner's admin key goes through the validated admin API; raw records are the CLI's alone."""
    from tests.admin_support import OWNER_KEY

    body = {"records": [{"id": "key:k1", "type": "key", "data": {"key_id": "k1"}}]}
    async with http.post(admin_gw.url + path, json=body, headers={"Authorization": f"Bearer {OWNER_KEY}"}) as r:
        assert r.status == 403 and "llmgw CLI on this host" in (await r.json())["error"]["message"]
    assert admin_gw.gw.config.get("key", "k1") is None
