"""The admin surface: a user belongs to one workspace unless an org-level admin says otherwise (HTTP,
LiteLLM-compatible calls and the CLI share that check), the CLI validates as the API does, and admin
refusals are counted and logged by their real status, never as internal or upstream errors."""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from llmgw.ledger.configlog import FileConfigLog
from llmgw.proxy.cli import main as cli_main
from tests.admin_support import OWNER_KEY, Api, admin_harness, admin_with_role
from tests.gateway_harness import GatewayHarness
from tests.test_ops_metrics import scrape, value

@pytest.fixture
async def acme(fake_provider: Any, tmp_path: Path) -> AsyncIterator[tuple[GatewayHarness, Api, Api, Api]]:
    """acme with workspaces backend and frontend, bob's record in frontend, one admin for each workspace."""
    async with admin_harness(fake_provider, tmp_path) as gw, aiohttp.ClientSession() as http:
        owner = Api(http, gw.url, OWNER_KEY)
        await owner.ok("POST", "/admin/orgs", {"name": "acme"})
        for ws in ("backend", "frontend"):
            await owner.ok("POST", "/admin/workspaces", {"org": "acme", "name": ws})
        await owner.ok("POST", "/admin/users", {"org": "acme", "name": "bob", "workspace": "frontend"}, 201)
        backend = await admin_with_role(owner, "be-admin", "workspace_admin", "acme/backend")
        frontend = await admin_with_role(owner, "fe-admin", "workspace_admin", "acme/frontend")
        yield gw, owner, backend, frontend


def keys_of(gw: GatewayHarness, user: str) -> list[str]:
    return sorted(f"{r.data['org']}/{r.data['workspace']}" for r in gw.gw.config.of_type("key")
                  if r.data and r.data["user"] == user)


async def test_a_workspace_admin_cannot_mint_a_key_for_another_workspaces_user(acme) -> None:
    gw, owner, backend, frontend = acme
    status, body = await backend.post("/admin/keys", {"org": "acme", "workspace": "backend", "user": "bob"})
    assert status == 403, body
    assert "acme/frontend" in body["error"]["message"] and "owner" in body["error"]["message"]
    assert keys_of(gw, "bob") == []
    await frontend.ok("POST", "/admin/keys", {"org": "acme", "workspace": "frontend", "user": "bob"}, 201)
    await backend.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "carol"}, 201)
    assert keys_of(gw, "bob") == ["acme/frontend"]


async def test_a_user_known_only_by_keys_belongs_to_their_workspace(acme) -> None:
    gw, owner, backend, frontend = acme
    await frontend.ok("POST", "/admin/keys", {"org": "acme", "workspace": "frontend", "user": "dave"}, 201)
    status, _ = await backend.post("/admin/keys", {"org": "acme", "workspace": "backend", "user": "dave"})
    assert status == 403
    status, _ = await backend.post("/admin/users", {"org": "acme", "name": "dave", "workspace": "backend"})
    assert status == 403                                    # nor claim dave by writing a record
    assert gw.gw.config.get("user", "acme/dave") is None


async def test_litellm_calls_share_the_check(acme) -> None:
    gw, owner, backend, frontend = acme
    status, _ = await backend.post("/key/generate", {"organization_id": "acme", "team_id": "backend", "user_id": "bob"})
    assert status == 403
    status, _ = await backend.post("/user/new", {"organization_id": "acme", "team_id": "backend", "user_id": "bob"})
    assert status == 403
    assert keys_of(gw, "bob") == [] and gw.gw.config.get("user", "acme/bob").data["workspace"] == "frontend"


async def test_an_owner_may_say_otherwise(acme) -> None:
    gw, owner, backend, frontend = acme
    await owner.ok("POST", "/admin/keys", {"org": "acme", "workspace": "backend", "user": "bob"}, 201)
    assert keys_of(gw, "bob") == ["acme/backend"]


# -- the CLI validates as the API does -----------------------------------------------------------------

@pytest.fixture
def llmgw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """``llmgw ARGV...`` in this process, on a config log in tmp_path: (exit status, stdout, stderr)."""
    for name in ("LLMGW_KAFKA_BOOTSTRAP", "LLMGW_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LLMGW_DATA_DIR", str(tmp_path))

    def run(*argv: str) -> tuple[int, str, str]:
        code = cli_main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.mark.parametrize("argv,why", [
    (["--org", "acme", "--workspace", "back end", "--user", "bob"], "workspace name"),
    (["--org", "acme/x", "--workspace", "backend", "--user", "bob"], "org name"),
    (["--org", "acme", "--workspace", "backend", "--user", "=HYPERLINK(1)"], "user name"),
    (["--org", "acme", "--workspace", "backend", "--user", "bob", "--expires", "2020-01-01"], "in the past"),
    (["--org", "acme", "--workspace", "backend", "--user", "bob", "--tag", "untagged"], "NAME:VALUE"),
])
def test_cli_refuses_what_the_api_refuses(llmgw, tmp_path: Path, argv: list[str], why: str) -> None:
    code, _, err = llmgw("keys", "create", *argv)
    assert code != 0 and why in err, err
    path = tmp_path / "config.jsonl"
    assert not path.exists() or FileConfigLog(path).load_sync().of_type("key") == []


def test_cli_admin_credentials_refuse_names_the_api_refuses(llmgw) -> None:
    code, _, err = llmgw("admins", "create", "--name", "a b", "--role", "owner")
    assert code != 0 and "admin name" in err


def test_cli_keys_accept_what_the_api_accepts(llmgw) -> None:
    code, out, err = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "bob",
                           "--expires", "30d", "--tag", "project:x", "--models", "gpt-4o-mini, claude-*")
    assert code == 0, err
    assert out.startswith("sk-llmgw-")


async def test_api_refuses_a_key_born_expired(acme) -> None:
    gw, owner, backend, frontend = acme
    status, body = await owner.post("/admin/keys", {"org": "acme", "workspace": "backend", "user": "eve",
                                                    "expires_ms": int(time.time() * 1000) - 1000})
    assert status == 400 and "in the past" in body["error"]["message"]


# -- admin refusals are counted and logged by their real status -------------------------------------------

class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_admin_refusals_are_not_counted_as_internal_or_upstream_errors(acme) -> None:
    gw, owner, backend, frontend = acme
    access = logging.getLogger("llmgw.access")
    lines, old = Lines(), access.level
    access.addHandler(lines)
    access.setLevel(logging.INFO)
    try:
        before = await scrape(gw.url)
        answers = [
            (await owner.call("POST", "/admin/keys", data="{not json"))[0],                       # 400
            (await owner.post("/admin/keys", {"org": "a b", "workspace": "w", "user": "u"}))[0],  # 400 (ValueError)
            (await backend.post("/admin/orgs", {"name": "other"}))[0],                            # 403
            (await owner.post("/admin/orgs", {"name": "acme"}))[0],                               # 409
            (await owner.get("/admin/keys/k000000000000"))[0],                                   # 404
            (await owner.as_("nope").get("/admin/keys"))[0],                                      # 401
        ]
        after = await scrape(gw.url)
    finally:
        access.removeHandler(lines)
        access.setLevel(old)
    assert answers == [400, 400, 403, 409, 404, 401]

    def delta(outcome: str) -> float:
        return (value(after, "llmgw_requests_total", api="other", outcome=outcome)
                - value(before, "llmgw_requests_total", api="other", outcome=outcome))
    assert delta("internal_error") == 0 and delta("upstream_error") == 0
    assert delta("rejected_invalid_request") == 2 and delta("rejected_forbidden") == 1
    assert delta("rejected_conflict") == 1 and delta("rejected_not_found") == 1 and delta("rejected_auth") == 1
    logged = [(r.status, r.outcome) for r in lines.records if r.route.startswith("/admin")]  # type: ignore[attr-defined]
    assert logged == [(400, "rejected_invalid_request"), (400, "rejected_invalid_request"), (403, "rejected_forbidden"),
                      (409, "rejected_conflict"), (404, "rejected_not_found"), (401, "rejected_auth")]
