"""Every audit entry names the person who made the change, read back from the audit log itself: the OS user
for the CLI (apply included), the admin key's id (and name) for the admin API (apply included), the OIDC
subject for an OIDC token (tests/test_admin_oidc.py), and the same actor in ClickHouse's audit_log."""
from __future__ import annotations

import getpass
import json
import os

import aiohttp

from llmgw.analytics import audit as landing
from llmgw.ledger.audit import audit_entries, read_history
from llmgw.ledger.configlog import open_config_log
from tests.admin_support import OWNER_KEY, Api, admin_harness, admin_with_role
from tests.fixtures.chdb import AnalyticsDB
from tests.test_cli_serve import llmgw

ME = f"cli:{getpass.getuser()}"


def test_every_cli_change_names_the_os_user(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LLMGW_KAFKA_BOOTSTRAP", "LLMGW_CONFIG")}
    env["LLMGW_DATA_DIR"] = str(tmp_path)
    made = llmgw("keys", "create", "--workspace", "acme/backend", "--user", "ivy", env=env)
    key_id = made.stdout.strip().split("-")[2]
    doc = tmp_path / "gateway.yaml"
    doc.write_text("orgs:\n  acme:\n    timezone: Europe/Paris\n    workspaces:\n      backend:\n"
                   "        budgets: {month: {limit_usd: 100}}\n")
    for args in (("budgets", "set", "user:ivy", "day", "5", "--org", "acme"),
                 ("budgets", "default", "user", "day", "2"),
                 ("limits", "set", "workspace:acme/backend", "rpm", "60"),
                 ("limits", "unset", "workspace:acme/backend", "rpm"),
                 ("models", "allow", "user:ivy", "gpt-4o-mini"),
                 ("models", "clear", "user:ivy"),
                 ("alerts", "thresholds", "50,90"),
                 ("webhooks", "add", "https://hooks.example/alerts", "--format", "json"),
                 ("capture", "on", "--org", "acme", "--workspace", "backend"),
                 ("keys", "update", key_id, "--alias", "ivy-laptop"),
                 ("budgets", "delete", "user:ivy", "day", "--org", "acme"),
                 ("apply", "-f", str(doc), "--reason", "rollout"),
                 ("keys", "revoke", key_id)):
        got = llmgw(*args, env=env)
        assert got.returncode == 0, (args, got.stderr)
    out = llmgw("audit", "--json", env=env)
    entries = [json.loads(line) for line in out.stdout.splitlines()]
    types = {e["type"] for e in entries}
    assert {"key", "budget", "ratelimit", "models", "alert_policy", "webhook", "capture", "org",
            "workspace"} <= types
    assert {e["actor"] for e in entries} == {ME}, [(e["id"], e["actor"]) for e in entries if e["actor"] != ME]
    assert [e["reason"] for e in entries if e["type"] == "org"] == ["rollout"]
    named = llmgw("audit", "--json", "--actor", ME, env=env)
    assert len(named.stdout.splitlines()) == len(entries)


async def test_every_admin_api_change_names_the_admin_key_by_id(fake_provider, tmp_path, analytics_db: AnalyticsDB):
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            owner = Api(http, h.url, OWNER_KEY)
            lead = await admin_with_role(owner, "lead", "owner")
            lead_id = lead.token.split("-")[2]
            lead_actor = f"admin:lead#{lead_id}"
            assert (await lead.ok("GET", "/admin/whoami"))["actor"] == lead_actor
            await lead.ok("POST", "/admin/orgs", {"name": "acme", "timezone": "Asia/Tokyo", "reason": "new"}, 201)
            key = await lead.ok("POST", "/admin/keys", {"workspace": "acme/backend", "user": "ivy"}, 201)
            await lead.ok("PATCH", f"/admin/keys/{key['key_id']}", {"alias": "ivy-laptop", "expires": "30d"})
            b = await lead.ok("POST", "/admin/budgets", {"scope": "workspace:acme/backend", "window": "day",
                                                         "limit_usd": "3"}, 201)
            await lead.ok("DELETE", f"/admin/budgets/{b['id']}")
            await lead.ok("POST", "/admin/rate-limits", {"scope": "user:ivy", "org": "acme", "metric": "rpm",
                                                         "limit": 5}, 201)
            status, applied = await lead.call("POST", "/admin/apply?reason=via%20api",
                                              data="orgs:\n  acme:\n    timezone: Asia/Tokyo\n    workspaces:\n"
                                                   "      backend: {}\n")
            assert status == 200 and applied["applied"] > 0, applied
            read = (await lead.ok("GET", f"/admin/audit?actor={lead_actor}"))["data"]
            assert {e["type"] for e in read} >= {"org", "key", "budget", "ratelimit", "workspace"}
            assert {e["actor"] for e in read} == {lead_actor}
            assert [e["reason"] for e in read if e["type"] == "workspace"] == ["via api"]
            by_name = (await lead.ok("GET", "/admin/audit?actor=admin:lead"))["data"]
            assert by_name == read                                        # the name alone finds them too
            everyone = (await owner.ok("GET", "/admin/audit"))["data"]
            assert {e["actor"] for e in everyone} == {"admin:owner-key", lead_actor}
    finally:
        await h.stop()
    history = await read_history(open_config_log(str(tmp_path), "", "llmgw"))
    assert landing.insert_records(analytics_db.client, analytics_db.database, history) == len(audit_entries(history))
    stored = landing.recent(analytics_db.client, analytics_db.database, limit=1000)
    assert {e["actor"] for e in stored} == {"admin:owner-key", lead_actor}
