"""LiteLLM's team, user, budget, customer, organization, spend and health calls, sent with the request
bodies LiteLLM documents (master key ours).

Where each body comes from (litellm 1.110.2, litellm/proxy/...):
- /team/new, /team/update, /team/member_add, /team/delete, /team/info, /team/list:
  management_endpoints/team_endpoints.py, the docstrings of new_team, update_team, team_member_add,
  delete_team, team_info, list_team
- /user/new, /user/update, /user/delete, /user/info: management_endpoints/internal_user_endpoints.py,
  the docstrings of new_user ("Usage Example"), user_update, delete_user, user_info
- /budget/new: management_endpoints/budget_management_endpoints.py, new_budget's parameters
- /customer/new: management_endpoints/customer_endpoints.py, new_end_user docstring
- /organization/new: management_endpoints/organization_endpoints.py, new_organization docstring (both examples)
- /spend/logs, /global/spend/report: spend_tracking/spend_management_endpoints.py, view_spend_logs and
  get_global_spend_report (their docstrings and SQL)
Response shapes: proxy/_types.py ``LiteLLM_TeamTable``, ``TeamListResponseObject``,
``TeamAddMemberResponse``, ``UserInfoResponse``, ``LiteLLM_EndUserTable``, ``NewOrganizationResponse``;
/user/delete answers the number of users deleted (management_helpers/bulk_user_deletion.py).
"""
from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from llmgw.analytics import queries, store
from tests.admin_support import OWNER_KEY, Api
from tests.fake_provider import Reply, Usage
from tests.gateway_harness import GatewayHarness
from tests.test_admin_litellm import call, curl, get

# team_endpoints.py new_team docstring, first example, verbatim
TEAM_NEW_DOCS = """{
      "team_alias": "my-new-team_2",
      "members_with_roles": [{"role": "admin", "user_id": "user-1234"},
        {"role": "user", "user_id": "user-2434"}]
    }"""


@pytest.fixture
def gw(admin_gw):
    return admin_gw


async def test_the_documented_team_calls(gw, http, fake_provider):
    status, team = await curl(http, gw.url, "/team/new", TEAM_NEW_DOCS)
    assert status == 200, team
    team_id = team["team_id"]
    assert team["team_alias"] == "my-new-team_2" and team["organization_id"] == "default"
    assert team["members_with_roles"] == [{"user_id": "user-1234", "user_email": None, "role": "admin"},
                                          {"user_id": "user-2434", "user_email": None, "role": "user"}]
    assert team["admins"] == ["user-1234"] and team["members"] == ["user-2434"] and team["blocked"] is False
    assert team["llmgw"]["ignored"] == []
    # team_endpoints.py update_team docstring, both examples (team_id ours)
    status, out = await curl(http, gw.url, "/team/update", f'{{\n        "team_id": "{team_id}",\n'
                             '        "tpm_limit": 100\n    }')
    assert status == 200 and out["team_id"] == team_id and out["data"]["tpm_limit"] == 100
    status, out = await curl(http, gw.url, "/team/update", f'{{\n        "team_id": "{team_id}",\n'
                             '        "max_budget": 10\n    }')
    assert status == 200 and out["data"]["max_budget"] == 10.0 and out["data"]["budget_duration"] == "30d"
    owner = Api(http, gw.url, OWNER_KEY)
    limits = {(r["scope"], r["metric"], r["limit"]) for r in (await owner.ok("GET", "/admin/rate-limits"))["data"]}
    assert limits == {(f"workspace:{team_id}", "tpm", 100)}
    # team_endpoints.py team_member_add docstring (team_id ours)
    status, out = await curl(http, gw.url, "/team/member_add", f'{{"team_id": "{team_id}", "member": '
                             '{"role": "user", "user_id": "krrish247652@berri.ai"}}')
    assert status == 200, out
    assert [(u["user_id"], u["teams"]) for u in out["updated_users"]] == [("krrish247652@berri.ai", [team_id])]
    assert "krrish247652@berri.ai" in out["members"] and out["updated_team_memberships"] == []

    _, key = await curl(http, gw.url, "/key/generate", f'{{"team_id": "{team_id}", "user_id": "user-1234"}}')
    await call(gw.url, key["key"])
    status, info = await get(http, gw.url, f"/team/info?team_id={team_id}")
    assert status == 200 and set(info) == {"team_id", "team_info", "keys", "team_memberships"}
    assert info["team_info"]["spend_micro_usd"] > 0 and [k["token"] for k in info["keys"]] == [key["token_id"]]
    assert {m["user_id"] for m in info["team_info"]["members_with_roles"]} == {
        "user-1234", "user-2434", "krrish247652@berri.ai"}
    status, teams = await get(http, gw.url, "/team/list?user_id=user-2434")       # TeamListResponseObject
    assert [(t["team_id"], len(t["keys"]), t["team_memberships"]) for t in teams] == [(team_id, 1, [])]

    # team_endpoints.py delete_team docstring (team_id ours): the team's keys go with it
    status, out = await curl(http, gw.url, "/team/delete", f'{{\n        "team_ids": ["{team_id}"]\n    }}')
    assert status == 200 and out["deleted_teams"] == [team_id] and out["llmgw"]["revoked_keys"] == [key["token_id"]]
    with pytest.raises(Exception):
        await call(gw.url, key["key"])
    status, out = await get(http, gw.url, f"/team/info?team_id={team_id}")
    assert status == 404 and out["error"]["code"] == "404"
    status, out = await curl(http, gw.url, "/team/new", '{"members_with_roles": [{"role": "owner", "user_id": "x"}]}')
    assert status == 400 and "role must be user or admin" in out["error"]["message"]


async def test_the_documented_user_calls(gw, http, fake_provider):
    # internal_user_endpoints.py new_user "Usage Example", verbatim: neither field is a NewUserRequest
    # field, so a user id is made up, a key minted, and both named in ignored
    status, user = await curl(http, gw.url, "/user/new", """{
         "username": "new_user",
         "email": "new_user@example.com"
     }""")
    assert status == 200, user
    assert user["user_id"].startswith("user-") and user["key"].startswith("sk-")
    assert user["llmgw"]["ignored"] == ["email", "username"]
    await curl(http, gw.url, "/team/new", '{"team_id": "core", "team_alias": "Core"}')
    status, other = await curl(http, gw.url, "/user/new", '{"user_id": "test-litellm-user-4", "team_id": "core", '
                               '"max_budget": 20, "budget_duration": "1d", "auto_create_key": false}')
    assert status == 200 and "key" not in other and other["max_budget"] == 20
    # internal_user_endpoints.py user_update docstring, verbatim
    status, out = await curl(http, gw.url, "/user/update", """{
        "user_id": "test-litellm-user-4",
        "user_role": "proxy_admin_viewer"
    }""")
    assert status == 200 and out["user_id"] == "test-litellm-user-4"
    assert out["data"]["user_role"] == "proxy_admin_viewer" and out["data"]["max_budget"] == 20.0
    # user_info: user_info.teams are team ids, the top-level teams are the team rows
    status, info = await get(http, gw.url, "/user/info?user_id=test-litellm-user-4")
    assert status == 200 and info["user_info"]["teams"] == ["core"]
    assert [(t["team_id"], t["team_alias"]) for t in info["teams"]] == [("core", "Core")]
    status, users = await get(http, gw.url, "/user/list?page=1&page_size=1")
    assert users["total"] == 2 and len(users["users"]) == 1 and users["total_pages"] == 2
    # internal_user_endpoints.py delete_user docstring (user id ours): the count of users deleted
    status, out = await curl(http, gw.url, "/user/delete", f'{{\n        "user_ids": ["{user["user_id"]}"]\n    }}')
    assert status == 200 and out == 1
    with pytest.raises(Exception):
        await call(gw.url, user["key"])


async def test_budget_customer_and_organization(gw, http):
    # budget_management_endpoints.py new_budget parameters; max_parallel_requests is not enforced here
    status, b = await curl(http, gw.url, "/budget/new", '{"budget_id": "free_tier", "max_budget": 4, '
                           '"budget_duration": "1d", "max_parallel_requests": 1}')
    assert status == 200 and b["budget_id"] == "free_tier" and b["llmgw"]["ignored"] == ["max_parallel_requests"]
    # customer_endpoints.py new_end_user docstring, verbatim
    status, c = await curl(http, gw.url, "/customer/new", """{
            "user_id" : "ishaan-jaff-3",
            "allowed_region": "eu",
            "budget_id": "free_tier",
            "models": ["gpt-4o-mini"],
            "default_model": "azure/gpt-3.5-turbo-eu"
        }""")
    assert status == 200, c
    assert c["user_id"] == "ishaan-jaff-3" and c["budget_id"] == "free_tier" and c["blocked"] is False
    assert c["litellm_budget_table"]["max_budget"] == 4 and c["litellm_budget_table"]["budget_duration"] == "1d"
    assert c["llmgw"]["ignored"] == ["allowed_region", "default_model", "models", "user_attribution"]
    # organization_endpoints.py new_organization docstring, both examples verbatim
    status, o = await curl(http, gw.url, "/organization/new", """{
        "organization_alias": "my-secret-org",
        "models": ["model1", "model2"],
        "max_budget": 100
    }""")
    assert status == 200, o
    assert o["organization_id"] == "my-secret-org" and o["models"] == ["model1", "model2"]
    assert o["budget_id"] and o["litellm_budget_table"]["max_budget"] == 100 and o["created_by"]
    status, o2 = await curl(http, gw.url, "/organization/new", """{
        "organization_alias": "my-other-org",
        "models": ["model1", "model2"],
        "budget_id": "free_tier"
    }""")
    assert status == 200 and o2["budget_id"] == "free_tier" and o2["litellm_budget_table"]["max_budget"] == 4
    owner = Api(http, gw.url, OWNER_KEY)
    budgets = {(x["scope"], x["window"], x["limit_usd"]) for x in (await owner.ok("GET", "/admin/budgets"))["data"]}
    assert budgets == {("user:ishaan-jaff-3", "day", "4"), ("org:my-secret-org", "month", "100"),
                       ("org:my-other-org", "day", "4")}
    status, out = await curl(http, gw.url, "/customer/new", '{"user_id": "c2", "budget_id": "nope"}')
    assert status == 404 and out["error"]["type"] == "not_found_error"
    status, out = await curl(http, gw.url, "/organization/new", '{"models": ["model1"]}')   # alias is required
    assert status == 400 and "organization_alias" in out["error"]["message"]


async def test_health_and_model_info(gw, http):
    async with http.get(gw.url + "/health/liveliness") as r:
        assert r.status == 200 and await r.json() == "I'm alive!"
    async with http.get(gw.url + "/health/readiness") as r:
        body = await r.json()
        assert r.status == 200 and body["status"] == "healthy" and body["db"] == "connected"
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
    bob, bob_id = h.key("acme", "frontend", "bob")
    for key, n in ((alice, 2), (bob, 1)):
        for _ in range(n):
            fake_provider.script(Reply(usage=Usage(input=1_000_000, output=0)))       # $0.15 of gpt-4o-mini
            await call(h.url, key)
    client = store.connect(h.settings.analytics_dsn)
    async with asyncio.timeout(30):
        while not (rows := await asyncio.to_thread(queries.spend, client, database, [], 0, 2**62)) \
                or rows[0].requests < 3:
            await asyncio.sleep(0.05)
    # view_spend_logs docstring: ?api_key=
    status, logs = await get(http, h.url, f"/spend/logs?api_key={alice}")
    assert status == 200 and len(logs) == 2
    assert {(r["api_key"], r["user"], r["spend_micro_usd"], r["prompt_tokens"]) for r in logs} == {
        (alice_id, "alice", 150_000, 1_000_000)}
    status, one = await get(http, h.url, f"/spend/logs?request_id={logs[0]['request_id']}")
    assert [r["request_id"] for r in one] == [logs[0]["request_id"]]
    today = datetime.now(timezone.utc).date()
    tomorrow, after = (today + timedelta(days=1)).isoformat(), (today + timedelta(days=2)).isoformat()
    # both dates: LiteLLM reads start_date 00:00 .. end_date 00:00, sums per day, pads the days after
    status, days = await get(http, h.url, f"/spend/logs?start_date={today}&end_date={after}")
    assert days == [{alice_id: 0.3, bob_id: 0.15, "startTime": today.isoformat(), "spend": 0.45,
                     "spend_micro_usd": 450_000, "models": {"gpt-4o-mini": 0.45}, "users": {"alice": 0.3, "bob": 0.15}},
                    {"startTime": tomorrow, "spend": 0, "spend_micro_usd": 0, "users": {}, "models": {}},
                    {"startTime": after, "spend": 0, "spend_micro_usd": 0, "users": {}, "models": {}}]
    status, mine = await get(http, h.url, f"/spend/logs?start_date={today}&end_date={tomorrow}&user_id=bob")
    assert [(d["startTime"], d["users"]) for d in mine] == [(today.isoformat(), {"bob": 0.15}),
                                                            (tomorrow, {})]
    status, listed = await get(http, h.url, f"/spend/logs?start_date={today}&end_date={tomorrow}&summarize=false")
    assert status == 200 and len(listed) == 3 and {r["user"] for r in listed} == {"alice", "bob"}
    status, none = await get(http, h.url, f"/spend/logs?start_date={today}&end_date={today}")
    assert none == []                                                   # the range is one instant, as on LiteLLM

    # get_global_spend_report: end_date's whole day counts; team (default), customer, api_key
    status, report = await get(http, h.url, f"/global/spend/report?start_date={today}&end_date={today}")
    assert status == 200 and report[0]["group_by_day"] == f"{today}T00:00:00+00:00"
    assert [(t["team_name"], t["total_spend_micro_usd"], [(m["model"], m["api_key"]) for m in t["metadata"]])
            for t in report[0]["teams"]] == [("backend", 300_000, [("gpt-4o-mini", alice_id)]),
                                             ("frontend", 150_000, [("gpt-4o-mini", bob_id)])]
    status, report = await get(http, h.url,
                               f"/global/spend/report?start_date={today}&end_date={today}&group_by=customer")
    assert [(c["customer"], c["total_spend"]) for c in report[0]["customers"]] == [("alice", 0.3), ("bob", 0.15)]
    status, report = await get(http, h.url,
                               f"/global/spend/report?start_date={today}&end_date={today}&group_by=api_key")
    assert [(k["api_key"], k["total_cost"], k["total_input_tokens"], [m["model"] for m in k["model_details"]])
            for k in report] == [(alice_id, 0.3, 2_000_000, ["gpt-4o-mini"]), (bob_id, 0.15, 1_000_000, ["gpt-4o-mini"])]
    status, out = await get(http, h.url, "/global/spend/report?group_by=team")
    assert status == 400 and out["error"]["message"] == "Please provide start_date and end_date"
    status, out = await get(http, h.url, f"/global/spend/report?start_date={today}&end_date={today}&group_by=planet")
    assert status == 400
