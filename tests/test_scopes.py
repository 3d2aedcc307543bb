"""`workspace:ORG/NAME` (the form `explain`, the dashboard and the admin API print) means workspace NAME in org
ORG wherever a scope is taken: budgets, rate limits, model allow-lists, keys, alert thresholds, spend filters;
through the CLI's real entry point and the admin API over HTTP. A form that could never match a call is
refused with the one it should take. Money is shown with the digits it has."""
from __future__ import annotations

import asyncio
import os

import aiohttp
import openai
import orjson
import pytest

from llmgw.ledger.configlog import open_config_log
from llmgw.core.scopes import Scope, parse_scope, parse_workspace
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.fake_provider import Reply, Usage
from tests.test_cli_serve import llmgw


@pytest.mark.parametrize("text, org, kinds, want", [
    ("workspace:acme/backend", "", None, Scope("workspace", "backend", "acme")),
    ("workspace:acme/backend", "acme", None, Scope("workspace", "backend", "acme")),
    ("workspace:backend", "acme", None, Scope("workspace", "backend", "acme")),
    ("workspace:backend", "", None, Scope("workspace", "backend", "")),
    ("user:acme/ivy", "", None, Scope("user", "ivy", "acme")),
    ("user:*", "", ("org", "workspace", "user", "key"), Scope("user", "*", "")),
    ("workspace:acme/*", "", None, Scope("workspace", "*", "acme")),
    ("key:k0123456789ab", "", None, Scope("key", "k0123456789ab", "")),
    ("tag:project:pay/ments", "", None, Scope("tag", "project:pay/ments", "")),
    ("org:acme", "", None, Scope("org", "acme", "")),
])
def test_each_form_reads_as_one_scope_and_prints_back_the_same(text, org, kinds, want):
    got = parse_scope(text, org, kinds) if kinds else parse_scope(text, org)
    assert got == want
    assert parse_scope(str(got)) == (want if want.org and want.kind in ("workspace", "user")
                                     else Scope(want.kind, want.name, ""))


@pytest.mark.parametrize("text, org, kinds, says", [
    ("workspace:acme/", "", None, "workspace:ORG/NAME"),
    ("workspace:/backend", "", None, "workspace:ORG/NAME"),
    ("workspace:acme/backend/x", "", None, "workspace:ORG/NAME"),
    ("workspace:acme/backend", "globex", None, "names org 'acme' but the org given is 'globex'"),
    ("org:acme/backend", "", None, "expected org:NAME"),
    ("key:acme/k1", "", None, "expected key:KEY_ID"),
    ("team:backend", "", None, "workspace:NAME or workspace:ORG/NAME"),
    ("tag:project:x", "", ("org", "workspace", "user", "key"), "expected one of org:NAME"),
    ("tag:project", "", None, "tag:NAME:VALUE"),
    ("workspace:", "", None, "expected one of"),
    ("backend", "", None, "expected one of"),
])
def test_a_form_that_would_never_match_is_refused_naming_the_right_one(text, org, kinds, says):
    with pytest.raises(ValueError, match=says.replace("*", r"\*").replace("(", r"\(")):
        parse_scope(text, org, kinds) if kinds else parse_scope(text, org)


def test_a_workspace_alone_needs_its_org():
    assert parse_workspace("acme/backend") == ("acme", "backend")
    assert parse_workspace("workspace:acme/backend") == ("acme", "backend")
    assert parse_workspace("backend", "acme") == ("acme", "backend")
    with pytest.raises(ValueError, match="write ORG/NAME"):
        parse_workspace("backend")


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if k not in ("LLMGW_KAFKA_BOOTSTRAP", "LLMGW_CONFIG")}
    e["LLMGW_DATA_DIR"] = str(tmp_path)
    return e


def test_cli_takes_the_org_slash_name_form_for_every_scope_and_it_applies_to_the_key(env, tmp_path):
    made = llmgw("keys", "create", "--workspace", "acme/backend", "--user", "ivy", env=env)
    assert made.returncode == 0, made.stderr
    key_id = made.stdout.strip().split("-")[2]
    assert f"key id {key_id} for acme/backend/ivy" in made.stderr
    said = llmgw("budgets", "set", "workspace:acme/backend", "day", "0.0004", env=env)
    assert said.returncode == 0 and said.stdout == ("set: workspace backend (org acme) daily budget $0.0004; "
                                                     "at cap: refuse\n")             # not $0.00
    assert llmgw("limits", "set", "workspace:acme/backend", "rpm", "60", env=env).returncode == 0
    assert llmgw("models", "allow", "workspace:acme/backend", "claude-haiku-*", env=env).returncode == 0
    assert llmgw("alerts", "thresholds", "50,90", "--budget", "workspace:acme/backend", "--window", "day",
                 env=env).returncode == 0
    explained = llmgw("budgets", "explain", "--key", key_id, env=env).stdout
    assert "day        $0.0004 on workspace acme/backend  <- explicit (budget:budget|acme|workspace:backend||day)" \
        in explained
    assert "rpm            60 on workspace acme/backend  <- explicit (ratelimit:acme|workspace:backend|rpm)" \
        in explained
    assert "workspace backend: claude-haiku-*  <- models:acme|workspace:backend" in explained
    state = asyncio.run(open_config_log(str(tmp_path), "", "llmgw").load())
    assert state.get("alert_policy", "budget|acme|workspace:backend||day").data["thresholds_pct"] == [50, 90]

    for args, says in ((("limits", "set", "workspace:acme/", "rpm", "5"), "workspace:ORG/NAME"),
                       (("budgets", "set", "workspace:acme/backend", "day", "5", "--org", "globex"),
                        "names org 'acme' but the org given is 'globex'"),
                       (("models", "allow", "org:acme/backend", "gpt-4o-mini"), "expected org:NAME"),
                       (("keys", "create", "--workspace", "backend", "--user", "x"), "--workspace ORG/backend"),
                       (("spend", "--workspace", "backend"), "write ORG/NAME"),
                       (("alerts", "thresholds", "50", "--budget", "team:x", "--window", "day"),
                        "workspace:NAME or workspace:ORG/NAME")):
        got = llmgw(*args, env=env)
        assert got.returncode == 2 and says in got.stderr, (args, got.stderr)
    assert "workspace:acme" not in (tmp_path / "config.jsonl").read_text()        # nothing stored under ORG/NAME

    renamed = llmgw("keys", "update", key_id, "--alias", "ivy-laptop", "--expires", "30d", "--tag",
                    "project:payments", "--reason", "rename", env=env)
    assert renamed.returncode == 0 and f"updated {key_id}: alias=ivy-laptop tags=project:payments" in renamed.stdout
    assert "expires=20" in renamed.stdout
    refused = llmgw("keys", "update", key_id, "--tag", "payments", env=env)
    assert refused.returncode == 2 and "NAME:VALUE" in refused.stderr               # the API's own check
    listed = llmgw("budgets", "delete", "workspace:acme/backend", "day", env=env)
    assert listed.returncode == 0 and llmgw("budgets", "list", env=env).stdout == ""
    again = llmgw("budgets", "delete", "workspace:acme/backend", "day", env=env)
    assert again.returncode == 1 and "no such budget: workspace:acme/backend day in org acme" in again.stderr
    state = asyncio.run(open_config_log(str(tmp_path), "", "llmgw").load())
    key = state.get("key", key_id).data
    assert key["alias"] == "ivy-laptop" and key["tags"] == ["project:payments"] and key["expires_ms"] > 0


async def test_admin_api_takes_the_same_forms_and_they_apply_to_calls(fake_provider, tmp_path):
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            owner = Api(http, h.url, OWNER_KEY)
            key = await owner.ok("POST", "/admin/keys", {"workspace": "acme/backend", "user": "ivy"}, 201)
            assert (key["org"], key["workspace"]) == ("acme", "backend")
            assert [k["key_id"] for k in (await owner.ok("GET", "/admin/keys?workspace=acme/backend"))["data"]] \
                == [key["key_id"]]
            models = await owner.ok("POST", "/admin/model-lists", {"scope": "workspace:acme/backend",
                                                                   "patterns": ["gpt-4o-mini*"]}, 201)
            assert (models["scope"], models["org"]) == ("workspace:backend", "acme")
            limit = await owner.ok("POST", "/admin/rate-limits", {"scope": "workspace:acme/backend", "metric": "rpd",
                                                                  "limit": 1}, 201)
            assert (limit["scope"], limit["org"]) == ("workspace:backend", "acme")
            budget = await owner.ok("POST", "/admin/budgets", {"scope": "workspace:acme/backend", "window": "day",
                                                               "limit_usd": "0.0004"}, 201)
            assert (budget["scope"], budget["org"], budget["limit_micro_usd"]) == ("workspace:backend", "acme", 400)
            assert budget["limit_usd"] == "0.0004" and budget["description"].endswith("$0.0004")
            for path, body, says in (
                    ("/admin/budgets", {"scope": "workspace:acme/", "window": "day", "limit_usd": 1},
                     "workspace:ORG/NAME"),
                    ("/admin/rate-limits", {"scope": "workspace:acme/backend", "org": "globex", "metric": "rpm",
                                            "limit": 5}, "names org 'acme'"),
                    ("/admin/model-lists", {"scope": "tag:project:x", "patterns": ["m"]}, "expected one of org:NAME"),
                    ("/admin/keys", {"workspace": "acme/", "user": "x"}, "workspace:ORG/NAME")):
                status, err = await owner.post(path, body)
                assert status == 400 and says in err["error"]["message"], (path, err)
                assert err["error"]["type"] == "invalid_request_error"
            shown = (await owner.ok("GET", f"/admin/keys/{key['key_id']}/budgets"))["data"]
            assert [(b["description"], b["limit_micro_usd"]) for b in shown] == [
                ("workspace backend (org acme) daily budget $0.0004", 400)]

        oai = openai.AsyncOpenAI(base_url=h.url + "/v1", api_key=key["key"], max_retries=0)
        with pytest.raises(openai.PermissionDeniedError, match="not allowed"):          # the model list applies
            await oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        before = len(h.fake.requests)
        h.fake.script(Reply(usage=Usage(input=10, output=5)))
        with pytest.raises(openai.RateLimitError) as refused:                           # the $0.0004 budget applies
            await oai.chat.completions.create(model="gpt-4o-mini", max_tokens=1000,
                                              messages=[{"role": "user", "content": "hi"}])
        assert "$0.0004" in str(refused.value)
        assert len(h.fake.requests) == before                                         # refused before upstream
        events = await h.events()
        assert events and all((e.org, e.workspace, e.cost_nano_usd) == ("acme", "backend", 0) for e in events)
    finally:
        await h.stop()
    records = [orjson.loads(x) for x in (tmp_path / "config.jsonl").read_bytes().splitlines()]
    assert not [r for r in records if "/" in str((r["data"] or {}).get("name", "")) and r["type"] != "workspace"]
