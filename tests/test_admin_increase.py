"""Budget-increase requests: a real refusal through the official SDK, lifted by an approval, without a restart."""
from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import openai
import pytest

from llmgw.core.config import ConfigState
from llmgw.proxy.admin import increase as I
from llmgw.proxy.admin.roles import OWNER, AdminPrincipal
from llmgw.core.budgets import Budget
from tests.admin_support import OWNER_KEY, Api, admin_with_role
from tests.fake_provider import Reply, Usage
from tests.test_cli_serve import env, free_port, llmgw, wait_ready  # noqa: F401  (env is a fixture)


@pytest.fixture
def gw(admin_gw):
    return admin_gw


async def chat(client: openai.AsyncOpenAI, fake_provider) -> str:
    fake_provider.script(Reply(usage=Usage(input=100, output=100)))
    try:
        await client.chat.completions.create(model="gpt-4o-mini", max_tokens=200,
                                             messages=[{"role": "user", "content": "hi"}])
        return "ok"
    except openai.RateLimitError as exc:
        assert exc.response.status_code == 429
        return exc.message


async def test_engineer_asks_with_own_key_workspace_admin_approves_refusal_lifts_at_once(gw, http, fake_provider):
    owner = Api(http, gw.url, OWNER_KEY)
    await owner.ok("POST", "/admin/users", {"org": "acme", "name": "alice", "workspace": "backend"})
    key, key_id = gw.key("acme", "backend", "alice")
    await owner.ok("POST", "/admin/budgets", {"scope": "user:alice", "org": "acme", "window": "day",
                                              "limit_micro_usd": 1})
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    refusal = await chat(client, fake_provider)
    assert "user alice (org acme) daily budget" in refusal
    assert "POST /v1/llmgw/increase-requests" in refusal             # the refusal tells how to ask

    engineer = owner.as_(key)
    filed = await engineer.ok("POST", "/v1/llmgw/increase-requests",
                              {"window": "day", "amount_usd": "5", "reason": "release crunch"}, 201)
    assert filed["status"] == "pending" and filed["scope"] == "user:alice" and filed["requested_by"] == f"key:{key_id}"
    assert (await engineer.get("/admin/increase-requests"))[0] == 401     # the client key goes no further
    assert (await engineer.post("/v1/llmgw/increase-requests", {"key_id": "kother", "window": "day",
                                                                "amount_usd": 1, "reason": "x"}))[0] == 400

    other_lead = await admin_with_role(owner, "frontend-lead", "workspace_admin", "acme/frontend")
    finance = await admin_with_role(owner, "finance", "finance")
    for who in (other_lead, finance):
        status, out = await who.post(f"/admin/increase-requests/{filed['id']}/approve", {"reason": "sure"})
        assert status == 403, out
    assert await chat(client, fake_provider) != "ok"

    lead = await admin_with_role(owner, "backend-lead", "workspace_admin", "acme/backend")
    approved = await lead.ok("POST", f"/admin/increase-requests/{filed['id']}/approve", {"reason": "ship it"})
    lead_actor = f"admin:backend-lead#{lead.token.split('-')[2]}"        # the person: name and admin key id
    assert approved["status"] == "approved" and approved["decided_by"] == lead_actor
    assert await chat(client, fake_provider) == "ok"                    # same process, no restart
    assert (await engineer.ok("GET", f"/v1/llmgw/increase-requests/{filed['id']}"))["status"] == "approved"
    status, out = await lead.post(f"/admin/increase-requests/{filed['id']}/deny", {})
    assert status == 409

    audit = (await finance.ok("GET", "/admin/audit?type=increase_request,budget"))["data"]
    req = [e for e in audit if e["id"] == f"increase_request:{filed['id']}"]
    assert [(e["action"], e["actor"]) for e in req] == [("create", f"key:{key_id}"), ("update", lead_actor)]
    assert req[0]["reason"] == "release crunch" and req[1]["reason"] == "ship it"
    raised = [e for e in audit if e["id"] == approved["raised"][0]][-1]
    assert raised["before"]["limit_micro_usd"] == 1 and raised["after"]["limit_micro_usd"] == 5_000_001
    assert raised["actor"] == lead_actor and raised["changed"] == ["limit_micro_usd", "raises"]


async def test_deny_and_validation(gw, http, fake_provider):
    owner = Api(http, gw.url, OWNER_KEY)
    key, key_id = gw.key("acme", "backend", "bob")
    gw.budget("user:bob", "day", "0.000001", org="acme")
    filed = await owner.ok("POST", "/admin/increase-requests", {"key_id": key_id, "window": "day",
                                                                "amount_usd": 2, "reason": "demo"}, 201)
    denied = await owner.ok("POST", f"/admin/increase-requests/{filed['id']}/deny", {"reason": "not this week"})
    assert denied["status"] == "denied" and denied["decision_reason"] == "not this week"
    assert (await owner.post(f"/admin/increase-requests/{filed['id']}/approve", {}))[0] == 409
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    assert await chat(client, fake_provider) != "ok"
    engineer = owner.as_(key)
    for bad in ({"window": "fortnight", "amount_usd": 1, "reason": "x"}, {"window": "day", "amount_usd": 1},
                {"window": "day", "amount_usd": 0, "reason": "x"}, {"window": "day", "reason": "x"},
                {"window": "day", "amount_usd": 1, "reason": "x", "scope": "user:mallory"}):
        status, out = await engineer.post("/v1/llmgw/increase-requests", bad)
        assert status == 400, (bad, out)
    listing = (await owner.ok("GET", "/admin/increase-requests?status=denied"))["data"]
    assert [r["id"] for r in listing] == [filed["id"]]


async def test_a_raise_ends_on_time_and_the_cap_returns(gw, http, fake_provider):
    owner = Api(http, gw.url, OWNER_KEY)
    key, key_id = gw.key("acme", "backend", "carol")
    gw.budget("user:*", "day", "0.000001", kind="default")            # only a default caps carol
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    assert "every user daily budget" in await chat(client, fake_provider)
    until = datetime.fromtimestamp(time.time() + 2.5, timezone.utc).isoformat()
    filed = await owner.ok("POST", "/admin/increase-requests", {"key_id": key_id, "window": "day", "amount_usd": 1,
                                                                "reason": "demo", "expires": until}, 201)
    approved = await owner.ok("POST", f"/admin/increase-requests/{filed['id']}/approve", {})
    assert approved["raised"] == ["budget:budget|acme|user:carol||day"]
    assert await chat(client, fake_provider) == "ok"
    for _ in range(60):                                                # the expiry task runs every second
        await asyncio.sleep(0.1)
        if (await owner.ok("GET", f"/admin/increase-requests/{filed['id']}"))["status"] == "expired":
            break
    else:
        raise AssertionError("the raise never ended")
    assert (await owner.ok("GET", "/admin/budgets"))["data"] == []      # the pinned budget is gone again
    assert "every user daily budget" in await chat(client, fake_provider)


def test_raises_stack_and_end_one_by_one():
    state = ConfigState()
    state.apply(Budget("user", "dan", "day", 10, org="acme").record())
    from llmgw.proxy import keys as K
    _, krec = K.mint("acme", "backend", "dan")
    state.apply(krec)
    boss = AdminPrincipal("boss", OWNER)
    for amount, until in ((5, 2000), (7, 3000)):
        req = I.file_request(state, key_id=krec.data["key_id"], window="day", amount_micro_usd=amount, reason="r",
                             expires_ms=until, scope="", requested_by="t", now_ms=1000)
        state.apply(req)
        for rec in I.approve(state, req, boss, now_ms=1000, reason="")[0]:
            state.apply(rec)
    budget = state.get("budget", "budget|acme|user:dan||day")
    assert budget.data["limit_micro_usd"] == 22 and len(budget.data["raises"]) == 2
    assert I.expired_raises(state, 1999) == []
    for rec in I.expired_raises(state, 2000):
        state.apply(rec)
    assert state.get("budget", "budget|acme|user:dan||day").data["limit_micro_usd"] == 17
    for rec in I.expired_raises(state, 3000):
        state.apply(rec)
    final = state.get("budget", "budget|acme|user:dan||day").data
    assert final["limit_micro_usd"] == 10 and final["raises"] == []
    assert {r.data["status"] for r in state.of_type(I.TYPE)} == {I.EXPIRED}


async def test_request_and_approve_from_the_cli_lift_a_refusal_in_a_running_gateway(env, fake_provider, tmp_path):  # noqa: F811
    created = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "alice", env=env)
    key = created.stdout.strip()
    key_id = re.search(r"key id (k\w+)", created.stderr).group(1)
    assert llmgw("budgets", "set", "user:alice", "day", "0.000001", "--org", "acme", env=env).returncode == 0
    port = free_port()
    env = {**env, "LLMGW_ANALYTICS": "0", "LLMGW_ADMIN_KEY": OWNER_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "llmgw.proxy.cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, proc)
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        assert "user alice (org acme) daily budget" in await chat(client, fake_provider)
        filed = llmgw("request-increase", "--key", key_id, "--window", "day", "--amount", "5",
                      "--reason", "load test", "--actor", "alice", env=env)
        assert filed.returncode == 0, filed.stderr
        req_id = re.search(r"request (ir\w+)", filed.stdout).group(1)
        listed = llmgw("increase-requests", "list", "--status", "pending", env=env)
        assert req_id in listed.stdout and "load test" in listed.stdout
        approved = llmgw("increase-requests", "approve", req_id, "--reason", "ok", "--actor", "lead", env=env)
        assert approved.returncode == 0 and "budget|acme|user:alice||day" in approved.stdout, approved.stderr
        t0 = time.monotonic()
        while await chat(client, fake_provider) != "ok":                 # the gateway follows the config log
            assert time.monotonic() - t0 < 1.0, "the approval did not reach the running gateway within a second"
            await asyncio.sleep(0.05)
        again = llmgw("increase-requests", "approve", req_id, env=env)
        assert again.returncode == 1 and "already approved" in again.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    audit = llmgw("audit", "--type", "increase_request,budget", env=env)
    lines = audit.stdout.splitlines()
    assert any("cli:alice" in ln and "create" in ln and req_id in ln for ln in lines), audit.stdout
    assert any("cli:lead" in ln and "update" in ln and "user:alice" in ln and "limit_micro_usd" in ln
               for ln in lines), audit.stdout
