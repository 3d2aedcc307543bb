"""The audit log is a pure function of the config log's history; `llmgw audit` and GET /admin/audit read it."""
from __future__ import annotations

import os

import aiohttp
import orjson
import pytest

from llmgw.core.config import ConfigRecord
from llmgw.ledger.audit import audit_entries
from tests.admin_support import OWNER_KEY, Api, admin_harness, admin_with_role
from tests.test_cli_serve import llmgw


def test_entries_pair_each_record_with_the_previous_one_of_its_id():
    recs = [ConfigRecord("budget:x", "budget", {"limit_micro_usd": 1, "window": "day"}, 1000, "admin:a", "new"),
            ConfigRecord("key:k1", "key", {"key_id": "k1", "sha256": "abc", "tags": []}, 2000, "cli", ""),
            ConfigRecord("budget:x", "budget", {"limit_micro_usd": 5, "window": "day"}, 3000, "admin:b", "more"),
            ConfigRecord("budget:x", "budget", None, 4000, "apply", "gone")]
    e = audit_entries(recs)
    assert [(x["id"], x["action"], x["actor"], x["reason"]) for x in e] == [
        ("budget:x", "create", "admin:a", "new"), ("key:k1", "create", "cli", ""),
        ("budget:x", "update", "admin:b", "more"), ("budget:x", "delete", "apply", "gone")]
    assert e[2]["before"] == {"limit_micro_usd": 1, "window": "day"} and e[2]["after"]["limit_micro_usd"] == 5
    assert e[2]["changed"] == ["limit_micro_usd"] and e[3]["after"] is None and e[3]["before"]["limit_micro_usd"] == 5
    assert e[1]["after"]["sha256"] == "<redacted>"
    assert e[0]["time"] == "1970-01-01T00:00:01Z"
    orjson.dumps(e)                                                   # ready to insert as is


def test_cli_audit_filters_by_type_since_and_id(tmp_path):
    env = {**os.environ, "LLMGW_DATA_DIR": str(tmp_path / "data")}
    env.pop("LLMGW_KAFKA_BOOTSTRAP", None)
    assert llmgw("budgets", "set", "user:alice", "day", "5", "--reason", "first cap", env=env).returncode == 0
    assert llmgw("budgets", "set", "user:alice", "day", "7", "--reason", "raise", env=env).returncode == 0
    assert llmgw("keys", "create", "--org", "a", "--workspace", "b", "--user", "c", env=env).returncode == 0
    out = llmgw("audit", "--type", "budget", env=env)
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and "create" in lines[0] and "reason: first cap" in lines[0]
    assert "update" in lines[1] and "[limit_micro_usd]" in lines[1]
    assert llmgw("audit", "--since", "2099-01-01", env=env).stdout == ""
    assert len(llmgw("audit", "--since", "1h", env=env).stdout.splitlines()) == 3
    js = [orjson.loads(x) for x in llmgw("audit", "--json", "--id", "budget:budget||user:alice||day",
                                         env=env).stdout.splitlines()]
    assert [(x["before"] or {}).get("limit_micro_usd") for x in js] == [None, 5_000_000]
    assert "sha256\": \"<redacted>" in llmgw("audit", "--type", "key", "--json", env=env).stdout.replace('":"', '": "')


async def test_workspace_admin_sees_only_its_workspaces_in_the_audit_log(fake_provider, tmp_path):
    h = admin_harness(fake_provider, tmp_path)
    await h.start()
    try:
        async with aiohttp.ClientSession() as http:
            owner = Api(http, h.url, OWNER_KEY)
            for ws in ("backend", "frontend"):
                await owner.ok("POST", "/admin/keys", {"org": "acme", "workspace": ws, "user": "u", "reason": ws})
            lead = await admin_with_role(owner, "lead", "workspace_admin", "acme/backend")
            seen = (await lead.ok("GET", "/admin/audit"))["data"]
            assert [e["reason"] for e in seen] == ["backend"]
            all_keys = (await owner.ok("GET", "/admin/audit?type=key&limit=1"))["data"]
            assert [e["reason"] for e in all_keys] == ["frontend"]
            assert (await owner.get("/admin/audit?limit=x"))[0] == 400
    finally:
        await h.stop()


@pytest.mark.kafka
async def test_audit_reads_the_history_from_the_kafka_config_topic(kafka_bootstrap):
    import uuid

    from llmgw.ledger.kafka_config import KafkaConfigLog
    from llmgw.ledger.audit import read_history

    log = KafkaConfigLog(kafka_bootstrap, f"audit-{uuid.uuid4().hex[:8]}.config")
    for limit in (1, 2, 3):
        await log.append(ConfigRecord("budget:x", "budget", {"limit_micro_usd": limit}, limit, "t", str(limit)))
    e = audit_entries(await read_history(log))
    assert [(x["action"], (x["before"] or {}).get("limit_micro_usd")) for x in e] == [
        ("create", None), ("update", 1), ("update", 2)]
