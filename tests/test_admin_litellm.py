"""LiteLLM's key management calls, sent with the request bodies LiteLLM documents (master key ours).

Where each body comes from (litellm 1.110.2, the wheel on PyPI; docs at docs.litellm.ai):
- /key/generate: docs/my-website/docs/proxy/virtual_keys.md, "Generate a key":
  ``{"models": ["gpt-3.5-turbo", "gpt-4", "claude-2"], "duration": "20m","metadata": {...}}``
- /key/update: litellm/proxy/management_endpoints/key_management_endpoints.py, update_key_fn docstring
  (its example ends the object with a trailing comma, which is not JSON; sent without it)
- /key/{key}/regenerate: the same file, regenerate_key_fn docstring
- /key/block, /key/unblock, /key/delete: the same file, block_key / unblock_key / delete_key_fn docstrings
- /key/info, /key/list: the same file, info_key_fn / list_keys (query parameters)
Response shapes: litellm/proxy/_types.py ``GenerateKeyResponse`` (``token`` is the key's id, as
``token_id``), info_key_fn (``{"key", "info"}``, ``info`` without ``token``, with ``status``),
``KeyListResponseObject``; errors: ``ProxyException.to_dict`` (``code`` is the status as a string).
"""
from __future__ import annotations

import time
from datetime import datetime

import openai
import pytest

from tests.admin_support import OWNER_KEY, Api
from tests.fake_provider import Reply, Usage

# docs/proxy/virtual_keys.md, verbatim
GENERATE_DOCS = ('{"models": ["gpt-3.5-turbo", "gpt-4", "claude-2"], "duration": "20m",'
                 '"metadata": {"user": "ishaan@berri.ai", "team": "core-infra"}}')
# key_management_endpoints.py update_key_fn docstring (trailing comma removed); KEY replaced per test
UPDATE_DOCS = """{
        "key": "KEY",
        "key_alias": "my-key",
        "user_id": "user-1234",
        "team_id": "team-1234",
        "max_budget": 100,
        "metadata": {"any_key": "any-val"}
    }"""
# key_management_endpoints.py regenerate_key_fn docstring (POST /key/$LITELLM_API_KEY/regenerate)
REGENERATE_DOCS = """{
        "max_budget": 100,
        "metadata": {"team": "core-infra"},
        "models": ["gpt-4", "gpt-3.5-turbo"]
    }"""


@pytest.fixture
def gw(admin_gw):
    return admin_gw


async def curl(http, url: str, path: str, body: str, token: str = OWNER_KEY):
    """What `curl -X POST ... --header 'Authorization: Bearer ...' --data-raw '<body>'` sends."""
    async with http.post(url + path, data=body, headers={"Authorization": f"Bearer {token}",
                                                         "Content-Type": "application/json"}) as r:
        return r.status, await r.json(content_type=None)


async def get(http, url: str, path: str, token: str = OWNER_KEY):
    async with http.get(url + path, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)


async def call(url: str, key: str, model: str = "gpt-4o-mini") -> None:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as client:
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


async def test_the_documented_key_generate_body_gives_a_key_in_litellms_shape(gw, http, fake_provider):
    status, out = await curl(http, gw.url, "/key/generate", GENERATE_DOCS)
    assert status == 200, out
    assert out["key"].startswith("sk-") and out["models"] == ["gpt-3.5-turbo", "gpt-4", "claude-2"]
    assert out["token"] == out["token_id"] and out["key_name"] == f"sk-...{out['key'][-4:]}"
    assert out["organization_id"] == "default" and out["user_id"] == "default"
    expires = datetime.fromisoformat(out["expires"].replace("Z", "+00:00")).timestamp()
    assert 19 * 60 < expires - time.time() <= 20 * 60
    assert out["metadata"] == {"user": "ishaan@berri.ai", "team": "core-infra"} and out["duration"] == "20m"
    assert out["llmgw"]["ignored"] == []
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=out["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as exc:        # authenticated; model outside its list
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert "gpt-4" in exc.value.message


async def test_max_budget_caps_the_key_and_key_info_reports_it_without_the_token(gw, http, fake_provider):
    # the parameters generate_key_fn's docstring lists: max_budget, budget_duration, tpm_limit, rpm_limit
    status, out = await curl(http, gw.url, "/key/generate", '{"key_alias": "alice-key", "user_id": "alice", '
                             '"models": ["gpt-4o-mini"], "max_budget": 50.0, "budget_duration": "30d", '
                             '"tpm_limit": 100000, "rpm_limit": 1000}')
    assert status == 200, out
    assert out["max_budget"] == 50.0 and out["budget_duration"] == "30d" and out["expires"] is None
    assert out["llmgw"]["budget_window"] == "month" and out["llmgw"]["ignored"] == []
    fake_provider.script(Reply(usage=Usage(input=1_000_000, output=0)))            # $0.15 of gpt-4o-mini
    await call(gw.url, out["key"])
    status, info = await get(http, gw.url, f"/key/info?key={out['key']}")
    assert status == 200 and info["key"] == out["key"] and "token" not in info["info"]
    i = info["info"]
    assert i["max_budget"] == 50.0 and i["budget_duration"] == "30d" and i["user_id"] == "alice"
    assert i["spend_micro_usd"] == 150_000 and i["spend"] == pytest.approx(0.15) and i["status"] == "active"
    assert i["models"] == ["gpt-4o-mini"] and i["key_alias"] == "alice-key"
    assert i["tpm_limit"] == 100000 and i["rpm_limit"] == 1000
    assert "sha256" not in str(info)
    owner = Api(http, gw.url, OWNER_KEY)
    budgets = (await owner.ok("GET", "/admin/budgets"))["data"]
    assert [(b["scope"], b["window"], b["limit_usd"]) for b in budgets] == [(f"key:{out['token_id']}", "month", "50")]
    limits = {(r["scope"], r["metric"], r["limit"]) for r in (await owner.ok("GET", "/admin/rate-limits"))["data"]}
    assert limits == {(f"key:{out['token_id']}", "tpm", 100000), (f"key:{out['token_id']}", "rpm", 1000)}


async def test_the_documented_update_body_changes_the_key_and_lists_what_it_drops(gw, http, fake_provider):
    _, made = await curl(http, gw.url, "/key/generate", GENERATE_DOCS)
    status, out = await curl(http, gw.url, "/key/update", UPDATE_DOCS.replace("KEY", made["key"]))
    assert status == 200, out
    assert out["key"] == made["key"] and out["key_alias"] == "my-key" and out["max_budget"] == 100.0
    assert out["metadata"] == {"any_key": "any-val"}
    assert out["llmgw"]["ignored"] == ["team_id", "user_id"]       # a key does not move between teams or users
    # UpdateKeyRequest: without "key", the key is named by key_alias
    status, out = await curl(http, gw.url, "/key/update", '{"key_alias": "my-key", "tpm_limit": 900000}')
    assert status == 200 and out["token"] == made["token_id"] and out["tpm_limit"] == 900000


async def test_list_block_unblock_and_the_documented_path_regenerate(gw, http, fake_provider):
    _, made = await curl(http, gw.url, "/key/generate", '{"models": ["gpt-4o-mini", "gpt-4"], "key_alias": "ci-bot"}')
    key = made["key"]
    status, listed = await get(http, gw.url, "/key/list?page=1&size=10")
    assert status == 200 and listed == {"keys": [made["token_id"]], "total_count": 1, "current_page": 1,
                                        "total_pages": 1}
    status, full = await get(http, gw.url, "/key/list?return_full_object=true&key_alias=ci-bot")
    assert full["keys"][0]["token"] == made["token_id"] and "sha256" not in str(full)

    await call(gw.url, key)
    status, out = await curl(http, gw.url, "/key/block", f'{{\n        "key": "{key}"\n    }}')
    assert status == 200 and out["blocked"] is True and out["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError):
        await call(gw.url, key)
    status, out = await curl(http, gw.url, "/key/unblock", f'{{\n        "key": "{key}"\n    }}')
    assert status == 200 and out["blocked"] is False
    await call(gw.url, key)

    status, regen = await curl(http, gw.url, f"/key/{key}/regenerate", REGENERATE_DOCS)
    assert status == 200, regen
    assert regen["token_id"] == regen["token"] == made["token_id"] and regen["key"] != key
    assert regen["max_budget"] == 100.0 and regen["models"] == ["gpt-4", "gpt-3.5-turbo"]
    assert regen["metadata"] == {"team": "core-infra"} and regen["llmgw"]["ignored"] == []
    with pytest.raises(openai.AuthenticationError):
        await call(gw.url, key)
    with pytest.raises(openai.PermissionDeniedError):                   # the new model list applies
        await call(gw.url, regen["key"])
    status, again = await curl(http, gw.url, "/key/regenerate", f'{{"key": "{regen["key"]}"}}')   # the body form
    assert status == 200 and again["token"] == made["token_id"]


async def test_a_key_reads_its_own_key_info_and_no_other(gw, http, fake_provider):
    mine, _ = gw.key("acme", "backend", "alice")
    other, _ = gw.key("acme", "backend", "bob")
    await call(gw.url, mine)
    status, out = await get(http, gw.url, "/key/info", token=mine)   # info_key_fn: no ?key, the caller's own
    assert status == 200 and out["info"]["user_id"] == "alice" and out["info"]["spend_micro_usd"] > 0
    assert (await get(http, gw.url, f"/key/info?key={mine}", token=mine))[0] == 200
    status, out = await get(http, gw.url, f"/key/info?key={other}", token=mine)
    assert status == 403 and out["error"]["type"] == "auth_error" and out["error"]["code"] == "403"
    assert (await get(http, gw.url, "/key/info", token="sk-llmgw-knope-x"))[0] == 401


async def test_the_documented_delete_body_revokes_the_key(gw, http, fake_provider):
    _, made = await curl(http, gw.url, "/key/generate", '{"key_alias": "ci"}')
    await call(gw.url, made["key"])
    status, out = await curl(http, gw.url, "/key/delete", f'{{\n        "keys": ["{made["key"]}"]\n    }}')
    assert status == 200 and out == {"deleted_keys": [made["key"]]}
    with pytest.raises(openai.AuthenticationError):
        await call(gw.url, made["key"])
    status, out = await curl(http, gw.url, "/key/delete", '{"keys": ["sk-QWrxEynunsNpV1zT48HIrw"]}')
    assert status == 404 and out["error"] == {"message": out["error"]["message"], "type": "not_found_error",
                                              "param": None, "code": "404"}


async def test_errors_come_in_litellms_proxy_exception_shape(gw, http):
    client_key, _ = gw.key("acme", "backend", "alice")
    status, out = await curl(http, gw.url, "/key/generate", "{}", token=client_key)
    assert status == 401 and "client key" in out["error"]["message"]
    assert out["error"]["type"] == "auth_error" and out["error"]["code"] == "401" and out["error"]["param"] is None
    status, out = await curl(http, gw.url, "/key/generate", '{"max_budget": 5, "budget_duration": "3d"}')
    assert status == 400 and "hourly, daily, weekly or monthly" in out["error"]["message"]
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["code"] == "400"
    status, out = await curl(http, gw.url, "/key/generate", '{"duration": "soon"}')
    assert status == 400 and out["error"]["code"] == "400"
    owner = Api(http, gw.url, OWNER_KEY)                        # /admin keeps its own shape
    status, out = await owner.get("/admin/keys/nope")
    assert status == 404 and out["error"]["code"] == "not_found" and "param" not in out["error"]
