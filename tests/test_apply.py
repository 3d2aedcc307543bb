"""Config as code: `llmgw apply -f` shows a diff, makes the live config match, and is idempotent."""
from __future__ import annotations

import getpass
import os
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml

from llmgw.core.config import ConfigState
from llmgw.proxy.admin import apply as A
from llmgw.proxy.admin import increase as I
from llmgw.proxy.admin.roles import OWNER, AdminPrincipal
from llmgw.core.budgets import Budget
from llmgw.proxy import keys as K
from tests.admin_support import OWNER_KEY, Api, admin_harness
from tests.test_cli_serve import llmgw

SAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "gateway.yaml"


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(LLMGW_DATA_DIR=str(tmp_path / "data"))
    e.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    e.pop("LLMGW_CONFIG", None)
    return e


def config_log(tmp_path: Path) -> bytes:
    p = tmp_path / "data" / "config.jsonl"
    return p.read_bytes() if p.exists() else b""


def test_sample_dry_run_then_apply_then_apply_again_changes_nothing(env, tmp_path):
    dry = llmgw("apply", "-f", str(SAMPLE), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    assert "+ create org:acme" in lines[2] or any(ln.startswith("+ create org:acme") for ln in lines)
    assert any(ln.startswith("+ create budget:exception|acme|user:alice|project:payments|day") for ln in lines)
    assert lines[-1].startswith("dry run:") and config_log(tmp_path) == b""

    first = llmgw("apply", "-f", str(SAMPLE), "--reason", "initial rollout", env=env)
    assert first.returncode == 0 and first.stdout.splitlines()[-1].startswith("applied ")
    applied = config_log(tmp_path)
    records = [orjson.loads(x) for x in applied.splitlines()]
    assert {(r["actor"], r["reason"]) for r in records} == {(f"cli:{getpass.getuser()}", "initial rollout")}   # the person

    second = llmgw("apply", "-f", str(SAMPLE), env=env)
    assert second.returncode == 0 and second.stdout.startswith("no changes")
    assert config_log(tmp_path) == applied                          # nothing written the second time
    listed = llmgw("budgets", "list", env=env).stdout
    assert "user alice (org acme) daily budget $60.00" in listed


def test_changes_show_as_update_and_delete_lines_and_land_in_the_audit_log(env, tmp_path):
    doc = yaml.safe_load(SAMPLE.read_text())
    assert llmgw("apply", "-f", str(SAMPLE), env=env).returncode == 0
    created = llmgw("keys", "create", "--org", "acme", "--workspace", "backend", "--user", "bob", env=env)
    key_id = created.stderr.split("key id ")[1].split()[0]
    doc["orgs"]["acme"]["users"]["alice"]["budgets"]["day"] = 75
    del doc["orgs"]["acme"]["users"]["bob"]
    del doc["orgs"]["globex"]
    doc["keys"] = {key_id: {"allowed_models": ["claude-haiku-*"], "tags": ["project:payments"]}}
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))

    out = llmgw("apply", "-f", str(changed), "--reason", "tighten", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "~ update budget:budget|acme|user:alice||day  limit_micro_usd: $60.00 -> $75.00" in lines
    assert "- delete user:acme/bob" in lines and "- delete org:globex" in lines
    assert "- delete budget:budget|globex|workspace:research||month" in lines
    assert any(ln.startswith(f"~ update key:{key_id}  allowed_models: [] -> ['claude-haiku-*']") for ln in lines)
    assert llmgw("apply", "-f", str(changed), env=env).stdout.startswith("no changes")
    assert "models=claude-haiku-*" in llmgw("keys", "list", env=env).stdout

    audit = llmgw("audit", "--type", "budget", "--json", env=env)
    entries = [orjson.loads(x) for x in audit.stdout.splitlines()]
    alice = [e for e in entries if e["id"] == "budget:budget|acme|user:alice||day"]
    assert [(e["action"], e["before"] and e["before"]["limit_micro_usd"], e["after"]["limit_micro_usd"])
            for e in alice] == [("create", None, 60_000_000), ("update", 60_000_000, 75_000_000)]
    assert alice[-1]["actor"] == f"cli:{getpass.getuser()}" and alice[-1]["reason"] == "tighten"


def test_bad_documents_are_refused_with_the_place_of_the_error(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("orgs:\n  acme:\n    workspaces:\n      backend:\n        budgetz: {day: 5}\n")
    out = llmgw("apply", "-f", str(bad), env=env)
    assert out.returncode == 2 and "orgs.acme.workspaces.backend: unknown field(s) budgetz" in out.stderr
    bad.write_text("keys:\n  knothere: {allowed_models: [x]}\n")
    out = llmgw("apply", "-f", str(bad), env=env)
    assert out.returncode == 2 and "apply never mints keys" in out.stderr
    bad.write_text("orgs:\n  acme:\n    budgets: {fortnight: 5}\n")
    assert "fortnight" in llmgw("apply", "-f", str(bad), env=env).stderr
    assert config_log(tmp_path) == b""


def test_apply_keeps_an_approved_raise_on_top_of_the_declared_limit():
    state = ConfigState()
    doc = {"orgs": {"acme": {"users": {"dan": {"budgets": {"day": 10}}}}}}
    for c in A.plan(state, doc, now_ms=1000):
        state.apply(c.record)
    _, krec = K.mint("acme", "backend", "dan")
    state.apply(krec)
    req = I.file_request(state, key_id=krec.data["key_id"], window="day", amount_micro_usd=5_000_000, reason="r",
                         expires_ms=10_000, scope="", requested_by="t", now_ms=1000)
    state.apply(req)
    for rec in I.approve(state, req, AdminPrincipal("boss", OWNER), now_ms=1000, reason="")[0]:
        state.apply(rec)
    assert A.plan(state, doc, now_ms=2000) == []                    # the raise is not "drift"
    doc["orgs"]["acme"]["users"]["dan"]["budgets"]["day"] = 20
    (change,) = A.plan(state, doc, now_ms=2000)
    assert Budget.from_record(change.record).limit_micro_usd == 25_000_000   # new limit + the active raise
    assert len(change.record.data["raises"]) == 1


async def test_apply_through_the_admin_api(fake_provider, tmp_path):
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            owner = Api(http, h.url, OWNER_KEY)
            text = SAMPLE.read_text()
            status, dry = await owner.call("POST", "/admin/apply?dry_run=true", data=text)
            assert status == 200 and dry["dry_run"] and dry["applied"] == 0 and len(dry["changes"]) > 20
            assert (await owner.ok("GET", "/admin/orgs"))["data"] == []
            status, done = await owner.call("POST", "/admin/apply?reason=via+api", data=text)
            assert status == 200 and done["applied"] == len(dry["changes"])
            assert [o["name"] for o in (await owner.ok("GET", "/admin/orgs"))["data"]] == ["acme", "globex"]
            status, again = await owner.call("POST", "/admin/apply", data=text)
            assert again["changes"] == [] and again["applied"] == 0
            audit = (await owner.ok("GET", "/admin/audit?type=org"))["data"]
            assert {(e["actor"], e["reason"]) for e in audit} == {("admin:owner-key", "via api")}
    finally:
        await h.stop()


def test_rate_limits_and_model_lists_are_managed_too(env, tmp_path):
    assert llmgw("apply", "-f", str(SAMPLE), env=env).returncode == 0
    assert "workspace interns (org acme): 20 requests per minute" in llmgw("limits", "list", env=env).stdout
    doc = yaml.safe_load(SAMPLE.read_text())
    doc["orgs"]["acme"]["workspaces"]["interns"]["models"] = ["claude-haiku-*"]
    del doc["orgs"]["acme"]["workspaces"]["interns"]["limits"]
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(doc))
    lines = llmgw("apply", "-f", str(changed), env=env).stdout.splitlines()
    assert "~ update models:acme|workspace:interns  patterns: ['claude-haiku-*', 'gpt-4o-mini'] -> ['claude-haiku-*']" \
        in lines
    assert "- delete ratelimit:acme|workspace:interns|rpm" in lines
    assert llmgw("apply", "-f", str(changed), env=env).stdout.startswith("no changes")


def test_budgets_on_undeclared_keys_are_left_alone():
    state = ConfigState()
    _, krec = K.mint("acme", "backend", "dan")
    state.apply(krec)
    key_id = krec.data["key_id"]
    state.apply(Budget("key", key_id, "month", 50_000_000).record())     # e.g. from /key/generate max_budget
    assert A.plan(state, {}, now_ms=1000) == []
    (change,) = A.plan(state, {"keys": {key_id: {"budgets": {"month": 60}}}}, now_ms=1000)
    assert change.action == "update" and change.record.data["limit_micro_usd"] == 60_000_000
    (change,) = A.plan(state, {"keys": {key_id: {}}}, now_ms=1000)
    assert change.action == "delete"
