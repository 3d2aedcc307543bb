"""The rest of LiteLLM's management calls, sent with the request bodies its docs show (master key ours)."""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timezone

import openai
import pytest

from llmgw.analytics import queries, store
from tests.admin_support import OWNER_KEY, Api
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.test_admin_litellm import curl


@pytest.fixture
def gw(admin_gw):
    return admin_gw


async def get(http, url: str, path: str, token: str = OWNER_KEY):
    async with http.get(url + path, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


async def call(url: str, key: str, model: str = "gpt-4o-mini") -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


async def test_key_update_list_block_unblock_regenerate(gw, http, fake_provider):
    _, made = await curl(http, gw.url, "/key/generate", '{"models": ["gpt-4o-mini"], "key_alias": "ci-bot"}')
    key = made["key"]
    # LiteLLM docs, "Update Key"; a key does not move between teams here, so team_id is listed as ignored
    status, out = await curl(http, gw.url, "/key/update", f'{{"key": "{key}", "models": ["gpt-4o-mini", "gpt-4o"], '
                             '"metadata": {"user": "ishaan@berri.ai"}, "team_id": "core-infra", "tpm_limit": 900000}')
    assert status == 200, out
    assert out["models"] == ["gpt-4o-mini", "gpt-4o"] and out["metadata"] == {"user": "ishaan@berri.ai"}
    assert out["tpm_limit"] == 900000 and out["llmgw"]["ignored"] == ["team_id"]

    status, listed = await get(http, gw.url, "/key/list?page=1&size=10")
    assert status == 200 and listed["keys"] == [made["token_id"]] and listed["total_count"] == 1
    assert listed["current_page"] == 1 and listed["total_pages"] == 1
    status, full = await get(http, gw.url, "/key/list?return_full_object=true&key_alias=ci-bot")
    assert full["keys"][0]["key_alias"] == "ci-bot" and "sha256" not in str(full)

    await call(gw.url, key)
    status, out = await curl(http, gw.url, "/key/block", f'{{"key": "{key}"}}')
    assert status == 200 and out["blocked"] is True
    with pytest.raises(openai.AuthenticationError):
        await call(gw.url, key)
    status, out = await curl(http, gw.url, "/key/unblock", '{"key": "ci-bot"}')
    assert status == 200 and out["blocked"] is False
    await call(gw.url, key)

    status, regen = await curl(http, gw.url, "/key/regenerate", f'{{"key": "{key}"}}')
    assert status == 200 and regen["token_id"] == made["token_id"] and regen["key"] != key
    with pytest.raises(openai.AuthenticationError):
        await call(gw.url, key)
    await call(gw.url, regen["key"])


async def test_a_key_reads_its_own_key_info_and_no_other(gw, http, fake_provider):
    mine, _ = gw.key("acme", "backend", "alice")
    other, _ = gw.key("acme", "backend", "bob")
    await call(gw.url, mine)
    status, out = await get(http, gw.url, "/key/info", token=mine)
    assert status == 200 and out["info"]["user_id"] == "alice" and out["info"]["spend_micro_usd"] > 0
    assert (await get(http, gw.url, f"/key/info?key={mine}", token=mine))[0] == 200
    status, out = await get(http, gw.url, f"/key/info?key={other}", token=mine)
    assert status == 403 and "only its own" in out["error"]["message"]
    assert (await get(http, gw.url, "/key/info", token="sk-llmgw-knope-x"))[0] == 401


async def test_teams_members_limits_update_info_list_delete(gw, http, fake_provider):
    # LiteLLM docs, "/team/new" with members and limits
    status, team = await curl(http, gw.url, "/team/new", '{"team_alias": "my-new-team_4", "team_id": "team-4", '
                              '"members_with_roles": [{"role": "admin", "user_id": "user-1234"}, '
                              '{"role": "user", "user_id": "user-2434"}], "tpm_limit": 1000, "rpm_limit": 100, '
                              '"guardrails": ["pii"]}')
    assert status == 200, team
    assert team["members_with_roles"] == [{"user_id": "user-1234", "user_email": None, "role": "admin"},
                                          {"user_id": "user-2434", "user_email": None, "role": "user"}]
    assert team["tpm_limit"] == 1000 and team["llmgw"]["ignored"] == ["guardrails"]
    owner = Api(http, gw.url, OWNER_KEY)
    limits = {(r["scope"], r["metric"], r["limit"]) for r in (await owner.ok("GET", "/admin/rate-limits"))["data"]}
    assert limits == {("workspace:team-4", "tpm", 1000), ("workspace:team-4", "rpm", 100)}

    status, out = await curl(http, gw.url, "/team/member_add",
                             '{"team_id": "team-4", "member": {"role": "user", "user_id": "krrish247652@berri.ai"}}')
    assert status == 200 and [m["user_id"] for m in out["updated_users"]] == ["krrish247652@berri.ai"]
    status, out = await curl(http, gw.url, "/team/update", '{"team_id": "team-4", "max_budget": 10, '
                             '"budget_duration": "1d", "team_alias": "Team Four"}')
    assert status == 200 and out["data"]["max_budget"] == 10.0 and out["data"]["team_alias"] == "Team Four"

    _, key = await curl(http, gw.url, "/key/generate", '{"team_id": "team-4", "user_id": "user-1234"}')
    await call(gw.url, key["key"])
    status, info = await get(http, gw.url, "/team/info?team_id=team-4")
    assert status == 200 and info["team_info"]["spend_micro_usd"] > 0 and len(info["keys"]) == 1
    assert {m["user_id"] for m in info["team_info"]["members_with_roles"]} == {
        "user-1234", "user-2434", "krrish247652@berri.ai"}
    status, teams = await get(http, gw.url, "/team/list?user_id=user-2434")
    assert [t["team_id"] for t in teams] == ["team-4"]

    status, uinfo = await get(http, gw.url, "/user/info?user_id=user-1234")
    assert status == 200 and uinfo["teams"] == ["team-4"] and len(uinfo["keys"]) == 1
    status, out = await curl(http, gw.url, "/user/update", '{"user_id": "user-1234", "user_role": "internal_user", '
                             '"max_budget": 5, "budget_duration": "30d"}')
    assert status == 200 and out["data"]["user_role"] == "internal_user" and out["data"]["max_budget"] == 5.0
    status, users = await get(http, gw.url, "/user/list?page=1&page_size=2")
    assert users["total"] == 3 and len(users["users"]) == 2 and users["total_pages"] == 2

    status, out = await curl(http, gw.url, "/team/delete", '{"team_ids": ["team-4"]}')
    assert status == 200 and out["llmgw"]["revoked_keys"] == [key["token_id"]]
    with pytest.raises(openai.AuthenticationError):
        await call(gw.url, key["key"])
    assert (await get(http, gw.url, "/team/info?team_id=team-4"))[0] == 404
    status, out = await curl(http, gw.url, "/user/delete", '{"user_ids": ["user-2434"]}')
    assert status == 200 and out["deleted_users"] == ["user-2434"]
    status, out = await curl(http, gw.url, "/team/new", '{"members_with_roles": [{"role": "owner", "user_id": "x"}]}')
    assert status == 400 and "role must be user or admin" in out["error"]["message"]


async def test_budget_customer_and_organization(gw, http):
    status, b = await curl(http, gw.url, "/budget/new", '{"budget_id": "free-tier", "max_budget": 4, '
                           '"budget_duration": "1d", "max_parallel_requests": 1}')
    assert status == 200 and b["llmgw"]["ignored"] == ["max_parallel_requests"]
    status, c = await curl(http, gw.url, "/customer/new", '{"user_id": "my-customer-id", "budget_id": "free-tier"}')
    assert status == 200 and c["max_budget"] == 4 and "user_attribution" in c["llmgw"]["ignored"]
    status, o = await curl(http, gw.url, "/organization/new", '{"organization_alias": "my-secret-org", '
                           '"models": ["model1", "model2"], "max_budget": 100}')
    assert status == 200 and o["organization_id"] == "my-secret-org"
    owner = Api(http, gw.url, OWNER_KEY)
    budgets = {(x["scope"], x["window"], x["limit_usd"]) for x in (await owner.ok("GET", "/admin/budgets"))["data"]}
    assert budgets == {("user:my-customer-id", "day", "4"), ("org:my-secret-org", "month", "100")}
    status, out = await curl(http, gw.url, "/customer/new", '{"user_id": "c2", "budget_id": "nope"}')
    assert status == 404


async def test_health_and_model_info(gw, http):
    async with http.get(gw.url + "/health/liveliness") as r:
        assert r.status == 200 and await r.json() == "I'm alive!"
    async with http.get(gw.url + "/health/readiness") as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "healthy"
    status, info = await get(http, gw.url, "/model/info")
    names = {m["model_name"]: m for m in info["data"]}
    mini = names["gpt-4o-mini"]["model_info"]
    assert mini["litellm_provider"] == "openai" and mini["input_cost_per_token"] == pytest.approx(0.15e-6)
    assert mini["usd_per_million"]["input"] == "0.15"


@pytest.fixture
async def analytics_gw(fake_provider, tmp_path, chdb_dsn):
    database = f"t_{uuid.uuid4().hex[:12]}"
    h = GatewayHarness(fake_provider, tmp_path, analytics=True, admin_key=OWNER_KEY,
                       clickhouse_dsn=f"{chdb_dsn}?database={database}")
    await h.start()
    try:
        yield h, database
    finally:
        await h.stop()
        store.connect(chdb_dsn).command(f"DROP DATABASE IF EXISTS {database} SYNC")
        store.disconnect(chdb_dsn, database=database)


async def test_spend_logs_and_global_spend_report(analytics_gw, http, fake_provider):
    h, database = analytics_gw
    alice, alice_id = h.key("acme", "backend", "alice")
    bob, _ = h.key("acme", "frontend", "bob")
    for key, n in ((alice, 2), (bob, 1)):
        for _ in range(n):
            fake_provider.script(Reply(usage=Usage(input=1_000_000, output=0)))       # $0.15 of gpt-4o-mini
            await call(h.url, key)
    client = store.connect(h.settings.analytics_dsn)
    async with asyncio.timeout(30):
        while not (rows := await asyncio.to_thread(queries.spend, client, database, [], 0, 2**62)) \
                or rows[0].requests < 3:
            await asyncio.sleep(0.05)
    status, logs = await get(http, h.url, f"/spend/logs?api_key={alice}")
    assert status == 200 and len(logs) == 2
    assert {(r["api_key"], r["user"], r["spend_micro_usd"], r["prompt_tokens"]) for r in logs} == {
        (alice_id, "alice", 150_000, 1_000_000)}
    status, one = await get(http, h.url, f"/spend/logs?request_id={logs[0]['request_id']}")
    assert [r["request_id"] for r in one] == [logs[0]["request_id"]]
    today = datetime.now(timezone.utc).date().isoformat()
    status, days = await get(http, h.url, f"/spend/logs?start_date={today}&end_date={today}")
    assert days == [{"startTime": today, "spend_micro_usd": 450_000, "spend": 0.45,
                     "models": {"gpt-4o-mini": 0.45}, "users": {"alice": 0.3, "bob": 0.15}}]
    status, report = await get(http, h.url, f"/global/spend/report?start_date={today}&end_date={today}&group_by=team")
    assert status == 200 and report[0]["group_by_day"] == f"{today}T00:00:00+00:00"
    assert [(t["team_name"], t["total_spend_micro_usd"], t["metadata"][0]["model"]) for t in report[0]["teams"]] == [
        ("backend", 300_000, "gpt-4o-mini"), ("frontend", 150_000, "gpt-4o-mini")]
    status, out = await get(http, h.url, "/global/spend/report?group_by=planet")
    assert status == 400
