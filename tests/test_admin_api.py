"""The admin API on the real gateway: authentication, entities, keys, budgets; every change in the log."""
from __future__ import annotations

import asyncio
from urllib.parse import quote

import aiohttp
import anthropic
import openai
import orjson
import pytest

from tests.admin_support import OWNER_KEY, Api
from tests.fake_provider import Reply, Usage


@pytest.fixture
def gw(admin_gw):
    return admin_gw


@pytest.fixture
async def owner(gw):
    async with aiohttp.ClientSession() as http:
        yield Api(http, gw.url, OWNER_KEY)


def log_records(gw) -> list[dict]:
    return [orjson.loads(line) for line in (gw.data_dir / "config.jsonl").read_bytes().splitlines()]


async def test_admin_routes_refuse_client_keys_and_missing_or_wrong_credentials(gw, owner):
    client_key, _ = gw.key("acme", "backend", "alice")
    for token in (None, client_key, "wrong-admin-key", "llmgw-admin-a000000000000-nope"):
        status, body = await owner.as_(token).get("/admin/keys")
        assert status == 401, (token, body)
        assert body["error"]["type"] == "authentication_error" and body["error"]["message"]
        assert set(body["error"]) == {"message", "type", "code"}
    status, body = await owner.as_(client_key).get("/admin/whoami")
    assert "client key cannot be used" in body["error"]["message"]
    status, body = await owner.get("/admin/whoami")
    assert status == 200 and body["role"] == "owner" and body["actor"] == "admin:owner-key"


async def test_errors_are_json_with_proper_statuses(owner):
    assert (await owner.get("/admin/nothing-here"))[0] == 404
    status, body = await owner.call("POST", "/admin/orgs", data="{not json", headers={"content-type": "application/json"})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = await owner.post("/admin/orgs", {"name": "has space"})
    assert status == 400 and "name" in body["error"]["message"]
    await owner.ok("POST", "/admin/orgs", {"name": "acme"}, 201)
    status, body = await owner.post("/admin/orgs", {"name": "acme"})
    assert status == 409 and body["error"]["code"] == "conflict"
    status, body = await owner.get("/admin/keys/knotthere")
    assert status == 404 and body["error"]["type"] == "not_found_error"


async def test_orgs_workspaces_users_are_config_records_with_actor_and_reason(gw, owner):
    await owner.ok("POST", "/admin/orgs", {"name": "acme", "metadata": {"cost_center": "CC-1"}, "reason": "new customer"})
    await owner.ok("POST", "/admin/workspaces", {"org": "acme", "name": "backend", "reason": "team formed"})
    await owner.ok("POST", "/admin/users", {"org": "acme", "name": "alice", "workspace": "backend",
                                            "email": "alice@acme.example", "metadata": {"level": 3}})
    await owner.ok("PUT", "/admin/orgs/acme", {"metadata": {"cost_center": "CC-2"}, "reason": "re-org"})
    assert (await owner.ok("GET", "/admin/orgs/acme"))["metadata"] == {"cost_center": "CC-2"}
    assert [w["name"] for w in (await owner.ok("GET", "/admin/workspaces?org=acme"))["data"]] == ["backend"]
    users = (await owner.ok("GET", "/admin/users?workspace=backend"))["data"]
    assert users == [{"org": "acme", "name": "alice", "workspace": "backend", "email": "alice@acme.example",
                      "metadata": {"level": 3}}]
    await owner.ok("DELETE", "/admin/users/acme/alice")
    assert (await owner.get("/admin/users/acme/alice"))[0] == 404
    recs = log_records(gw)
    org_changes = [r for r in recs if r["id"] == "org:acme"]
    assert [(r["actor"], r["reason"]) for r in org_changes] == [("admin:owner-key", "new customer"),
                                                               ("admin:owner-key", "re-org")]
    assert [r["data"] for r in recs if r["id"] == "user:acme/alice"][-1] is None


async def test_key_lifecycle_create_once_list_without_secrets_rotate_expire_revoke(gw, owner, fake_provider):
    made = await owner.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "alice",
                                                  "allowed_models": ["claude-haiku-*"], "tags": ["project:payments"],
                                                  "alias": "alice-laptop", "reason": "onboarding"}, 201)
    key, key_id = made["key"], made["key_id"]
    assert key.startswith("sk-llmgw-") and made["status"] == "active"
    listing = await owner.ok("GET", "/admin/keys")
    raw = orjson.dumps(listing).decode()
    secret = key.removeprefix(f"sk-llmgw-{key_id}-")      # the secret may itself hold or end in "-"
    assert len(secret) >= 16 and key_id in raw and key not in raw and "sha256" not in raw and secret not in raw
    assert listing["data"][0]["allowed_models"] == ["claude-haiku-*"]

    client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=key, max_retries=0)
    fake_provider.script(Reply(usage=Usage(input=10, output=5)))
    await client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.PermissionDeniedError):          # outside the allow-list
        await client.messages.create(model="claude-opus-4-1", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    await owner.ok("PATCH", f"/admin/keys/{key_id}", {"allowed_models": ["claude-haiku-*", "claude-opus-*"],
                                                      "tags": ["project:search"]})
    fake_provider.script(Reply(usage=Usage(input=10, output=5)))
    await client.messages.create(model="claude-opus-4-1", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    assert (await gw.events())[-1].tags == ("project:search",)

    rotated = await owner.ok("POST", f"/admin/keys/{key_id}/rotate", {"reason": "laptop lost"})
    assert rotated["key_id"] == key_id and rotated["key"] != key
    with pytest.raises(anthropic.AuthenticationError):
        await client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}])
    new_client = anthropic.AsyncAnthropic(base_url=gw.url, api_key=rotated["key"], max_retries=0)
    fake_provider.script(Reply(usage=Usage(input=10, output=5)))
    await new_client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=[{"role": "user", "content": "x"}])

    assert (await owner.ok("POST", f"/admin/keys/{key_id}/expire", {}))["status"] == "expired"
    with pytest.raises(anthropic.AuthenticationError):
        await new_client.messages.create(model="claude-haiku-4-5", max_tokens=50,
                                         messages=[{"role": "user", "content": "x"}])
    await owner.ok("DELETE", f"/admin/keys/{key_id}?reason=offboarded")
    assert (await owner.get(f"/admin/keys/{key_id}"))[0] == 404
    last = [r for r in log_records(gw) if r["id"] == f"key:{key_id}"]
    assert [r["reason"] for r in last] == ["onboarding", "", "laptop lost", "", "offboarded"]
    assert last[-1]["data"] is None and all(r["actor"] == "admin:owner-key" for r in last)


async def test_budgets_defaults_exceptions_take_effect_at_once(gw, owner, fake_provider):
    key, key_id = gw.key("acme", "backend", "erin")
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)

    async def call() -> str:
        fake_provider.script(Reply(usage=Usage(input=1000, output=1000)))
        try:
            await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                                 max_tokens=100)
            return "ok"
        except openai.RateLimitError as exc:
            return exc.message

    assert await call() == "ok"
    d = await owner.ok("POST", "/admin/defaults", {"scope_kind": "user", "window": "day", "limit_usd": "0.000001",
                                                   "reason": "freeze"}, 201)
    assert "every user daily budget" in await call()
    b = await owner.ok("POST", "/admin/budgets", {"scope": "user:erin", "org": "acme", "window": "day",
                                                  "limit_usd": 5}, 201)
    assert b["limit_micro_usd"] == 5_000_000 and await call() == "ok"
    again = await owner.call("POST", "/admin/budgets", {"scope": "user:erin", "org": "acme", "window": "day",
                                                        "limit_micro_usd": 1})
    assert again[0] == 200 and again[1]["id"] == b["id"]          # same scope and window: replaced
    assert "user erin (org acme) daily budget" in await call()
    e = await owner.ok("POST", "/admin/exceptions", {"scope": "user:erin", "org": "acme", "window": "day",
                                                     "limit_usd": "3", "tag": "project:launch",
                                                     "until": "2099-01-01"}, 201)
    await owner.ok("PATCH", f"/admin/keys/{key_id}", {"tags": ["project:launch"]})
    assert await call() == "ok"
    assert [x["id"] for x in (await owner.ok("GET", "/admin/exceptions"))["data"]] == [e["id"]]
    applied = (await owner.ok("GET", f"/admin/keys/{key_id}/budgets"))["data"]
    assert any(a["budget"] == e["id"] and a["remaining_micro_usd"] < 3_000_000 for a in applied)
    for path, rid in (("/admin/exceptions", e["id"]), ("/admin/budgets", b["id"]), ("/admin/defaults", d["id"])):
        await owner.ok("DELETE", f"{path}/{quote(rid, safe='')}")
    assert (await owner.ok("GET", "/admin/budgets"))["data"] == []
    status, body = await owner.post("/admin/exceptions", {"scope": "user:erin", "window": "day", "limit_usd": 1})
    assert status == 400 and "tag" in body["error"]["message"]


async def test_first_start_without_admin_key_prints_one_owner_key_and_stores_only_its_hash(fake_provider, tmp_path,
                                                                                         capsys):
    from tests.gateway_harness import GatewayHarness
    h = GatewayHarness(fake_provider, tmp_path)
    await h.start()
    try:
        printed = capsys.readouterr().err
        key = printed.strip().splitlines()[-1]
        assert key.startswith("llmgw-admin-") and "shown once" in printed
        assert key not in (tmp_path / "config.jsonl").read_text()
        async with aiohttp.ClientSession() as http:
            assert (await Api(http, h.url, key).ok("GET", "/admin/whoami"))["role"] == "owner"
    finally:
        await h.stop()
    h2 = GatewayHarness(fake_provider, tmp_path)      # a second start prints nothing new
    await h2.start()
    await h2.stop()
    assert "llmgw-admin-" not in capsys.readouterr().err


async def test_admin_writes_are_serialized(owner):
    results = await asyncio.gather(*(owner.post("/admin/orgs", {"name": "race"}) for _ in range(10)))
    assert sorted(s for s, _ in results) == [201] + [409] * 9


async def test_model_lists_and_rate_limits_through_the_api(gw, owner, fake_provider):
    key, key_id = gw.key("acme", "interns", "ivy")
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
    ml = await owner.ok("POST", "/admin/model-lists", {"scope": "workspace:interns", "org": "acme",
                                                       "patterns": ["claude-haiku-*"], "reason": "interns"}, 201)
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    assert "claude-haiku-*" in exc.value.message
    await owner.ok("DELETE", f"/admin/model-lists/{quote(ml['id'], safe='')}")
    fake_provider.script(Reply(usage=Usage(input=10, output=5)))
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])

    rl = await owner.ok("POST", "/admin/rate-limits", {"scope": f"key:{key_id}", "metric": "rpd", "limit": 1}, 201)
    assert rl["description"] == f"key {key_id}: 1 requests per day"
    assert (await owner.ok("GET", "/admin/rate-limits"))["data"] == [rl]
    fake_provider.script(Reply(usage=Usage(input=10, output=5)))
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}])
    status, out = await owner.post("/admin/rate-limits", {"scope": "user:*", "metric": "rpx", "limit": 1})
    assert status == 400 and "metric" in out["error"]["message"]
