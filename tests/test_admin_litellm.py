"""LiteLLM's management calls, sent exactly as their docs and migration scripts send them."""
from __future__ import annotations

import time
from datetime import datetime

import openai
import pytest

from tests.admin_support import OWNER_KEY, Api
from tests.fake_provider import Reply, Usage

# Verbatim from LiteLLM's virtual-keys docs ("Generate temporary keys"), master key replaced by ours.
DOCS_BODY = '{"models": ["gpt-3.5-turbo", "gpt-4", "claude-2"], "duration": "20m","metadata": {"user": "ishaan@berri.ai"}}'
# A per-user budget key as migration guides script it (rpm/tpm limits included).
BUDGET_BODY = """{
    "key_alias": "user-alice@company.com",
    "user_id": "alice@company.com",
    "models": ["gpt-4o-mini"],
    "max_budget": 50.0,
    "budget_duration": "30d",
    "tpm_limit": 100000,
    "rpm_limit": 1000,
    "metadata": {"department": "engineering", "team": "frontend"}
  }"""


@pytest.fixture
def gw(admin_gw):
    return admin_gw


async def curl(http, url: str, path: str, body: str, token: str = OWNER_KEY):
    """What `curl -X POST ... --header 'Authorization: Bearer ...' --data-raw '<body>'` sends."""
    async with http.post(url + path, data=body, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"}) as r:
        return r.status, await r.json(content_type=None)


async def test_the_key_generate_call_from_litellm_docs_works_unchanged(gw, http, fake_provider):
    status, out = await curl(http, gw.url, "/key/generate", DOCS_BODY)
    assert status == 200, out
    assert out["key"].startswith("sk-") and out["models"] == ["gpt-3.5-turbo", "gpt-4", "claude-2"]
    expires = datetime.fromisoformat(out["expires"].replace("Z", "+00:00")).timestamp()
    assert 19 * 60 < expires - time.time() <= 20 * 60
    assert out["metadata"] == {"user": "ishaan@berri.ai"} and out["duration"] == "20m"
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=out["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as exc:        # authenticated; model outside its list
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4" in exc.value.message


async def test_max_budget_with_budget_duration_caps_the_key_and_key_info_reports_it(gw, http, fake_provider):
    status, out = await curl(http, gw.url, "/key/generate", BUDGET_BODY)
    assert status == 200, out
    assert out["max_budget"] == 50.0 and out["budget_duration"] == "30d" and out["expires"] is None
    assert out["llmgw"]["budget_window"] == "month" and out["llmgw"]["ignored"] == []
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=out["key"], max_retries=0)
    fake_provider.script(Reply(usage=Usage(input=1_000_000, output=0)))            # $0.15 of gpt-4o-mini
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    owner = Api(http, gw.url, OWNER_KEY)
    info = await owner.ok("GET", f"/key/info?key={out['key']}")
    assert info["key"] == out["key"]
    i = info["info"]
    assert i["max_budget"] == 50.0 and i["budget_duration"] == "30d" and i["user_id"] == "alice@company.com"
    assert i["spend_micro_usd"] == 150_000 and i["spend"] == pytest.approx(0.15)
    assert i["models"] == ["gpt-4o-mini"] and i["key_alias"] == "user-alice@company.com"
    assert "sha256" not in str(info)
    by_alias = await owner.ok("GET", "/key/info?key=user-alice@company.com")
    assert by_alias["info"]["token"] == out["token_id"]
    budgets = (await owner.ok("GET", "/admin/budgets"))["data"]
    assert [(b["scope"], b["window"], b["limit_usd"]) for b in budgets] == [(f"key:{out['token_id']}", "month", "50")]
    limits = {(r["scope"], r["metric"], r["limit"]) for r in (await owner.ok("GET", "/admin/rate-limits"))["data"]}
    assert limits == {(f"key:{out['token_id']}", "tpm", 100000), (f"key:{out['token_id']}", "rpm", 1000)}
    assert i["tpm_limit"] == 100000 and i["rpm_limit"] == 1000


async def test_team_new_user_new_and_key_delete(gw, http, fake_provider):
    status, team = await curl(http, gw.url, "/team/new",
                              '{"team_alias": "Core Infra", "team_id": "core-infra", "organization_id": "acme", '
                              '"max_budget": 100, "budget_duration": "1d"}')
    assert status == 200 and team["team_id"] == "core-infra" and team["organization_id"] == "acme"
    status, user = await curl(http, gw.url, "/user/new",
                              '{"user_id": "krrish3@berri.ai", "user_email": "krrish@berri.ai", "team_id": "core-infra", '
                              '"max_budget": 20, "budget_duration": "1h"}')
    assert status == 200 and user["key"].startswith("sk-llmgw-") and user["user_id"] == "krrish3@berri.ai"
    status, key = await curl(http, gw.url, "/key/generate", '{"team_id": "core-infra", "key_alias": "ci"}')
    assert status == 200 and key["llmgw"]["org"] == "acme" and key["llmgw"]["workspace"] == "core-infra"
    owner = Api(http, gw.url, OWNER_KEY)
    assert (await owner.ok("GET", "/admin/workspaces/acme/core-infra"))["metadata"]["team_alias"] == "Core Infra"
    assert (await owner.ok("GET", "/admin/users/acme/krrish3@berri.ai"))["workspace"] == "core-infra"
    scopes = {(b["scope"], b["window"]) for b in (await owner.ok("GET", "/admin/budgets"))["data"]}
    assert scopes == {("workspace:core-infra", "day"), ("user:krrish3@berri.ai", "hour")}

    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=user["key"], max_retries=0)
    fake_provider.script(Reply(usage=Usage(input=10, output=10)))
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    status, out = await curl(http, gw.url, "/key/delete", f'{{"keys": ["{user["key"]}"], "key_aliases": ["ci"]}}')
    assert status == 200 and out == {"deleted_keys": [user["key"], "ci"]}
    with pytest.raises(openai.AuthenticationError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert (await owner.get(f"/admin/keys/{key['token_id']}"))[0] == 404
    status, out = await curl(http, gw.url, "/key/delete", '{"keys": ["sk-llmgw-knope-x"]}')
    assert status == 404 and out["error"]["type"] == "not_found_error"


async def test_litellm_calls_refuse_client_keys_and_bad_durations(gw, http):
    client_key, _ = gw.key("acme", "backend", "alice")
    status, out = await curl(http, gw.url, "/key/generate", "{}", token=client_key)
    assert status == 401 and "client key" in out["error"]["message"]
    status, out = await curl(http, gw.url, "/key/generate", '{"max_budget": 5, "budget_duration": "3d"}')
    assert status == 400 and "hourly, daily, weekly or monthly" in out["error"]["message"]
    status, out = await curl(http, gw.url, "/key/generate", '{"duration": "soon"}')
    assert status == 400
