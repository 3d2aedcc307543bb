"""Each role's allowed and forbidden actions, on the real gateway, with admin keys minted through the API."""
from __future__ import annotations

from urllib.parse import quote

import aiohttp
import orjson
import pytest

from tests.admin_support import OWNER_KEY, Api, admin_harness, admin_with_role
from tests.waits import until


@pytest.fixture
async def world(fake_provider, tmp_path):
    """acme with two workspaces (backend: alice; frontend: frank), a key each, and one admin per role."""
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    async with aiohttp.ClientSession() as http:
        owner = Api(http, h.url, OWNER_KEY)
        await owner.ok("POST", "/admin/orgs", {"name": "acme"})
        for ws, user in (("backend", "alice"), ("frontend", "frank")):
            await owner.ok("POST", "/admin/workspaces", {"org": "acme", "name": ws})
            await owner.ok("POST", "/admin/users", {"org": "acme", "name": user, "workspace": ws})
        _, backend_key = h.key("acme", "backend", "alice")
        _, frontend_key = h.key("acme", "frontend", "frank")
        frontend_budget = await owner.ok("POST", "/admin/budgets", {"scope": "workspace:frontend", "org": "acme",
                                                                    "window": "month", "limit_usd": 100})
        yield {"gw": h, "owner": owner, "backend_key": backend_key, "frontend_key": frontend_key,
               "frontend_budget": frontend_budget["id"],
               "ws_admin": await admin_with_role(owner, "backend-lead", "workspace_admin", "acme/backend"),
               "finance": await admin_with_role(owner, "finance-bot", "finance"),
               "viewer": await admin_with_role(owner, "auditor", "viewer")}
    await h.stop()


async def test_workspace_admin_manages_its_own_workspace(world):
    ws = world["ws_admin"]
    made = await ws.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "alice"}, 201)
    await ws.ok("POST", f"/admin/keys/{made['key_id']}/rotate")
    await ws.ok("PATCH", f"/admin/keys/{world['backend_key']}", {"allowed_models": ["gpt-4o-mini"]})
    await ws.ok("POST", "/admin/budgets", {"scope": "user:alice", "org": "acme", "window": "day", "limit_usd": 20})
    await ws.ok("POST", "/admin/budgets", {"scope": "workspace:backend", "org": "acme", "window": "month",
                                           "limit_usd": 500})
    await ws.ok("POST", "/admin/budgets", {"scope": f"key:{made['key_id']}", "window": "day", "limit_usd": 3})
    await ws.ok("POST", "/admin/users", {"org": "acme", "name": "newhire", "workspace": "backend"}, 201)
    await ws.ok("POST", "/admin/rate-limits", {"scope": "user:alice", "org": "acme", "metric": "rpm", "limit": 30})
    await ws.ok("POST", "/admin/model-lists", {"scope": "workspace:backend", "org": "acme", "patterns": ["gpt-*"]})
    keys = (await ws.ok("GET", "/admin/keys"))["data"]
    assert {k["workspace"] for k in keys} == {"backend"}
    budgets = (await ws.ok("GET", "/admin/budgets"))["data"]
    assert budgets and all("frontend" not in b["id"] for b in budgets)
    await ws.ok("DELETE", f"/admin/keys/{made['key_id']}")
    assert (await ws.ok("GET", "/admin/whoami"))["workspaces"] == ["acme/backend"]


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/admin/keys", {"org": "acme", "workspace": "frontend", "user": "frank"}),
    ("GET", "/admin/keys/{frontend_key}", None),
    ("PATCH", "/admin/keys/{frontend_key}", {"allowed_models": ["x"]}),
    ("POST", "/admin/keys/{frontend_key}/rotate", {}),
    ("POST", "/admin/keys/{frontend_key}/expire", {}),
    ("DELETE", "/admin/keys/{frontend_key}", None),
    ("GET", "/admin/keys/{frontend_key}/budgets", None),
    ("POST", "/admin/budgets", {"scope": "workspace:frontend", "org": "acme", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/budgets", {"scope": "user:frank", "org": "acme", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/budgets", {"scope": "key:{frontend_key}", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/budgets", {"scope": "user:alice", "window": "day", "limit_usd": 1}),      # any org
    ("POST", "/admin/budgets", {"scope": "org:acme", "org": "acme", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/budgets", {"scope": "tag:project:x", "org": "acme", "window": "day", "limit_usd": 1}),
    ("DELETE", "/admin/budgets/{frontend_budget}", None),
    ("POST", "/admin/defaults", {"scope_kind": "user", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/exceptions", {"scope": "user:frank", "org": "acme", "window": "day", "limit_usd": 9,
                                   "tag": "project:x", "until": "2099-01-01"}),
    ("POST", "/admin/users", {"org": "acme", "name": "spy", "workspace": "frontend"}),
    ("POST", "/admin/users", {"org": "acme", "name": "floating"}),
    ("PUT", "/admin/users/acme/frank", {"workspace": "backend"}),
    ("DELETE", "/admin/users/acme/frank", None),
    ("POST", "/admin/workspaces", {"org": "acme", "name": "mine"}),
    ("POST", "/admin/orgs", {"name": "other"}),
    ("POST", "/admin/admins", {"name": "x", "role": "owner"}),
    ("POST", "/admin/increase-requests", {"key_id": "{frontend_key}", "window": "day", "amount_usd": 1,
                                          "reason": "x"}),
    ("POST", "/admin/apply", None),
    ("POST", "/key/generate", {"team_id": "frontend", "organization_id": "acme"}),
    ("POST", "/key/delete", {"keys": ["{frontend_key}"]}),
    ("POST", "/admin/rate-limits", {"scope": "user:frank", "org": "acme", "metric": "rpm", "limit": 1}),
    ("POST", "/admin/rate-limits", {"scope": "user:*", "metric": "rpm", "limit": 1}),
    ("POST", "/admin/model-lists", {"scope": "workspace:frontend", "org": "acme", "patterns": ["x"]}),
    ("POST", "/admin/model-lists", {"scope": "org:acme", "org": "acme", "patterns": ["x"]}),
])
async def test_workspace_admin_cannot_touch_another_workspace(world, method, path, body):
    fill = lambda s: s.replace("{frontend_key}", world["frontend_key"]).replace(  # noqa: E731
        "{frontend_budget}", quote(world["frontend_budget"], safe=""))
    payload = orjson.loads(fill(orjson.dumps(body).decode())) if body is not None else None
    status, out = await world["ws_admin"].call(method, fill(path), payload)
    assert status == 403, (status, out)
    # the LiteLLM-compatible calls answer in LiteLLM's ProxyException shape (a refused caller: auth_error)
    litellm = not path.startswith("/admin")
    assert out["error"]["type"] == ("auth_error" if litellm else "permission_error")
    assert out["error"]["code"] == ("403" if litellm else "forbidden")
    # and nothing was written: the frontend key still works as before, the budget still stands
    owner = world["owner"]
    assert (await owner.ok("GET", f"/admin/keys/{world['frontend_key']}"))["allowed_models"] == []
    assert (await owner.ok("GET", f"/admin/budgets/{quote(world['frontend_budget'], safe='')}"))["limit_usd"] == "100"


WRITES = [
    ("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "alice"}),
    ("PATCH", "/admin/keys/{backend_key}", {"tags": ["a:b"]}),
    ("POST", "/admin/keys/{backend_key}/rotate", {}),
    ("DELETE", "/admin/keys/{backend_key}", None),
    ("POST", "/admin/budgets", {"scope": "user:alice", "org": "acme", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/defaults", {"scope_kind": "user", "window": "day", "limit_usd": 1}),
    ("POST", "/admin/exceptions", {"scope": "user:alice", "org": "acme", "window": "day", "limit_usd": 9,
                                   "tag": "project:x", "until": "2099-01-01"}),
    ("POST", "/admin/orgs", {"name": "other"}),
    ("PUT", "/admin/orgs/acme", {"metadata": {}}),
    ("POST", "/admin/workspaces", {"org": "acme", "name": "x"}),
    ("POST", "/admin/users", {"org": "acme", "name": "x", "workspace": "backend"}),
    ("DELETE", "/admin/users/acme/alice", None),
    ("POST", "/admin/admins", {"name": "x", "role": "viewer"}),
    ("POST", "/admin/increase-requests", {"key_id": "{backend_key}", "window": "day", "amount_usd": 1,
                                          "reason": "x"}),
    ("POST", "/admin/apply", None),
    ("POST", "/key/generate", {}),
    ("POST", "/team/new", {"team_id": "t"}),
    ("POST", "/user/new", {"user_id": "u"}),
    ("POST", "/admin/rate-limits", {"scope": "user:alice", "org": "acme", "metric": "rpm", "limit": 1}),
    ("POST", "/admin/model-lists", {"scope": "user:alice", "org": "acme", "patterns": ["x"]}),
]


@pytest.mark.parametrize("role", ["finance", "viewer"])
@pytest.mark.parametrize("method,path,body", WRITES)
async def test_finance_and_viewer_cannot_change_anything(world, role, method, path, body):
    fill = lambda s: s.replace("{backend_key}", world["backend_key"])  # noqa: E731
    payload = orjson.loads(fill(orjson.dumps(body).decode())) if body is not None else None
    before = (world["gw"].data_dir / "config.jsonl").read_bytes()
    status, out = await world[role].call(method, fill(path), payload)
    assert status == 403, (status, out)
    assert (world["gw"].data_dir / "config.jsonl").read_bytes() == before


async def test_finance_reads_spend_and_audit_but_no_keys(world):
    fin = world["finance"]
    status, out = await fin.post("/admin/keys", {"org": "acme", "workspace": "backend", "user": "alice"})
    assert status == 403 and "finance may not keys write" in out["error"]["message"]
    assert (await fin.get("/admin/keys"))[0] == 403
    assert (await fin.get(f"/key/info?key={world['backend_key']}"))[0] == 403
    assert (await fin.ok("GET", "/admin/audit"))["data"]
    assert (await fin.ok("GET", "/admin/budgets"))["data"]
    assert (await fin.ok("GET", f"/admin/keys/{world['backend_key']}/budgets"))["data"] is not None


async def test_viewer_reads_everything_but_secrets(world):
    viewer = world["viewer"]
    keys = await viewer.ok("GET", "/admin/keys")
    assert len(keys["data"]) == 2 and "sha256" not in orjson.dumps(keys).decode()
    for path in ("/admin/orgs", "/admin/workspaces", "/admin/users", "/admin/budgets", "/admin/defaults",
                 "/admin/exceptions", "/admin/increase-requests"):
        await viewer.ok("GET", path)
    audit = orjson.dumps(await viewer.ok("GET", "/admin/audit")).decode()
    assert "sha256\":\"<redacted>" in audit and OWNER_KEY not in audit
    assert (await viewer.get("/admin/admins"))[0] == 403


async def test_revoked_and_expired_admin_credentials_stop_working(world):
    owner = world["owner"]
    made = await owner.ok("POST", "/admin/admins", {"name": "temp", "role": "viewer", "expires": "2h"}, 201)
    temp = owner.as_(made["key"])
    await temp.ok("GET", "/admin/whoami")
    await owner.ok("DELETE", f"/admin/admins/{made['admin_id']}")
    assert (await temp.get("/admin/whoami"))[0] == 401
    status, out = await owner.post("/admin/admins", {"name": "old", "role": "viewer", "expires": "2000-01-01"})
    assert status == 400 and "in the past" in out["error"]["message"]       # born expired: a typo, refused
    brief = await owner.ok("POST", "/admin/admins", {"name": "brief", "role": "viewer", "expires": "1s"}, 201)
    brief_api = owner.as_(brief["key"])
    await until(lambda: _status(brief_api.get("/admin/whoami"), 401), 10, 0.1, what="the credential to expire")
    listing = orjson.dumps(await owner.ok("GET", "/admin/admins")).decode()
    assert "sha256" not in listing and made["key"] not in listing
    status, out = await owner.post("/admin/admins", {"name": "nows", "role": "workspace_admin"})
    assert status == 400 and "workspace" in out["error"]["message"]


async def _status(answer, want: int) -> bool:
    return (await answer)[0] == want
